//! Opening a pod's network namespace by the path its runtime gave: the one place
//! where weftd turns a path from a request, or from an attachment record, into a
//! namespace it enters or hands to the kernel.
//!
//! The path is the caller's, so whatever it names is hostile until checked:
//! - It is opened with `O_PATH | O_NOFOLLOW`, so no driver's `open` runs: a FIFO
//!   would block the opener until a writer came, and a device may act on being
//!   opened. A symbolic link (a `/proc/PID/ns/net` path is one) is refused, not
//!   followed.
//! - The file must be on nsfs (`fstatfs`) and be a network namespace
//!   (`NS_GET_NSTYPE`). Only then is it reopened for reading, through
//!   `/proc/self/fd`, so that the file checked is the file used.
//! - weftd's own namespace and the host's (pid 1's) are refused: no pod interface is
//!   made there, and no DEL deletes one there.
//! - Its identity, [`NsId`], is what an attachment records. DEL and restore compare
//!   it with what the path names now, so a path that was re-bound to another
//!   namespace is told apart from the pod's. Inode numbers of dead namespaces are
//!   reused, so the identity also holds the namespace's cookie, which is never
//!   reused.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::control::netlink::{self, NetlinkError};

/// `SO_NETNS_COOKIE` (Linux 5.14): a socket's namespace's cookie, a 64-bit number
/// that no other namespace gets while the host runs.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Which namespace a path named when it was checked: the nsfs file's device and
/// inode, and the namespace's cookie where it was asked for and the kernel has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    /// The nsfs device.
    pub dev: u64,
    /// The namespace's inode number (`net:[INODE]`), unique among live namespaces.
    pub ino: u64,
    /// The namespace's cookie, unique while the host runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

impl NsId {
    /// Whether `self` and `other` are one namespace: the same inode, and the same
    /// cookie where both have one.
    pub fn same(&self, other: &NsId) -> bool {
        let cookies = match (self.cookie, other.cookie) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.dev == other.dev && self.ino == other.ino && cookies
    }
}

impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)?;
        match self.cookie {
            Some(c) => write!(f, " cookie {c}"),
            None => Ok(()),
        }
    }
}

/// Why a path cannot be used as a pod's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened at all (it does not exist, or is not reachable).
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The path is a symbolic link, which is not followed.
    #[error(
        "network namespace {path} is a symbolic link: give the namespace's own file \
         (a bind mount such as /run/netns/NAME), not a link to it"
    )]
    Symlink {
        /// The path.
        path: String,
    },
    /// The path names a file that is no network namespace.
    #[error("{path} is not a network namespace: it is {what}")]
    NotNetns {
        /// The path.
        path: String,
        /// What it is instead.
        what: String,
    },
    /// The path names weftd's own namespace or the host's.
    #[error("{path} is {whose} network namespace, which no pod may be attached in")]
    Forbidden {
        /// The path.
        path: String,
        /// "weftd's own" or "the host's".
        whose: &'static str,
    },
    /// The path names another namespace than the one recorded for it.
    #[error("{path} now names the network namespace {found}, not the recorded {recorded}")]
    Replaced {
        /// The path.
        path: String,
        /// What the attachment recorded.
        recorded: NsId,
        /// What the path names now.
        found: NsId,
    },
    /// The file or a namespace to compare it with could not be inspected.
    #[error("{what} of {path}: {source}")]
    Inspect {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl NetnsError {
    /// Whether the namespace once at the path is surely gone from it: nothing is
    /// there any more (`ENOENT`), or another namespace is. No other failure says
    /// so: `EACCES` or `EMFILE`, say, may pass while the pod runs on.
    pub fn is_gone(&self) -> bool {
        self.is_missing() || matches!(self, NetnsError::Replaced { .. })
    }

    /// Whether nothing is at the path any more (`ENOENT`).
    pub fn is_missing(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == ErrorKind::NotFound)
    }
}

/// A network namespace opened by path and checked: readable, so that it can be
/// entered (setns) or named to the kernel (`IFLA_NET_NS_FD`).
#[derive(Debug)]
pub struct NetnsFile {
    file: File,
    path: String,
    id: NsId,
}

impl NetnsFile {
    /// The open namespace.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened by, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its identity: the cookie in it only if it was compared with one
    /// ([`open`]) or asked for ([`identify`]).
    pub fn id(&self) -> NsId {
        self.id
    }

