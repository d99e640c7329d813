//! TAP devices: multi-queue, non-blocking, opened with ioctls on `/dev/net/tun`.
//!
//! A small module rather than tokio-tun: the workers poll the queue file descriptors
//! themselves (one owner per fd, a per-worker epoll), and the datapath needs
//! `IFF_VNET_HDR` and `TUNSETOFFLOAD`, which tokio-tun does not expose.
//!
//! Every queue is opened with `IFF_VNET_HDR`: each frame crosses with a 10-byte
//! virtio-net header ([`weft_encap::virtio`]), read and written with `readv`/`writev`
//! so the frame itself is never copied. With checksum and TSO/USO offloads on, the
//! pod's kernel hands the switch TCP super-frames of up to 64 KiB with partial
//! checksums, and takes such frames back.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use weft_encap::virtio;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
/// Linux caps a multi-queue TUN/TAP device at this many queues.
pub const MAX_QUEUES: usize = 256;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Errors opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name cannot be used.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':', NUL or whitespace")]
    BadName(String),
    /// The number of queues is out of range.
    #[error("a TAP device has 1 to {MAX_QUEUES} queues, not {0}")]
    BadQueues(usize),
    /// `/dev/net/tun` could not be opened.
    #[error("opening /dev/net/tun for {name}: {source}")]
    Open {
        /// Interface name.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// The kernel refused the device (for example a non-TAP interface of that name exists).
    #[error("creating TAP queue {queue} of {name}: {source}")]
    SetIff {
        /// Interface name.
        name: String,
        /// Queue number.
        queue: usize,
        /// Cause.
        source: io::Error,
    },
}

/// Checks a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// One queue of a TAP device. The device lives while any queue is open.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    /// The device took `TUN_F_USO4`: it accepts UDP super-frames.
    uso: bool,
}

impl TapQueue {
    /// Reads one frame into `buf`, with its offload header. `Ok(None)` when the
    /// queue is empty.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(virtio::Repr, usize)>> {
        let mut hdr = [0u8; virtio::LEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs describe valid, writable, non-overlapping regions that
        // outlive the call; the fd is owned by `self`.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n < virtio::LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short read from TAP",
            ));
        }
        let repr = virtio::Repr::parse(&virtio::Packet::new_unchecked(&hdr[..]))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((repr, n - virtio::LEN)))
    }

    /// Writes one frame with its offload header.
    #[inline]
    pub fn send(&self, offload: &virtio::Repr, frame: &[u8]) -> io::Result<()> {
        let mut hdr = [0u8; virtio::LEN];
        virtio::emit_header(&mut hdr, offload);
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs describe valid regions that outlive the call; writev
        // only reads them. The fd is owned by `self`.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the device takes UDP super-frames (USO) written to it. Strictly,
    /// `TUN_F_USO4` says the kernel may hand weftd such frames; a kernel that
    /// accepts it (6.2 on) also parses `UDP_L4` headers written to the device,
    /// which came in the same release, so its acceptance stands for both.
    pub fn takes_uso(&self) -> bool {
        self.uso
    }

    /// Makes the device outlive its queues (so it survives a daemon restart), or not.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value; the fd is owned by `self`.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETPERSIST,
                libc::c_ulong::from(persist),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Creates (or attaches to) the TAP device `name` in the calling thread's network
/// namespace and opens `queues` non-blocking queues on it. With `uso`, the device is
/// offered UDP segmentation offload where the kernel has it.
pub fn open(name: &str, queues: usize, uso: bool) -> Result<Vec<TapQueue>, TapError> {
    if !valid_ifname(name) {
        return Err(TapError::BadName(name.to_owned()));
    }
    if queues == 0 || queues > MAX_QUEUES {
        return Err(TapError::BadQueues(queues));
    }
    let path = c"/dev/net/tun";
    let offer_uso = uso;
    let mut uso = false;
    (0..queues)
        .map(|queue_index| {
            let fd = open_tun(path).map_err(|source| TapError::Open {
                name: name.to_owned(),
                source,
            })?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR,
                _pad: [0; 22],
            };
            for (d, s) in req.name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` lays out (name,
            // then flags, padded to 40 bytes); `req` outlives the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
            if rc < 0 {
                return Err(TapError::SetIff {
                    name: name.to_owned(),
                    queue: queue_index,
                    source: io::Error::last_os_error(),
                });
            }
            if queue_index == 0 {
                uso = enable_offloads(&fd, offer_uso).map_err(|source| TapError::SetIff {
                    name: name.to_owned(),
                    queue: queue_index,
                    source,
                })?;
            }
            Ok(TapQueue { fd, uso })
        })
        .collect()
}

/// Sets the virtio-net header size of the device `fd` is a queue of and turns on
/// checksum and segmentation offloads, USO where the kernel has it if `uso`. They
/// apply to the whole device. Returns whether USO is on.
fn enable_offloads(fd: &OwnedFd, uso: bool) -> io::Result<bool> {
    let size: libc::c_int = virtio::LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    let with_uso = [(tso | TUN_F_USO4 | TUN_F_USO6, true), (tso, false)];
    for &(flags, uso) in if uso { &with_uso[..] } else { &with_uso[1..] } {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) } == 0 {
            return Ok(uso);
        }
    }
    Err(io::Error::last_os_error())
}

fn open_tun(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is checked before use.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("weft0"));
        for bad in ["", "a/b", "a b", "x:1", "0123456789abcdef", ".."] {
            assert!(!valid_ifname(bad), "{bad}");
        }
        assert!(matches!(open("a/b", 1, true), Err(TapError::BadName(_))));
        assert!(matches!(open("ok0", 0, true), Err(TapError::BadQueues(0))));
    }
}
