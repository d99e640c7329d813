//! weft IPAM.
