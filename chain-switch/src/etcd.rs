//! Just enough of etcd's v3 API (its JSON gateway over HTTP: `/v3/kv/put`, `/v3/kv/range`)
//! for the chain master to keep its membership there, and for the benchmark to drive etcd with
//! the same read/write mix. Keys and values travel base64-encoded, as the gateway wants.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for ch in s.bytes() {
        if ch == b'=' {
            break;
        }
        let v = B64.iter().position(|&b| b == ch)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// One keep-alive HTTP/1.1 connection to etcd's gateway.
#[derive(Debug)]
pub struct Etcd {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Etcd {
    pub fn new(addr: SocketAddr) -> Self {
        Etcd { addr, conn: None }
    }

    fn post_once(&mut self, path: &str, body: &str) -> std::io::Result<serde_json::Value> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(r) = self.conn.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("etcd: bad status line {line:?}")))?;
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| std::io::Error::other("etcd: bad chunk"))?;
                let mut c = vec![0u8; n + 2];
                r.read_exact(&mut c)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&c[..n]);
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        }
        if status != 200 {
            return Err(std::io::Error::other(format!(
                "etcd {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    }

    /// POST to the gateway, reconnecting once if the kept-alive connection went away.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<serde_json::Value> {
        match self.post_once(path, body) {
            Ok(v) => Ok(v),
            Err(_) if self.conn.is_some() => {
                self.conn = None;
                self.post_once(path, body)
            }
            Err(e) => Err(e),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let body = serde_json::json!({"key": b64_encode(key), "value": b64_encode(value)});
        self.post("/v3/kv/put", &body.to_string()).map(|_| ())
    }

    pub fn get(&mut self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let body = serde_json::json!({"key": b64_encode(key)});
        let v = self.post("/v3/kv/range", &body.to_string())?;
        Ok(v["kvs"]
            .get(0)
            .and_then(|kv| kv["value"].as_str())
            .and_then(b64_decode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"/netchain/state", "L25ldGNoYWluL3N0YXRl"),
        ] {
            assert_eq!(b64_encode(raw), enc);
            assert_eq!(b64_decode(enc).unwrap(), raw);
        }
        assert!(b64_decode("*").is_none());
    }
}
