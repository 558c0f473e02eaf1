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

/// The user's name (`uid:N` for a uid the database does not know) and
/// home, from one look-up.
pub fn name_and_home(uid: u32) -> (String, Option<PathBuf>) {
    lookup(uid).map_or_else(|| (format!("uid:{uid}"), None), |u| (u.name, Some(u.dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_and_unknown_uids_are_named_by_number() {
        assert_eq!(
            name_and_home(0),
            ("root".to_owned(), Some(PathBuf::from("/root")))
        );
        // Far above any allocated range (and below the "invalid" -1).
        assert_eq!(
            name_and_home(4_000_000_000),
            ("uid:4000000000".to_owned(), None)
        );
    }
}
