//! Every way of reaching or changing a file is judged by the file it
//! reaches: a relative name, `..`, a symlink, `/proc/self/root`, a
//! directory descriptor (what `tar` and `grep -r` do) name the same file as
//! its plain path, and rename, link, unlink, truncate, chmod and the rest
//! are judged like writes. LSM mode refuses with EPERM before the call;
//! fallback mode kills the caller before the call returns (opens: before a
//! byte is read) — for changes other than opens the kernel completes that
//! one call first, and these tests assert exactly that. Each case runs
//! beside an untagged twin that is left alone.
use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use crate::{
    enforce::{Mode, SECRET, World, status_of, stdout},
    support::*,
};

/// Reads of the protected file by names other than its plain path: no
/// byte of it reaches the tagged reader; the untagged twin reads it.
#[test]
fn reads_by_any_name_are_refused_before_a_byte_is_read() {
    let w = World::new();
    fs::create_dir_all(w.path("other/deeper")).unwrap();
    std::os::unix::fs::symlink(w.path("forbidden/secret.txt"), w.path("link")).unwrap();
    let ws = w.ws().to_owned();
    let py = python();
    let reads = [
        // The archive after the status line: tar's output holds NULs.
        ("tar", "tar cf archive.tar forbidden".to_owned()),
        ("grep", "grep -r secret .".to_owned()),
        ("relative", "cd forbidden && cat secret.txt".to_owned()),
        (
            "dotdot",
            "cd other/deeper && cat ../../forbidden/secret.txt".to_owned(),
        ),
        ("symlink", "cat link".to_owned()),
        (
            "procroot",
            format!("cat /proc/self/root{ws}/forbidden/secret.txt"),
        ),
        (
            "dirfd",
            format!(
                "{py} -c 'import os,sys; d=os.open(\"forbidden\", os.O_RDONLY|os.O_DIRECTORY); \
                 sys.stdout.buffer.write(os.read(os.open(\"secret.txt\", 0, dir_fd=d), 99))'"
            ),
        ),
    ];
    for (name, cmd) in reads {
        let script =
            format!("{cmd}; echo {name}=$?; cat archive.tar 2>/dev/null; rm -f archive.tar");
        let out = w.tagged(&script);
        let status = status_of(&out, name);
        assert!(
            !stdout(&out).contains(SECRET),
            "{name}: the secret was read: {out:?}"
        );
        match w.mode {
            Mode::Lsm => assert!(status != 0 && status != 137, "{name}: {out:?}"),
            Mode::Fallback => assert_eq!(status, 137, "{name}: {out:?}"),
        }
        let plain = w.untagged(&script);
        assert!(
            stdout(&plain).contains(SECRET),
            "{name}: the untagged twin was touched: {plain:?}"
        );
    }
    // Judged by the file, whatever name was used.
    let d = w.decision_on("open", path_str(&w.path("forbidden/secret.txt")));
    assert_eq!(d["kernel"]["verdict"], "deny", "{d}");
}

/// A program run by a symlink to it is the program. (A binary: the image
/// of a script is its interpreter, and fallback mode judges a script by the
/// path it was run by only when that path is plain — README.)
#[test]
fn a_program_run_by_a_symlink_is_judged_as_the_program() {
    let w = World::new();
    fs::copy("/usr/bin/echo", w.path("bin/forbidden")).unwrap();
    std::os::unix::fs::symlink(w.path("bin/forbidden"), w.path("alias")).unwrap();
    let out = w.tagged("./alias ran; echo alias=$?");
    assert_eq!(status_of(&out, "alias"), w.refused(126), "{out:?}");
    assert!(!stdout(&out).contains("ran"), "the program ran: {out:?}");
    let plain = w.untagged("./alias ran; echo alias=$?");
    assert_eq!(status_of(&plain, "alias"), 0, "{plain:?}");
    // Through a symlinked directory, as `/bin/ssh` is `/usr/bin/ssh` on a
    // merged /usr (red team #30: the kernel and the daemon disagreed).
    std::os::unix::fs::symlink(w.path("bin"), w.path("merged")).unwrap();
    let out = w.tagged("./merged/forbidden ran; echo dir=$?");
    assert_eq!(status_of(&out, "dir"), w.refused(126), "{out:?}");
    assert!(!stdout(&out).contains("ran"), "the program ran: {out:?}");
}

/// One change, done by a Python one-liner: prints `NAME=0` when the call
/// went through, `NAME=13` when it was refused with EPERM.
fn change_script(name: &str, call: &str) -> String {
    format!(
        "{} -c 'import os, sys\ntry:\n  {call}\nexcept PermissionError: sys.exit(13)'; echo {name}=$?",
        python()
    )
}

/// Puts the protected directory back as `World` made it.
fn reset(w: &World) {
    let dir = w.path("forbidden");
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("secret.txt"), SECRET).unwrap();
    fs::write(w.path("incoming.txt"), "replacement").unwrap();
    let _ = fs::remove_file(w.path("hardlink"));
}

