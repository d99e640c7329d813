//! AF_XDP pod ports: a veth whose host end is served by AF_XDP sockets, one per
//! queue, each with a UMEM of its own, fed by weft's XDP redirect program.
//!
//! - [`ring`]: the typed single-producer/single-consumer rings shared with the kernel;
//! - [`socket`]: one socket's UMEM, rings and bind;
//! - [`prog`]: the XDP program and XSKMAP (loaded and attached with libbpf);
//! - [`queue`]: the [`PortQueue`](crate::io::port::PortQueue) a worker polls.
//!
//! The rings and the socket set-up are weft's own rather than the `afxdp` crate's:
//! `afxdp` 0.4 is built on libbpf 0.x's `xsk.h` API (removed from libbpf 1.0), has no
//! multi-buffer (`XDP_USE_SG`) support, and panics on an unexpected errno from a
//! wake-up. `xsk-rs` wraps the same removed API through libxdp. The ring protocol is
//! small and fixed by the kernel ABI (`libc` has its structures), and owning it lets
//! a ring be tested on the heap against an oracle. Loading the program and the map
//! is libbpf's (`libbpf-sys`), which is what it is for.

pub mod prog;
pub mod queue;
pub mod ring;
pub mod socket;

use std::sync::Arc;

use socket::FRAME_SIZE;

pub use queue::XskQueue;
pub use socket::{Geometry, Mode};

/// Why an AF_XDP port could not be opened. Nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The interface is not there.
    #[error("no interface {0} for the AF_XDP port")]
    NoDevice(String),
    /// The XDP program or map.
    #[error(transparent)]
    Prog(#[from] prog::ProgError),
    /// A socket.
    #[error(transparent)]
    Socket(#[from] socket::XskError),
    /// Frames of the interface's MTU do not fit one UMEM frame, and the kernel
    /// has no multi-buffer AF_XDP.
    #[error(
        "an MTU of {mtu} needs multi-buffer AF_XDP (XDP_USE_SG, Linux 6.6 and later), \
         which this kernel lacks; AF_XDP ports here take an MTU of at most {most}"
    )]
    MtuNeedsMultiBuffer {
        /// The interface's MTU.
        mtu: u32,
        /// The largest MTU one UMEM frame holds.
        most: u32,
    },
}

/// `XDP_PACKET_HEADROOM`: the room the kernel leaves before a received frame.
const XDP_HEADROOM: u32 = 256;

/// The largest MTU whose frames (Ethernet and one VLAN tag included) fit one UMEM
/// frame after the kernel's headroom.
pub const SINGLE_BUFFER_MTU: u32 = FRAME_SIZE - XDP_HEADROOM - 18;

/// Opens `queues` AF_XDP sockets on `ifname`'s queues 0..queues, puts them in a new
/// XSKMAP and attaches the redirect program to `ifname`, replacing any program
/// there. `mtu` is the MTU of `ifname`'s frames. On failure everything made is
/// closed again and the device keeps no program of ours.
pub fn open(
    ifname: &str,
    mtu: u32,
    queues: usize,
    geometry: Geometry,
    mode: Mode,
) -> Result<Vec<XskQueue>, PortError> {
    let cname = std::ffi::CString::new(ifname).map_err(|_| PortError::NoDevice(ifname.into()))?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(PortError::NoDevice(ifname.into()));
    }
    let redirect = Arc::new(prog::Redirect::load(queues as u32, mode.multi_buffer)?);
    let mode = Mode {
        multi_buffer: mode.multi_buffer && redirect.frags,
        ..mode
    };
    let mut out = Vec::with_capacity(queues);
    for q in 0..queues as u32 {
        let (sock, spare) = socket::Socket::open(ifname, ifindex, q, geometry, mode)?;
        if !sock.multi_buffer && mtu > SINGLE_BUFFER_MTU {
            return Err(PortError::MtuNeedsMultiBuffer {
                mtu,
                most: SINGLE_BUFFER_MTU,
            });
        }
        redirect.insert(q, std::os::fd::AsRawFd::as_raw_fd(&sock))?;
        out.push(XskQueue::new(sock, spare, ifname, q, redirect.clone()));
    }
    redirect.attach(ifindex)?;
    Ok(out)
}

/// Removes the XDP program from `ifname`, if it and the device are there.
pub fn detach(ifname: &str) {
    let Ok(cname) = std::ffi::CString::new(ifname) else {
        return;
    };
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex != 0 {
        prog::detach(ifindex);
    }
}
