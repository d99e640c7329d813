//! The monotonic clock the I/O layer reads for the core, and the control plane reads
//! to judge what the workers recorded: one epoch for the whole process.

use std::sync::OnceLock;
use std::time::Instant;

use crate::core::Time;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The time now, on the process's monotonic clock. The first call sets the epoch.
pub fn now() -> Time {
    let epoch = *EPOCH.get_or_init(Instant::now);
    Time::from_nanos(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now();
        assert!(b > a);
        assert!(b.saturating_since(a) >= std::time::Duration::from_millis(2));
    }
}
