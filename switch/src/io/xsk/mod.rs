//! AF_XDP pod ports (issue 14), built up in steps. Present so far: the typed rings
//! an AF_XDP socket shares with the kernel ([`ring`]). The UMEM, the socket set-up,
//! the XDP redirect program and the veth port that use them are not written yet;
//! nothing outside the tests uses this module.
//!
//! The rings are weft's own rather than the `afxdp` crate's: `afxdp` 0.4 is built on
//! libbpf 0.x's `xsk.h` API (removed from libbpf 1.0), has no multi-buffer
//! (`XDP_USE_SG`) support, and panics on an unexpected errno from a wake-up. The
//! ring protocol itself is small and fixed by the kernel ABI (`libc` has its
//! structures), and owning it lets a ring be tested on the heap against an oracle.

pub mod ring;
