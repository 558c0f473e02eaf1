//! The EVENT syntax of `agentgate policy explain`:
//!
//! ```text
//! exec PATH [ARG…]                      exec /usr/bin/curl -s http://x
//! open ACCESS[,ACCESS…] PATH            open read ~/.ssh/id_rsa    open write,create /tmp/x
//! connect ADDR:PORT | [V6]:PORT          connect 10.0.0.1:443       connect [::1]:8000
//! connect unix:PATH | unix:@NAME        connect unix:/run/agentgate/agentgate.sock
//! ```
//! `~` is the session's home, `${workspace}` its workspace; a relative PATH
//! is taken in the workspace.
use std::{
    ffi::OsStr,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::event::{ConnectAddr, Event, KernelVerdict, Process, Target};

use super::context::SessionContext;

pub const SYNTAX: &str =
    "exec PATH [ARG…] | open read|write|create[,…] PATH | connect ADDR:PORT | connect unix:PATH";

fn expand(word: &str, ctx: &SessionContext) -> PathBuf {
    let first = |v: &[Vec<u8>]| v.first().cloned().unwrap_or_default();
    let bytes: Vec<u8> = if let Some(rest) = word.strip_prefix("${workspace}") {
        [first(ctx.workspaces()).as_slice(), rest.as_bytes()].concat()
    } else if word == "~" || word.starts_with("~/") {
        [first(ctx.homes()).as_slice(), &word.as_bytes()[1..]].concat()
    } else if word.starts_with('/') {
        word.as_bytes().to_vec()
    } else {
        [first(ctx.workspaces()).as_slice(), b"/", word.as_bytes()].concat()
    };
    PathBuf::from(OsStr::from_bytes(&bytes))
}

pub fn parse_event(words: &[String], ctx: &SessionContext) -> Result<Event, String> {
    let (verb, args) = words
        .split_first()
        .ok_or_else(|| format!("no event given: {SYNTAX}"))?;
    let mut process = Process {
        uid: ctx.uid,
        ..Process::default()
    };
    let target = match (verb.as_str(), args) {
        ("exec", [path, rest @ ..]) => {
            let path = expand(path, ctx);
            process.comm = path
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect())
                .unwrap_or_default();
            process.exe = Some(path.clone());
            let mut argv = vec![path.to_string_lossy().into_owned()];
            argv.extend(rest.iter().cloned());
            Target::Exec {
                raw_path: path.clone(),
                path,
                argv,
                dirfd: libc::AT_FDCWD,
            }
        }
        ("open", [access, path]) => {
            let (mut read, mut write, mut create) = (false, false, false);
            for a in access.split(',') {
                match a {
                    "read" => read = true,
                    "write" => write = true,
                    "create" => create = true,
                    other => return Err(format!("unknown access `{other}` (read, write, create)")),
                }
            }
            let mut flags = match (read, write || create) {
                (true, true) => libc::O_RDWR,
                (false, true) => libc::O_WRONLY,
                _ => libc::O_RDONLY,
            };
            if create {
                flags |= libc::O_CREAT;
            }
            let path = expand(path, ctx);
            Target::Open {
                raw_path: path.clone(),
                path,
                dirfd: libc::AT_FDCWD,
                flags,
                mode: 0o644,
            }
        }
        ("connect", [addr]) => {
            let addr = if let Some(p) = addr.strip_prefix("unix:") {
                let path = if p.starts_with('@') {
                    PathBuf::from(p)
                } else {
                    expand(p, ctx)
                };
                ConnectAddr::Unix(path)
            } else {
                let sa: SocketAddr = addr.parse().map_err(|_| {
                    format!("bad address `{addr}`: ADDR:PORT, [V6]:PORT or unix:PATH")
                })?;
                ConnectAddr::Inet(sa)
            };
            Target::Connect { addr }
        }
        _ => {
            return Err(format!(
                "cannot read the event `{}`: {SYNTAX}",
                words.join(" ")
            ));
        }
    };
    Ok(Event {
        session: 0,
        time_ns: 0,
        process,
        target,
        kernel: KernelVerdict {
            verdict: "none",
            enforced: "none",
            rule: 0,
        },
    })
}

/// The event's subject path, for display.
pub fn event_path(ev: &Event) -> Option<&Path> {
    match &ev.target {
        Target::Exec { path, .. } | Target::Open { path, .. } => Some(path),
        Target::Connect {
            addr: ConnectAddr::Unix(p),
        } => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SessionContext {
        SessionContext::resolved(
            "p",
            vec![b"/ws".to_vec()],
            vec![b"/home/u".to_vec()],
            7,
            vec![],
        )
    }

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn reads_every_form() {
        let e = parse_event(&w("exec /usr/bin/curl -s x"), &ctx()).unwrap();
        assert!(matches!(&e.target, Target::Exec { argv, .. } if argv.len() == 3));
        assert_eq!(e.process.comm, "curl");
        let e = parse_event(&w("open read,write,create ~/.ssh/id_rsa"), &ctx()).unwrap();
        assert!(matches!(&e.target, Target::Open { path, flags, .. }
            if path == Path::new("/home/u/.ssh/id_rsa") && *flags == libc::O_RDWR | libc::O_CREAT));
        let e = parse_event(&w("open read src/x"), &ctx()).unwrap();
        assert_eq!(event_path(&e), Some(Path::new("/ws/src/x")));
        let e = parse_event(&w("connect [::1]:8000"), &ctx()).unwrap();
        assert!(matches!(
            e.target,
            Target::Connect {
                addr: ConnectAddr::Inet(_)
            }
        ));
        let e = parse_event(&w("connect unix:@bus"), &ctx()).unwrap();
        assert_eq!(event_path(&e), Some(Path::new("@bus")));
        for bad in ["", "exec", "open rwx /x", "connect nowhere", "fly /x"] {
            assert!(parse_event(&w(bad), &ctx()).is_err(), "{bad}");
        }
    }
}
