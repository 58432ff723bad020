//! NFSv3 (RFC 1813): every procedure's arguments and results, walked to report where the file
//! handles, attributes and transfer sizes are ([`Field`]), without allocating. A walker must
//! consume a well-formed message exactly; the golden tests check that on real captures.

use super::xdr::{Cursor, Result, XdrError, FHSIZE3};
use super::Field;

/// NFSv3 procedures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Proc {
    Null = 0,
    Getattr = 1,
    Setattr = 2,
    Lookup = 3,
    Access = 4,
    Readlink = 5,
    Read = 6,
    Write = 7,
    Create = 8,
    Mkdir = 9,
    Symlink = 10,
    Mknod = 11,
    Remove = 12,
    Rmdir = 13,
    Rename = 14,
    Link = 15,
    Readdir = 16,
    Readdirplus = 17,
    Fsstat = 18,
    Fsinfo = 19,
    Pathconf = 20,
    Commit = 21,
}

impl Proc {
    /// Every procedure, by number.
    pub const ALL: [Proc; 22] = [
        Proc::Null,
        Proc::Getattr,
        Proc::Setattr,
        Proc::Lookup,
        Proc::Access,
        Proc::Readlink,
        Proc::Read,
        Proc::Write,
        Proc::Create,
        Proc::Mkdir,
        Proc::Symlink,
        Proc::Mknod,
        Proc::Remove,
        Proc::Rmdir,
        Proc::Rename,
        Proc::Link,
        Proc::Readdir,
        Proc::Readdirplus,
        Proc::Fsstat,
        Proc::Fsinfo,
        Proc::Pathconf,
        Proc::Commit,
    ];

    pub fn from_u32(n: u32) -> Option<Proc> {
        Self::ALL.get(n as usize).copied()
    }

    pub fn name(self) -> &'static str {
        [
            "null",
            "getattr",
            "setattr",
            "lookup",
            "access",
            "readlink",
            "read",
            "write",
            "create",
            "mkdir",
            "symlink",
            "mknod",
            "remove",
            "rmdir",
            "rename",
            "link",
            "readdir",
            "readdirplus",
            "fsstat",
            "fsinfo",
            "pathconf",
            "commit",
        ][self as usize]
    }
}

/// nfsstat3 values the router uses.
pub mod stat {
    pub const OK: u32 = 0;
    pub const PERM: u32 = 1;
    pub const NOENT: u32 = 2;
    pub const IO: u32 = 5;
    pub const ACCES: u32 = 13;
    pub const XDEV: u32 = 18;
    pub const NOTDIR: u32 = 20;
    pub const ISDIR: u32 = 21;
    pub const INVAL: u32 = 22;
    pub const ROFS: u32 = 30;
    pub const NAMETOOLONG: u32 = 63;
    pub const STALE: u32 = 70;
    pub const BADHANDLE: u32 = 10001;
    pub const NOTSUPP: u32 = 10004;
    pub const TOOSMALL: u32 = 10005;
    pub const SERVERFAULT: u32 = 10006;
    pub const JUKEBOX: u32 = 10008;
}

/// Longest name and path accepted (the protocol bound is implementation-defined; these are
/// generous and keep a hostile length from walking off into the next message).
pub const NAME_MAX: usize = 255;
pub const PATH_MAX: usize = 4096;
/// Largest READ/WRITE payload accepted.
pub const DATA_MAX: usize = 1 << 20;

fn fh(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    let (at, d) = c.opaque_var(FHSIZE3)?;
    f(Field::Handle { at, len: d.len() });
    Ok(())
}

/// The longest name or path a call may carry on the wire before it is garbage, not merely too
/// long (which the caller answers with NFS3ERR_NAMETOOLONG).
const WIRE_STRING_MAX: usize = 8192;

fn string_field(
    c: &mut Cursor<'_>,
    f: &mut impl FnMut(Field),
    field: fn(usize, usize) -> Field,
) -> Result<()> {
    let at = c.pos();
    let len = c.string(WIRE_STRING_MAX)?.len();
    f(field(at, len));
    Ok(())
}

