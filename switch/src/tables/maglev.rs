//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4): a lookup table of a prime size `M`,
//! filled by letting every backend claim slots in the order of its own permutation
//! of `0..M`, in turns, until every slot is claimed.
//!
//! Each backend's permutation comes from two hashes of its name (here its address
//! and port): an `offset` and a `skip`, the permutation being `offset + j * skip
//! (mod M)`. Slots two backends contend for go to the one whose turn comes first,
//! so callers build over their backends sorted, and the table depends on the set
//! only. When one of `N` backends goes, its `M / N` slots change owner and the
//! others barely move: the connections a change moves are few, close to the
//! minimum (for one `M`: a change of size rehashes all).
//! The table is built once per change of the Service table, off the datapath;
//! a lookup is one index.

use std::net::Ipv4Addr;

/// The table sizes used, primes about twice the one before: `M` is chosen at least
/// 100 times the number of backends where it can be (Maglev's bound on imbalance
/// shrinks as `M / N` grows), and 65,537 for more than 655 backends. Steps of two
/// keep memory near 200 bytes an endpoint (10,000 Services of three endpoints take
/// 10 MB), where a few large steps would take eight times that.
pub const SIZES: [usize; 9] = [251, 509, 1_021, 2_039, 4_099, 8_191, 16_381, 32_749, 65_537];

/// The size of the table for `n` backends: the smallest of [`SIZES`] at least
/// `100 * n`, else the largest.
pub fn size_for(n: usize) -> usize {
    SIZES
        .iter()
        .copied()
        .find(|&m| m >= 100 * n)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// MurmurHash3's 64-bit finalizer.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A backend's name as the permutation hashes it.
fn name(ip: Ipv4Addr, port: u16) -> u64 {
    u64::from(u32::from(ip)) << 16 | u64::from(port)
}

/// A backend's `(offset, skip)` in a table of size `m`: two independent hashes of its
/// name, fixed (not seeded), so that the table is the same in every rebuild.
fn permutation(ip: Ipv4Addr, port: u16, m: usize) -> (usize, usize) {
    let n = name(ip, port);
    let offset = fmix64(n ^ 0x9e37_79b9_7f4a_7c15) as usize % m;
    let skip = fmix64(n ^ 0xc2b2_ae3d_27d4_eb4f) as usize % (m - 1) + 1;
    (offset, skip)
}

/// A built lookup table over some backends: each slot holds the index of a backend
/// in the list it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    slots: Box<[u16]>,
}

/// Why a table cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// More backends than a slot can name, or than the largest table fits.
    #[error("{0} backends: at most 65,535 per Service port")]
    TooMany(usize),
}

impl Maglev {
    /// The table over `backends` (address and port, each once), of the size
    /// [`size_for`] gives; `None` for no backend.
    pub fn new(backends: &[(Ipv4Addr, u16)]) -> Result<Option<Maglev>, MaglevError> {
        Maglev::with_size(backends, size_for(backends.len()))
    }

    /// The table over `backends` of prime size `m` (above the number of backends).
    pub fn with_size(
        backends: &[(Ipv4Addr, u16)],
        m: usize,
    ) -> Result<Option<Maglev>, MaglevError> {
        let n = backends.len();
        if n == 0 {
            return Ok(None);
        }
        if n >= usize::from(u16::MAX) || n >= m {
            return Err(MaglevError::TooMany(n));
        }
        let perms: Vec<(usize, usize)> = backends
            .iter()
            .map(|&(ip, port)| permutation(ip, port, m))
            .collect();
        // `next[i]`: how far backend i has gone along its permutation.
        let mut next = vec![0usize; n];
        let mut slots = vec![u16::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                // The backend's next preferred slot not yet claimed. A permutation
                // of a prime `m` visits every slot, so this ends.
                let mut c = (offset + next[i] * skip) % m;
                while slots[c] != u16::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                slots[c] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Ok(Some(Maglev {
            slots: slots.into_boxed_slice(),
        }))
    }

    /// The backend (an index into the list the table was built from) for `hash`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> usize {
        usize::from(self.slots[(hash % self.slots.len() as u64) as usize])
    }

    /// The table's size `M`.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// How many slots each backend holds, by index.
    pub fn shares(&self, n: usize) -> Vec<usize> {
        let mut shares = vec![0; n];
        for &s in self.slots.iter() {
            shares[usize::from(s)] += 1;
        }
        shares
    }

    /// The backend of every slot, by index, for comparing two tables.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn backends(n: usize) -> Vec<(Ipv4Addr, u16)> {
        (0..n)
            .map(|i| {
                (
                    Ipv4Addr::new(10, 244, (i / 200) as u8 + 1, (i % 200) as u8 + 2),
                    8080,
                )
            })
            .collect()
    }

    /// Slots whose backend (by address) differs between the table over `before` and
    /// the one over `after`.
    fn moved(before: &[(Ipv4Addr, u16)], after: &[(Ipv4Addr, u16)], m: usize) -> usize {
        let a = Maglev::with_size(before, m).unwrap().unwrap();
        let b = Maglev::with_size(after, m).unwrap().unwrap();
        (a.slots().iter().zip(b.slots()))
            .filter(|(x, y)| before[usize::from(**x)] != after[usize::from(**y)])
            .count()
    }

    #[test]
    fn sizes_are_prime_and_well_above_the_backends() {
        for m in SIZES {
            assert!((2..m).take_while(|d| d * d <= m).all(|d| m % d != 0), "{m}");
        }
        assert!(SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(size_for(1), 251);
        assert_eq!(size_for(2), 251);
        assert_eq!(size_for(3), 509);
        assert_eq!(size_for(40), 4_099);
        assert_eq!(size_for(41), 8_191);
        assert_eq!(size_for(1_000), 65_537);
    }

    #[test]
    fn no_backend_no_table_and_too_many_is_an_error() {
        assert_eq!(Maglev::new(&[]), Ok(None));
        assert_eq!(
            Maglev::with_size(&backends(7), 7),
            Err(MaglevError::TooMany(7))
        );
        let one = Maglev::new(&backends(1)).unwrap().unwrap();
        assert!((0..1000).all(|h| one.lookup(h) == 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every backend holds close to `M / N` slots: Maglev fills in turns, so no
        /// backend holds more than one slot above any other's turn count, and the
        /// paper measures the spread within a few percent once `M >= 100 N`.
        #[test]
        fn slots_are_balanced(n in 1usize..60) {
            let t = Maglev::new(&backends(n)).unwrap().unwrap();
            let shares = t.shares(n);
            let even = t.size() as f64 / n as f64;
            let (lo, hi) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
            prop_assert!(hi as f64 <= even.ceil() + 1.0, "{shares:?}");
            prop_assert!(lo as f64 >= even * 0.9, "{shares:?}, even {even}");
        }

        /// Removing one of `N` backends moves its own slots (the minimum, about
        /// `M / N`) and few others: at most the minimum again, where a modulo
        /// hash would move nearly all.
        #[test]
        fn removing_a_backend_moves_close_to_the_minimum(n in 2usize..40, gone in 0usize..40) {
            let before = backends(n);
            let mut after = before.clone();
            let gone = after.remove(gone % n);
            let m = size_for(n);
            let a = Maglev::with_size(&before, m).unwrap().unwrap();
            let minimum = a.slots().iter().filter(|&&s| before[usize::from(s)] == gone).count();
            let moved = moved(&before, &after, m);
            prop_assert!(moved >= minimum);
            prop_assert!(moved <= 2 * minimum + m / 100, "moved {moved}, minimum {minimum}");
        }
    }
}
