//! 802.1Q VLAN sub-interfaces on the fast path. A port with VLANs has its received frames'
//! tags looked up as they come in: a frame tagged with one of the port's VLANs becomes an
//! untagged frame of that VLAN's interface (interface ids above the ports', see
//! [`crate::config::Interface`]), so everything after it — the IPv4 input, ARP, the FIB, the
//! applications — sees an interface like any other. A frame routed to a VLAN interface gets
//! its tag back on the way out of the port. A frame tagged with any other VLAN is left as it
//! came; the IPv4 input drops it and counts it (`unknown-vlan`). Ports without VLANs pay
//! nothing on receive, and untagged transmits one comparison.

use crate::config::Config;
use packet::Buffer;

/// The 802.1Q tag protocol identifier (the tag's EtherType).
pub const TPID: u16 = 0x8100;
/// Bytes of a tag.
pub const TAG_LEN: usize = 4;

/// Which interface a tagged frame on a port is, and which port and tag an interface's frames
/// leave with.
#[derive(Debug, Clone, Default)]
pub struct VlanMap {
    /// Per port: (VLAN id, interface) of its VLANs.
    rx: Vec<Vec<(u16, u16)>>,
    /// Per VLAN interface, from interface `ports` on: (port, VLAN id).
    tx: Vec<(u16, u16)>,
    ports: u16,
}

impl VlanMap {
    pub fn new(cfg: &Config) -> Self {
        let ports = cfg.ports.len() as u16;
        let mut m = VlanMap {
            rx: vec![Vec::new(); cfg.ports.len()],
            tx: Vec::new(),
            ports,
        };
        for (i, f) in cfg.interfaces().iter().enumerate() {
            if let Some(vid) = f.vlan {
                if let Some(r) = m.rx.get_mut(usize::from(f.port)) {
                    r.push((vid, i as u16));
                }
                m.tx.push((f.port, vid));
            }
        }
        m
    }

    /// Whether `port` carries VLANs.
    #[inline]
    pub fn on_port(&self, port: u16) -> bool {
        self.rx
            .get(usize::from(port))
            .is_some_and(|r| !r.is_empty())
    }

    /// A burst received on `port` (one that carries VLANs): each frame tagged with one of its
    /// VLANs becomes its interface's, the tag removed.
    #[inline]
    pub fn rx<T: Buffer>(&self, port: u16, burst: &mut [T]) {
        let Some(vlans) = self.rx.get(usize::from(port)) else {
            return;
        };
        for pkt in burst {
            let d = pkt.data_mut();
            let Some(h) = d.first_chunk::<16>() else {
                continue;
            };
            if u16::from_be_bytes([h[12], h[13]]) != TPID {
                continue;
            }
            let vid = u16::from_be_bytes([h[14], h[15]]) & 0x0fff;
            let Some(&(_, iface)) = vlans.iter().find(|(v, _)| *v == vid) else {
                continue;
            };
            d.copy_within(0..12, TAG_LEN);
            if pkt.adj(TAG_LEN).is_ok() {
                pkt.set_port(iface);
            }
        }
    }

    /// The port a frame routed to interface `iface` leaves on: a port is its own; a VLAN's
    /// frame is tagged for it on the way to its port. None: no such interface, or no headroom
    /// for the tag.
    #[inline]
    pub fn egress<T: Buffer>(&self, iface: u16, pkt: &mut T) -> Option<u16> {
        let Some(v) = iface.checked_sub(self.ports) else {
            return Some(iface);
        };
        let &(port, vid) = self.tx.get(usize::from(v))?;
        pkt.prepend(TAG_LEN).ok()?;
        let d = pkt.data_mut();
        d.copy_within(TAG_LEN..TAG_LEN + 12, 0);
        d[12..14].copy_from_slice(&TPID.to_be_bytes());
        d[14..16].copy_from_slice(&vid.to_be_bytes());
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::GOOD;
    use packet::HeapBuffer;

    /// Port "a" carries VLAN 10 ("a.10") and VLAN 20 ("office").
    fn cfg() -> Config {
        let vlans = r#"addresses = ["10.0.1.1/24"]
[[ports.vlans]]
id = 10
addresses = ["10.0.10.1/24"]
[[ports.vlans]]
id = 20
name = "office"
addresses = ["10.0.20.1/24"]
"#;
        Config::parse(&GOOD.replace("addresses = [\"10.0.1.1/24\"]\n", vlans)).unwrap()
    }

    fn frame(tag: Option<u16>) -> HeapBuffer {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(t) = tag {
            f.extend_from_slice(&TPID.to_be_bytes());
            f.extend_from_slice(&t.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0xaa, 0xbb]);
        let mut b = HeapBuffer::with_capacity(128, 64);
        b.append(f.len()).unwrap();
        b.data_mut().copy_from_slice(&f);
        b
    }

    #[test]
    fn interfaces_are_numbered_ports_first() {
        let c = cfg();
        let names: Vec<String> = c.interfaces().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["a", "b", "a.10", "office"]);
        assert_eq!(c.port_id("office"), Some(3));
        assert!(c
            .addresses()
            .contains(&(2, "10.0.10.1".parse().unwrap(), 24)));
        let twice = "[dataplane]\nbackend = \"soft\"\nworkers = [0]\n[[ports]]\nname = \"a\"\n\
                     device = \"memory\"\n[[ports.vlans]]\nid = 10\n[[ports.vlans]]\nid = 10\n";
        let e = Config::parse(twice).unwrap_err().to_string();
        assert!(e.starts_with("ports[0].vlans[1].id"), "{e}");
    }

    #[test]
    fn tags_come_off_on_receive_and_go_on_to_transmit() {
        let m = VlanMap::new(&cfg());
        assert!(m.on_port(0) && !m.on_port(1));
        let mut burst = vec![
            frame(Some(20)),
            frame(None),
            frame(Some(30)),
            frame(Some(0x2000 | 10)),
        ];
        for b in &mut burst {
            b.set_port(0);
        }
        m.rx(0, &mut burst);
        // VLAN 20 is interface 3, untagged now; the priority bits of a tag do not matter.
        assert_eq!(burst[0].port(), 3);
        assert_eq!(burst[0].data(), frame(None).data());
        assert_eq!(burst[1].port(), 0);
        // An unknown VLAN stays tagged on the port (the IPv4 input drops it).
        assert_eq!(
            (burst[2].port(), burst[2].data()),
            (0, frame(Some(30)).data())
        );
        assert_eq!(burst[3].port(), 2);
        let mut out = frame(None);
        assert_eq!(m.egress(3, &mut out), Some(0));
        assert_eq!(out.data(), frame(Some(20)).data());
        // A port's own frames leave untouched; an interface that does not exist, nowhere.
        let mut plain = frame(None);
        assert_eq!(m.egress(1, &mut plain), Some(1));
        assert_eq!(plain.data(), frame(None).data());
        assert_eq!(m.egress(4, &mut frame(None)), None);
    }
}
