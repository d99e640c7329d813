//! The internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Two kinds of 16-bit value appear here, and the names keep them apart:
//!
//! - a *sum* is the one's complement sum of some data, as returned by [`sum`]
//!   and [`combine`]. Sums of pieces combine into the sum of the whole.
//! - a *checksum* is the one's complement of a sum: the value a header stores
//!   in its checksum field, as returned by [`checksum`] and taken and returned
//!   by [`update_u16`]. Data whose checksum field is right has
//!   `checksum(data) == 0`.
//!
//! The data are read as big-endian 16-bit words; an odd trailing byte is the
//! high byte of a word whose low byte is zero (RFC 1071, section 4.1).
//!
//! Nothing in this module panics.

/// Adds `data` to a 64-bit one's complement accumulator and returns the new one.
///
/// Start from 0 and finish with [`fold`]. Chained calls give the sum of the
/// concatenated data only when every slice but the last has an even length:
/// an odd slice pads its last byte to a whole word.
pub fn accumulate(acc: u64, data: &[u8]) -> u64 {
    let (bulk, rest) = data.split_at(data.len() / BLOCK * BLOCK);
    add(accumulate_words(acc, rest), u64::from(bulk_sum(bulk)))
}

/// Bytes [`bulk_sum`] takes per step.
const BLOCK: usize = 64;

/// The big-endian one's complement sum of `bulk`, a whole number of [`BLOCK`]s.
///
/// Every checksum a tunnel packet needs passes over its payload, so this is the
/// datapath's hottest loop (issue 30's profile: 6 % of a bulk TCP flow's CPU over
/// VXLAN with the serial loop of [`accumulate_words`]). Two facts make it fast
/// without a carry chain the CPU must wait on:
///
/// - one's complement sums do not depend on byte order (RFC 1071, section 2(B)):
///   the sum of native-order words, folded and read back in big-endian order, is
///   the big-endian sum, so no word needs a byte swap;
/// - 32-bit words added into 64-bit lanes cannot carry out of a lane before it has
///   taken 2^32 of them (256 GiB of data over the 16 lanes), so each lane is a plain
///   add, the lanes independent, and the compiler makes the loop SIMD adds on any
///   x86-64.
fn bulk_sum(bulk: &[u8]) -> u16 {
    let mut lanes = [0u64; BLOCK / 4];
    for block in bulk.chunks_exact(BLOCK) {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            let mut w = [0; 4];
            w.copy_from_slice(word);
            *lane += u64::from(u32::from_ne_bytes(w));
        }
    }
    let native = fold(lanes.iter().fold(0, |acc, &lane| add(acc, lane)));
    // Read back in big-endian order: a swap on little-endian machines, nothing on
    // big-endian ones.
    u16::from_be(native)
}

/// [`accumulate`] eight bytes at a time, serially: for short data and the tail.
fn accumulate_words(acc: u64, data: &[u8]) -> u64 {
    // One's complement addition in 64 bits (end-around carry) folds to the
    // same 16-bit sum, because 2^64 - 1 is a multiple of 2^16 - 1. Eight bytes
    // per addition, and no accumulator overflow whatever the length.
    let mut acc = acc;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        acc = add(acc, u64::from_be_bytes(word));
    }
    // Zero padding on the right is exactly the RFC's rule for an odd byte.
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        acc = add(acc, u64::from_be_bytes(word));
    }
    acc
}