/// What each change leaves behind when it happened.
fn happened(w: &World, name: &str) -> bool {
    let secret = w.path("forbidden/secret.txt");
    let content = fs::read_to_string(&secret).ok();
    match name {
        "rename-onto" => content.as_deref() == Some("replacement"),
        "rename-into" => w.path("forbidden/new.txt").exists(),
        "rename-out" => !secret.exists(),
        "hardlink" => w.path("hardlink").exists(),
        "unlink" | "rm-rf" => !secret.exists(),
        "truncate" => content.as_deref() == Some(""),
        "chmod" => {
            fs::metadata(&secret)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
                == Some(0o777)
        }
        "mkdir" => w.path("forbidden/d").is_dir(),
        "symlink" => w.path("forbidden/s").symlink_metadata().is_ok(),
        other => panic!("no check for {other}"),
    }
}

const CHANGES: &[(&str, &str)] = &[
    (
        "rename-onto",
        "os.rename(\"incoming.txt\", \"forbidden/secret.txt\")",
    ),
    (
        "rename-into",
        "os.rename(\"incoming.txt\", \"forbidden/new.txt\")",
    ),
    (
        "rename-out",
        "os.rename(\"forbidden/secret.txt\", \"taken.txt\")",
    ),
    (
        "hardlink",
        "os.link(\"forbidden/secret.txt\", \"hardlink\")",
    ),
    ("unlink", "os.unlink(\"forbidden/secret.txt\")"),
    ("truncate", "os.truncate(\"forbidden/secret.txt\", 0)"),
    ("chmod", "os.chmod(\"forbidden/secret.txt\", 0o777)"),
    ("mkdir", "os.mkdir(\"forbidden/d\")"),
    ("symlink", "os.symlink(\"/etc/passwd\", \"forbidden/s\")"),
];

/// Each change to the protected directory: LSM mode refuses it and nothing
/// changes; fallback mode kills the caller, after the kernel has made that
/// one change (what a syscall tracepoint cannot prevent). `rm -rf` is
/// refused at its first unlink. The untagged twin makes every change.
#[test]
fn changes_to_a_protected_file_are_refused() {
    let w = World::new();
    let mut scripts: Vec<(&str, String)> = CHANGES
        .iter()
        .map(|(name, call)| (*name, change_script(name, call)))
        .collect();
    scripts.push(("rm-rf", "rm -rf forbidden; echo rm-rf=$?".to_owned()));
    for (name, script) in &scripts {
        reset(&w);
        let out = w.tagged(script);
        let status = status_of(&out, name);
        match w.mode {
            Mode::Lsm => {
                let refused = if *name == "rm-rf" { 1 } else { 13 };
                assert_eq!(status, refused, "{name}: {out:?}");
                assert!(!happened(&w, name), "{name}: the change happened");
            }
            Mode::Fallback => {
                assert_eq!(status, 137, "{name}: {out:?}");
                // rm -rf dies at its first unlink, before the rest.
                if *name != "rm-rf" {
                    assert!(happened(&w, name), "{name}: fallback completes the call");
                }
            }
        }
        reset(&w);
        let plain = w.untagged(script);
        assert_eq!(status_of(&plain, name), 0, "{name}: twin: {plain:?}");
        assert!(happened(&w, name), "{name}: the untagged twin's change");
    }
    // Both ends of a rename are in the record; the refusal names the rule.
    let is = |e: &serde_json::Value| {
        s(e, "kind") == "rename" && s(e, "target").contains("forbidden/secret.txt")
    };
    let events =
        w.d.wait_for(Duration::from_secs(10), |ev| ev.iter().any(is));
    let rename = events.iter().find(|e| is(e)).expect("a rename event");
    assert_eq!(rename["kernel"]["verdict"], "deny", "{rename}");
    assert_eq!(rename["decision"]["rule"], "no-forbidden-files", "{rename}");
}

/// The same changes inside the workspace go ahead in a session.
#[test]
fn the_same_changes_inside_the_workspace_go_ahead() {
    let w = World::new();
    fs::create_dir_all(w.path("mine")).unwrap();
    fs::write(w.path("mine/a.txt"), "mine").unwrap();
    let calls = "os.rename(\"mine/a.txt\", \"mine/b.txt\"); os.link(\"mine/b.txt\", \"mine/c.txt\"); \
                 os.symlink(\"b.txt\", \"mine/d.txt\"); os.truncate(\"mine/b.txt\", 1); \
                 os.chmod(\"mine/b.txt\", 0o600); os.mkdir(\"mine/e\"); os.rmdir(\"mine/e\"); \
                 os.unlink(\"mine/c.txt\")";
    let out = w.tagged(&change_script("inside", calls));
    assert_eq!(status_of(&out, "inside"), 0, "{out:?}");
    assert_eq!(fs::read_to_string(w.path("mine/b.txt")).unwrap(), "m");
    assert!(!w.path("mine/c.txt").exists());
    assert!(Path::new(&w.path("mine/d.txt")).symlink_metadata().is_ok());
}