fn diropargs(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    fh(c, f)?;
    string_field(c, f, |at, len| Field::Name { at, len })
}

fn sattr3(c: &mut Cursor<'_>) -> Result<()> {
    // mode, uid, gid: optional u32; size: optional u64.
    for _ in 0..3 {
        if c.bool()? {
            c.u32()?;
        }
    }
    if c.bool()? {
        c.u64()?;
    }
    // atime, mtime: DONT_CHANGE, SET_TO_SERVER_TIME, SET_TO_CLIENT_TIME + nfstime3.
    for _ in 0..2 {
        match c.u32()? {
            0 | 1 => {}
            2 => c.skip(8)?,
            _ => return Err(XdrError::Invalid),
        }
    }
    Ok(())
}

fn fattr3(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    let at = c.pos();
    c.skip(Field::FATTR_LEN)?;
    f(Field::Fattr { at });
    Ok(())
}

fn post_op_attr(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    if c.bool()? {
        fattr3(c, f)?;
    }
    Ok(())
}

fn pre_op_attr(c: &mut Cursor<'_>) -> Result<()> {
    if c.bool()? {
        c.skip(24)?; // size, mtime, ctime
    }
    Ok(())
}

fn wcc_data(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    pre_op_attr(c)?;
    post_op_attr(c, f)
}

fn post_op_fh3(c: &mut Cursor<'_>, f: &mut impl FnMut(Field)) -> Result<()> {
    if c.bool()? {
        fh(c, f)?;
    }
    Ok(())
}

/// Walk the arguments of a call to `proc` starting at `at` in `buf`, reporting every handle.
/// Returns the offset just past the arguments.
pub fn walk_call(proc_: Proc, buf: &[u8], at: usize, mut f: impl FnMut(Field)) -> Result<usize> {
    let mut c = Cursor::at(buf, at);
    let f = &mut f;
    match proc_ {
        Proc::Null => {}
        Proc::Getattr | Proc::Readlink | Proc::Fsstat | Proc::Fsinfo | Proc::Pathconf => {
            fh(&mut c, f)?
        }
        Proc::Setattr => {
            fh(&mut c, f)?;
            sattr3(&mut c)?;
            if c.bool()? {
                c.skip(8)?; // guard ctime
            }
        }
        Proc::Lookup | Proc::Remove | Proc::Rmdir => diropargs(&mut c, f)?,
        Proc::Access => {
            fh(&mut c, f)?;
            c.u32()?;
        }
        Proc::Read | Proc::Commit => {
            fh(&mut c, f)?;
            c.u64()?;
            c.u32()?;
        }
        Proc::Write => {
            fh(&mut c, f)?;
            c.u64()?;
            let count = c.u32()?;
            c.u32()?; // stable_how
                      // No server can write more bytes than the call carries. (Fewer is what real
                      // clients send at times — the reference UDP capture has count 15 over 18 bytes of
                      // data — and servers write `count` bytes: allowed.)
            if (count as usize) > c.opaque_var(DATA_MAX)?.1.len() {
                return Err(XdrError::Invalid);
            }
        }
        Proc::Create => {
            diropargs(&mut c, f)?;
            match c.u32()? {
                0 | 1 => sattr3(&mut c)?, // UNCHECKED, GUARDED
                2 => c.skip(8)?,          // EXCLUSIVE: createverf3
                _ => return Err(XdrError::Invalid),
            }
        }
        Proc::Mkdir => {
            diropargs(&mut c, f)?;
            sattr3(&mut c)?;
        }
        Proc::Symlink => {
            diropargs(&mut c, f)?;
            sattr3(&mut c)?;
            string_field(&mut c, f, |at, len| Field::Path { at, len })?;
        }
        Proc::Mknod => {
            diropargs(&mut c, f)?;
            match c.u32()? {
                3 | 4 => {
                    // NF3CHR, NF3BLK: sattr3 + specdata3
                    sattr3(&mut c)?;
                    c.skip(8)?;
                }
                6 | 7 => sattr3(&mut c)?, // NF3SOCK, NF3FIFO
                1 | 2 | 5 => {}           // REG, DIR, LNK: no data (server answers BADTYPE)
                _ => return Err(XdrError::Invalid),
            }
        }
        Proc::Rename => {
            diropargs(&mut c, f)?;
            diropargs(&mut c, f)?;
        }
        Proc::Link => {
            fh(&mut c, f)?;
            diropargs(&mut c, f)?;
        }
        Proc::Readdir => {
            fh(&mut c, f)?;
            c.skip(8 + 8 + 4)?; // cookie, cookieverf, count
        }
        Proc::Readdirplus => {
            fh(&mut c, f)?;
            c.skip(8 + 8 + 4 + 4)?; // cookie, cookieverf, dircount, maxcount
        }
    }
    Ok(c.pos())
}

