//! weft-perf.
