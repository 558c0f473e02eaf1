//! Records from the kernel, decoded into owned values. The enriched form the
//! rest of the daemon (engine, audit, output) works with is
//! `agentgate_policy::event`, re-exported here.
use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use agent_common::{
    AF_INET, AF_INET6, AF_UNIX, EVENT_HEADER_LEN, EventHeader, EventKind, FileOp, PATH_MAX,
};
pub use agentgate_policy::event::{ConnectAddr, Event, KernelVerdict, Process, Target};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its {EVENT_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("record claims {claimed} bytes of data but has {have}")]
    Truncated { claimed: usize, have: usize },
    #[error("change record of unknown op {0}")]
    Op(i64),
}

/// A decoded kernel record before enrichment (owned, no /proc look-ups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub header: EventHeader,
    pub kind: EventKind,
    pub path: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    /// Change records only.
    pub change: Option<RawChange>,
}

/// What a change record adds to its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    pub op: FileOp,
    /// The op's second path, when it has one (up to its first NUL).
    pub second_path: Option<Vec<u8>>,
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() < EVENT_HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: EventHeader is repr(C) plain data (aya::Pod); the length is
    // checked and read_unaligned copes with any alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::Kind(header.kind))?;
    let data = &bytes[EVENT_HEADER_LEN..];
    let path_len = header.path_len as usize;
    if data.len() < path_len {
        return Err(DecodeError::Truncated {
            claimed: path_len,
            have: data.len(),
        });
    }
    let path = data[..path_len].to_vec();
    // Exec and change records carry a second block at PATH_MAX: argv, or
    // the change's second path.
    let second = || {
        let end = PATH_MAX + header.argv_len as usize;
        data.get(PATH_MAX..end).ok_or(DecodeError::Truncated {
            claimed: end,
            have: data.len(),
        })
    };
    let mut argv = Vec::new();
    if kind == EventKind::Exec && header.argv_len > 0 {
        let block = second()?;
        // The kernel copies the whole argv block of the new image (arg2 =
        // -1): every NUL ends an argument. A block cut at ARGV_MAX keeps its
        // last, partial argument.
        let block = block.strip_suffix(&[0]).unwrap_or(block);
        argv = block.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    }
    let change = if kind == EventKind::Change {
        let op = u32::try_from(header.arg1)
            .ok()
            .and_then(FileOp::from_u32)
            .ok_or(DecodeError::Op(header.arg1))?;
        let second_path = if op.has_second_path() {
            let block = second()?;
            Some(block.iter().take_while(|b| **b != 0).copied().collect())
        } else {
            None
        };
        Some(RawChange { op, second_path })
    } else {
        None
    };
    Ok(RawEvent {
        header,
        kind,
        path,
        argv,
        change,
    })
}

pub fn comm(header: &EventHeader) -> String {
    let end = header
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(header.comm.len());
    String::from_utf8_lossy(&header.comm[..end]).into_owned()
}

