//! weft wire formats.