/// Folds a 64-bit one's complement accumulator down to a 16-bit sum.
pub const fn fold(acc: u64) -> u16 {
    let mut acc = acc;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Returns the one's complement sum of `data`, for combining with other sums.
pub fn sum(data: &[u8]) -> u16 {
    fold(accumulate(0, data))
}

/// Returns the internet checksum of `data`: the value for a checksum field.
///
/// Compute it with the checksum field set to zero; over data that already
/// holds a correct checksum it returns 0.
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Adds two one's complement sums, e.g. a pseudo-header's and a payload's.
///
/// `sum(x ++ y) == combine(sum(x), sum(y))` when `x` has an even length.
pub const fn combine(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// Returns the checksum after one 16-bit word of the data changes from `old` to `new`.
///
/// This is RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which unlike the
/// RFC 1141 form never produces a checksum of 0xffff for a change to data
/// that is not all zeros. The word must be 16-bit aligned within the checksummed
/// data, as the TTL and protocol word of an IPv4 header is.
pub const fn update_u16(old_csum: u16, old: u16, new: u16) -> u16 {
    !fold(!old_csum as u64 + !old as u64 + new as u64)
}

/// One's complement addition of two 64-bit words.
const fn add(a: u64, b: u64) -> u64 {
    let (sum, carry) = a.overflowing_add(b);
    sum + carry as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example of RFC 1071, section 3.
    static RFC1071_BYTES: [u8; 8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];

    /// An IPv4 header (UDP, 192.168.0.1 to 192.168.0.199) with its checksum 0xb861.
    static IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    /// Textbook RFC 1071 loop: 16-bit words into a 32-bit accumulator.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        assert_eq!(sum(&RFC1071_BYTES), 0xddf2);
        assert_eq!(checksum(&RFC1071_BYTES), 0x220d);
    }

    #[test]
    fn ipv4_header_verifies() {
        assert_eq!(checksum(&IPV4_HEADER), 0);
    }

    #[test]
    fn ipv4_header_computes() {
        let mut header = IPV4_HEADER;
        header[10..12].fill(0);
        assert_eq!(checksum(&header), 0xb861);
    }

    #[test]
    fn empty_and_zero_data() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(checksum(&[0; 33]), 0xffff);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x01]), 0x0100);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        // Nine bytes: one whole chunk plus a one-byte tail.
        assert_eq!(sum(&[0, 0, 0, 0, 0, 0, 0, 1, 0xab]), 0xab01);
    }

    #[test]
    fn bulk_sum_of_all_ones_and_large_data() {
        // All ones in every lane: the worst case for carries between lanes.
        assert_eq!(sum(&[0xff; 65_536]), 0xffff);
        assert_eq!(sum(&[0xff; 65_535]), reference_sum(&[0xff; 65_535]));
        let ramp: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for len in [64, 65, 127, 128, 1448, 9000, 65_535, 65_536] {
            assert_eq!(sum(&ramp[..len]), reference_sum(&ramp[..len]), "len {len}");
        }
    }

    #[test]
    fn carries_wrap_around() {
        assert_eq!(sum(&[0xff; 64]), 0xffff);
        assert_eq!(sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(combine(0xffff, 0x0001), 0x0001);
        assert_eq!(fold(u64::MAX), 0xffff);
    }

    #[test]
    fn rfc1624_example() {
        // Section 4: the checksum is 0xdd2f and a field goes from 0x5555 to 0x3285.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn ttl_decrement() {
        let mut header = IPV4_HEADER;
        let old_csum = u16::from_be_bytes([header[10], header[11]]);
        let old = u16::from_be_bytes([header[8], header[9]]);
        header[8] -= 1;
        let new = u16::from_be_bytes([header[8], header[9]]);
        let csum = update_u16(old_csum, old, new);
        assert_eq!(csum, 0xb961);
        header[10..12].copy_from_slice(&csum.to_be_bytes());
        assert_eq!(checksum(&header), 0);
    }

    proptest! {
        #[test]
        fn sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(sum(&data), reference_sum(&data));
        }

        /// The SIMD-friendly bulk loop and the serial one agree, from any
        /// accumulator, on lengths that cross several blocks and end anywhere.
        #[test]
        fn bulk_and_serial_sums_agree(
            data in proptest::collection::vec(any::<u8>(), 0..4200),
            acc in any::<u64>(),
        ) {
            prop_assert_eq!(fold(accumulate(acc, &data)), fold(accumulate_words(acc, &data)));
            prop_assert_eq!(sum(&data), reference_sum(&data));
        }

        #[test]
        fn sums_combine(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            split in any::<prop::sample::Index>(),
        ) {
            let at = split.index(data.len() + 1) & !1;
            let (head, tail) = data.split_at(at);
            prop_assert_eq!(combine(sum(head), sum(tail)), sum(&data));
            prop_assert_eq!(fold(accumulate(accumulate(0, head), tail)), sum(&data));
        }

        #[test]
        fn incremental_update_equals_recomputation(
            mut header in proptest::array::uniform20(any::<u8>()),
            word in (1..10usize).prop_filter("not the checksum word", |w| *w != 5),
            new in any::<u16>(),
        ) {
            // Version and IHL stay 0x45, so the header is never all zeros and
            // the two ways must agree on the representation of the result.
            header[0] = 0x45;
            header[10..12].fill(0);
            let old_csum = checksum(&header);
            header[10..12].copy_from_slice(&old_csum.to_be_bytes());

            let at = 2 * word;
            let old = u16::from_be_bytes([header[at], header[at + 1]]);
            header[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update_u16(old_csum, old, new);

            header[10..12].fill(0);
            prop_assert_eq!(updated, checksum(&header));
            header[10..12].copy_from_slice(&updated.to_be_bytes());
            prop_assert_eq!(checksum(&header), 0);
        }
    }
}
