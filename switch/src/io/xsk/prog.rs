//! The XDP program on a pod's host-side veth end, and the XSKMAP it redirects into.
//!
//! The program is five instructions, so it is assembled here rather than compiled
//! from C into an object file (which would need clang at build time):
//!
//! ```text
//! r2 = *(u32 *)(r1 + 16)      ; ctx->rx_queue_index
//! r1 = map[xskmap]            ; ld_imm64, src = BPF_PSEUDO_MAP_FD
//! r3 = XDP_DROP               ; the action when the queue has no socket
//! call bpf_redirect_map       ; helper 51
//! exit
//! ```
//!
//! Every frame the pod sends goes to the AF_XDP socket of the queue it arrived on.
//! A queue without a socket (weftd is restarting) drops, so the pod never talks to
//! the node's own stack through the host end. libbpf (through `libbpf-sys`) loads
//! the program and the map and attaches it; the kernel keeps the attached program
//! with the device, so it goes when the veth does.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_sys as bpf;

/// The program's name, as `bpftool prog` and the tests see it.
pub const PROG_NAME: &CStr = c"weft_xsk";
const MAP_NAME: &CStr = c"weft_xsks";
const LICENSE: &CStr = c"Dual BSD/GPL";

/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_DROP: i32 = 1;

// Opcodes (`linux/bpf_common.h`, `linux/bpf.h`).
const LDX_MEM_W: u8 = 0x61;
const LD_IMM_DW: u8 = 0x18;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_CALL: u8 = 0x85;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf::bpf_insn {
    // SAFETY: bpf_insn is plain integers; all zeroes is a valid value.
    let mut i: bpf::bpf_insn = unsafe { std::mem::zeroed() };
    i.code = code;
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i.off = off;
    i.imm = imm;
    i
}

/// The program's instructions, redirecting into the XSKMAP `map_fd`.
fn program(map_fd: RawFd) -> [bpf::bpf_insn; 6] {
    [
        insn(LDX_MEM_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        insn(LD_IMM_DW, 1, bpf::BPF_PSEUDO_MAP_FD as u8, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(ALU64_MOV_K, 3, 0, 0, XDP_DROP),
        insn(JMP_CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]
}

/// Why the program could not be made or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProgError {
    /// The kernel refused the XSKMAP.
    #[error("creating the XSKMAP: {0} (AF_XDP needs CAP_BPF/CAP_NET_ADMIN and a kernel with XDP sockets)")]
    Map(io::Error),
    /// The kernel refused the program.
    #[error("loading the XDP program: {0}")]
    Load(io::Error),
    /// A socket could not be put in the map.
    #[error("adding the socket of queue {queue} to the XSKMAP: {source}")]
    Insert {
        /// The queue.
        queue: u32,
        /// Cause.
        source: io::Error,
    },
    /// The device refused the program.
    #[error("attaching the XDP program to ifindex {ifindex}: {source}")]
    Attach {
        /// The device.
        ifindex: u32,
        /// Cause.
        source: io::Error,
    },
}

/// libbpf 1.x returns `-errno`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

/// A loaded program and its map. Dropping it closes both descriptors; a program
/// attached to a device stays with the device (and goes with it).
#[derive(Debug)]
pub struct Redirect {
    prog: OwnedFd,
    map: OwnedFd,
    /// Whether the program was loaded as multi-buffer aware (`BPF_F_XDP_HAS_FRAGS`).
    pub frags: bool,
}

impl Redirect {
    /// Loads the program with an XSKMAP of `queues` entries. Tries the
    /// multi-buffer flavour first when `frags` is asked for, and falls back to the
    /// plain one on a kernel that refuses it.
    pub fn load(queues: u32, frags: bool) -> Result<Redirect, ProgError> {
        // SAFETY: a null opts pointer is allowed; the name is NUL-terminated.
        let map = check(unsafe {
            bpf::bpf_map_create(
                bpf::BPF_MAP_TYPE_XSKMAP,
                MAP_NAME.as_ptr(),
                4,
                4,
                queues.max(1),
                std::ptr::null(),
            )
        })
        .map_err(ProgError::Map)?;
        // SAFETY: libbpf returned a new descriptor that nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(map) };
        let insns = program(map.as_raw_fd());
        let load = |flags: u32| {
            // SAFETY: plain integers and pointers; zeroed is a valid start.
            let mut opts: bpf::bpf_prog_load_opts = unsafe { std::mem::zeroed() };
            opts.sz = std::mem::size_of::<bpf::bpf_prog_load_opts>() as _;
            opts.prog_flags = flags;
            // SAFETY: `insns` outlives the call; names and license are C strings.
            check(unsafe {
                bpf::bpf_prog_load(
                    bpf::BPF_PROG_TYPE_XDP,
                    PROG_NAME.as_ptr(),
                    LICENSE.as_ptr(),
                    insns.as_ptr(),
                    insns.len() as _,
                    &mut opts,
                )
            })
        };
        let (prog, frags) = match frags.then(|| load(bpf::BPF_F_XDP_HAS_FRAGS)) {
            Some(Ok(fd)) => (fd, true),
            // Multi-buffer XDP is Linux 5.18+ for the program, 6.6+ for AF_XDP.
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                (load(0).map_err(ProgError::Load)?, false)
            }
            Some(Err(e)) => return Err(ProgError::Load(e)),
            None => (load(0).map_err(ProgError::Load)?, false),
        };
        // SAFETY: as for the map.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        Ok(Redirect { prog, map, frags })
    }

    /// Points queue `queue` at the AF_XDP socket `xsk`.
    pub fn insert(&self, queue: u32, xsk: RawFd) -> Result<(), ProgError> {
        let value: u32 = xsk as u32;
        // SAFETY: key and value are 4-byte values that live across the call.
        check(unsafe {
            bpf::bpf_map_update_elem(
                self.map.as_raw_fd(),
                (&queue as *const u32).cast(),
                (&value as *const u32).cast(),
                bpf::BPF_ANY as u64,
            )
        })
        .map(drop)
        .map_err(|source| ProgError::Insert { queue, source })
    }

    /// Attaches the program to `ifindex` in native (driver) mode, replacing any
    /// program there (a previous weftd's), or in generic mode on a driver without
    /// native XDP.
    pub fn attach(&self, ifindex: u32) -> Result<(), ProgError> {
        let attach = |mode| {
            // SAFETY: a null opts pointer is allowed.
            check(unsafe {
                bpf::bpf_xdp_attach(
                    ifindex as i32,
                    self.prog.as_raw_fd(),
                    mode,
                    std::ptr::null(),
                )
            })
        };
        match attach(bpf::XDP_FLAGS_DRV_MODE) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                log::info!("ifindex {ifindex}: no native XDP; attaching in generic mode");
                attach(bpf::XDP_FLAGS_SKB_MODE)
                    .map(drop)
                    .map_err(|source| ProgError::Attach { ifindex, source })
            }
            Err(source) => Err(ProgError::Attach { ifindex, source }),
        }
    }
}

