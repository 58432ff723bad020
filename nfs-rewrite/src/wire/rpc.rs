//! ONC RPC version 2 messages (RFC 5531): call and reply headers, authentication, TCP record
//! marking, and a writer for the replies the router builds itself.

use super::xdr::{Cursor, Result, XdrError};

/// RPC program numbers.
pub mod program {
    pub const PORTMAP: u32 = 100_000;
    pub const NFS: u32 = 100_003;
    pub const MOUNT: u32 = 100_005;
}

/// Authentication flavors.
pub mod auth {
    pub const NONE: u32 = 0;
    pub const SYS: u32 = 1;
}

/// Largest authentication body (RFC 5531).
pub const MAX_AUTH_BYTES: usize = 400;

/// Credentials or verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueAuth<'a> {
    pub flavor: u32,
    pub body: &'a [u8],
}

/// AUTH_SYS credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSys<'a> {
    pub stamp: u32,
    pub machine_name: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gids: usize,
}

impl<'a> AuthSys<'a> {
    /// Decode an AUTH_SYS body.
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        let mut c = Cursor::new(body);
        let stamp = c.u32()?;
        let machine_name = c.string(255)?;
        let uid = c.u32()?;
        let gid = c.u32()?;
        let gids = c.u32()? as usize;
        if gids > 16 {
            return Err(XdrError::Invalid);
        }
        c.skip(gids * 4)?;
        Ok(AuthSys {
            stamp,
            machine_name,
            uid,
            gid,
            gids,
        })
    }
}

/// A call header; the procedure's arguments start at `args_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: OpaqueAuth<'a>,
    pub verf: OpaqueAuth<'a>,
    pub args_at: usize,
}

/// Status of an accepted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// Results start at `results_at`.
    Success {
        results_at: usize,
    },
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

/// Why a call was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectStat {
    RpcMismatch { low: u32, high: u32 },
    AuthError(u32),
}

/// A reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    Accepted {
        xid: u32,
        verf: OpaqueAuth<'a>,
        stat: AcceptStat,
    },
    Denied {
        xid: u32,
        stat: RejectStat,
    },
}

impl Reply<'_> {
    pub fn xid(&self) -> u32 {
        match self {
            Reply::Accepted { xid, .. } | Reply::Denied { xid, .. } => *xid,
        }
    }
}

/// An RPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Call(Call<'a>),
    Reply(Reply<'a>),
}

impl Message<'_> {
    pub fn xid(&self) -> u32 {
        match self {
            Message::Call(c) => c.xid,
            Message::Reply(r) => r.xid(),
        }
    }
}

fn opaque_auth<'a>(c: &mut Cursor<'a>) -> Result<OpaqueAuth<'a>> {
    let flavor = c.u32()?;
    let (_, body) = c.opaque_var(MAX_AUTH_BYTES)?;
    Ok(OpaqueAuth { flavor, body })
}

/// Decode an RPC message header (one record: for TCP, after the record mark).
pub fn parse(buf: &[u8]) -> Result<Message<'_>> {
    let mut c = Cursor::new(buf);
    let xid = c.u32()?;
    match c.u32()? {
        0 => {
            if c.u32()? != 2 {
                return Err(XdrError::Unsupported);
            }
            let prog = c.u32()?;
            let vers = c.u32()?;
            let proc_ = c.u32()?;
            let cred = opaque_auth(&mut c)?;
            let verf = opaque_auth(&mut c)?;
            Ok(Message::Call(Call {
                xid,
                prog,
                vers,
                proc_,
                cred,
                verf,
                args_at: c.pos(),
            }))
        }
        1 => match c.u32()? {
            0 => {
                let verf = opaque_auth(&mut c)?;
                let stat = match c.u32()? {
                    0 => AcceptStat::Success {
                        results_at: c.pos(),
                    },
                    1 => AcceptStat::ProgUnavail,
                    2 => AcceptStat::ProgMismatch {
                        low: c.u32()?,
                        high: c.u32()?,
                    },
                    3 => AcceptStat::ProcUnavail,
                    4 => AcceptStat::GarbageArgs,
                    5 => AcceptStat::SystemErr,
                    _ => return Err(XdrError::Invalid),
                };
                Ok(Message::Reply(Reply::Accepted { xid, verf, stat }))
            }
            1 => {
                let stat = match c.u32()? {
                    0 => RejectStat::RpcMismatch {
                        low: c.u32()?,
                        high: c.u32()?,
                    },
                    1 => RejectStat::AuthError(c.u32()?),
                    _ => return Err(XdrError::Invalid),
                };
                Ok(Message::Reply(Reply::Denied { xid, stat }))
            }
            _ => Err(XdrError::Invalid),
        },
        _ => Err(XdrError::Invalid),
    }
}

