use std::{net::IpAddr, sync::Arc};

use proptest::prelude::*;

use super::{corpus::*, *};
use crate::{
    engine::{Engine, SessionHistory},
    event::Process,
    policy::{load_sources, mapped},
};

fn slots(e: &RuleEntry) -> Vec<(u32, Verdict)> {
    e.slots
        .iter()
        .filter(|s| s.verdict != 0)
        .map(|s| (s.rule, Verdict::from_u8(s.verdict)))
        .collect()
}

fn path_entry<'a>(c: &'a Compiled, access: Access, p: &[u8], exact: bool) -> Option<&'a RuleEntry> {
    let bits = path_prefix_bits(p.len() + usize::from(exact));
    c.kernel
        .path
        .iter()
        .find(|(b, k, _)| *b == bits && k.access == access as u8 && k.path[..p.len()] == *p)
        .map(|(_, _, e)| e)
}

#[test]
fn less_specific_rules_fold_into_longer_keys() {
    let set = tricky();
    let c = compile_session(&set, &ctx("tricky")).unwrap();
    let id = |n: &str| set.rule_by_name(n).unwrap().id;
    // /etc/a/x carries the tree rule above it; the deny comes first.
    let e = path_entry(&c, Access::Read, b"/etc/a/x", true).unwrap();
    assert_eq!(slots(e)[0], (id("deny-etc-a-x"), Verdict::Deny));
    assert!(slots(e).contains(&(id("allow-etc-a"), Verdict::Allow)));
    // The exception keys of deny-home leave the deny out.
    let e = path_entry(&c, Access::Read, b"/home/u/ok/", false).unwrap();
    assert!(!slots(e).iter().any(|(r, _)| *r == id("deny-home")));
    let e = path_entry(&c, Access::Read, b"/home/u/", false).unwrap();
    assert!(slots(e).contains(&(id("deny-home"), Verdict::Deny)));
    // Suffixes are stored reversed.
    let (bits, k, _) = c
        .kernel
        .suffix
        .iter()
        .find(|(_, k, _)| k.access == Access::Read as u8)
        .unwrap();
    assert_eq!(
        (*bits, &k.path[..4]),
        (path_prefix_bits(4), b"mep.".as_slice())
    );
}

#[test]
fn net_keys_are_ipv4_mapped_with_exact_ports() {
    let set = tricky();
    let c = compile_session(&set, &ctx("tricky")).unwrap();
    let key = |port: u16, addr: &str, len: u32| {
        let ip: IpAddr = addr.parse().unwrap();
        c.kernel.net.iter().any(|(b, k, _)| {
            *b == net_prefix_bits(len) && k.port == port && k.addr == mapped(ip).octets()
        })
    };
    assert!(key(443, "10.0.0.0", 96 + 8));
    assert!(key(0, "10.1.0.0", 96 + 16));
    assert!(key(22, "10.1.1.0", 96 + 24));
    assert!(key(80, "2001:db8::", 32) && key(81, "2001:db8::", 32));
    assert!(key(0, "::", 0));
    // 8000-9000 is too wide for exact ports: widened to any port, allowing.
    assert!(key(0, "127.0.0.0", 96 + 8));
    assert!(!c.exact[Access::ConnectInet as usize]);
}

