//! Virtual file handles (VFH), Mirage style: what clients hold instead of a server's physical
//! handle (PFH). A VFH names its file by fields the router can verify and recover from after a
//! restart with empty tables:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 1 | flags (bit 0: a directory of the router's virtual root, answered by the router) |
//! | 2 | 2 | SID — server id (0 = the virtual root itself) |
//! | 4 | 4 | MCH — mount checksum: keyed hash of (SID, the server's export path) |
//! | 8 | 8 | PFS — physical file system (the object's `fattr3.fsid` on its server) |
//! | 16 | 8 | PIN — physical inode (the object's `fattr3.fileid` on its server) |
//! | 24 | 8 | HID — handle id: keyed hash of (SID, PFS, PIN, the physical handle); the handle table's key |
//! | 32 | 8 | HVC — handle verification checksum: SipHash-2-4 keyed with the router's secret over bytes 0..32 |
//!
//! (SID, PFS, PIN) names a file across the aggregated servers, and the HID tells apart the
//! incarnations of an inode number: file systems reuse inode numbers, and a server tells the
//! old file from the new one by a generation number inside its physical handle. A VFH of a
//! removed file therefore never reaches a new file that got its inode: its HID maps to the old
//! physical handle, which the server answers with NFS3ERR_STALE. The client sees `fileid` =
//! VIN, a keyed hash of (SID, PFS, PIN) ([`virtual_inode`]). A client that flips a bit or
//! invents a handle fails the HVC check (NFS3ERR_BADHANDLE); a handle of an export that is no
//! longer configured fails the MCH check (NFS3ERR_STALE). The virtual root's HID is
//! [`ROOT_VIN`].

use siphasher::sip::SipHasher24;
use std::cell::Cell;
use std::hash::Hasher;
use thiserror::Error;

/// Length of every VFH.
pub const VFH_LEN: usize = 40;
const VERSION: u8 = 1;
/// Flag: a handle of the router's own virtual directory tree.
pub const FLAG_VIRTUAL_DIR: u8 = 1;
/// Flag: a handle of a web export (the router answers for it; SID 0, PFS the export's id).
pub const FLAG_WEB: u8 = 2;
/// VIN of the virtual root directory.
pub const ROOT_VIN: u64 = 1;

/// The virtual root directory's handle, for a router whose virtual file system is `fsid`.
pub fn root_handle(key: &HandleKey, fsid: u64) -> [u8; VFH_LEN] {
    VirtualHandle {
        flags: FLAG_VIRTUAL_DIR,
        sid: 0,
        mch: 0,
        pfs: fsid,
        pin: ROOT_VIN,
        hid: ROOT_VIN,
    }
    .encode(key)
}

/// Why a VFH was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VfhError {
    /// Not a VFH of ours (length, version) or its HVC does not verify: NFS3ERR_BADHANDLE.
    #[error("bad handle")]
    BadHandle,
    /// Genuine, but for an export no longer configured: NFS3ERR_STALE.
    #[error("stale handle")]
    Stale,
}

/// The router's handle secret (128 bits, from the config).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HandleKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    pub fn new(k0: u64, k1: u64) -> Self {
        HandleKey { k0, k1 }
    }

    /// From 32 hex digits (the config's `nfs.handle_secret`).
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(HandleKey {
            k0: u64::from_str_radix(&s[..16], 16).ok()?,
            k1: u64::from_str_radix(&s[16..], 16).ok()?,
        })
    }

    fn mac(&self, parts: &[&[u8]]) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        for p in parts {
            h.write(p);
        }
        h.finish()
    }

    /// MAC of a handle-table checkpoint.
    pub fn checkpoint_mac(&self, body: &[u8]) -> u64 {
        self.mac(&[b"ckpt", body])
    }

    /// A web export's id (the PFS of its handles) and checksum (their MCH), from its name and
    /// origin: a handle of an export renamed or moved to another origin is stale.
    pub fn web_export(&self, name: &[u8], base: &[u8]) -> (u64, u32) {
        let id = self.mac(&[b"webx", name, b"\0", base]);
        (
            id | (1 << 63),
            (id >> 16) as u32 ^ self.mac(&[b"webm", base]) as u32,
        )
    }

    /// The id of the resource at `path` (names joined by `/`; empty: the root) of web
    /// export `export`: its handle's PIN and HID, the same after any restart.
    pub fn web_pin(&self, export: u64, path: &[u8]) -> u64 {
        self.mac(&[b"webp", &export.to_be_bytes(), path]) | (1 << 63)
    }

    /// Mount checksum of a server's export.
    pub fn mount_checksum(&self, sid: u16, export_path: &[u8]) -> u32 {
        self.mac(&[b"mch", &sid.to_be_bytes(), export_path]) as u32
    }
}

