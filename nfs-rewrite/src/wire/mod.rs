//! Codecs: XDR primitives, ONC RPC messages, MOUNT v3 and NFSv3.

pub mod mount;
pub mod nfs3;
pub mod record;
pub mod rpc;
pub mod xdr;

pub use xdr::{Cursor, XdrError};

/// A place in a message the rewrite stage cares about, reported by the walkers in [`nfs3`] and
/// [`mount`]. Offsets are from the start of the buffer the walker was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A file handle (`nfs_fh3` / `fhandle3`): `at` is the offset of its 4-byte length word,
    /// `len` the handle's length in bytes (the bytes follow, padded to 4).
    Handle { at: usize, len: usize },
    /// A `fattr3` (84 bytes) starting at `at`: `fsid` at `at + 44`, `fileid` at `at + 52`.
    Fattr { at: usize },
    /// A READDIR/READDIRPLUS entry's `fileid` (u64) at `at`.
    FileId { at: usize },
    /// FSINFO's `rtmax`, `rtpref`, `wtmax`, `wtpref` (u32 each, in that order of offsets
    /// `at`, `at + 4`, `at + 12`, `at + 16`): clamped so UDP clients stay under the MTU.
    FsinfoSizes { at: usize },
    /// A `filename3` of a call's `diropargs3` (LOOKUP, CREATE, REMOVE, RENAME, ...): its
    /// length word at `at`, `len` bytes after it. Reported whatever its length, so that the
    /// router answers a name beyond [`nfs3::NAME_MAX`] with NFS3ERR_NAMETOOLONG.
    Name { at: usize, len: usize },
    /// SYMLINK's target path (`nfspath3`), as [`Field::Name`].
    Path { at: usize, len: usize },
}

impl Field {
    /// Offset of `fsid` for a [`Field::Fattr`].
    pub const FATTR_FSID: usize = 44;
    /// Offset of `fileid` for a [`Field::Fattr`].
    pub const FATTR_FILEID: usize = 52;
    /// Size of a `fattr3`.
    pub const FATTR_LEN: usize = 84;

    /// The offset just past the field.
    pub fn end(self) -> usize {
        match self {
            Field::Handle { at, len } | Field::Name { at, len } | Field::Path { at, len } => {
                at + 4 + len
            }
            Field::Fattr { at } => at + Field::FATTR_LEN,
            Field::FileId { at } => at + 8,
            Field::FsinfoSizes { at } => at + 20,
        }
    }
}
