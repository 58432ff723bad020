//! MOUNT version 3 (RFC 1813 appendix I): where the file handle sits in an MNT reply, and the
//! shape of the other procedures so their messages are validated.

use super::xdr::{Cursor, Result, XdrError, FHSIZE3};
use super::Field;

/// MOUNT procedures.
pub mod proc_ {
    pub const NULL: u32 = 0;
    pub const MNT: u32 = 1;
    pub const DUMP: u32 = 2;
    pub const UMNT: u32 = 3;
    pub const UMNTALL: u32 = 4;
    pub const EXPORT: u32 = 5;
}

/// Longest export path.
pub const MNTPATHLEN: usize = 1024;
/// Longest host or group name.
pub const MNTNAMLEN: usize = 255;

/// Walk a MOUNT call's arguments: returns the directory path for MNT/UMNT.
pub fn walk_call(proc_: u32, buf: &[u8], at: usize) -> Result<(Option<&[u8]>, usize)> {
    let mut c = Cursor::at(buf, at);
    let path = match proc_ {
        proc_::MNT | proc_::UMNT => Some(c.string(MNTPATHLEN)?),
        proc_::NULL | proc_::DUMP | proc_::UMNTALL | proc_::EXPORT => None,
        _ => return Err(XdrError::Unsupported),
    };
    Ok((path, c.pos()))
}

/// Walk a MOUNT reply's results, reporting the MNT file handle. Returns (mountstat3 for MNT,
/// 0 otherwise; offset past the results).
pub fn walk_reply(
    proc_: u32,
    buf: &[u8],
    at: usize,
    mut f: impl FnMut(Field),
) -> Result<(u32, usize)> {
    let mut c = Cursor::at(buf, at);
    let mut status = 0;
    match proc_ {
        proc_::NULL | proc_::UMNT | proc_::UMNTALL => {}
        proc_::MNT => {
            status = c.u32()?;
            if status == 0 {
                let (at, d) = c.opaque_var(FHSIZE3)?;
                f(Field::Handle { at, len: d.len() });
                let n = c.u32()? as usize;
                if n > 16 {
                    return Err(XdrError::Invalid);
                }
                c.skip(n * 4)?;
            }
        }
        proc_::DUMP => {
            while c.bool()? {
                c.string(MNTNAMLEN)?;
                c.string(MNTPATHLEN)?;
            }
        }
        proc_::EXPORT => {
            while c.bool()? {
                c.string(MNTPATHLEN)?;
                while c.bool()? {
                    c.string(MNTNAMLEN)?;
                }
            }
        }
        _ => return Err(XdrError::Unsupported),
    }
    Ok((status, c.pos()))
}
