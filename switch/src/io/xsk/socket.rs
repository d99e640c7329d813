//! One AF_XDP socket with a UMEM of its own: the set-up (`XDP_UMEM_REG`, the four
//! rings, `XDP_MMAP_OFFSETS`, bind) and the mappings, unmapped when the last user
//! goes.
//!
//! Each socket owns its UMEM rather than sharing one per device: a queue belongs to
//! one worker, so its frames never cross threads, and a queue's memory is bounded on
//! its own ([`Geometry`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use super::ring::{Consumer, Producer, RingMem};

/// The size of one UMEM frame: a page, so that a frame never straddles two.
pub const FRAME_SIZE: u32 = 4096;

/// The frame pool of one queue.
///
/// `frames` frames of [`FRAME_SIZE`] bytes; half of them are lent to the kernel for
/// receiving (the fill and rx rings hold `frames / 2` each), half are kept for
/// sending (tx and completion, `frames / 2` each). With the default 1024 frames a
/// queue pins 4 MiB, and a pod with two queues 8 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Frames in the UMEM: a power of two, 64 to 16384.
    pub frames: u32,
}

impl Geometry {
    /// The default: 1024 frames, 4 MiB per queue.
    pub const DEFAULT: Geometry = Geometry { frames: 1024 };

    /// Checks `frames`.
    pub fn new(frames: u32) -> Result<Geometry, String> {
        if frames.is_power_of_two() && (64..=16384).contains(&frames) {
            Ok(Geometry { frames })
        } else {
            Err(format!(
                "afxdp-frames is a power of two from 64 to 16384, not {frames}"
            ))
        }
    }

    /// The entries of each ring.
    pub fn ring(&self) -> u32 {
        self.frames / 2
    }

    /// The UMEM's bytes.
    pub fn umem_bytes(&self) -> usize {
        self.frames as usize * FRAME_SIZE as usize
    }
}

/// How a socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// `XDP_ZEROCOPY` instead of `XDP_COPY`: only drivers with AF_XDP zero-copy
    /// support take it (veth does not).
    pub zero_copy: bool,
    /// Ask for `XDP_USE_SG` (multi-buffer frames); dropped on a kernel without it.
    pub multi_buffer: bool,
}

/// Why an AF_XDP socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// No AF_XDP in this kernel, or no permission.
    #[error(
        "creating an AF_XDP socket: {0} (needs a kernel with CONFIG_XDP_SOCKETS and CAP_NET_RAW)"
    )]
    Socket(io::Error),
    /// The UMEM could not be allocated.
    #[error("allocating a {bytes}-byte UMEM: {source}")]
    Alloc {
        /// Its size.
        bytes: usize,
        /// Cause.
        source: io::Error,
    },
    /// The kernel would not pin the UMEM: over RLIMIT_MEMLOCK without CAP_IPC_LOCK.
    #[error(
        "registering a {bytes}-byte UMEM: it exceeds RLIMIT_MEMLOCK ({limit}) and weftd \
         lacks CAP_IPC_LOCK; grant CAP_IPC_LOCK, raise the limit, or use pod-port = \"tap\""
    )]
    MemLock {
        /// The UMEM's size.
        bytes: usize,
        /// The limit, as text.
        limit: String,
    },
    /// A set-up step failed.
    #[error("{what}: {source}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The driver has no zero-copy AF_XDP.
    #[error(
        "binding queue {queue} of {ifname} in zero-copy mode: {source} (veth has copy mode \
         only; set afxdp-zero-copy = false)"
    )]
    NoZeroCopy {
        /// The device.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Cause.
        source: io::Error,
    },
    /// The bind failed.
    #[error("binding an AF_XDP socket to queue {queue} of {ifname}: {source}")]
    Bind {
        /// The device.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Cause.
        source: io::Error,
    },
}

/// An anonymous or socket mapping, unmapped on drop.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; who touches which bytes is the rings' protocol.
unsafe impl Send for Mapping {}
// SAFETY: as for Send; `Mapping` itself hands out only its raw pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize, fd: Option<RawFd>, offset: u64) -> io::Result<Mapping> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping at an address the kernel chooses.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more (its users
        // hold the Arc this is dropped from).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An AF_XDP socket bound to one queue, with its UMEM and rings.
