//! The one error type of the plugin, and the CNI error codes it maps to.
//!
//! | code | meaning |
//! | ---: | --- |
//! | 1 | incompatible CNI version: an unknown `cniVersion`, or a verb that version lacks |
//! | 4 | a missing or invalid environment variable (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`) |
//! | 5 | stdin could not be read (or was not closed in time) |
//! | 6 | stdin is not a JSON object |
//! | 7 | invalid network config: a missing or malformed key |
//! | 11 | try again later: weftd is not reachable, does not answer in time, is not ready, or is busy |
//! | 50 | STATUS: weftd cannot serve ADD (down, unreachable, not ready) |
//! | 100 | CHECK: the attachment (or its netns) is missing, or differs from what ADD set up or from `prevResult` |
//! | 101 | weftd refused the request: its arguments (a netns that does not exist or is no pod's, an interface name already taken, a requested address outside the subnet or held by another pod), or a caller whose uid is not 0 |
//! | 102 | the node's address pool has no free address |
//! | 103 | weftd failed internally, or the shim and weftd do not understand each other |
//! | 104 | weft-cni itself failed (a bug) |

use std::time::Duration;

use crate::proto::{ClientError, ErrorKind, ErrorReply};

/// CNI error code: incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// CNI error code: invalid necessary environment variables.
pub const CODE_BAD_ENV: u32 = 4;
/// CNI error code: I/O failure.
pub const CODE_IO: u32 = 5;
/// CNI error code: failed to decode content.
pub const CODE_DECODE: u32 = 6;
/// CNI error code: invalid network config.
pub const CODE_BAD_CONFIG: u32 = 7;
/// CNI error code: try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// CNI error code (STATUS): the plugin is not available.
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// weft error code: CHECK found the attachment missing or altered.
pub const CODE_CHECK_FAILED: u32 = 100;
/// weft error code: weftd refused the request's arguments.
pub const CODE_REFUSED: u32 = 101;
/// weft error code: no free address in the node's pool.
pub const CODE_EXHAUSTED: u32 = 102;
/// weft error code: weftd failed internally or the protocol broke.
pub const CODE_DAEMON: u32 = 103;
/// weft error code: the plugin itself failed.
pub const CODE_BUG: u32 = 104;

/// Everything that can go wrong in one plugin invocation, each with its CNI code.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config's `cniVersion` is not one weft speaks, or lacks the verb.
    #[error("{0}")]
    IncompatibleVersion(String),
    /// A CNI environment variable is missing or invalid.
    #[error("{var}: {problem}")]
    BadEnv {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading stdin failed.
    #[error("reading the network config from stdin: {0}")]
    Io(String),
    /// Stdin is not a JSON object.
    #[error("the network config on stdin is not a JSON object: {0}")]
    Decode(String),
    /// A network config key is missing or malformed.
    #[error("network config key `{key}`: {problem}")]
    BadConfig {
        /// The key, dotted for nested keys (`runtimeConfig.ips`).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// weftd is not reachable, not answering in time, or not ready.
    #[error("{0}")]
    TryAgain(String),
    /// STATUS: weftd cannot serve ADD.
    #[error("{0}")]
    NotAvailable(String),
    /// CHECK found the attachment missing or different.
    #[error("{0}")]
    CheckFailed(String),
    /// weftd refused the request's arguments.
    #[error("{0}")]
    Refused(String),
    /// The address pool is exhausted.
    #[error("{0}")]
    Exhausted(String),
    /// weftd failed, or the exchange with it broke.
    #[error("{0}")]
    Daemon(String),
    /// The plugin itself failed (it panicked).
    #[error("weft-cni failed: {0}")]
    Bug(String),
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => CODE_INCOMPATIBLE_VERSION,
            CniError::BadEnv { .. } => CODE_BAD_ENV,
            CniError::Io(_) => CODE_IO,
            CniError::Decode(_) => CODE_DECODE,
            CniError::BadConfig { .. } => CODE_BAD_CONFIG,
            CniError::TryAgain(_) => CODE_TRY_AGAIN,
            CniError::NotAvailable(_) => CODE_NOT_AVAILABLE,
            CniError::CheckFailed(_) => CODE_CHECK_FAILED,
            CniError::Refused(_) => CODE_REFUSED,
            CniError::Exhausted(_) => CODE_EXHAUSTED,
            CniError::Daemon(_) => CODE_DAEMON,
            CniError::Bug(_) => CODE_BUG,
        }
    }

    /// A longer hint for the error's `details` field.
    pub fn details(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion(_) => {
                "weft-cni supports cniVersion 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0"
            }
            CniError::BadEnv { .. } => "the runtime passed bad CNI_* environment variables",
            CniError::Io(_) => "the runtime must write the network config to stdin and close it",
            CniError::Decode(_) => "the runtime must write the network config as JSON to stdin",
            CniError::BadConfig { .. } => "fix the network config (the conflist)",
            CniError::TryAgain(_) => "weftd is not running or not answering; try again later",
            CniError::NotAvailable(_) => "weftd cannot attach pods now",
            CniError::CheckFailed(_) => "the pod's network is not as ADD set it up",
            CniError::Refused(_) => "weftd refused the request",
            CniError::Exhausted(_) => "the node's pod subnet has no free address",
            CniError::Daemon(_) => "weftd failed; see its log",
            CniError::Bug(_) => "a bug in weft-cni; please report it",
        }
    }

    /// A network config error on `key`.
    pub fn config(key: impl Into<String>, problem: impl Into<String>) -> CniError {
        CniError::BadConfig {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// An environment variable error on `var`.
    pub fn env(var: &'static str, problem: impl Into<String>) -> CniError {
        CniError::BadEnv {
            var,
            problem: problem.into(),
        }
    }

    /// Maps a failed exchange with weftd, which was given `timeout` to answer.
    pub fn from_client(e: &ClientError, timeout: Duration) -> CniError {
        match e {
            ClientError::Io { path, source }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                CniError::TryAgain(format!("weftd at {path} did not answer within {timeout:?}"))
            }
            // The daemon died or gave up on the connection mid-exchange.
            ClientError::Decode { path, source } if source.is_eof() => CniError::TryAgain(format!(
                "weftd at {path} closed the connection without a complete answer"
            )),
            e if e.is_unreachable() => CniError::TryAgain(e.to_string()),
            e => CniError::Daemon(e.to_string()),
        }
    }

    /// Maps an error weftd answered with.
    pub fn from_reply(e: &ErrorReply) -> CniError {
        let msg = format!("weftd: {}", e.message);
        match e.kind {
            ErrorKind::Unavailable | ErrorKind::Busy => CniError::TryAgain(msg),
            ErrorKind::CheckFailed => CniError::CheckFailed(msg),
            ErrorKind::InvalidArgument | ErrorKind::PermissionDenied => CniError::Refused(msg),
            ErrorKind::Exhausted => CniError::Exhausted(msg),
            ErrorKind::BadRequest | ErrorKind::BadVersion | ErrorKind::Internal => {
                CniError::Daemon(msg)
            }
        }
    }
}
