//! TAP devices: multi-queue, non-blocking, opened with ioctls on `/dev/net/tun`.
//!
//! A small module rather than tokio-tun: the workers poll the queue file descriptors
//! themselves (one owner per fd, a per-worker epoll), and the performance work needs
//! `IFF_VNET_HDR` and `TUNSETOFFLOAD`, which tokio-tun does not expose.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
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
}

impl TapQueue {
    /// Reads one frame. `Ok(None)` when the queue is empty.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes and the fd is
        // owned by `self` for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
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

    /// Writes one frame.
    #[inline]
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid readable region of `frame.len()` bytes and the fd
        // is owned by `self` for the duration of the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
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
/// namespace and opens `queues` non-blocking queues on it.
pub fn open(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    if !valid_ifname(name) {
        return Err(TapError::BadName(name.to_owned()));
    }
    if queues == 0 || queues > MAX_QUEUES {
        return Err(TapError::BadQueues(queues));
    }
    let path = c"/dev/net/tun";
    (0..queues)
        .map(|queue| {
            let fd = open_tun(path).map_err(|source| TapError::Open {
                name: name.to_owned(),
                source,
            })?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE,
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
                    queue,
                    source: io::Error::last_os_error(),
                });
            }
            Ok(TapQueue { fd })
        })
        .collect()
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
        assert!(matches!(open("a/b", 1), Err(TapError::BadName(_))));
        assert!(matches!(open("ok0", 0), Err(TapError::BadQueues(0))));
    }
}
