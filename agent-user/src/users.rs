//! The system's user database (NSS: files, LDAP, sssd, systemd-userdb), for
//! a session's principal and home.
use std::path::PathBuf;

use nix::unistd::{Uid, User};

fn lookup(uid: u32) -> Option<User> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(user) => user,
        Err(e) => {
            log::warn!("looking up uid {uid} in the user database: {e}");
            None
        }
    }
}

/// The user's name, or `uid:N` for a uid the database does not know.
pub fn name(uid: u32) -> String {
    lookup(uid).map_or_else(|| format!("uid:{uid}"), |u| u.name)
}

pub fn home(uid: u32) -> Option<PathBuf> {
    lookup(uid).map(|u| u.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_and_unknown_uids_are_named_by_number() {
        assert_eq!(name(0), "root");
        assert_eq!(home(0), Some(PathBuf::from("/root")));
        // Far above any allocated range (and below the "invalid" -1).
        assert_eq!(name(4_000_000_000), "uid:4000000000");
        assert_eq!(home(4_000_000_000), None);
    }
}
