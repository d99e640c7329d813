//! weftd.