#[test]
fn user_space_rules_mark_their_accesses_and_defer_when_weaker() {
    let set = tricky();
    let c = compile_session(&set, &ctx("tricky")).unwrap();
    // regex-deny (every open access) and glob-allow are user space.
    for a in [
        Access::Read,
        Access::Write,
        Access::Create,
        Access::Exec,
        Access::ConnectInet,
    ] {
        assert!(!c.exact[a as usize], "{a:?}");
    }
    assert!(c.exact[Access::ConnectUnix as usize]);
    // Without them, the kernel decides every access alone.
    let core = compile_session(&SETS[1], &ctx("tricky")).unwrap();
    assert_eq!(core.exact, [true; ACCESS_COUNT]);
    // glob-allow is weaker than the default deny: the kernel allows its
    // widened prefix, with its rule id, and the daemon decides.
    let id = set.rule_by_name("glob-allow").unwrap().id;
    let e = path_entry(&c, Access::Write, b"/srv/", false).unwrap();
    assert_eq!(slots(e), vec![(id, Verdict::Allow)]);
    // regex-deny is not weaker: no entry of its own.
    let rid = set.rule_by_name("regex-deny").unwrap().id;
    assert!(
        !c.kernel
            .path
            .iter()
            .any(|(_, _, e)| e.slots.iter().any(|s| s.rule == rid))
    );
    let s = &c.kernel.layer;
    assert_eq!(s.defaults, [Verdict::Deny as u8; ACCESS_COUNT]);
    assert_eq!(
        set.rule_info(s.default_rules[0]).unwrap().name,
        "tricky.default"
    );
}

#[test]
fn overflowing_entries_end_in_a_user_space_allow() {
    let mut src = String::from(
        "apiVersion: agentgate.dev/v1\nkind: Profile\nmetadata: {name: p}\nspec: {default: deny}\n---\napiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {name: t}\nlabels: {l0: x, l1: x, l2: x, l3: x, l4: x}\nrules:\n",
    );
    for i in 0..5 {
        src.push_str(&format!(
            "  - {{name: r{i}, reason: r, match: {{open: {{path: /d/**}}, session: {{labels: [l{i}]}}}}, action: deny}}\n"
        ));
    }
    let set = load_sources(&[("o.yaml", src)]).unwrap();
    let c = compile_session(&set, &ctx("p")).unwrap();
    let e = path_entry(&c, Access::Read, b"/d/", false).unwrap();
    assert_eq!(e.slots[RULE_SLOTS - 1].rule, 0);
    assert_eq!(
        Verdict::from_u8(e.slots[RULE_SLOTS - 1].verdict),
        Verdict::Allow
    );
    assert!(!c.exact[Access::Read as usize]);
    assert_eq!(
        compile_session(&set, &ctx("nope")).unwrap_err(),
        CompileError::UnknownProfile("nope".into())
    );
}