#[derive(Debug)]
pub struct Socket {
    /// Fill ring: frames lent to the kernel for receiving.
    pub fill: Producer<u64>,
    /// Completion ring: sent frames given back.
    pub comp: Consumer<u64>,
    /// Received frames.
    pub rx: Consumer<libc::xdp_desc>,
    /// Frames to send.
    pub tx: Producer<libc::xdp_desc>,
    /// The UMEM.
    pub(super) umem: Arc<Mapping>,
    /// Whether the socket was bound with `XDP_USE_SG`.
    pub multi_buffer: bool,
    /// Whether it was bound in zero-copy mode.
    pub zero_copy: bool,
    fd: OwnedFd,
}

fn setsockopt<T>(
    fd: RawFd,
    opt: libc::c_int,
    value: &T,
    what: &'static str,
) -> Result<(), XskError> {
    // SAFETY: `value` is a live T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(XskError::Setup {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

fn memlock_limit() -> String {
    // SAFETY: a valid out-pointer.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} bytes", lim.rlim_cur)
    }
}

impl Socket {
    /// Opens a socket on queue `queue` of `ifname` (index `ifindex`), with a UMEM
    /// of `geometry`, and lends the kernel half of its frames for receiving. Returns
    /// the socket and the addresses of the frames kept for sending.
    pub fn open(
        ifname: &str,
        ifindex: u32,
        queue: u32,
        geometry: Geometry,
        mode: Mode,
    ) -> Result<(Socket, Vec<u64>), XskError> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(XskError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let bytes = geometry.umem_bytes();
        let umem = Arc::new(
            Mapping::new(bytes, None, 0).map_err(|source| XskError::Alloc { bytes, source })?,
        );
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: bytes as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        if let Err(e) = setsockopt(raw, libc::XDP_UMEM_REG, &reg, "registering the UMEM") {
            return Err(match e {
                // xdp_umem_account_pages: over the limit, without CAP_IPC_LOCK.
                XskError::Setup { source, .. } if source.raw_os_error() == Some(libc::ENOBUFS) => {
                    XskError::MemLock {
                        bytes,
                        limit: memlock_limit(),
                    }
                }
                e => e,
            });
        }
        let ring = geometry.ring();
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &ring, "sizing the fill ring")?;
        setsockopt(
            raw,
            libc::XDP_UMEM_COMPLETION_RING,
            &ring,
            "sizing the completion ring",
        )?;
        setsockopt(raw, libc::XDP_RX_RING, &ring, "sizing the rx ring")?;
        setsockopt(raw, libc::XDP_TX_RING, &ring, "sizing the tx ring")?;

        let (mut fill, comp, rx, tx) = map_rings(raw, ring)?;

        // Half the frames to the kernel for receiving, half kept for sending.
        let mut frames = (0..geometry.frames).map(|i| u64::from(i) * u64::from(FRAME_SIZE));
        {
            let mut lend = fill.produce(ring);
            for addr in frames.by_ref().take(ring as usize) {
                let _ = lend.push(addr);
            }
        }
        let spare: Vec<u64> = frames.collect();

        let (multi_buffer, zero_copy) = bind(raw, ifname, ifindex, queue, mode)?;
        Ok((
            Socket {
                fill,
                comp,
                rx,
                tx,
                umem,
                multi_buffer,
                zero_copy,
                fd,
            },
            spare,
        ))
    }

    /// Kicks the kernel to send what the tx ring holds (copy mode sends only in
    /// this call). `Ok(true)` when it stopped with more left (`EAGAIN`).
    pub fn kick_tx(&self) -> io::Result<bool> {
        // SAFETY: a zero-length send with no buffers.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) => Ok(true),
            // Nothing the kernel could do now (a full device queue); the frames stay
            // queued and go with the next kick.
            Some(libc::ENOBUFS) => Ok(false),
            _ => Err(e),
        }
    }

    /// Wakes the kernel to take the fill ring (needed by zero-copy drivers).
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length receive with no buffers.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}

/// The four rings' user-space ends, over the socket's mappings.
type Rings = (
    Producer<u64>,
    Consumer<u64>,
    Consumer<libc::xdp_desc>,
    Producer<libc::xdp_desc>,
);