/// Builds XDR messages (management core: replies the router answers itself).
#[derive(Debug, Default, Clone)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }
    /// Variable-length opaque (length, bytes, zero padding).
    pub fn opaque(&mut self, d: &[u8]) -> &mut Self {
        self.u32(d.len() as u32);
        self.fixed(d)
    }
    /// Fixed-length opaque (bytes, zero padding).
    pub fn fixed(&mut self, d: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(d);
        self.buf.resize(self.buf.len() + (4 - d.len() % 4) % 4, 0);
        self
    }
    /// An accepted reply header (AUTH_NONE verifier) with `stat`; results follow when SUCCESS.
    pub fn accepted_reply(&mut self, xid: u32, stat: u32) -> &mut Self {
        self.u32(xid).u32(1).u32(0).u32(auth::NONE).u32(0).u32(stat)
    }
    /// A reply denying the call for its credential: MSG_DENIED, AUTH_ERROR, `auth_stat`.
    pub fn auth_error(&mut self, xid: u32, auth_stat: u32) -> &mut Self {
        self.u32(xid).u32(1).u32(1).u32(1).u32(auth_stat)
    }
    /// A call header with AUTH_SYS credentials (uid, gid; no machine name, no extra groups).
    pub fn call_sys(
        &mut self,
        xid: u32,
        prog: u32,
        vers: u32,
        proc_: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.call_head(xid, prog, vers, proc_)
            .u32(auth::SYS)
            .u32(20)
            .u32(0) // stamp
            .opaque(b"") // machine name
            .u32(uid)
            .u32(gid)
            .u32(0) // gids
            .u32(auth::NONE)
            .u32(0)
    }
    /// xid, CALL, RPC version 2, program, version, procedure.
    fn call_head(&mut self, xid: u32, prog: u32, vers: u32, proc_: u32) -> &mut Self {
        self.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_)
    }
    /// A call header with AUTH_NONE credentials.
    pub fn call(&mut self, xid: u32, prog: u32, vers: u32, proc_: u32) -> &mut Self {
        self.call_head(xid, prog, vers, proc_)
            .u32(auth::NONE)
            .u32(0)
            .u32(auth::NONE)
            .u32(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_and_reply_roundtrip() {
        let mut w = Writer::new();
        w.call(7, program::NFS, 3, 1).u32(0xdead);
        match parse(&w.buf).unwrap() {
            Message::Call(c) => {
                assert_eq!(
                    (c.xid, c.prog, c.vers, c.proc_, c.cred.flavor),
                    (7, program::NFS, 3, 1, auth::NONE)
                );
                assert_eq!(c.args_at, 40);
            }
            m => panic!("{m:?}"),
        }
        let mut w = Writer::new();
        w.accepted_reply(9, 0).u32(0);
        assert_eq!(
            parse(&w.buf).unwrap(),
            Message::Reply(Reply::Accepted {
                xid: 9,
                verf: OpaqueAuth {
                    flavor: 0,
                    body: &[]
                },
                stat: AcceptStat::Success { results_at: 24 }
            })
        );
        for (stat, want) in [
            (1, AcceptStat::ProgUnavail),
            (3, AcceptStat::ProcUnavail),
            (4, AcceptStat::GarbageArgs),
            (5, AcceptStat::SystemErr),
        ] {
            let mut w = Writer::new();
            w.accepted_reply(1, stat);
            assert!(
                matches!(parse(&w.buf).unwrap(), Message::Reply(Reply::Accepted { stat, .. }) if stat == want)
            );
        }
        let mut w = Writer::new();
        w.accepted_reply(1, 2).u32(3).u32(3);
        assert!(matches!(
            parse(&w.buf).unwrap(),
            Message::Reply(Reply::Accepted {
                stat: AcceptStat::ProgMismatch { low: 3, high: 3 },
                ..
            })
        ));
        let mut w = Writer::new();
        w.u32(5).u32(1).u32(1).u32(1).u32(5);
        assert_eq!(
            parse(&w.buf).unwrap(),
            Message::Reply(Reply::Denied {
                xid: 5,
                stat: RejectStat::AuthError(5)
            })
        );
        let mut w = Writer::new();
        w.u32(5).u32(1).u32(1).u32(0).u32(2).u32(2);
        assert_eq!(
            parse(&w.buf).unwrap(),
            Message::Reply(Reply::Denied {
                xid: 5,
                stat: RejectStat::RpcMismatch { low: 2, high: 2 }
            })
        );
    }

    #[test]
    fn auth_sys() {
        let mut w = Writer::new();
        w.u32(1)
            .opaque(b"host")
            .u32(1000)
            .u32(100)
            .u32(2)
            .u32(4)
            .u32(5);
        let a = AuthSys::parse(&w.buf).unwrap();
        assert_eq!(
            (a.machine_name, a.uid, a.gid, a.gids),
            (&b"host"[..], 1000, 100, 2)
        );
    }
}
