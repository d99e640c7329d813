//! weft-perf: the benchmarking harness, and the network-namespace fixtures that weft's
//! integration tests build on.

pub mod netns;