/// io_uring and open_by_handle_at reach files around the syscall
/// tracepoints: fallback mode kills a session's process that sets up a ring
/// or opens by handle. LSM mode judges their opens at `file_open` and lets
/// the calls themselves through.
#[test]
fn io_uring_and_open_by_handle_are_refused_in_fallback_mode() {
    let w = World::new();
    // io_uring_setup(8, &params) is syscall 425 on x86_64,
    // open_by_handle_at(-1, NULL, 0) is 304 (EBADF, harmlessly).
    for (name, call) in [
        (
            "uring",
            "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
        ),
        ("handle", "libc.syscall(304, -1, None, 0)"),
    ] {
        let script = format!(
            "{} -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); {call}'; echo {name}=$?",
            python()
        );
        let out = w.tagged(&script);
        let expected = match w.mode {
            Mode::Lsm => 0,
            Mode::Fallback => 137,
        };
        assert_eq!(status_of(&out, name), expected, "{name}: {out:?}");
        let plain = w.untagged(&script);
        assert_eq!(status_of(&plain, name), 0, "{name}: twin: {plain:?}");
    }
}

/// A descriptor opened for reading, reopened for writing through
/// `/dev/fd/N`, is judged as a write of the file it reaches (red team #1).
#[test]
fn a_descriptor_reopened_for_writing_is_a_write_of_its_file() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let w = World::with_policy(&repo.join("policies"));
    let outside =
        std::path::PathBuf::from(format!("/home/agentgate-test-fd-{}", std::process::id()));
    fs::create_dir_all(&outside).unwrap();
    let target = outside.join("target.txt");
    fs::write(&target, "original\n").unwrap();
    let script = format!(
        "sh -c 'exec 3<{t}; echo PWNED >>/dev/fd/3'; echo fd=$?",
        t = target.display()
    );
    let out = w.tagged_with(&["--profile", "coding-agent"], &script);
    let left = fs::read_to_string(&target).unwrap();
    let plain = w.untagged(&script);
    let after_twin = fs::read_to_string(&target).unwrap();
    fs::remove_dir_all(&outside).unwrap();
    let status = status_of(&out, "fd");
    match w.mode {
        Mode::Lsm => assert!(status != 0 && status != 137, "{out:?}"),
        Mode::Fallback => assert_eq!(status, 137, "{out:?}"),
    }
    assert_eq!(left, "original\n", "the file was written through /dev/fd");
    assert_eq!(status_of(&plain, "fd"), 0, "{plain:?}");
    assert_eq!(after_twin, "original\nPWNED\n", "the untagged twin writes");
}

/// A hard link or a bind mount made outside the session reaches the
/// protected file under a name no rule speaks of: the kernel knows the file
/// by its inode (`KNOWN_INODES`) and judges the call by its protected name.
#[test]
fn a_protected_file_reached_by_another_name_is_still_protected() {
    let w = World::new();
    fs::hard_link(w.path("forbidden/secret.txt"), w.path("hardlink")).unwrap();
    let bound = w.path("bound.txt");
    fs::write(&bound, "decoy").unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "--bind",
            path_str(&w.path("forbidden/secret.txt")),
            path_str(&bound),
        ])
        .status()
        .unwrap()
        .success();
    assert!(mounted, "bind mount for the test");
    for name in ["hardlink", "bound.txt"] {
        let script = format!("cat {name}; echo read=$?");
        let out = w.tagged(&script);
        let plain = w.untagged(&script);
        assert!(
            !stdout(&out).contains(SECRET),
            "{name}: read: {out:?}\n{}",
            w.d.status()
        );
        assert_eq!(status_of(&out, "read"), w.refused(1), "{name}: {out:?}");
        assert!(stdout(&plain).contains(SECRET), "{name}: twin: {plain:?}");
    }
    let _ = std::process::Command::new("umount").arg(&bound).status();
    // Reported under the name the rules protect.
    let d = w.decision_on("open", path_str(&w.path("forbidden/secret.txt")));
    assert_eq!(d["decision"]["rule"], "no-forbidden-files", "{d}");
}

/// `open_tree(OPEN_TREE_CLONE)` and `fsopen` make detached trees whose
/// files read as `/name`: a session's process is killed for either, in both
/// modes; the untagged twin makes the calls (and gets EBADF or a tree).
#[test]
fn detached_trees_are_refused_in_both_modes() {
    let w = World::new();
    // open_tree(AT_FDCWD, "/tmp", OPEN_TREE_CLONE) is syscall 428 on
    // x86_64, fsopen("tmpfs", 0) is 430.
    for (name, call) in [
        ("tree", "libc.syscall(428, -100, b\"/tmp\", 1)"),
        ("fsopen", "libc.syscall(430, b\"tmpfs\", 0)"),
    ] {
        let script = format!(
            "{} -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); {call}'; echo {name}=$?",
            python()
        );
        let out = w.tagged(&script);
        assert_eq!(status_of(&out, name), 137, "{name}: {out:?}");
        let plain = w.untagged(&script);
        assert_eq!(status_of(&plain, name), 0, "{name}: twin: {plain:?}");
    }
}