    /// Makes the calling thread enter the namespace. The thread must be one of
    /// its own, that ends after its work there ([`netlink::in_netns`]).
    pub(crate) fn enter(&self) -> Result<(), NetlinkError> {
        // SAFETY: `self.file` is an open nsfs file of a network namespace; setns
        // only changes the calling thread's network namespace.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Setns {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Opens the network namespace at `path` ([the module](self) says how it is
/// checked) and, if `recorded` is given, makes sure it is that namespace still.
pub fn open(path: &Path, recorded: Option<&NsId>) -> Result<NetnsFile, NetlinkError> {
    let mut ns = open_checked(path)?;
    if let Some(recorded) = recorded {
        // The cookie tells apart namespaces that had the same inode in turn.
        if recorded.cookie.is_some() && recorded.same(&ns.id) {
            ns.id.cookie = cookie_of(&ns)?;
        }
        if !recorded.same(&ns.id) {
            return Err(NetnsError::Replaced {
                path: ns.path,
                recorded: *recorded,
                found: ns.id,
            }
            .into());
        }
    }
    Ok(ns)
}

/// The identity of the network namespace at `path`, cookie included, for an
/// attachment to record.
pub fn identify(path: &Path) -> Result<NsId, NetlinkError> {
    let mut ns = open_checked(path)?;
    ns.id.cookie = cookie_of(&ns)?;
    Ok(ns.id)
}

/// Opens `path` as a network namespace that is neither weftd's nor the host's.
fn open_checked(path: &Path) -> Result<NetnsFile, NetnsError> {
    let shown = path.display().to_string();
    let inspect = |what| {
        let path = shown.clone();
        move |source| NetnsError::Inspect { what, path, source }
    };
    // O_PATH: no open of the file itself, whatever it is; with O_NOFOLLOW, a
    // symbolic link is opened as itself. std adds O_CLOEXEC.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| NetnsError::Open {
            path: shown.clone(),
            source,
        })?;
    let meta = handle.metadata().map_err(inspect("reading the file"))?;
    if meta.file_type().is_symlink() {
        return Err(NetnsError::Symlink { path: shown });
    }
    let fs = nix::sys::statfs::fstatfs(&handle)
        .map_err(|e| inspect("reading the file system")(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetnsError::NotNetns {
            path: shown,
            what: describe(&meta).into(),
        });
    }
    // The very file checked, now open for reading; an nsfs file's open does nothing.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(inspect("reopening the namespace"))?;
    // SAFETY: NS_GET_NSTYPE reads nothing from user memory and returns the type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns {
            path: shown,
            what: "a namespace of another kind".into(),
        });
    }
    let meta = file.metadata().map_err(inspect("reading the namespace"))?;
    let id = NsId {
        dev: meta.dev(),
        ino: meta.ino(),
        cookie: None,
    };
    refuse(&shown, &id, forbidden())?;
    Ok(NetnsFile {
        file,
        path: shown,
        id,
    })
}

/// What a file that is no namespace is, for the error that refuses it.
fn describe(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a regular file"
    }
}

/// A namespace no pod may be attached in: its (device, inode), and whose it is.
type Forbidden = ((u64, u64), &'static str);

/// weftd's own network namespace and the host's (pid 1's), read once: neither
/// changes while weftd runs. One that cannot be read is left out, with a warning:
/// some sandboxes deny even root pid 1's namespace, and weftd, which runs in the
/// host's namespace, still refuses its own.
fn forbidden() -> &'static [Forbidden] {
    static FORBIDDEN: std::sync::OnceLock<Vec<Forbidden>> = std::sync::OnceLock::new();
    FORBIDDEN.get_or_init(|| {
        let references = [
            ("/proc/self/ns/net", "weftd's own"),
            ("/proc/1/ns/net", "the host's"),
        ];
        (references.into_iter())
            .filter_map(|(path, whose)| match std::fs::metadata(path) {
                Ok(m) => Some(((m.dev(), m.ino()), whose)),
                Err(e) => {
                    log::warn!("reading {path}: {e}; pods' namespaces are not compared with it");
                    None
                }
            })
            .collect()
    })
}

