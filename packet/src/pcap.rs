//! Reading and writing capture files: classic pcap (both byte orders, µs or ns) and pcapng
//! (section header, interface description, enhanced/simple/obsolete packet blocks).
//! Used by golden tests, the pcap-file port and the workload generators.

use std::io::{self, Read, Write};

/// Link type of Ethernet captures.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Timestamp in nanoseconds since the epoch.
    pub ts_ns: u64,
    /// Captured bytes.
    pub data: Vec<u8>,
    /// Link type of the interface it was captured on.
    pub linktype: u16,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Read every record of a pcap or pcapng file held in memory.
pub fn parse(bytes: &[u8]) -> io::Result<Vec<Record>> {
    if bytes.len() < 4 {
        return Err(bad("capture shorter than its magic number"));
    }
    match u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) {
        0x0a0d_0d0a => parse_pcapng(bytes),
        _ => parse_pcap(bytes),
    }
}

/// Read a capture file from disk.
pub fn read_file(path: impl AsRef<std::path::Path>) -> io::Result<Vec<Record>> {
    let mut v = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut v)?;
    parse(&v)
}

fn parse_pcap(b: &[u8]) -> io::Result<Vec<Record>> {
    if b.len() < 24 {
        return Err(bad("pcap header truncated"));
    }
    let magic = [b[0], b[1], b[2], b[3]];
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(bad("not a pcap or pcapng file")),
    };
    let u32_at = |o: usize| {
        let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(20) as u16;
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let sec = u64::from(u32_at(off));
        let frac = u64::from(u32_at(off + 4));
        let caplen = u32_at(off + 8) as usize;
        off += 16;
        if off + caplen > b.len() {
            return Err(bad("pcap record truncated"));
        }
        let ts_ns = sec * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        out.push(Record {
            ts_ns,
            data: b[off..off + caplen].to_vec(),
            linktype,
        });
        off += caplen;
    }
    Ok(out)
}

fn parse_pcapng(b: &[u8]) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut le = true;
    let mut ifaces: Vec<(u16, u64)> = Vec::new(); // (linktype, ticks per second)
    let mut off = 0;
    while off + 12 <= b.len() {
        let rd32 = |o: usize, le: bool| {
            let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let btype = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
        if btype == 0x0a0d_0d0a {
            // Section header: byte-order magic decides endianness for the section.
            le = match &b[off + 8..off + 12] {
                [0x4d, 0x3c, 0x2b, 0x1a] => true,
                [0x1a, 0x2b, 0x3c, 0x4d] => false,
                _ => return Err(bad("pcapng byte-order magic")),
            };
            ifaces.clear();
        }
        let btype = rd32(off, le);
        let blen = rd32(off + 4, le) as usize;
        if blen < 12 || off + blen > b.len() {
            return Err(bad("pcapng block truncated"));
        }
        let body = &b[off + 8..off + blen - 4];
        let rd = |o: usize| -> u32 {
            let a = [body[o], body[o + 1], body[o + 2], body[o + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        match btype {
            1 if body.len() >= 8 => {
                let lt = (rd(0) & 0xffff) as u16;
                let mut tps = 1_000_000u64;
                // Options: if_tsresol (code 9).
                let mut o = 8;
                while o + 4 <= body.len() {
                    let code = rd(o) & 0xffff;
                    let code = if le { code } else { rd(o) >> 16 };
                    let olen = if le {
                        (rd(o) >> 16) as usize
                    } else {
                        (rd(o) & 0xffff) as usize
                    };
                    if code == 0 {
                        break;
                    }
                    if code == 9 && olen >= 1 && o + 4 < body.len() {
                        let r = body[o + 4];
                        tps = if r & 0x80 != 0 {
                            1u64 << (r & 0x7f).min(63)
                        } else {
                            10u64.saturating_pow(u32::from(r))
                        };
                    }
                    o += 4 + olen.div_ceil(4) * 4;
                }
                ifaces.push((lt, tps.max(1)));
            }
            6 if body.len() >= 20 => {
                let iface = rd(0) as usize;
                let ts = (u64::from(rd(4)) << 32) | u64::from(rd(8));
                let caplen = rd(12) as usize;
                if 20 + caplen > body.len() {
                    return Err(bad("pcapng packet truncated"));
                }
                let (lt, tps) = ifaces
                    .get(iface)
                    .copied()
                    .unwrap_or((LINKTYPE_ETHERNET, 1_000_000));
                let ts_ns = (u128::from(ts) * 1_000_000_000 / u128::from(tps)) as u64;
                out.push(Record {
                    ts_ns,
                    data: body[20..20 + caplen].to_vec(),
                    linktype: lt,
                });
            }
            3 if body.len() >= 4 => {
                let (lt, _) = ifaces.first().copied().unwrap_or((LINKTYPE_ETHERNET, 1));
                let orig = rd(0) as usize;
                let caplen = orig.min(body.len() - 4);
                out.push(Record {
                    ts_ns: 0,
                    data: body[4..4 + caplen].to_vec(),
                    linktype: lt,
                });
            }
            _ => {}
        }
        off += blen;
    }
    Ok(out)
}

/// Writes a classic little-endian microsecond pcap.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Write the file header.
    pub fn new(mut out: W, linktype: u16) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&u32::from(linktype).to_le_bytes());
        out.write_all(&h)?;
        Ok(Writer { out })
    }
    /// Append one packet.
    pub fn write(&mut self, ts_ns: u64, data: &[u8]) -> io::Result<()> {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(((ts_ns / 1000) % 1_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)
    }
    /// Flush and return the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let mut w = Writer::new(Vec::new(), LINKTYPE_ETHERNET).unwrap();
        w.write(1_500_000_000, &[1, 2, 3]).unwrap();
        w.write(2_000_001_000, &[4; 60]).unwrap();
        let bytes = w.finish().unwrap();
        let r = parse(&bytes).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].data, vec![1, 2, 3]);
        assert_eq!(r[0].ts_ns, 1_500_000_000);
        assert_eq!(r[1].ts_ns, 2_000_001_000);
        assert_eq!(r[1].linktype, LINKTYPE_ETHERNET);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[1, 2]).is_err());
        assert!(parse(&[0xd4, 0xc3, 0xb2, 0xa1, 0, 0]).is_err());
        assert!(parse(&[0x0a, 0x0d, 0x0d, 0x0a, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
    }
}