#[test]
fn a_glob_exception_of_a_refusing_rule_is_left_out_by_its_prefix() {
    let set = Arc::new(load_sources(&[(
        "g.yaml",
        r#"
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: g}
spec: {write: [/**], default: refer}
---
apiVersion: agentgate.dev/v1
kind: Policy
metadata: {name: g}
rules:
  - {name: stay, reason: r, match: {open: {path: /**, access: [write], except: [/tmp/**, "/proc/self/fd/*"]}}, action: deny}
"#,
    )])
    .unwrap_or_else(|d| panic!("{d:?}")));
    let c = compile_session(&set, &ctx("g")).unwrap();
    let write = AccessMask::of(Access::Write);
    let kernel = |p: &[u8]| c.decide(&Subject::Open { path: p }, write, 0).0;
    assert_eq!(kernel(b"/etc/hosts"), Verdict::Deny);
    assert_eq!(kernel(b"/tmp/x"), Verdict::Allow);
    assert_eq!(kernel(b"/proc/self/fd/1"), Verdict::Allow);
    // Under the literal prefix the kernel lets more through than the glob
    // names; the daemon's engine refuses it right after.
    assert_eq!(kernel(b"/proc/self/fd/5/hosts.tmp"), Verdict::Allow);
    let engine = Engine::new(set.clone());
    let judged = |p: &[u8]| {
        let s = Subject::Open { path: p };
        let hist = SessionHistory::new();
        engine
            .judge(&s, write, &Process::default(), 1, &ctx("g"), &hist)
            .verdict
    };
    assert_eq!(judged(b"/proc/self/fd/5/hosts.tmp"), Verdict::Deny);
    assert_eq!(judged(b"/proc/self/fd/1"), Verdict::Allow);
    assert!(!c.exact[Access::Write as usize]);
    let rule = set.rules().iter().find(|r| r.info.name == "stay").unwrap();
    let place = placement(rule, &ctx("g"), Verdict::Refer);
    assert!(
        matches!(place, Placement::Partly(ref why) if why.contains("`/proc/self/fd/*`")),
        "{place:?}"
    );
}

#[test]
fn shipped_policies_compile_for_every_profile() {
    let set = &SETS[0];
    for p in set.profiles() {
        let c = compile_session(set, &ctx(&p.name)).unwrap();
        assert!(!c.kernel.path.is_empty(), "{}", p.name);
        for (bits, _, _) in c.kernel.path.iter().chain(&c.kernel.suffix) {
            assert!(*bits >= path_prefix_bits(0) && *bits <= path_prefix_bits(RULE_PATH_LEN));
        }
    }
    // The credential rules are decided by the kernel alone.
    let c = compile_session(set, &ctx("coding-agent")).unwrap();
    let probe = Subject::Open {
        path: b"/home/u/.ssh/id_rsa",
    };
    let (v, id, _) = c.decide(&probe, AccessMask::of(Access::Read), 0);
    assert_eq!(
        (v, set.rule_info(id).unwrap().name.as_str()),
        (Verdict::Deny, "no-ssh-keys")
    );
}

/// The session's tables with a grant's entries put in, as the enforcer
/// does: on the grant's keys they replace what was there.
fn with_grant(c: &Compiled, g: &KernelRuleset) -> Compiled {
    let mut c = c.clone();
    for (bits, key, e) in &g.net {
        c.kernel.net.retain(|(b, k, _)| (b, k) != (bits, key));
        c.kernel.net.push((*bits, *key, *e));
    }
    for (bits, key, e) in &g.path {
        c.kernel.path.retain(|(b, k, _)| (b, k) != (bits, key));
        c.kernel.path.push((*bits, *key, *e));
    }
    c
}

#[test]
fn undeclared_connects_after_a_secret_read_in_the_kernel() {
    let set = &SETS[0];
    let secret = set.labels().bit("secret-read").unwrap();
    let name = |id| {
        set.rule_info(id)
            .map_or("none", |r| r.name.as_str())
            .to_owned()
    };
    let inet = |c: &Compiled, ip: &str, port: u16, labels: u64| {
        let s = Subject::Inet {
            ip: mapped(ip.parse().unwrap()),
            port,
        };
        let (v, id, _) = c.decide(&s, AccessMask::of(Access::ConnectInet), labels);
        (v, name(id))
    };
    let unix = |c: &Compiled, path: &str, labels: u64| {
        let s = Subject::Unix {
            path: path.as_bytes(),
        };
        let (v, id, _) = c.decide(&s, AccessMask::of(Access::ConnectUnix), labels);
        (v, name(id))
    };
    let kill = (Verdict::Kill, "no-connect-after-secret".to_owned());

    // The default profile declares unix sockets only: every inet connect
    // after a secret read is killed by the kernel, and it decides alone.
    let c = compile_session(set, &ctx("default")).unwrap();
    assert!(c.exact[Access::ConnectInet as usize] && c.exact[Access::ConnectUnix as usize]);
    assert_eq!(inet(&c, "127.0.0.1", 8000, secret), kill);
    assert_eq!(inet(&c, "127.0.0.1", 8000, 0).0, Verdict::Refer);
    assert_eq!(unix(&c, "/dev/log", secret).0, Verdict::Allow);
    assert_eq!(unix(&c, "/run/x.sock", secret), kill);

    // coding-agent declares loopback for some ports only: its declared
    // traffic goes through, undeclared addresses are killed by the kernel;
    // other loopback ports are left to the any-port entry (refer), and the
    // daemon kills.
    let c = compile_session(set, &ctx("coding-agent")).unwrap();
    assert!(!c.exact[Access::ConnectInet as usize] && c.exact[Access::ConnectUnix as usize]);
    for (ip, port, rule) in [
        ("127.0.0.1", 8000, "coding-agent.connect.1"),
        ("::1", 5173, "coding-agent.connect.2"),
        ("127.0.0.1", 53, "coding-agent.connect.3"),
        ("127.0.0.1", 4000, "coding-agent.connect.4"),
        ("160.79.104.10", 443, "coding-agent.connect.5"),
    ] {
        assert_eq!(
            inet(&c, ip, port, secret),
            (Verdict::Allow, rule.to_owned())
        );
    }
    assert_eq!(inet(&c, "10.1.2.3", 443, secret), kill);
    assert_eq!(inet(&c, "93.184.216.34", 8000, secret), kill);
    assert_eq!(
        inet(&c, "127.0.0.1", 4444, secret),
        (Verdict::Refer, "coding-agent.default".to_owned())
    );
    assert_eq!(
        unix(&c, "/run/nscd/socket", secret),
        (Verdict::Allow, "coding-agent.connect.6".to_owned())
    );
    assert_eq!(unix(&c, "/run/agentgate/agentgate.sock", secret), kill);

    // A human's grant lifts the refer, never the kill: an entry for one
    // address and port carries the rule again where it applies, even where
    // the any-port entry leaves it out.
    let grant = |ip: &str, port| {
        let target = GrantTarget::Inet {
            ip: mapped(ip.parse().unwrap()),
            port,
        };
        with_grant(
            &c,
            &c.grant(&target, AccessMask::of(Access::ConnectInet), 0x8000_0001),
        )
    };
    for (ip, port) in [("127.0.0.1", 4444), ("10.1.2.3", 443)] {
        let g = grant(ip, port);
        assert_eq!(inet(&g, ip, port, 0).0, Verdict::Allow, "{ip}:{port}");
        assert_eq!(inet(&g, ip, port, secret), kill, "{ip}:{port}");
    }
    let g = grant("127.0.0.1", 8000);
    assert_eq!(inet(&g, "127.0.0.1", 8000, secret).0, Verdict::Allow);
}

#[test]
fn where_undeclared_runs_depends_on_the_profile() {
    let set = &SETS[0];
    let rule = set
        .rules()
        .iter()
        .find(|r| r.info.name == "no-connect-after-secret")
        .unwrap();
    let at = |p: &str| placement(rule, &ctx(p), set.profile(p).unwrap().default);
    assert_eq!(at("default"), Placement::Kernel);
    let Placement::Partly(why) = at("coding-agent") else {
        panic!("{:?}", at("coding-agent"));
    };
    assert!(why.contains("127.0.0.0/8 for some ports only"), "{why}");
    // Wide port ranges and globs the kernel cannot key: the rest is the
    // daemon's; a weaker rule is widened instead, as any other.
    let set = tricky();
    let rule = |n: &str| set.rules().iter().find(|r| r.info.name == n).unwrap();
    let wide = |n: &str| placement(rule(n), &ctx("wide"), Verdict::Refer);
    let Placement::Partly(why) = wide("deny-undeclared") else {
        panic!("{:?}", wide("deny-undeclared"));
    };
    assert!(why.contains("general glob"), "{why}");
    assert!(matches!(
        wide("audit-undeclared-after-b"),
        Placement::UserSpace(_)
    ));
    assert_eq!(
        placement(rule("refer-undeclared"), &ctx("anyport"), Verdict::Deny),
        Placement::Kernel
    );
}

// ---- agreement between the engine and the compiled tables -------------

/// Where the kernel decides alone it gives the engine's verdict, rule and
/// labels; elsewhere it never refuses what the engine lets through, and
/// kills only what the engine kills.
fn agreement(
    set: &Arc<PolicySet>,
    compiled: &Compiled,
    ctx: &SessionContext,
    labels: u64,
    probe: &Probe,
) -> Result<(), String> {
    let mut hist = SessionHistory::new();
    hist.add_labels(labels);
    let engine = Engine::new(set.clone());
    let argv = vec!["x".to_owned()];
    let (subject, access) = subject_of(probe, &argv);
    let d = engine.judge(&subject, access, &Process::default(), 1, ctx, &hist);
    let (kv, kid, klabels) = compiled.decide(&subject, access, labels);
    let name = |id| set.rule_info(id).map_or("none", |r| r.name.as_str());
    let what = || {
        format!(
            "profile {}, labels {labels:#x}, {probe:?}: kernel {kv:?} by {}, engine {:?} by {}",
            ctx.profile,
            name(kid),
            d.verdict,
            d.rule_name()
        )
    };
    let exact = access.iter().all(|a| compiled.exact[a as usize]);
    let fine = agrees(
        exact,
        (kv, kid, klabels),
        (d.verdict, d.rule_id(), d.set_labels),
    );
    if fine { Ok(()) } else { Err(what()) }
}

/// Every profile of every test set, with every label (none, each alone,
/// all), on every listed address and port and every listed socket: the
/// cases where declarations, exceptions and any-port entries meet.
#[test]
fn kernel_connect_tables_agree_with_the_engine_on_every_listed_target() {
    let mut probes: Vec<Probe> = IPS
        .iter()
        .flat_map(|ip| {
            let ip = mapped(ip.parse().unwrap());
            PORTS.iter().map(move |p| Probe::Inet(ip, *p))
        })
        .collect();
    probes.extend(
        SOCKETS
            .iter()
            .map(|s| Probe::Path(1, s.as_bytes().to_vec())),
    );
    let mut wrong = Vec::new();
    for set in SETS.iter() {
        let n = set.labels().len();
        let masks: Vec<u64> = [0, (1u64 << n) - 1]
            .into_iter()
            .chain((0..n).map(|i| 1u64 << i))
            .collect();
        for p in set.profiles() {
            let ctx = ctx(&p.name);
            let compiled = compile_session(set, &ctx).unwrap();
            for labels in &masks {
                for probe in &probes {
                    if let Err(e) = agreement(set, &compiled, &ctx, *labels, probe) {
                        wrong.push(e);
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn kernel_tables_agree_with_the_engine(
        which in 0usize..3,
        profile in 0usize..8,
        labels in 0u64..16,
        probe in probe_strategy(),
    ) {
        let set = &SETS[which];
        let profile = &set.profiles()[profile % set.profiles().len()].name;
        let ctx = ctx(profile);
        let compiled = compile_session(set, &ctx).unwrap();
        let labels = labels & ((1u64 << set.labels().len()) - 1);
        agreement(set, &compiled, &ctx, labels, &probe).map_err(TestCaseError::fail)?;
    }

    /// The same for each tool's layer: the shipped coding-agent declares
    /// several (connect to loopback only, no exec, no write).
    #[test]
    fn kernel_tool_layers_agree_with_the_engine(
        tool in 0usize..8,
        probe in probe_strategy(),
    ) {
        let set = &SETS[0];
        let ctx = ctx("coding-agent");
        let tools = &set.profile("coding-agent").unwrap().tools;
        prop_assume!(!tools.is_empty());
        let tool = &tools[tool % tools.len()].name;
        let compiled = compile_tool(set, &ctx, tool).unwrap();
        let engine = Engine::new(set.clone());
        let argv = vec!["x".to_owned()];
        let (subject, access) = subject_of(&probe, &argv);
        let d = engine
            .judge_tool(&subject, access, &ctx, tool)
            .map_or((Verdict::None, 0), |d| (d.verdict, d.rule_id()));
        let (kv, kid, _) = compiled.decide(&subject, access, 0);
        if access.iter().all(|a| compiled.exact[a as usize]) {
            prop_assert_eq!((kv, kid), d, "{} {:?}", tool, probe);
        } else {
            prop_assert!(!kv.blocks() || d.0.blocks(), "{} {:?}", tool, probe);
        }
    }
}
