#![no_main]
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_encap_fuzz::ipv6_parse(data));
