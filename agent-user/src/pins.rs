//! The pin directory on bpffs: the maps and program links a daemon leaves
//! behind so that the kernel keeps enforcing while no daemon runs, and the
//! next daemon can adopt them.
//!
//! Layout: `<pin dir>/obj-<fingerprint>/maps/<MAP>` and
//! `<pin dir>/obj-<fingerprint>/links/<program>`. bpffs holds only pins and
//! directories (no regular files), so the fingerprint of what was loaded
//! (SHA-256 of the object, the kernel layout and the load options) is the
//! directory's name.
use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agentgate";
const BPFFS: &str = "/sys/fs/bpf";
const GENERATION_PREFIX: &str = "obj-";

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "bpffs is not mounted at {BPFFS} and mounting it failed: {0} (run as root, or `mount -t bpf bpf {BPFFS}`)"
    )]
    Mount(std::io::Error),
    #[error("{path} is not on bpffs: pins can only live there")]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own for statfs to fill.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_type as i64 == i64::from(agent_common::abi::BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there, and creates
/// `dir` (which must be on bpffs).
pub fn ensure_dir(dir: &Path) -> Result<(), PinError> {
    if dir.starts_with(BPFFS) {
        crate::mount::ensure("bpf", BPFFS, || is_bpffs(Path::new(BPFFS)))
            .map_err(PinError::Mount)?;
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    if !is_bpffs(dir) {
        return Err(PinError::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

/// The directory of one loaded object under the pin dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub dir: PathBuf,
}

impl Generation {
    pub fn new(pin_dir: &Path, fingerprint: &str) -> Self {
        Self {
            dir: pin_dir.join(format!("{GENERATION_PREFIX}{fingerprint}")),
        }
    }

    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// Removes the links first (that detaches the programs), then the maps.
    pub fn remove(&self) -> Result<(), PinError> {
        for sub in [self.links(), self.maps()] {
            let Ok(entries) = fs::read_dir(&sub) else {
                continue;
            };
            for e in entries.flatten() {
                fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
            fs::remove_dir(&sub).map_err(io(&sub))?;
        }
        fs::remove_dir(&self.dir).map_err(io(&self.dir))
    }
}

/// Every generation pinned under `pin_dir` (normally none or one).
pub fn generations(pin_dir: &Path) -> Vec<Generation> {
    let mut out: Vec<Generation> = fs::read_dir(pin_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(GENERATION_PREFIX)
                })
                .map(|e| Generation { dir: e.path() })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

#[derive(Debug, Error)]
pub enum UnloadError {
    #[error("agentgate unload must run as root")]
    NotRoot,
    #[error("a daemon is running (socket {0} answers): stop it first, or it keeps the pins")]
    DaemonRunning(PathBuf),
    #[error("refused: the caller (pid {pid}) is inside session {session}")]
    InSession { pid: u32, session: u64 },
    #[error(
        "cannot tell whether the caller is inside a session ({map}: {reason}); remove the pins by hand if you must"
    )]
    Unreadable { map: PathBuf, reason: String },
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// `agentgate unload`: removes every pin under `pin_dir`, which detaches the
/// programs. It acts on bpffs directly, not through a daemon, so it checks
/// itself that no daemon runs and that the caller is not in a session.
pub fn unload(pin_dir: &Path, socket: &Path) -> Result<Vec<PathBuf>, UnloadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UnloadError::NotRoot);
    }
    let all = generations(pin_dir);
    let pid = std::process::id();
    for g in &all {
        let map = g.map(agent_common::map::TAGS);
        let unreadable = |reason: String| UnloadError::Unreadable {
            map: map.clone(),
            reason,
        };
        let data = aya::maps::MapData::from_pin(&map).map_err(|e| unreadable(e.to_string()))?;
        let tags: aya::maps::HashMap<_, u32, agent_common::ProcTag> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
                .map_err(|e| unreadable(e.to_string()))?;
        if let Ok(tag) = tags.get(&pid, 0) {
            return Err(UnloadError::InSession {
                pid,
                session: tag.session,
            });
        }
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(UnloadError::DaemonRunning(socket.to_owned()));
    }
    for g in &all {
        g.remove()?;
    }
    if pin_dir.is_dir() {
        fs::remove_dir(pin_dir).map_err(io(pin_dir))?;
    }
    Ok(all.into_iter().map(|g| g.dir).collect())
}

/// First 16 bytes of SHA-256 over the parts, in hex.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_by_any_part_and_its_boundaries() {
        let a = fingerprint(&[b"object", b"layout"]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint(&[b"object", b"layout"]));
        assert_ne!(a, fingerprint(&[b"object", b"layouT"]));
        assert_ne!(a, fingerprint(&[b"objec", b"tlayout"]));
    }

    #[test]
    fn generations_are_the_obj_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("obj-ab/maps")).unwrap();
        fs::create_dir_all(dir.path().join("obj-cd/links")).unwrap();
        fs::create_dir_all(dir.path().join("other")).unwrap();
        let g = generations(dir.path());
        assert_eq!(
            g,
            vec![
                Generation::new(dir.path(), "ab"),
                Generation::new(dir.path(), "cd")
            ]
        );
        g[1].remove().unwrap();
        assert_eq!(generations(dir.path()).len(), 1);
    }
}