pub fn connect_addr(header: &EventHeader, path: &[u8]) -> ConnectAddr {
    match header.family {
        AF_INET => {
            let a = &header.addr;
            ConnectAddr::Inet(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
                header.port,
            ))
        }
        AF_INET6 => ConnectAddr::Inet(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(header.addr)),
            header.port,
        )),
        AF_UNIX => {
            // Abstract names start with NUL; show them as `@name`.
            let name = match path.split_first() {
                Some((0, rest)) => {
                    let mut v = b"@".to_vec();
                    v.extend(rest.iter().take_while(|b| **b != 0));
                    v
                }
                _ => path.iter().take_while(|b| **b != 0).copied().collect(),
            };
            ConnectAddr::Unix(PathBuf::from(OsStr::from_bytes(&name)))
        }
        other => ConnectAddr::Other(other),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use agent_common::{EventBuf, PATH_RESOLVED};

    use super::*;

    pub(crate) fn header(kind: EventKind) -> EventHeader {
        // SAFETY: EventHeader is plain data; all zeros is valid.
        let mut h: EventHeader = unsafe { std::mem::zeroed() };
        h.kind = kind as u32;
        h
    }

    pub(crate) fn record(h: &EventHeader, data: &[u8]) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) plain-data value.
        let hb = unsafe {
            std::slice::from_raw_parts((h as *const EventHeader).cast::<u8>(), EVENT_HEADER_LEN)
        };
        [hb, data].concat()
    }

    #[test]
    fn decodes_exec_path_and_argv() {
        let mut h = header(EventKind::Exec);
        h.path_len = 8;
        h.argv_len = 11;
        h.arg2 = -1;
        let mut data = vec![0u8; PATH_MAX + 11];
        data[..8].copy_from_slice(b"/bin/cat");
        data[PATH_MAX..].copy_from_slice(b"cat\0/etc/x\0");
        let ev = decode(&record(&h, &data)).unwrap();
        assert_eq!(ev.path, b"/bin/cat");
        assert_eq!(ev.argv, vec![b"cat".to_vec(), b"/etc/x".to_vec()]);
    }

    /// A change record as the kernel sends it: the path, then the second
    /// path at `PATH_MAX`.
    pub(crate) fn change_record(op: FileOp, path: &[u8], second: &[u8], flags: u8) -> Vec<u8> {
        let mut h = header(EventKind::Change);
        h.arg1 = op as i64;
        h.path_flags = flags;
        h.path_len = path.len() as u16;
        h.argv_len = second.len() as u16;
        let mut data = vec![0u8; PATH_MAX + second.len()];
        data[..path.len()].copy_from_slice(path);
        data[PATH_MAX..].copy_from_slice(second);
        record(&h, &data)
    }

    #[test]
    fn decodes_change_op_and_second_path() {
        let ev = decode(&change_record(
            FileOp::Rename,
            b"/tmp/x",
            b"/home/u/.bashrc\0",
            PATH_RESOLVED,
        ))
        .unwrap();
        assert_eq!(ev.kind, EventKind::Change);
        assert_eq!(ev.path, b"/tmp/x");
        assert_eq!(
            ev.change,
            Some(RawChange {
                op: FileOp::Rename,
                second_path: Some(b"/home/u/.bashrc".to_vec())
            })
        );
        // An op without a second path reads none, whatever follows.
        let ev = decode(&change_record(FileOp::Unlink, b"/tmp/x", b"junk", 0)).unwrap();
        assert_eq!(
            ev.change,
            Some(RawChange {
                op: FileOp::Unlink,
                second_path: None
            })
        );
        let mut bad = change_record(FileOp::Mkdir, b"/x", b"", 0);
        bad[std::mem::offset_of!(EventHeader, arg1)] = 99;
        assert_eq!(decode(&bad), Err(DecodeError::Op(99)));
        // A second path past the record's end.
        let whole = change_record(FileOp::Link, b"/a", b"/b", 0);
        assert_eq!(
            decode(&whole[..whole.len() - 1]),
            Err(DecodeError::Truncated {
                claimed: PATH_MAX + 2,
                have: PATH_MAX + 1
            })
        );
    }

    #[test]
    fn refuses_short_truncated_and_unknown_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        let mut h = header(EventKind::Open);
        h.path_len = 100;
        assert_eq!(
            decode(&record(&h, b"/etc")),
            Err(DecodeError::Truncated {
                claimed: 100,
                have: 4
            })
        );
        h.kind = 99;
        assert_eq!(decode(&record(&h, &[])), Err(DecodeError::Kind(99)));
        // A record can never be longer than the kernel's buffer.
        assert!(std::mem::size_of::<EventBuf>() >= EVENT_HEADER_LEN + PATH_MAX);
    }

    #[test]
    fn connect_addresses_of_every_family() {
        let mut h = header(EventKind::Connect);
        h.family = AF_INET;
        h.port = 9;
        h.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            connect_addr(&h, &[]),
            ConnectAddr::Inet("127.0.0.1:9".parse().unwrap())
        );
        h.family = AF_INET6;
        h.addr = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets();
        assert_eq!(
            connect_addr(&h, &[]),
            ConnectAddr::Inet("[::ffff:127.0.0.1]:9".parse().unwrap())
        );
        h.family = AF_UNIX;
        assert_eq!(
            connect_addr(&h, b"/run/x.sock\0\0"),
            ConnectAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            connect_addr(&h, b"\0abstract"),
            ConnectAddr::Unix("@abstract".into())
        );
        h.family = 17;
        assert_eq!(connect_addr(&h, &[]), ConnectAddr::Other(17));
    }
}
