//! The SAL codec, control messages and the service-router stage over arbitrary bytes: whatever
//! parses re-emits to bytes that parse to the same header; the stage never panics, and what it
//! forwards still carries a valid SAL checksum.
#![no_main]
use libfuzzer_sys::fuzz_target;
use packet::{Buffer, HeapBuffer, Stage, Verdict};
use sal_forward::controller::{Controller, Hierarchy, ResolveMode, Settings};
use sal_forward::ctrlmsg::{Register, Resolve};
use sal_forward::stage::{SalShared, SalStage};
use sal_forward::table::{Action, Mode, Rules, ServiceTable, Target};
use sal_forward::wire::{self, SalRepr};
use sal_forward::{Prefix, ServiceId};
use std::net::Ipv4Addr;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok((r, len)) = SalRepr::parse(data) {
        assert!(len <= data.len());
        let mut out = vec![0u8; r.len()];
        r.emit(&mut out).unwrap();
        let (back, _) = SalRepr::parse(&out).unwrap();
        assert_eq!(back, r);
    }
    let _ = Register::parse(data);
    if let Ok(r) = Resolve::parse(data) {
        assert_eq!(Resolve::parse(&r.emit()).unwrap(), r);
    }
    // Any control message, to a controller in a hierarchy: no panic, and what it sends back
    // parses.
    {
        let mut c = Controller::new(
            Rules::new(Arc::new(ServiceTable::new(16))),
            Settings {
                ttl_ms: 1000,
                delay_cap: 4,
                delay_timeout_ms: 1000,
                hierarchy: Some(Hierarchy {
                    parent: Some(Ipv4Addr::new(10, 9, 0, 1)),
                    mode: ResolveMode::Recursive,
                    cache_ms: 1000,
                    refresh_ms: 500,
                    timeout_ms: 100,
                }),
            },
        );
        c.control(Ipv4Addr::new(10, 9, 0, 3), data, 0);
        c.poll(5000);
        for (_, m) in c.take_outbox() {
            assert!(Register::parse(&m).is_ok() || Resolve::parse(&m).is_ok());
        }
    }
    // As the IP payload of a frame to the router, through the stage (default rule: FORWARD).
    let table = Arc::new(ServiceTable::new(16));
    let mut rules = Rules::new(table.clone());
    let fwd = Target { action: Action::Forward, addr: Ipv4Addr::new(10, 0, 2, 2), weight: 1 };
    rules.add(Prefix::DEFAULT, 0, Mode::Anycast, &[fwd]).unwrap();
    rules.add(Prefix::new(ServiceId::from_u32(1), 32), 0, Mode::Anycast, &[Target { action: Action::Drop, ..fwd }]).unwrap();
    let router = Ipv4Addr::new(10, 0, 1, 1);
    let mut stage = SalStage::new(Arc::new(SalShared::new(table, vec![router], 1)), 0);
    let sal = wire::datagram(Ipv4Addr::new(10, 0, 1, 2), router, 64, &SalRepr::default(), &[]);
    let mut frame = vec![0u8; 14];
    frame[12] = 0x08;
    frame.extend_from_slice(&sal[..20]);
    frame.extend_from_slice(data);
    let tl = (20 + data.len()).min(65535) as u16;
    frame[16..18].copy_from_slice(&tl.to_be_bytes());
    let mut ip = packet::ipv4::Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.fill_checksum();
    let mut b = HeapBuffer::with_capacity(frame.len() + 64, 64);
    b.append(frame.len()).unwrap();
    b.data_mut().copy_from_slice(&frame);
    // A forwarded request grew by its SOURCE address(es): its header must verify.
    if stage.process(&mut b) == Verdict::Next && b.len() > frame.len() {
        let f = b.data();
        let s = wire::parse(&f[34..]).expect("a forwarded header parses");
        assert!(wire::verify_checksum(&f[34..34 + s.len]), "a forwarded header verifies");
    }
});