/// Maps the fill, completion, rx and tx rings of socket `raw`, each `ring` entries.
fn map_rings(raw: RawFd, ring: u32) -> Result<Rings, XskError> {
    // SAFETY: zeroed is a valid xdp_mmap_offsets; `len` is its size.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` has room for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&mut off as *mut libc::xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(XskError::Setup {
            what: "reading the ring offsets",
            source: io::Error::last_os_error(),
        });
    }
    let map_ring = |o: &libc::xdp_ring_offset, entry: usize, pgoff: u64, what| {
        let len = o.desc as usize + ring as usize * entry;
        Mapping::new(len, Some(raw), pgoff)
            .map(Arc::new)
            .map_err(|source| XskError::Setup { what, source })
    };
    let desc = std::mem::size_of::<libc::xdp_desc>();
    let fill_map = map_ring(
        &off.fr,
        8,
        libc::XDP_UMEM_PGOFF_FILL_RING,
        "mapping the fill ring",
    )?;
    let comp_map = map_ring(
        &off.cr,
        8,
        libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        "mapping the completion ring",
    )?;
    let rx_map = map_ring(
        &off.rx,
        desc,
        libc::XDP_PGOFF_RX_RING as u64,
        "mapping the rx ring",
    )?;
    let tx_map = map_ring(
        &off.tx,
        desc,
        libc::XDP_PGOFF_TX_RING as u64,
        "mapping the tx ring",
    )?;
    // SAFETY: each mapping is the ring the kernel laid out at the offsets it
    // reported, `ring` entries long, of the ring's entry type, kept alive by the
    // Arc passed as owner; each ring gets one RingMem, in user space's role.
    let (fill, comp, rx, tx) = unsafe {
        (
            Producer::new(
                RingMem::mapped(fill_map.ptr, &off.fr, ring, fill_map.clone()).map_err(bad_ring)?,
            ),
            Consumer::new(
                RingMem::mapped(comp_map.ptr, &off.cr, ring, comp_map.clone()).map_err(bad_ring)?,
            ),
            Consumer::new(
                RingMem::mapped(rx_map.ptr, &off.rx, ring, rx_map.clone()).map_err(bad_ring)?,
            ),
            Producer::new(
                RingMem::mapped(tx_map.ptr, &off.tx, ring, tx_map.clone()).map_err(bad_ring)?,
            ),
        )
    };
    Ok((fill, comp, rx, tx))
}

fn bad_ring(e: super::ring::RingError) -> XskError {
    XskError::Setup {
        what: "mapping a ring",
        source: io::Error::other(e),
    }
}

/// Binds, dropping `XDP_USE_SG` on a kernel that refuses it. Returns whether the
/// socket is multi-buffer and zero-copy.
fn bind(
    fd: RawFd,
    ifname: &str,
    ifindex: u32,
    queue: u32,
    mode: Mode,
) -> Result<(bool, bool), XskError> {
    let attempt = |sg: bool| {
        let mut flags = libc::XDP_USE_NEED_WAKEUP;
        flags |= if mode.zero_copy {
            libc::XDP_ZEROCOPY
        } else {
            libc::XDP_COPY
        };
        if sg {
            flags |= libc::XDP_USE_SG;
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let fail = |source: io::Error| {
        let (ifname, is_zc) = (ifname.to_owned(), mode.zero_copy);
        let unsupported = matches!(
            source.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT)
        );
        if is_zc && unsupported {
            XskError::NoZeroCopy {
                ifname,
                queue,
                source,
            }
        } else {
            XskError::Bind {
                ifname,
                queue,
                source,
            }
        }
    };
    if mode.multi_buffer {
        match attempt(true) {
            Ok(()) => return Ok((true, mode.zero_copy)),
            // Before Linux 6.6 the flag is unknown; a zero-copy driver may lack it.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                log::info!("{ifname} queue {queue}: no multi-buffer AF_XDP ({e}); frames are one page at most");
            }
            Err(e) => return Err(fail(e)),
        }
    }
    attempt(false).map_err(fail)?;
    Ok((false, mode.zero_copy))
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
