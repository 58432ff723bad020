//! Every packet parser over arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    packet::exercise::all_parsers(data);
});