/// A worker's memo of the MACs it computed lately — HVCs of the handles its clients send and
/// get, VINs of the objects whose attributes it rewrites — direct-mapped by message. A hit
/// needs the whole message (up to 32 bytes) equal to the one the MAC was computed over, so it
/// gives exactly the value SipHash would: a forged handle is refused as before (its true MAC
/// may be memoised, never its claimed one). Busy clients send the same few handles again and
/// again; a hit costs a line read and a 32-byte compare instead of ~14 SipHash rounds.
#[derive(Debug, Clone, Default)]
pub struct MacMemo {
    slots: Box<[Cell<MemoSlot>]>,
    /// The key the entries were computed under (a memo used with another key starts over).
    key: Cell<Option<HandleKey>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct MemoSlot {
    /// Message length; 0: empty.
    len: u8,
    msg: [u8; 32],
    mac: u64,
}

impl MacMemo {
    /// A memo of `entries` (rounded up to a power of two; 0: none, every MAC computed).
    pub fn new(entries: usize) -> Self {
        let n = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        MacMemo {
            slots: (0..n).map(|_| Cell::default()).collect(),
            key: Cell::new(None),
        }
    }

    /// SipHash-2-4 under `key` of `msg[..len]` (`len` ≤ 32, the rest zero).
    #[inline]
    fn mac(&self, key: &HandleKey, msg: &[u8; 32], len: u8) -> u64 {
        let bytes = msg.get(..usize::from(len)).unwrap_or(msg);
        if self.slots.is_empty() {
            return key.mac(&[bytes]);
        }
        if self.key.get() != Some(*key) {
            for s in self.slots.iter() {
                s.set(MemoSlot::default());
            }
            self.key.set(Some(*key));
        }
        let w = |i: usize| {
            u64::from_le_bytes([
                msg[i],
                msg[i + 1],
                msg[i + 2],
                msg[i + 3],
                msg[i + 4],
                msg[i + 5],
                msg[i + 6],
                msg[i + 7],
            ])
        };
        let h = (w(0) ^ w(8).rotate_left(16) ^ w(16).rotate_left(32) ^ w(24))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let Some(cell) = self.slots.get((h >> 32) as usize & (self.slots.len() - 1)) else {
            return key.mac(&[bytes]);
        };
        let s = cell.get();
        if s.len == len && s.msg == *msg {
            return s.mac;
        }
        let mac = key.mac(&[bytes]);
        cell.set(MemoSlot {
            len,
            msg: *msg,
            mac,
        });
        mac
    }
}

/// The fields of a VFH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualHandle {
    pub flags: u8,
    pub sid: u16,
    pub mch: u32,
    pub pfs: u64,
    pub pin: u64,
    /// Handle id (the handle table's key); [`ROOT_VIN`] for the virtual root.
    pub hid: u64,
}

/// The VIN of a server object: a keyed hash of (SID, PFS, PIN) with the top bit set (small
/// numbers are the virtual tree's), the same after any restart.
pub fn virtual_inode(key: &HandleKey, sid: u16, pfs: u64, pin: u64) -> u64 {
    virtual_inode_memo(key, &MacMemo::default(), sid, pfs, pin)
}

/// [`virtual_inode`] through a worker's [`MacMemo`].
#[inline]
pub fn virtual_inode_memo(key: &HandleKey, memo: &MacMemo, sid: u16, pfs: u64, pin: u64) -> u64 {
    let mut m = [0u8; 32];
    m[..3].copy_from_slice(b"vin");
    m[3..5].copy_from_slice(&sid.to_be_bytes());
    m[5..13].copy_from_slice(&pfs.to_be_bytes());
    m[13..21].copy_from_slice(&pin.to_be_bytes());
    memo.mac(key, &m, 21) | (1 << 63)
}

/// The handle id of a server object: a keyed hash of (SID, PFS, PIN, physical handle), top bit
/// set; the same after any restart, different for another incarnation of the inode number.
pub fn handle_id(key: &HandleKey, sid: u16, pfs: u64, pin: u64, pfh: &[u8]) -> u64 {
    key.mac(&[
        b"hid",
        &sid.to_be_bytes(),
        &pfs.to_be_bytes(),
        &pin.to_be_bytes(),
        pfh,
    ]) | (1 << 63)
}