/// Refuses the namespace `id`, at `path`, if it is one of `forbidden`.
fn refuse(path: &str, id: &NsId, forbidden: &[Forbidden]) -> Result<(), NetnsError> {
    match forbidden.iter().find(|(at, _)| *at == (id.dev, id.ino)) {
        Some((_, whose)) => Err(NetnsError::Forbidden {
            path: path.to_owned(),
            whose,
        }),
        None => Ok(()),
    }
}

/// The cookie of the namespace `ns`, read from a socket made in it; `None` on a
/// kernel older than 5.14, which has no cookies.
fn cookie_of(ns: &NetnsFile) -> Result<Option<u64>, NetlinkError> {
    netlink::in_netns(ns, || {
        let socket = std::os::unix::net::UnixDatagram::unbound().map_err(NetlinkError::Socket)?;
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `len` are live and `len` is `cookie`'s size.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        match r {
            0 => Ok(Some(cookie)),
            _ => match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(None),
                e => Err(NetlinkError::Socket(e)),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, cookie: Option<u64>) -> NsId {
        NsId {
            dev: 4,
            ino,
            cookie,
        }
    }

    /// Two identities are one namespace when their inodes agree and so do their
    /// cookies, where both have one: an inode number reused by a new namespace
    /// comes with another cookie.
    #[test]
    fn an_identity_is_the_inode_and_the_cookie() {
        assert!(id(7, Some(1)).same(&id(7, Some(1))));
        assert!(!id(7, Some(1)).same(&id(7, Some(2))), "a reused inode");
        assert!(!id(7, Some(1)).same(&id(8, Some(1))));
        assert!(id(7, None).same(&id(7, Some(2))), "no cookie to compare");
        assert!(!NsId {
            dev: 5,
            ..id(7, None)
        }
        .same(&id(7, None)));
        let old: NsId = serde_json::from_str(r#"{"dev": 4, "ino": 7}"#).expect("no cookie");
        assert_eq!(old, id(7, None));
    }

    /// The namespaces no pod may be in are refused by name; any other passes.
    #[test]
    fn weftds_and_the_hosts_namespaces_are_refused() {
        let forbidden = [((4, 1), "weftd's own"), ((4, 2), "the host's")];
        let e = refuse("/x", &id(2, Some(9)), &forbidden).expect_err("the host's");
        assert_eq!(
            e.to_string(),
            "/x is the host's network namespace, which no pod may be attached in"
        );
        assert!(refuse("/x", &id(1, None), &forbidden).is_err());
        assert!(refuse("/x", &id(3, None), &forbidden).is_ok());
    }

    /// ENOENT, and another namespace at the path, say the recorded one is gone;
    /// EACCES, EMFILE and a path that is no namespace do not.
    #[test]
    fn only_a_missing_or_replaced_namespace_is_gone() {
        let open = |errno| NetnsError::Open {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert!(open(libc::ENOENT).is_gone());
        for errno in [libc::EACCES, libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            assert!(!open(errno).is_gone(), "errno {errno}");
        }
        let replaced = NetnsError::Replaced {
            path: "/x".into(),
            recorded: id(7, Some(1)),
            found: id(7, Some(2)),
        };
        assert!(replaced.is_gone() && !replaced.is_missing());
        let file = NetnsError::NotNetns {
            path: "/x".into(),
            what: "a regular file".into(),
        };
        assert!(!file.is_gone());
    }

    /// What the path names is refused before anything opens it: a FIFO that no
    /// writer opens (opened for reading, it would block), a regular file, a
    /// directory, a device, a symbolic link to a namespace; a missing path is
    /// missing.
    #[test]
    fn a_path_that_is_no_pods_namespace_is_refused() {
        let dir = std::env::temp_dir().join(format!("weft-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("a FIFO");
        let file = dir.join("file");
        std::fs::write(&file, b"").expect("a file");
        let link = dir.join("link");
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).expect("a link");
        let cases = [
            (&fifo, "it is a FIFO"),
            (&file, "it is a regular file"),
            (&dir, "it is a directory"),
            (&link, "is a symbolic link"),
        ];
        for (path, says) in cases {
            let e = open_checked(path).expect_err("refused");
            assert!(e.to_string().contains(says), "{}: {e}", path.display());
        }
        let e = open_checked(Path::new("/dev/null")).expect_err("refused");
        assert!(e.to_string().contains("it is a device"), "{e}");
        let missing = open_checked(&dir.join("none")).expect_err("refused");
        assert!(missing.is_missing(), "{missing}");
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
