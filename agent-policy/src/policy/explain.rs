//! The EVENT syntax of `agentgate policy explain`:
//!
//! ```text
//! exec PATH [ARG…]                      exec /usr/bin/curl -s http://x
//! open ACCESS[,ACCESS…] PATH            open read ~/.ssh/id_rsa    open write,create /tmp/x
//! connect ADDR:PORT | [V6]:PORT          connect 10.0.0.1:443       connect [::1]:8000
//! connect unix:PATH | unix:@NAME        connect unix:/run/agentgate/agentgate.sock
//! rename|link FROM TO                   rename /tmp/x ~/.bashrc    link ~/.ssh/id_rsa keys
//! symlink CONTENTS NEWNAME              symlink /etc/shadow s      (`ln -s` order)
//! unlink|rmdir|mkdir|mknod PATH         unlink /etc/cron.d/x       mkdir build
//! create|truncate|chmod|chown PATH      chmod /etc/passwd          (create: a new file)
//! ```
//! `~` is the session's home, `${workspace}` its workspace; a relative PATH
//! is taken in the workspace. A symlink's CONTENTS are kept as written
//! (they are not judged).
use std::{ffi::OsStr, net::SocketAddr, os::unix::ffi::OsStrExt, path::PathBuf};

use agent_common::FileOp;

use crate::event::{ConnectAddr, Event, KernelVerdict, Process, Target, file_op_named};

use super::context::SessionContext;

pub const SYNTAX: &str = "exec PATH [ARG…] | open read|write|create[,…] PATH | connect ADDR:PORT | \
     connect unix:PATH | rename|link FROM TO | symlink CONTENTS NEWNAME | \
     unlink|rmdir|mkdir|mknod|create|truncate|chmod|chown PATH";

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

/// A change: `OP PATH`, or `OP FROM TO` for an op with a second path
/// (`symlink CONTENTS NEWNAME`, as `ln -s` takes them).
fn change(verb: &str, args: &[String], ctx: &SessionContext) -> Option<Target> {
    let op = file_op_named(verb)?;
    let (path, to) = match (op, args) {
        (FileOp::Symlink, [contents, new_name]) => {
            (expand(new_name, ctx), Some(PathBuf::from(contents)))
        }
        (_, [from, to]) if op.has_second_path() => (expand(from, ctx), Some(expand(to, ctx))),
        (_, [path]) if !op.has_second_path() => (expand(path, ctx), None),
        _ => return None,
    };
    Some(Target::Change { op, path, to })
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
        _ => change(verb, args, ctx)
            .ok_or_else(|| format!("cannot read the event `{}`: {SYNTAX}", words.join(" ")))?,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert!(matches!(&e.target, Target::Open { path, .. } if path == Path::new("/ws/src/x")));
        let e = parse_event(&w("connect [::1]:8000"), &ctx()).unwrap();
        assert!(matches!(
            e.target,
            Target::Connect {
                addr: ConnectAddr::Inet(_)
            }
        ));
        let e = parse_event(&w("connect unix:@bus"), &ctx()).unwrap();
        assert!(
            matches!(&e.target, Target::Connect { addr: ConnectAddr::Unix(p) }
            if p == Path::new("@bus"))
        );
        for bad in ["", "exec", "open rwx /x", "connect nowhere", "fly /x"] {
            assert!(parse_event(&w(bad), &ctx()).is_err(), "{bad}");
        }
    }

    fn change(words: &str) -> (FileOp, PathBuf, Option<PathBuf>) {
        match parse_event(&w(words), &ctx()).unwrap().target {
            Target::Change { op, path, to } => (op, path, to),
            other => panic!("{words}: {other:?}"),
        }
    }

    #[test]
    fn reads_every_change() {
        assert_eq!(
            change("rename /tmp/x ~/.bashrc"),
            (
                FileOp::Rename,
                "/tmp/x".into(),
                Some("/home/u/.bashrc".into())
            )
        );
        assert_eq!(
            change("link ~/.ssh/id_rsa keys/k"),
            (
                FileOp::Link,
                "/home/u/.ssh/id_rsa".into(),
                Some("/ws/keys/k".into())
            )
        );
        // `ln -s` order; the contents stay as written.
        assert_eq!(
            change("symlink ~/.ssh/id_rsa s"),
            (
                FileOp::Symlink,
                "/ws/s".into(),
                Some("~/.ssh/id_rsa".into())
            )
        );
        for (verb, op) in [
            ("unlink", FileOp::Unlink),
            ("rmdir", FileOp::Rmdir),
            ("mkdir", FileOp::Mkdir),
            ("mknod", FileOp::Mknod),
            ("create", FileOp::Create),
            ("truncate", FileOp::Truncate),
            ("chmod", FileOp::Chmod),
            ("chown", FileOp::Chown),
        ] {
            assert_eq!(
                change(&format!("{verb} ~/x")),
                (op, "/home/u/x".into(), None)
            );
        }
        for bad in [
            "rename /a",
            "link /a /b /c",
            "symlink /a",
            "unlink /a /b",
            "mkdir",
        ] {
            assert!(parse_event(&w(bad), &ctx()).is_err(), "{bad}");
        }
    }
}
