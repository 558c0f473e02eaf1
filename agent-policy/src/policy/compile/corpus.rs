//! The corpus the compiled kernel tables are checked on: test policies,
//! sessions and proptest strategies for the calls to judge. The compile
//! tests check the tables through a model of the kernel's look-ups
//! (`Compiled::decide`); the kernel tests (tests/host/decide.rs, feature
//! `test-support`) run the same corpus through the kernel's own decision
//! code.
use std::{net::IpAddr, path::Path, sync::Arc};

use agent_common::{Access, Verdict};
use proptest::prelude::*;

use crate::policy::{
    AccessMask, PolicySet, RuleId, SessionContext, Subject, load, load_sources, mapped, normalize,
};

/// Every rule here compiles to the kernel exactly.
pub const CORE: &str = r#"
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: tricky}
spec:
  exec: [/usr/bin/**, "${workspace}/**"]
  read: [/**]
  write: ["${workspace}/**", /tmp/**]
  connect:
    - {addr: 10.0.0.0/8, port: 443}
    - {addr: 10.1.0.0/16}
    - {addr: "2001:db8::/32", port: [80-81]}
    - {addr: localhost, port: 8000-8015}
    - unix: [/run/tricky.sock]
  default: deny
---
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: anyport}
spec:
  read: [/**]
  connect:
    - {addr: 10.1.0.0/16}
    - {addr: 10.1.1.0/24, port: 22}
    - {addr: "2001:db8::/32"}
    - unix: [/run/tricky.sock, /run/agentgate/**, "@dbus"]
  default: deny
---
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: bare}
spec: {default: refer}
---
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: open}
spec:
  connect: [{}]
  default: audit
---
apiVersion: agentgate.dev/v1
kind: Policy
metadata: {name: tricky}
labels: {a: label a, b: label b, c: label c}
rules:
  - {name: deny-home, reason: r, match: {open: {path: ~/**, except: ["~/ok/**", ~/ok2]}}, action: deny}
  - {name: refer-ws-secret, reason: r, match: {open: {path: "${workspace}/secret/**", access: read}}, action: refer}
  - {name: audit-pem, reason: r, match: {open: {path: "**/*.pem", access: [read]}}, action: audit, set_labels: [a]}
  - {name: kill-pem-after-b, reason: r, match: {open: {path: "**/*.pem"}, session: {labels: [b]}}, action: kill}
  - {name: allow-etc-a, reason: r, match: {open: {path: /etc/a/**}, session: {not_labels: [c]}}, action: allow, set_labels: [b]}
  - {name: deny-etc-a-x, reason: r, match: {open: {path: /etc/a/x}}, action: deny}
  - {name: audit-etc, reason: r, match: {open: {path: /etc/**, access: read}}, action: audit, set_labels: [c]}
  - {name: kill-net-after-a, reason: r, match: {connect: {addr: "::/0"}, session: {labels: [a]}}, action: kill}
  - {name: refer-10-1-1, reason: r, match: {connect: {addr: 10.1.1.0/24, port: [22, 443]}}, action: refer}
  - {name: deny-8-8, reason: r, match: {connect: {addr: 8.8.8.8}}, action: deny}
  - {name: audit-exec-bin, reason: r, match: {exec: {path: ~/bin/**}}, action: audit, set_labels: [c]}
  - {name: refer-sock, reason: r, match: {connect: {unix: /run/agentgate/**}}, action: refer}
  - {name: kill-undeclared-after-c, reason: r, match: {connect: {undeclared: true}, session: {labels: [c], profile: [anyport, bare, open]}}, action: kill}
  - {name: refer-undeclared, reason: r, match: {connect: {undeclared: true}, session: {profile: [anyport, open]}}, action: refer}
  - {name: audit-10-443, reason: r, match: {connect: {addr: 10.0.0.0/8, port: 443}, session: {profile: [anyport]}}, action: audit}
"#;

/// Rules only user space can decide.
pub const USER: &str = r#"
apiVersion: agentgate.dev/v1
kind: Policy
metadata: {name: user}
rules:
  - {name: regex-deny, reason: r, match: {open: {path_regex: "^/etc/a/y[0-9]$"}}, action: deny}
  - {name: glob-allow, reason: r, match: {open: {path: "/srv/*/public/**", access: [write]}}, action: allow}
  - {name: argv-allow, reason: r, match: {exec: {path: /opt/tool, args: "--safe"}}, action: allow}
  - {name: wide-ports, reason: r, match: {connect: {addr: localhost, port: 8000-9000}}, action: allow}
  - {name: glob-exec, reason: r, match: {exec: {path: "/opt/*/bin/*"}}, action: allow}
  - {name: deny-undeclared, reason: r, match: {connect: {undeclared: true}, session: {profile: [tricky, wide]}}, action: deny}
  - {name: audit-undeclared-after-b, reason: r, match: {connect: {undeclared: true}, session: {labels: [b]}}, action: audit}
---
apiVersion: agentgate.dev/v1
kind: Profile
metadata: {name: wide}
spec:
  connect:
    - {addr: localhost, port: 8000-9000}
    - {addr: 8.8.8.8, port: 53}
    - {addr: 10.1.1.0/24}
    - unix: ["/run/*/tricky.sock", "**/x.key", /run/agentgate/**]
  default: refer
"#;

/// CORE and USER together.
pub fn tricky() -> PolicySet {
    load_sources(&[("core.yaml", CORE), ("user.yaml", USER)]).unwrap_or_else(|d| panic!("{d:?}"))
}

/// The policy sets the agreement tests run: the shipped policies, CORE
/// alone, CORE with USER.
pub static SETS: std::sync::LazyLock<Vec<Arc<PolicySet>>> = std::sync::LazyLock::new(|| {
    let shipped = load(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")]).unwrap();
    let core = load_sources(&[("core.yaml", CORE)]).unwrap_or_else(|d| panic!("{d:?}"));
    vec![Arc::new(shipped), Arc::new(core), Arc::new(tricky())]
});

/// A session of `profile` with workspace `/work/ws` and home `/home/u`.
pub fn ctx(profile: &str) -> SessionContext {
    SessionContext::resolved(
        profile,
        vec![b"/work/ws".to_vec()],
        vec![b"/home/u".to_vec()],
        1000,
        vec![],
    )
}

/// Path segments on and around the ones the test policies name.
pub const PARTS: &[&str] = &[
    "a",
    "b",
    "x",
    "y1",
    "ok",
    "ok2",
    "bin",
    ".ssh",
    "id_rsa",
    "k.pem",
    ".env",
    "x.key",
    "..",
    ".",
    "",
    "secret",
    "public",
    "etc",
    "home",
    "u",
    "tmp",
    "work",
    "ws",
    "agentgate",
    ".cargo",
    "config.toml",
    "shadow",
    "srv",
    "run",
    "usr",
    "\u{e9}",
    "tricky.sock",
    "opt",
    "tool",
];

/// Directories the test policies name, and neighbours.
pub const DIRS: &[&str] = &[
    "/",
    "/home/u/",
    "/work/ws/",
    "/etc/a/",
    "/etc/",
    "/tmp/",
    "/usr/bin/",
    "/root/",
    "/srv/s/public/",
    "/home/u/.ssh/",
    "/run/",
    "/run/agentgate/",
    "/opt/",
];

/// Normalised absolute paths under the directories the test policies name;
/// some end in a raw byte, some run past `RULE_PATH_LEN`.
pub fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = prop::sample::select(DIRS.to_vec());
    (
        prefixes,
        prop::collection::vec(prop::sample::select(PARTS.to_vec()), 0..5),
        any::<bool>(),
        0usize..300,
    )
        .prop_map(|(p, parts, raw, pad)| {
            let mut v = p.as_bytes().to_vec();
            v.extend(parts.join("/").as_bytes());
            if raw {
                v.push(0xff);
            }
            if pad > 250 {
                v.extend(std::iter::repeat_n(b'z', pad));
            }
            normalize(&v).into_owned()
        })
}

/// Addresses on and around the networks the test policies name.
pub const IPS: &[&str] = &[
    "127.0.0.1",
    "127.9.9.9",
    "::1",
    "::ffff:127.0.0.1",
    "10.0.0.1",
    "10.1.1.7",
    "10.1.2.3",
    "10.2.0.1",
    "8.8.8.8",
    "8.8.4.4",
    "2001:db8::1",
    "2001:db9::1",
    "::",
    "0.0.0.0",
    "93.184.216.34",
];

/// Ports the test policies name, their neighbours, and 0.
pub const PORTS: &[u16] = &[
    0, 22, 53, 80, 81, 443, 3000, 8000, 8015, 8016, 8500, 4444, 65535,
];

/// Unix socket paths on and around the ones the test policies name.
pub const SOCKETS: &[&str] = &[
    "/run/tricky.sock",
    "/run/tricky.sockx",
    "/run/a/tricky.sock",
    "/run/agentgate",
    "/run/agentgate/agent.sock",
    "/run/agentgate/agentgate.sock",
    "/run/agentgatex",
    "/run/nscd/socket",
    "/run/systemd/journal/socket",
    "/run/x.key",
    "/run/docker.sock",
    "/dev/log",
    "/",
];

pub fn ip_strategy() -> impl Strategy<Value = std::net::Ipv6Addr> {
    prop_oneof![
        prop::sample::select(IPS.to_vec()).prop_map(|s| mapped(s.parse().unwrap())),
        any::<[u8; 4]>().prop_map(|o| mapped(IpAddr::from(o))),
        any::<[u8; 16]>().prop_map(std::net::Ipv6Addr::from),
    ]
}

/// A call to judge: a path with its kind (0 exec, 1 unix connect, else an
/// open with access mask `k & 7`, read alone when that is empty: 8), or an
/// inet connect.
#[derive(Debug, Clone)]
pub enum Probe {
    Path(u8, Vec<u8>),
    Inet(std::net::Ipv6Addr, u16),
}

pub fn probe_strategy() -> impl Strategy<Value = Probe> {
    prop_oneof![
        (0u8..9, path_strategy()).prop_map(|(k, p)| Probe::Path(k, p)),
        (ip_strategy(), prop::sample::select(PORTS.to_vec()))
            .prop_map(|(ip, port)| Probe::Inet(ip, port)),
    ]
}

/// The call a probe stands for, and the accesses it asks for.
pub fn subject_of<'a>(probe: &'a Probe, argv: &'a [String]) -> (Subject<'a>, AccessMask) {
    match probe {
        Probe::Path(0, p) => (
            Subject::Exec { path: p, argv },
            AccessMask::of(Access::Exec),
        ),
        Probe::Path(1, p) => (
            Subject::Unix { path: p },
            AccessMask::of(Access::ConnectUnix),
        ),
        Probe::Path(k, p) => {
            let m = AccessMask(*k & 0b111);
            let m = if m.0 == 0 {
                AccessMask::of(Access::Read)
            } else {
                m
            };
            (Subject::Open { path: p }, m)
        }
        Probe::Inet(ip, port) => (
            Subject::Inet {
                ip: *ip,
                port: *port,
            },
            AccessMask::of(Access::ConnectInet),
        ),
    }
}

/// Whether the kernel's judgement `(verdict, rule, labels)` is right next
/// to the engine's: where the kernel decides alone (`exact` for every
/// access asked, in every layer) it is the engine's; elsewhere it never
/// refuses what the engine lets through, and kills only what the engine
/// kills.
pub fn agrees<L: PartialEq>(
    exact: bool,
    kernel: (Verdict, RuleId, L),
    engine: (Verdict, RuleId, L),
) -> bool {
    let (kv, ev) = (kernel.0, engine.0);
    if exact {
        kernel == engine
    } else {
        (!kv.blocks() || ev.blocks()) && (kv != Verdict::Kill || ev == Verdict::Kill)
    }
}
