//! Arbitrary frames through the IPv4 router stage (single packets and bursts).
#![no_main]
use libfuzzer_sys::fuzz_target;
use packet::{Buffer, HeapBuffer, Stage, Verdict};
use router::fib::Fib;
use router::ipv4::Ipv4Stage;
use std::sync::{Mutex, OnceLock};

fn stage() -> &'static Mutex<(Fib, Ipv4Stage)> {
    static S: OnceLock<Mutex<(Fib, Ipv4Stage)>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(router::ipv4::example_stage(576)))
}

fuzz_target!(|data: &[u8]| {
    let mut g = stage().lock().unwrap();
    let s = &mut g.1;
    let mut one = HeapBuffer::from_bytes(data);
    let v1 = s.process(&mut one);
    // The same bytes as a burst, split at arbitrary points, must give the same verdicts.
    let mut burst: Vec<HeapBuffer> = data
        .chunks(64.max(data.len() / 3 + 1))
        .map(HeapBuffer::from_bytes)
        .collect();
    let mut v = [Verdict::Next; 8];
    let n = burst.len().min(8);
    s.process_burst(&mut burst[..n], &mut v);
    if burst.len() == 1 {
        assert_eq!(v1, v[0]);
        assert_eq!(one.data(), burst[0].data());
    }
});
