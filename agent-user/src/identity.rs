//! Files that rules protect, known by identity (device, inode) as well as
//! by path: a hard link to `~/.ssh/id_rsa` in the workspace, or a bind
//! mount of it made outside the session, reaches the same inode under a
//! name no rule speaks of. The kernel looks the inode of every file a
//! session opens or changes up in `KNOWN_INODES` and judges the call by the
//! protected name as well (agent-ebpf's `resolve::known_name`).
//!
//! The names come from the installed rulesets' path rules that block or
//! mark a session (deny, kill, refer, or `set_labels`): their literal part
//! (an exact file, or the directory a `dir/**` pattern starts with). Suffix
//! rules (`**/*.pem`) name no place to look and are not covered. The daemon
//! walks those places, bounded, when rules are installed and every few
//! seconds after, so a key created later is known soon after.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_common::{Access, InodeKey, KnownName, RULE_PATH_LEN, RuleEntry, Verdict};
use agentgate_policy::KernelRuleset;

/// At most this many files are taken from under one protected directory.
pub const FILES_PER_PLACE: usize = 1024;
/// How deep a walk goes below a protected directory.
const DEPTH: usize = 6;

/// The literal places the ruleset's protecting path rules name.
pub fn protected_places(rules: &KernelRuleset) -> Vec<PathBuf> {
    rules
        .path
        .iter()
        .filter(|(_, key, entry)| {
            (key.access == Access::Read as u8 || key.access == Access::Write as u8)
                && protects(entry)
        })
        .filter_map(|(bits, key, _)| {
            let n = (*bits as usize / 8).saturating_sub(5).min(RULE_PATH_LEN);
            place(&key.path[..n])
        })
        .collect()
}

fn protects(entry: &RuleEntry) -> bool {
    entry
        .slots
        .iter()
        .any(|s| Verdict::from_u8(s.verdict).blocks() || (s.set_labels != 0 && s.verdict != 0))
}

/// The file or directory a key's significant bytes name: an exact path
/// (with its NUL), or the directory a prefix lies in (`/home/u/.ssh/` and
/// `/home/u/.ssh/id_` both give `/home/u/.ssh`). Too broad a place (the
/// root, or one level below it, such as `/home`) is no place to walk.
fn place(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = match bytes.split_last() {
        Some((0, exact)) => exact,
        _ => &bytes[..bytes.iter().rposition(|b| *b == b'/')?],
    };
    let path = Path::new(std::ffi::OsStr::from_bytes(p));
    (path.components().count() > 2).then(|| path.to_path_buf())
}

/// The kernel's encoding of a device number (`MKDEV`, as in
/// `super_block.s_dev`).
pub fn kernel_dev(major: u64, minor: u64) -> u64 {
    major << 20 | minor
}

/// Mount points and their superblock's device, from mountinfo. stat's
/// device is not always the superblock's: overlayfs reports the layer's
/// for files, btrfs a subvolume's; mountinfo's `major:minor` is
/// `super_block.s_dev`, what the kernel programs read.
pub struct Mounts(Vec<(PathBuf, u64)>);