/// Walk the results of `proc` starting at `at`, reporting handles, attributes, READDIR file ids
/// and FSINFO sizes. Returns (nfsstat3, offset just past the results).
pub fn walk_reply(
    proc_: Proc,
    buf: &[u8],
    at: usize,
    mut f: impl FnMut(Field),
) -> Result<(u32, usize)> {
    let mut c = Cursor::at(buf, at);
    let f = &mut f;
    if proc_ == Proc::Null {
        return Ok((stat::OK, c.pos()));
    }
    let status = c.u32()?;
    let ok = status == stat::OK;
    match proc_ {
        Proc::Null => {}
        Proc::Getattr => {
            if ok {
                fattr3(&mut c, f)?;
            }
        }
        Proc::Setattr | Proc::Remove | Proc::Rmdir => wcc_data(&mut c, f)?,
        Proc::Lookup => {
            if ok {
                fh(&mut c, f)?;
                post_op_attr(&mut c, f)?;
            }
            post_op_attr(&mut c, f)?;
        }
        Proc::Access => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.u32()?;
            }
        }
        Proc::Readlink => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.string(PATH_MAX)?;
            }
        }
        Proc::Read => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.u32()?; // count
                c.bool()?; // eof
                c.opaque_var(DATA_MAX)?;
            }
        }
        Proc::Write => {
            wcc_data(&mut c, f)?;
            if ok {
                c.u32()?; // count
                c.u32()?; // committed
                c.skip(8)?; // writeverf3
            }
        }
        Proc::Create | Proc::Mkdir | Proc::Symlink | Proc::Mknod => {
            if ok {
                post_op_fh3(&mut c, f)?;
                post_op_attr(&mut c, f)?;
            }
            wcc_data(&mut c, f)?;
        }
        Proc::Rename => {
            wcc_data(&mut c, f)?;
            wcc_data(&mut c, f)?;
        }
        Proc::Link => {
            post_op_attr(&mut c, f)?;
            wcc_data(&mut c, f)?;
        }
        Proc::Readdir | Proc::Readdirplus => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.skip(8)?; // cookieverf
                while c.bool()? {
                    let at = c.pos();
                    c.u64()?;
                    f(Field::FileId { at });
                    c.string(NAME_MAX)?;
                    c.u64()?; // cookie
                    if proc_ == Proc::Readdirplus {
                        post_op_attr(&mut c, f)?;
                        post_op_fh3(&mut c, f)?;
                    }
                }
                c.bool()?; // eof
            }
        }
        Proc::Fsstat => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.skip(6 * 8 + 4)?;
            }
        }
        Proc::Fsinfo => {
            post_op_attr(&mut c, f)?;
            if ok {
                let at = c.pos();
                c.skip(7 * 4 + 8 + 8 + 4)?;
                f(Field::FsinfoSizes { at });
            }
        }
        Proc::Pathconf => {
            post_op_attr(&mut c, f)?;
            if ok {
                c.skip(2 * 4 + 4 * 4)?;
            }
        }
        Proc::Commit => {
            wcc_data(&mut c, f)?;
            if ok {
                c.skip(8)?;
            }
        }
    }
    Ok((status, c.pos()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rpc::Writer;

    fn fields_call(p: Proc, b: &[u8]) -> (Vec<Field>, usize) {
        let mut v = Vec::new();
        let end = walk_call(p, b, 0, |f| v.push(f)).unwrap();
        (v, end)
    }

    #[test]
    fn rename_reports_both_directories_and_names() {
        let mut w = Writer::new();
        w.opaque(&[1; 28])
            .opaque(b"a")
            .opaque(&[2; 24])
            .opaque(b"bb");
        let (v, end) = fields_call(Proc::Rename, &w.buf);
        assert_eq!(
            v,
            vec![
                Field::Handle { at: 0, len: 28 },
                Field::Name { at: 32, len: 1 },
                Field::Handle { at: 40, len: 24 },
                Field::Name { at: 68, len: 2 },
            ]
        );
        assert_eq!(end, w.buf.len());
    }

    #[test]
    fn create_exclusive_and_mknod() {
        let mut w = Writer::new();
        w.opaque(&[1; 28]).opaque(b"f").u32(2).u64(7);
        assert_eq!(fields_call(Proc::Create, &w.buf).1, w.buf.len());
        let mut w = Writer::new();
        // mknod NF3CHR: sattr3 with mode set, then specdata3
        w.opaque(&[1; 28])
            .opaque(b"dev")
            .u32(3)
            .bool(true)
            .u32(0o644)
            .bool(false)
            .bool(false)
            .bool(false)
            .u32(0)
            .u32(0)
            .u32(1)
            .u32(3);
        assert_eq!(fields_call(Proc::Mknod, &w.buf).1, w.buf.len());
    }

    #[test]
    fn readdirplus_reply_entries() {
        let mut w = Writer::new();
        w.u32(0).bool(false).u64(0); // status, no dir attrs, cookieverf
        w.bool(true)
            .u64(11)
            .opaque(b"a")
            .u64(1)
            .bool(true)
            .fixed(&[0; 84])
            .bool(true)
            .opaque(&[9; 28]);
        w.bool(true)
            .u64(12)
            .opaque(b"b")
            .u64(2)
            .bool(false)
            .bool(false);
        w.bool(false).bool(true);
        let mut v = Vec::new();
        let (st, end) = walk_reply(Proc::Readdirplus, &w.buf, 0, |f| v.push(f)).unwrap();
        assert_eq!((st, end), (0, w.buf.len()));
        assert_eq!(
            v,
            vec![
                Field::FileId { at: 20 },
                Field::Fattr { at: 48 },
                Field::Handle { at: 136, len: 28 },
                Field::FileId { at: 172 },
            ]
        );
    }

    #[test]
    fn errors_are_errors_not_panics() {
        assert_eq!(
            walk_call(Proc::Getattr, &[0, 0, 0, 65], 0, |_| {}),
            Err(XdrError::Invalid)
        );
        assert_eq!(
            walk_call(Proc::Getattr, &[0, 0, 0, 8, 1], 0, |_| {}),
            Err(XdrError::Truncated)
        );
        assert_eq!(
            walk_reply(Proc::Lookup, &[0, 0, 0], 0, |_| {}),
            Err(XdrError::Truncated)
        );
        assert!(walk_call(Proc::Getattr, &[], 99, |_| {}).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::wire::{mount, rpc};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Arbitrary bytes through every walker: errors, never panics, never a field outside
        /// the buffer.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), p in 0u32..22, at in 0usize..64) {
            let p = Proc::from_u32(p).unwrap();
            let check = |f: Field| assert!(f.end() <= b.len());
            let _ = walk_call(p, &b, at, check);
            let _ = walk_reply(p, &b, at, check);
            let _ = mount::walk_reply(p as u32 % 6, &b, at, check);
            let _ = mount::walk_call(p as u32 % 6, &b, at);
            if let Ok(rpc::Message::Call(c)) = rpc::parse(&b) {
                prop_assert!(c.args_at <= b.len());
                let _ = rpc::AuthSys::parse(c.cred.body);
            }
        }
    }
}
