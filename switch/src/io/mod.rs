//! Worker threads and the I/O they run the core over.

pub mod clock;
pub mod port;
pub mod spin;
pub mod tap;
pub mod udp;
pub mod worker;
pub mod xsk;
