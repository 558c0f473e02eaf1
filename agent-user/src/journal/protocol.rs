//! journald's native protocol (systemd.journal-fields(7), "Native Journal
//! Protocol"): one datagram of fields to `/run/systemd/journal/socket`.
//!
//! A field is `NAME=value\n`; a value containing a newline is sent as
//! `NAME\n`, its length as 64-bit little-endian, the bytes, `\n`. An entry
//! too large for a datagram is written to a sealed memfd whose descriptor is
//! passed instead (SCM_RIGHTS).
//!
//! Written here rather than taken from a crate: `libsystemd` and
//! `systemd-journal-logger` both hard-code the socket path (tests need
//! another) and keep a process-global socket; the latter also only logs
//! through the `log` facade, which the daemon already gives to env_logger.
use std::{
    ffi::CStr,
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{ffi::OsStrExt, net::UnixDatagram},
    },
    path::{Path, PathBuf},
    time::Duration,
};

pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// One journal entry being built.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    buf: Vec<u8>,
}

/// journald keeps fields named with `A-Z`, `0-9` and `_`, not starting with a
/// digit or `_` (those are its own), at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

impl Entry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field. Names are chosen by this program, so a bad one is a bug.
    pub fn field(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        assert!(valid_name(name), "invalid journal field name {name:?}");
        let value = value.as_ref();
        self.buf.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            self.buf.push(b'\n');
            self.buf
                .extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            self.buf.push(b'=');
        }
        self.buf.extend_from_slice(value);
        self.buf.push(b'\n');
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A client socket for one journal socket path.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

impl Journal {
    /// A socket for sending to `path`. Sends that cannot be delivered within
    /// a second (journald stalled) fail instead of stalling the caller.
    pub fn new(path: impl Into<PathBuf>) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(Self {
            socket,
            path: path.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn send(&self, entry: &Entry) -> io::Result<()> {
        match self.socket.send_to(entry.as_bytes(), &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(entry.as_bytes())
            }
            Err(e) => Err(e),
        }
    }

    /// The large-entry path: the entry in a sealed memfd, the descriptor in
    /// an otherwise empty datagram.
    fn send_memfd(&self, bytes: &[u8]) -> io::Result<()> {
        const NAME: &CStr = c"agentgate-journal";
        // SAFETY: a valid C string and flags; the result is checked.
        let fd = unsafe {
            libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor; File owns it now.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut addr, addr_len) = sockaddr(&self.path)?;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every pointer set below outlives the
        // sendmsg call, and the control buffer is CMSG_SPACE bytes for one fd.
        let rc = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&raw mut addr).cast();
            msg.msg_namelen = addr_len;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                file.as_raw_fd(),
            );
            libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_safe_fields() {
        let mut e = Entry::new();
        e.field("MESSAGE", "hello").field("REASON", "two\nlines");
        let mut want = b"MESSAGE=hello\nREASON\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(e.as_bytes(), want.as_slice());
    }

    #[test]
    fn field_names_follow_journald_rules() {
        assert!(valid_name("DECISION"));
        assert!(valid_name("AGENT_SHA256"));
        assert!(!valid_name("_PID"));
        assert!(!valid_name("1X"));
        assert!(!valid_name("decision"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"A".repeat(65)));
    }

    #[test]
    fn a_datagram_carries_the_entry_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut e = Entry::new();
        e.field("MESSAGE", "x").field("DECISION", "deny");
        Journal::new(&path).unwrap().send(&e).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MESSAGE=x\nDECISION=deny\n");
    }

    #[test]
    fn sending_to_a_missing_socket_fails() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("nothing")).unwrap();
        assert!(j.send(Entry::new().field("MESSAGE", "x")).is_err());
    }
}