impl VirtualHandle {
    /// The handle of an object on server `sid` whose physical handle is `pfh`.
    pub fn for_object(key: &HandleKey, sid: u16, mch: u32, pfs: u64, pin: u64, pfh: &[u8]) -> Self {
        VirtualHandle {
            flags: 0,
            sid,
            mch,
            pfs,
            pin,
            hid: handle_id(key, sid, pfs, pin, pfh),
        }
    }

    /// Encode with its HVC.
    pub fn encode(&self, key: &HandleKey) -> [u8; VFH_LEN] {
        self.encode_memo(key, &MacMemo::default())
    }

    /// [`encode`](Self::encode) through a worker's [`MacMemo`].
    #[inline]
    pub fn encode_memo(&self, key: &HandleKey, memo: &MacMemo) -> [u8; VFH_LEN] {
        let mut b = [0u8; VFH_LEN];
        b[0] = VERSION;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.sid.to_be_bytes());
        b[4..8].copy_from_slice(&self.mch.to_be_bytes());
        b[8..16].copy_from_slice(&self.pfs.to_be_bytes());
        b[16..24].copy_from_slice(&self.pin.to_be_bytes());
        b[24..32].copy_from_slice(&self.hid.to_be_bytes());
        let mut m = [0u8; 32];
        m.copy_from_slice(&b[..32]);
        b[32..40].copy_from_slice(&memo.mac(key, &m, 32).to_be_bytes());
        b
    }

    /// Decode and verify the HVC and the MCH. `mch_of(sid)` gives the current mount checksum of a
    /// configured server (None when the SID is not configured).
    pub fn decode(
        key: &HandleKey,
        b: &[u8],
        mch_of: impl Fn(u16) -> Option<u32>,
    ) -> Result<Self, VfhError> {
        Self::decode_memo(key, &MacMemo::default(), b, mch_of)
    }

    /// [`decode`](Self::decode) through a worker's [`MacMemo`].
    #[inline]
    pub fn decode_memo(
        key: &HandleKey,
        memo: &MacMemo,
        b: &[u8],
        mch_of: impl Fn(u16) -> Option<u32>,
    ) -> Result<Self, VfhError> {
        let v = Self::verify_memo(key, memo, b)?;
        if v.sid != 0 && mch_of(v.sid) != Some(v.mch) {
            return Err(VfhError::Stale);
        }
        Ok(v)
    }

    /// Decode and verify the HVC only (the handle is ours and unaltered).
    pub fn verify(key: &HandleKey, b: &[u8]) -> Result<Self, VfhError> {
        Self::verify_memo(key, &MacMemo::default(), b)
    }

    #[inline]
    fn verify_memo(key: &HandleKey, memo: &MacMemo, b: &[u8]) -> Result<Self, VfhError> {
        let b: &[u8; VFH_LEN] = b.try_into().map_err(|_| VfhError::BadHandle)?;
        if b[0] != VERSION {
            return Err(VfhError::BadHandle);
        }
        let hvc = u64::from_be_bytes(b[32..40].try_into().map_err(|_| VfhError::BadHandle)?);
        let mut m = [0u8; 32];
        m.copy_from_slice(&b[..32]);
        if memo.mac(key, &m, 32) != hvc {
            return Err(VfhError::BadHandle);
        }
        let be64 =
            |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().unwrap_or([0; 8]));
        let v = VirtualHandle {
            flags: b[1],
            sid: u16::from_be_bytes([b[2], b[3]]),
            mch: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            pfs: be64(8..16),
            pin: be64(16..24),
            hid: be64(24..32),
        };
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> HandleKey {
        HandleKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap()
    }

    #[test]
    fn the_memo_gives_the_macs_it_memoises() {
        let k = key();
        let memo = MacMemo::new(4); // tiny: entries evict each other
        let mch = k.mount_checksum(2, b"/srv/b");
        for round in 0..3 {
            for pin in 0..20u64 {
                let v = VirtualHandle::for_object(&k, 2, mch, 9, pin, &pin.to_be_bytes());
                let b = v.encode_memo(&k, &memo);
                assert_eq!(b, v.encode(&k), "round {round} pin {pin}");
                assert_eq!(
                    VirtualHandle::decode_memo(&k, &memo, &b, |_| Some(mch)),
                    Ok(v)
                );
                assert_eq!(
                    virtual_inode_memo(&k, &memo, 2, 9, pin),
                    virtual_inode(&k, 2, 9, pin)
                );
                // A handle that differs from a memoised one in any bit, HVC included, is
                // refused, memo or not.
                for bit in [0, 7, 100, 255, 256, 319] {
                    let mut f = b;
                    f[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(
                        VirtualHandle::decode_memo(&k, &memo, &f, |_| Some(mch)),
                        Err(VfhError::BadHandle),
                        "bit {bit}"
                    );
                }
            }
        }
        // A VIN message and a handle never share a memo entry's meaning: the length differs.
        let vin = virtual_inode_memo(&k, &memo, 0, 0, 0);
        assert_eq!(vin, virtual_inode(&k, 0, 0, 0));
        // A repeated handle is answered from the memo: spoil the memoised MAC and the memo's
        // answer changes (the direct check still passes).
        let v = VirtualHandle::for_object(&k, 2, mch, 9, 77, &[7; 8]);
        let b = v.encode_memo(&k, &memo);
        let slot = memo
            .slots
            .iter()
            .find(|c| c.get().len == 32 && c.get().msg[..] == b[..32])
            .expect("the new handle's MAC is memoised");
        let mut e = slot.get();
        e.mac ^= 1;
        slot.set(e);
        assert_eq!(
            VirtualHandle::decode_memo(&k, &memo, &b, |_| Some(mch)),
            Err(VfhError::BadHandle)
        );
        assert_eq!(VirtualHandle::decode(&k, &b, |_| Some(mch)), Ok(v));
        // Another key: nothing memoised under the first one is given back.
        let other = HandleKey::new(5, 6);
        assert_eq!(
            virtual_inode_memo(&other, &memo, 0, 0, 0),
            virtual_inode(&other, 0, 0, 0)
        );
        assert_ne!(vin, virtual_inode(&other, 0, 0, 0));
    }

    #[test]
    fn roundtrip_and_ids_are_stable() {
        let k = key();
        let mch = k.mount_checksum(2, b"/srv/b");
        let v = VirtualHandle::for_object(&k, 2, mch, 0x1122, 0x3344, &[9; 24]);
        let b = v.encode(&k);
        assert_eq!(
            VirtualHandle::decode(&k, &b, |s| (s == 2).then_some(mch)),
            Ok(v)
        );
        assert_eq!(v.hid, handle_id(&k, 2, 0x1122, 0x3344, &[9; 24]));
        assert_ne!(
            v.hid,
            handle_id(&k, 2, 0x1122, 0x3344, &[8; 24]),
            "another incarnation of the inode number"
        );
        assert_ne!(
            virtual_inode(&k, 2, 0x1122, 0x3344),
            virtual_inode(&k, 1, 0x1122, 0x3344),
            "same inode on another server"
        );
        assert!(v.hid > ROOT_VIN && virtual_inode(&k, 2, 1, 1) > ROOT_VIN);
    }

    #[test]
    fn wrong_key_export_or_length() {
        let k = key();
        let mch = k.mount_checksum(2, b"/srv/b");
        let b = VirtualHandle::for_object(&k, 2, mch, 1, 2, &[1; 28]).encode(&k);
        let other = HandleKey::new(1, 2);
        assert_eq!(
            VirtualHandle::decode(&other, &b, |_| Some(mch)),
            Err(VfhError::BadHandle)
        );
        assert_eq!(
            VirtualHandle::decode(&k, &b, |_| None),
            Err(VfhError::Stale),
            "server removed"
        );
        assert_eq!(
            VirtualHandle::decode(&k, &b, |_| Some(mch ^ 1)),
            Err(VfhError::Stale),
            "export changed"
        );
        assert_eq!(
            VirtualHandle::decode(&k, &b[..39], |_| Some(mch)),
            Err(VfhError::BadHandle)
        );
        assert_eq!(
            VirtualHandle::decode(&k, &[0u8; 28], |_| Some(mch)),
            Err(VfhError::BadHandle),
            "a physical handle"
        );
        assert!(HandleKey::from_hex("xyz").is_none());
        assert!(HandleKey::from_hex("000102030405060708090a0b0c0d0e0").is_none());
    }

    proptest! {
        /// Any single bit flipped anywhere in a handle is refused.
        #[test]
        fn any_flipped_bit_is_refused(sid in 1u16.., pfs in any::<u64>(), pin in any::<u64>(), bit in 0usize..(VFH_LEN * 8)) {
            let k = key();
            let mch = k.mount_checksum(sid, b"/e");
            let mut b = VirtualHandle::for_object(&k, sid, mch, pfs, pin, &pin.to_be_bytes()).encode(&k);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(VirtualHandle::decode(&k, &b, |_| Some(mch)).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = VirtualHandle::decode(&key(), &b, |_| Some(0));
        }
    }
}