/// Removes whatever XDP program `ifindex` has, in either mode. A device that is gone
/// is not an error.
pub fn detach(ifindex: u32) {
    for mode in [bpf::XDP_FLAGS_DRV_MODE, bpf::XDP_FLAGS_SKB_MODE] {
        // SAFETY: a null opts pointer is allowed.
        let _ = unsafe { bpf::bpf_xdp_detach(ifindex as i32, mode, std::ptr::null()) };
    }
}

/// The ids of the XDP programs named [`PROG_NAME`] loaded on the host, for tests and
/// diagnostics that look for programs left behind.
pub fn loaded() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: `next` is a valid out-pointer.
        match check(unsafe { bpf::bpf_prog_get_next_id(id, &mut next) }) {
            Ok(_) => id = next,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
        // SAFETY: no pointers.
        let fd = match check(unsafe { bpf::bpf_prog_get_fd_by_id(id) }) {
            Ok(fd) => fd,
            // Unloaded between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed is a valid bpf_prog_info; `len` is its size.
        let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
        // SAFETY: `info` has room for `len` bytes.
        check(unsafe { bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) })?;
        // SAFETY: the kernel NUL-terminates the name within BPF_OBJ_NAME_LEN.
        let name = unsafe { CStr::from_ptr(info.name.as_ptr()) };
        if info.type_ == bpf::BPF_PROG_TYPE_XDP && name == PROG_NAME {
            ids.push(id);
        }
    }
}

impl AsRawFd for Redirect {
    fn as_raw_fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instructions are what the module documentation says (the encoding of the
    /// register fields is bindgen's bitfield).
    #[test]
    fn the_program_is_five_instructions_and_an_immediate() {
        let p = program(7);
        let codes: Vec<u8> = p.iter().map(|i| i.code).collect();
        assert_eq!(codes, [0x61, 0x18, 0, 0xb7, 0x85, 0x95]);
        assert_eq!((p[0].dst_reg(), p[0].src_reg(), p[0].off), (2, 1, 16));
        assert_eq!((p[1].dst_reg(), p[1].src_reg(), p[1].imm), (1, 1, 7));
        assert_eq!((p[3].dst_reg(), p[3].imm), (3, XDP_DROP));
        assert_eq!(p[4].imm, 51);
    }

    /// The kernel's verifier accepts it (needs root, as CI is).
    #[test]
    fn the_kernel_loads_it_with_and_without_frags() {
        for frags in [true, false] {
            let r = Redirect::load(4, frags).expect("the program loads");
            // This kernel (6.x) has multi-buffer XDP.
            assert_eq!(r.frags, frags);
            let ids = loaded().expect("programs listed");
            assert!(!ids.is_empty(), "weft_xsk is loaded");
        }
    }
}
