//! Checkpoints of the handle table: the soft state a restarted router reloads so that the
//! handles clients hold keep working without a search of the servers.
//!
//! Format: `b"NFSVHCK1"`, entry count (u32), then per entry VIN (u64), length (u8) and the
//! physical handle; last, a SipHash-2-4 MAC (u64) over everything before it, keyed with the
//! handle secret, so a file from another configuration (or a damaged one) is refused whole.
//! All big-endian. Written to a temporary file, synced, then renamed over the old one: a crash
//! leaves either the old checkpoint or the new one, never a mix.

use crate::tables::{HandleTable, PFH_MAX};
use crate::vfh::HandleKey;
use std::io::Write;
use std::path::Path;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"NFSVHCK1";

/// Why a checkpoint could not be used.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a handle checkpoint")]
    Magic,
    #[error("truncated or damaged")]
    Truncated,
    #[error("written with another handle secret, or damaged (MAC mismatch)")]
    Mac,
}

/// Serialize every entry of `table`.
pub fn encode(table: &HandleTable, key: &HandleKey) -> (Vec<u8>, usize) {
    let mut b = Vec::with_capacity(16 + table.len() * 40);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[0; 4]);
    let mut n = 0u32;
    table.for_each(|vin, pfh| {
        b.extend_from_slice(&vin.to_be_bytes());
        b.push(pfh.len() as u8);
        b.extend_from_slice(pfh);
        n += 1;
    });
    b[8..12].copy_from_slice(&n.to_be_bytes());
    let mac = key.checkpoint_mac(&b);
    b.extend_from_slice(&mac.to_be_bytes());
    (b, n as usize)
}

/// Verify and insert every entry of `bytes` into `table`. Returns how many were loaded.
pub fn decode_into(
    bytes: &[u8],
    key: &HandleKey,
    table: &HandleTable,
) -> Result<usize, CheckpointError> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(CheckpointError::Magic);
    }
    let (body, mac) = bytes.split_at(bytes.len() - 8);
    let mac = u64::from_be_bytes(mac.try_into().map_err(|_| CheckpointError::Truncated)?);
    if key.checkpoint_mac(body) != mac {
        return Err(CheckpointError::Mac);
    }
    let n = u32::from_be_bytes(
        body[8..12]
            .try_into()
            .map_err(|_| CheckpointError::Truncated)?,
    );
    let mut at = 12;
    let mut loaded = 0;
    for _ in 0..n {
        let vin = body
            .get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or(CheckpointError::Truncated)?;
        let len = usize::from(*body.get(at + 8).ok_or(CheckpointError::Truncated)?);
        if len == 0 || len > PFH_MAX {
            return Err(CheckpointError::Truncated);
        }
        let pfh = body
            .get(at + 9..at + 9 + len)
            .ok_or(CheckpointError::Truncated)?;
        if table.insert(vin, pfh) {
            loaded += 1;
        }
        at += 9 + len;
    }
    if at != body.len() {
        return Err(CheckpointError::Truncated);
    }
    Ok(loaded)
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, fsync, rename,
/// fsync of the directory). The file is readable by its owner only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_refusals() {
        let key = HandleKey::new(5, 6);
        let t = HandleTable::new(64);
        for v in 1..=20u64 {
            t.insert(v << 40, &vec![v as u8; 20 + v as usize]);
        }
        let (b, n) = encode(&t, &key);
        assert_eq!(n, 20);
        let fresh = HandleTable::new(64);
        assert_eq!(decode_into(&b, &key, &fresh).unwrap(), 20);
        let mut out = [0u8; PFH_MAX];
        assert_eq!(fresh.get(7 << 40, &mut out), Some(27));
        assert_eq!(&out[..27], &[7u8; 27][..]);
        // Another secret, a flipped bit, a truncation: refused whole.
        let other = HandleTable::new(64);
        assert!(matches!(
            decode_into(&b, &HandleKey::new(5, 7), &other),
            Err(CheckpointError::Mac)
        ));
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(decode_into(&bad, &key, &other).is_err());
        assert!(decode_into(&b[..b.len() - 3], &key, &other).is_err());
        assert!(decode_into(b"garbage", &key, &other).is_err());
        assert!(other.is_empty());
        // Written atomically and read back.
        let dir = std::env::temp_dir().join(format!("nfs-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("handles.ckpt");
        write_atomic(&path, &b).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b);
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
