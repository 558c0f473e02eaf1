//! A just-in-time grant puts entries in the session's rule maps and its
//! revocation takes them out: afterwards the maps hold exactly what they
//! held before, entry for entry (not merely entries that answer look-ups
//! the same way today: a stray exact key shadows whatever a later reload or
//! grant puts under the prefix above it, and is never removed).
use agent_common::{Access, Verdict};
use agentgate::enforce::KernelRuleset;

use crate::inproc::{Kernel, entry, path_key};

const SESSION: u64 = 77;

fn ruleset(paths: &[(&str, Verdict, u32)]) -> KernelRuleset {
    KernelRuleset {
        path: paths
            .iter()
            .map(|(p, v, rule)| {
                let (bits, key) = path_key(p, Access::Read);
                (bits, key, entry(*v, *rule, 0))
            })
            .collect(),
        ..Default::default()
    }
}

/// A grant on `/g/a/b/c`, where only the prefix `/g/a/` has a rule.
#[test]
fn a_revoked_grant_under_a_prefix_rule_leaves_the_rule_map_as_it_was() {
    let mut k = Kernel::load();
    k.enforcer
        .install(SESSION, &ruleset(&[("/g/a/", Verdict::Refer, 1)]), &[], 0)
        .unwrap();
    let before = k.path_rules("PATH_RULES");
    assert_eq!(before.len(), 1, "{before:?}");

    let grant = ruleset(&[("/g/a/b/c", Verdict::Allow, 2)]);
    k.enforcer.grant(SESSION, 1, &[(None, grant)]).unwrap();
    let granted = k.path_rules("PATH_RULES");
    assert_eq!(granted.len(), 2, "the grant's entry is in: {granted:?}");

    k.enforcer.revoke(SESSION, 1);
    let after = k.path_rules("PATH_RULES");
    assert_eq!(
        after.len(),
        before.len(),
        "entries after the revoke: {:?}",
        after
            .iter()
            .map(|(bits, key, _)| (
                bits,
                String::from_utf8_lossy(&key.path)
                    .trim_end_matches('\0')
                    .to_owned()
            ))
            .collect::<Vec<_>>()
    );
    assert!(after == before, "the map differs from before the grant");
}

/// A grant on a path that has an exact rule of its own: the revoke puts
/// that rule's entry back.
#[test]
fn a_revoked_grant_on_an_exact_rule_restores_the_rule() {
    let mut k = Kernel::load();
    k.enforcer
        .install(
            SESSION,
            &ruleset(&[("/g/a/", Verdict::Refer, 1), ("/g/a/b/c", Verdict::Deny, 3)]),
            &[],
            0,
        )
        .unwrap();
    let before = k.path_rules("PATH_RULES");
    assert_eq!(before.len(), 2, "{before:?}");

    let grant = ruleset(&[("/g/a/b/c", Verdict::Allow, 2)]);
    k.enforcer.grant(SESSION, 1, &[(None, grant)]).unwrap();
    let granted = k.path_rules("PATH_RULES");
    assert_ne!(granted, before, "the grant replaced the exact rule");
    assert_eq!(granted.len(), 2);

    k.enforcer.revoke(SESSION, 1);
    assert!(
        k.path_rules("PATH_RULES") == before,
        "the exact rule is not back"
    );
}