impl Mounts {
    pub fn read() -> Self {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let mounts = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (major, minor) = f.nth(2)?.split_once(':')?;
                let point = f.nth(1)?;
                let dev = kernel_dev(major.parse().ok()?, minor.parse().ok()?);
                Some((PathBuf::from(unescape(point)), dev))
            })
            .collect();
        Self(mounts)
    }

    /// The superblock device of the mount `path` is on: the last-mounted
    /// of the longest mount points above it.
    fn dev_of(&self, path: &Path) -> Option<u64> {
        self.0
            .iter()
            .filter(|(point, _)| path.starts_with(point))
            .max_by_key(|(point, _)| point.components().count())
            .map(|(_, dev)| *dev)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(code) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every regular file at or under `places` (each bounded by
/// [`FILES_PER_PLACE`] and depth), by identity; the first name found for
/// an inode is kept. Symlinks are not followed: a rule names where a file
/// is, and its identity is taken from there.
pub fn scan(places: &[PathBuf], limit: usize) -> HashMap<InodeKey, PathBuf> {
    let mounts = Mounts::read();
    let mut found = HashMap::new();
    for place in places {
        let mut taken = 0;
        let mut stack = vec![(place.clone(), 0)];
        while let Some((path, depth)) = stack.pop() {
            if taken >= FILES_PER_PLACE || found.len() >= limit {
                break;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < DEPTH
                    && let Ok(entries) = fs::read_dir(&path)
                {
                    stack.extend(entries.flatten().map(|e| (e.path(), depth + 1)));
                }
            } else if meta.is_file()
                && path.as_os_str().len() <= RULE_PATH_LEN
                && let Some(dev) = mounts.dev_of(&path)
            {
                let key = InodeKey {
                    dev,
                    ino: meta.ino(),
                };
                found.entry(key).or_insert(path);
                taken += 1;
            }
        }
    }
    found
}

/// The map value for `path` (at most `RULE_PATH_LEN` bytes, see [`scan`]).
pub fn known_name(path: &Path) -> KnownName {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let n = bytes.len().min(RULE_PATH_LEN);
    let mut v = KnownName {
        len: n as u32,
        _pad: 0,
        path: [0; RULE_PATH_LEN + 1],
    };
    v.path[..n].copy_from_slice(&bytes[..n]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_the_literal_part_of_a_rule() {
        assert_eq!(place(b"/home/u/.ssh/"), Some("/home/u/.ssh".into()));
        assert_eq!(place(b"/home/u/.ssh/id_"), Some("/home/u/.ssh".into()));
        assert_eq!(place(b"/etc/shadow\0"), Some("/etc/shadow".into()));
        // Too broad to walk.
        assert_eq!(place(b"/home/"), None);
        assert_eq!(place(b"/"), None);
    }

    #[test]
    fn a_hard_link_has_the_identity_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        fs::write(keys.join("id"), "k").unwrap();
        let link = dir.path().join("elsewhere");
        fs::hard_link(keys.join("id"), &link).unwrap();
        let found = scan(std::slice::from_ref(&keys), 100);
        assert_eq!(found.len(), 1);
        let meta = fs::metadata(&link).unwrap();
        let key = InodeKey {
            dev: Mounts::read().dev_of(&link).unwrap(),
            ino: meta.ino(),
        };
        // The link is found under the protected name.
        assert_eq!(found.get(&key), Some(&keys.join("id")));
        let v = known_name(&keys.join("id"));
        assert_eq!(
            &v.path[..v.len as usize],
            keys.join("id").as_os_str().as_encoded_bytes()
        );
    }

    #[test]
    fn the_device_is_the_superblock_s_of_the_nearest_mount() {
        let m = Mounts::parse(
            "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
             30 22 8:3 / /home rw - btrfs /dev/sda3 rw\n\
             31 22 0:45 / /tmp/with\\040space rw - tmpfs tmpfs rw\n",
        );
        assert_eq!(m.dev_of(Path::new("/etc/passwd")), Some(21));
        assert_eq!(m.dev_of(Path::new("/home/u/.ssh/id")), Some(8 << 20 | 3));
        assert_eq!(m.dev_of(Path::new("/tmp/with space/x")), Some(45));
        // A sibling whose name starts the same is not under the mount.
        assert_eq!(m.dev_of(Path::new("/homework")), Some(21));
    }

    #[test]
    fn a_walk_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let place = dir.path().join("many");
        fs::create_dir(&place).unwrap();
        for i in 0..FILES_PER_PLACE + 10 {
            fs::write(place.join(i.to_string()), "").unwrap();
        }
        assert_eq!(
            scan(std::slice::from_ref(&place), usize::MAX).len(),
            FILES_PER_PLACE
        );
        assert_eq!(scan(&[place], 5).len(), 5);
    }
}
