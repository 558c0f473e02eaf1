//! What a policy is specialised with for one session: `~`, `${workspace}`,
//! the profile and the intent tags.
use std::{io, os::unix::ffi::OsStrExt, path::Path};

use super::pattern::normalize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    pub profile: String,
    pub uid: u32,
    pub intent_tags: Vec<String>,
    /// Every spelling of the workspace: the canonical path first, then the
    /// path as given when a symlink made it differ. No trailing slash; the
    /// root directory is the empty string.
    workspaces: Vec<Vec<u8>>,
    /// The session user's home directories, same form. More than one when
    /// `$HOME` differs from the account's home (sudo, test harnesses).
    homes: Vec<Vec<u8>>,
}

impl SessionContext {
    /// Canonicalises the workspace (it must exist); homes are canonicalised
    /// when they exist and lexically normalised otherwise.
    pub fn new(
        profile: impl Into<String>,
        workspace: &Path,
        homes: &[&Path],
        uid: u32,
        intent_tags: Vec<String>,
    ) -> io::Result<Self> {
        let canonical = std::fs::canonicalize(workspace)?;
        let mut workspaces = vec![canonical.as_os_str().as_bytes().to_vec()];
        if workspace.is_absolute() {
            workspaces.push(workspace.as_os_str().as_bytes().to_vec());
        }
        let homes = homes
            .iter()
            .map(|h| {
                std::fs::canonicalize(h).map_or_else(
                    |_| h.as_os_str().as_bytes().to_vec(),
                    |c| c.as_os_str().as_bytes().to_vec(),
                )
            })
            .collect();
        Ok(Self::resolved(profile, workspaces, homes, uid, intent_tags))
    }

    /// Without touching the filesystem: the paths are taken as they are
    /// (lexically normalised).
    pub fn resolved(
        profile: impl Into<String>,
        workspaces: Vec<Vec<u8>>,
        homes: Vec<Vec<u8>>,
        uid: u32,
        intent_tags: Vec<String>,
    ) -> Self {
        Self {
            profile: profile.into(),
            uid,
            intent_tags,
            workspaces: bases(workspaces),
            homes: bases(homes),
        }
    }

    pub fn workspaces(&self) -> &[Vec<u8>] {
        &self.workspaces
    }

    pub fn homes(&self) -> &[Vec<u8>] {
        &self.homes
    }
}

fn bases(paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in paths {
        let mut n = normalize(&p).into_owned();
        if n == b"/" {
            n.clear();
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_workspace_keeps_both_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let ctx = SessionContext::new("p", &link, &[Path::new("/home/u/")], 1, vec![]).unwrap();
        let canon = std::fs::canonicalize(&real).unwrap();
        assert_eq!(ctx.workspaces()[0], canon.as_os_str().as_bytes());
        assert_eq!(ctx.workspaces()[1], link.as_os_str().as_bytes());
        assert_eq!(ctx.homes(), [b"/home/u".to_vec()]);
    }

    #[test]
    fn root_workspace_is_the_empty_base() {
        let ctx = SessionContext::resolved("p", vec![b"//".to_vec()], vec![], 0, vec![]);
        assert_eq!(ctx.workspaces(), [Vec::<u8>::new()]);
    }
}
