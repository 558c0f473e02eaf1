//! The kernel's own decision code against the user-space engine. The compile
//! tests (agent-user/src/policy/compile/tests.rs) check the compiled tables
//! through a model of the kernel's look-ups; here the same corpus goes
//! through the real thing: agent-ebpf/src/decide.rs and enforce.rs behind
//! the `decide-test` object's one raw tracepoint program, run with
//! BPF_PROG_TEST_RUN (never attached), on tables installed by the daemon's
//! own `Enforcer`. For every call:
//! - the kernel's verdict, rule and the labels it commits to each session
//!   of the chain are the model's (`Compiled::decide`), exactly, whatever
//!   the policy: the model is the kernel;
//! - and they agree with the engine (`corpus::agrees`): equal where every
//!   layer judged is exact for the accesses asked, never refusing more nor
//!   killing more than the engine elsewhere.
//!
//! Paths go in with stale bytes after their NUL, as the hooks' per-CPU
//! record has them; opens with every set of flags that asks for the
//! probe's accesses; IPv4 addresses as AF_INET and as IPv4-mapped AF_INET6;
//! unix sockets with the address lengths programs pass. Independent of the
//! mode: the same code judges in fallback and LSM mode.
use std::{
    cell::RefCell,
    net::Ipv6Addr,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use agent_common::{
    AF_INET, AF_INET6, AF_UNIX, Access, DECIDE_CONNECT, DECIDE_JUDGED, DECIDE_NO_SESSION,
    DECIDE_OPEN, DECIDE_PATH, DECIDE_SOCKADDR_LEN, DecideInput, DecideOutput, MAX_CHAIN, PATH_MAX,
    RULE_PATH_LEN, SessionId, Verdict,
};
use agentgate::{
    enforce::Enforcer,
    engine::{Engine, SessionHistory, open_access, stronger},
    events::Process,
    policy::{
        AccessMask, Compiled, PolicySet, RuleId, SessionContext, Subject, compile_session,
        compile_tools, corpus, kernel_tools, load_sources,
    },
};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun},
};
use proptest::{
    prelude::*,
    test_runner::{Config, RngSeed, TestCaseError, TestRunner},
};

use crate::support::require_root;

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGATE_DECIDE_TEST_OBJ"));

/// Loaded once per test process, since the verifier takes seconds over the
/// decision code (minutes under TCG); the tests take turns, each with
/// sessions of its own.
static KERNEL: LazyLock<Mutex<Kernel>> = LazyLock::new(|| Mutex::new(Kernel::load()));
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1000);

fn kernel() -> MutexGuard<'static, Kernel> {
    KERNEL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One call, as the hooks see it.
#[derive(Clone)]
enum Call {
    /// One access to a path, as exec (and the LSM exec hook) judges it.
    Path(Access, Vec<u8>),
    /// An open with these flags (`enforce::judge_open`).
    Open(i32, Vec<u8>),
    /// A connect (`enforce::judge_connect`).
    Inet4([u8; 4], u16),
    Inet6(Ipv6Addr, u16),
    /// `sun_path` and its length as the caller passed it (addrlen - 2).
    Unix(Vec<u8>, usize),
}

/// A path for a message: escaped, runs of one byte shortened (`z{×300}`).
fn show(p: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < p.len() {
        let run = p[i..].iter().take_while(|b| **b == p[i]).count();
        out.push_str(&[p[i]].escape_ascii().to_string());
        if run >= 8 {
            out.push_str(&format!("{{×{run}}}"));
            i += run;
        } else {
            i += 1;
        }
    }
    out
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Path(a, p) => write!(f, "{a:?} \"{}\"", show(p)),
            Call::Open(flags, p) => write!(f, "open({flags:#o}) \"{}\"", show(p)),
            Call::Inet4(a, port) => {
                write!(f, "connect AF_INET {}:{port}", std::net::Ipv4Addr::from(*a))
            }
            Call::Inet6(a, port) => write!(f, "connect AF_INET6 [{a}]:{port}"),
            Call::Unix(p, n) => write!(f, "connect AF_UNIX \"{}\" ({n} bytes)", show(p)),
        }
    }
}

struct Judged {
    verdict: Verdict,
    rule: RuleId,
}

/// The decide-test object, loaded, its rule maps in an `Enforcer` as the
/// daemon's are in its own.
struct Kernel {
    ebpf: Ebpf,
    enforcer: Enforcer,
    input: Array<MapData, DecideInput>,
    output: Array<MapData, DecideOutput>,
    /// What the program reads: kept from call to call, so that the bytes
    /// after a path's NUL are an earlier path's, as in the hooks' record.
    buf: Box<DecideInput>,
}

impl Kernel {
    fn load() -> Self {
        require_root();
        let mut ebpf = Ebpf::load(OBJECT).expect("load the decide-test object");
        let prog: &mut RawTracePoint = ebpf
            .program_mut("decide_test")
            .expect("the object has decide_test")
            .try_into()
            .unwrap();
        prog.load().expect("the verifier takes the decision code");
        let enforcer = Enforcer::take(&mut ebpf).expect("the object has the rule maps");
        let input = Array::try_from(ebpf.take_map("DECIDE_INPUT").unwrap()).unwrap();
        let output = Array::try_from(ebpf.take_map("DECIDE_OUTPUT").unwrap()).unwrap();
        // Stale bytes that continue into the test policies' rules.
        let mut path = [0u8; PATH_MAX];
        for (d, s) in path.iter_mut().zip(b"/etc/a/x/".iter().cycle()) {
            *d = *s;
        }
        Self {
            ebpf,
            enforcer,
            input,
            output,
            buf: Box::new(DecideInput {
                session: 0,
                arg: 0,
                kind: 0,
                access: 0,
                path_len: 0,
                _pad: 0,
                sockaddr: [0; DECIDE_SOCKADDR_LEN],
                path,
            }),
        }
    }

    /// The kernel's judgement on `call` by a process in `session`; `None`
    /// when the session has no policy there.
    fn judge(&mut self, session: SessionId, call: &Call) -> Option<Judged> {
        let b = &mut *self.buf;
        b.session = session;
        match call {
            Call::Path(access, p) => {
                b.kind = DECIDE_PATH;
                b.access = *access as u8;
                put_path(b, p);
            }
            Call::Open(flags, p) => {
                b.kind = DECIDE_OPEN;
                b.arg = i64::from(*flags);
                put_path(b, p);
            }
            Call::Inet4(a, port) => {
                // struct sockaddr_in
                let sa = [&AF_INET.to_ne_bytes()[..], &port.to_be_bytes(), a, &[0; 8]].concat();
                put_sockaddr(b, &sa);
            }
            Call::Inet6(a, port) => {
                // struct sockaddr_in6: family, port, flowinfo, address, scope id
                let sa = [
                    &AF_INET6.to_ne_bytes()[..],
                    &port.to_be_bytes(),
                    &[0; 4],
                    &a.octets(),
                    &[0; 4],
                ]
                .concat();
                put_sockaddr(b, &sa);
            }
            Call::Unix(p, len) => {
                // struct sockaddr_un, `len` bytes of sun_path (NUL-padded).
                let mut sa = AF_UNIX.to_ne_bytes().to_vec();
                sa.extend(p);
                sa.resize(2 + len, 0);
                put_sockaddr(b, &sa);
            }
        }
        self.input.set(0, *self.buf, 0).unwrap();
        self.output.set(0, DecideOutput::default(), 0).unwrap();
        let prog: &RawTracePoint = self
            .ebpf
            .program("decide_test")
            .unwrap()
            .try_into()
            .unwrap();
        prog.test_run(RawTracePointRunOptions::new())
            .expect("BPF_PROG_TEST_RUN");
        let out = self.output.get(&0, 0).unwrap();
        match out.status {
            DECIDE_JUDGED => Some(Judged {
                verdict: Verdict::from_u8(out.verdict),
                rule: out.rule,
            }),
            DECIDE_NO_SESSION => None,
            s => panic!("the decide-test program did not judge {call:?}: status {s}"),
        }
    }
}

/// Puts `path` where the program reads it: a NUL ends it, and what
/// follows is left as it was.
fn put_path(b: &mut DecideInput, path: &[u8]) {
    b.path[..path.len()].copy_from_slice(path);
    if let Some(nul) = b.path.get_mut(path.len()) {
        *nul = 0;
    }
    b.path_len = path.len() as u16;
}

/// A connect to `sa`, a `struct sockaddr` of `sa.len()` bytes.
fn put_sockaddr(b: &mut DecideInput, sa: &[u8]) {
    b.kind = DECIDE_CONNECT;
    b.sockaddr = [0xa5; DECIDE_SOCKADDR_LEN];
    b.sockaddr[..sa.len()].copy_from_slice(sa);
    b.arg = sa.len() as i64;
}

/// The calls that stand for what a probe asks, as the hooks get them.
fn calls(probe: &corpus::Probe, access: AccessMask) -> Vec<Call> {
    match probe {
        corpus::Probe::Path(0, p) => vec![Call::Path(Access::Exec, p.clone())],
        corpus::Probe::Path(1, p) => unix_calls(p),
        corpus::Probe::Path(_, p) => {
            // Every open whose flags ask for exactly these accesses, by the
            // engine's reading of them.
            let flags: Vec<i32> = [0, libc::O_WRONLY, libc::O_RDWR, libc::O_ACCMODE]
                .into_iter()
                .flat_map(|acc| {
                    [
                        0,
                        libc::O_CREAT,
                        libc::O_TRUNC,
                        libc::O_CREAT | libc::O_TRUNC,
                    ]
                    .map(|f| acc | f)
                })
                .filter(|f| open_access(*f) == access)
                .collect();
            if flags.is_empty() {
                // Create alone: no open asks for it; one access judged.
                access.iter().map(|a| Call::Path(a, p.clone())).collect()
            } else {
                flags
                    .into_iter()
                    .map(|f| Call::Open(f, p.clone()))
                    .collect()
            }
        }
        corpus::Probe::Inet(ip, port) => {
            let mut v = vec![Call::Inet6(*ip, *port)];
            if let Some(v4) = ip.to_ipv4_mapped() {
                v.push(Call::Inet4(v4.octets(), *port));
            }
            v
        }
    }
}

/// A unix socket path as programs pass it: without its NUL (`SUN_LEN`),
/// with it (Go), and the whole zero-padded `sun_path`.
fn unix_calls(p: &[u8]) -> Vec<Call> {
    [p.len(), p.len() + 1, 108]
        .into_iter()
        .filter(|n| *n >= p.len() && *n <= 108)
        .map(|n| Call::Unix(p.to_vec(), n))
        .collect()
}

/// A session in the kernel's maps, and what the engine judges it by.
struct Node {
    id: SessionId,
    set: usize,
    ctx: SessionContext,
    rules: Compiled,
    tools: Vec<(String, Compiled)>,
    parent: Option<usize>,
}

/// The tool call `s` has in progress in `n`'s session, if its profile has
/// tools.
fn tool_of<'a>(n: &'a Node, s: &State) -> Option<&'a (String, Compiled)> {
    s.tool
        .filter(|_| !n.tools.is_empty())
        .map(|t| &n.tools[t % n.tools.len()])
}

/// How one session of a chain stands when the call is made.
#[derive(Clone, Debug, Default)]
struct State {
    labels: u64,
    /// The tool call in progress (index into the profile's tools).
    tool: Option<usize>,
}

struct Harness {
    kernel: MutexGuard<'static, Kernel>,
    sets: Vec<Arc<PolicySet>>,
    engines: Vec<Engine>,
    nodes: Vec<Node>,
}

impl Harness {
    fn new(sets: Vec<Arc<PolicySet>>) -> Self {
        Self {
            kernel: kernel(),
            engines: sets.iter().map(|s| Engine::new(s.clone())).collect(),
            sets,
            nodes: Vec::new(),
        }
    }

    /// Installs a session of `profile` in policy set `set`, delegated from
    /// node `parent`, and returns its node.
    fn add(&mut self, set: usize, profile: &str, parent: Option<usize>) -> usize {
        let ctx = corpus::ctx(profile);
        let rules = compile_session(&self.sets[set], &ctx).unwrap();
        let tools = compile_tools(&self.sets[set], &ctx).unwrap();
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let parent_id = parent.map_or(0, |p| self.nodes[p].id);
        self.kernel
            .enforcer
            .install(id, &rules.kernel, &kernel_tools(&tools), parent_id)
            .unwrap();
        self.nodes.push(Node {
            id,
            set,
            ctx,
            rules,
            tools,
            parent,
        });
        self.nodes.len() - 1
    }

    /// One session per profile of every set.
    fn add_roots(&mut self) -> Vec<usize> {
        let mut roots = Vec::new();
        for set in 0..self.sets.len() {
            let names: Vec<String> = self.sets[set]
                .profiles()
                .iter()
                .map(|p| p.name.clone())
                .collect();
            for p in names {
                roots.push(self.add(set, &p, None));
            }
        }
        roots
    }

    /// The node and those it was delegated from, innermost first.
    fn chain(&self, node: usize) -> Vec<usize> {
        let mut out = vec![node];
        while let Some(p) = self.nodes[*out.last().unwrap()].parent {
            out.push(p);
        }
        out
    }

    /// Judges `probe` by a process in `node`'s session, the chain standing
    /// as `states` says (innermost first; missing ones: no labels, no
    /// tool call), in the kernel, the model and the engine.
    fn check(
        &mut self,
        node: usize,
        states: &[State],
        probe: &corpus::Probe,
    ) -> Result<(), String> {
        let chain = self.chain(node);
        let states: Vec<State> = (0..chain.len())
            .map(|i| states.get(i).cloned().unwrap_or_default())
            .collect();
        let set = self.nodes[node].set;
        let labels_mask = (1u64 << self.sets[set].labels().len()) - 1;
        let states: Vec<State> = states
            .into_iter()
            .map(|s| State {
                labels: s.labels & labels_mask,
                ..s
            })
            .collect();
        // Innermost first: profile, labels, tool call.
        let sessions: Vec<String> = chain
            .iter()
            .zip(&states)
            .map(|(&n, s)| {
                let n = &self.nodes[n];
                let tool = tool_of(n, s).map_or(String::new(), |(t, _)| format!(", tool {t}"));
                format!("{} (labels {:#x}{tool})", n.ctx.profile, s.labels)
            })
            .collect();
        for (&n, s) in chain.iter().zip(&states) {
            let n = &self.nodes[n];
            let tool = tool_of(n, s).map(|(name, _)| name.as_str());
            self.kernel.enforcer.set_tool(n.id, tool).unwrap();
        }
        let argv = vec!["x".to_owned()];
        let (subject, access) = corpus::subject_of(probe, &argv);
        let abstract_name = matches!(subject, Subject::Unix { path } if !path.starts_with(b"/"));
        // The model of the kernel: every layer of the first MAX_CHAIN
        // sessions, the strongest verdict (the earlier rule on a tie);
        // each session keeps the labels its layers set unless the call is
        // refused.
        let mut model = (Verdict::None, 0);
        let mut model_sets = vec![0u64; chain.len()];
        let mut exact = true;
        for (i, (&n, s)) in chain.iter().zip(&states).enumerate().take(MAX_CHAIN) {
            let n = &self.nodes[n];
            let labels = s.labels;
            let layers = std::iter::once(&n.rules).chain(tool_of(n, s).map(|(_, c)| c));
            for c in layers {
                let (v, r, set) = c.decide(&subject, access, labels);
                if stronger((v, r), model) {
                    model = (v, r);
                }
                model_sets[i] |= set;
                exact &= access.iter().all(|a| c.exact[a as usize]);
            }
        }
        if model.0.blocks() {
            model_sets.fill(0);
        }
        // The engine, as the daemon judges a delegated session's call:
        // each session with its tool call, the strongest of them.
        let engine = (chain.len() <= MAX_CHAIN && !abstract_name).then(|| {
            let engine = &self.engines[set];
            let levels: Vec<_> = chain
                .iter()
                .zip(&states)
                .map(|(&n, s)| {
                    let n = &self.nodes[n];
                    let mut hist = SessionHistory::new();
                    hist.add_labels(s.labels);
                    let mut d =
                        engine.judge(&subject, access, &Process::default(), 1, &n.ctx, &hist);
                    if let Some((tool, _)) = tool_of(n, s)
                        && let Some(t) = engine.judge_tool(&subject, access, &n.ctx, tool)
                    {
                        d.narrow(t);
                    }
                    d
                })
                .collect();
            let mut d = levels[0].clone();
            for l in &levels[1..] {
                d.narrow(l.clone());
            }
            let sets: Vec<u64> = levels
                .iter()
                .map(|l| if d.verdict.blocks() { 0 } else { l.set_labels })
                .collect();
            (d.verdict, d.rule_id(), d.rule_name().to_owned(), sets)
        });
        let name = |id| {
            self.sets[set]
                .rule_info(id)
                .map_or("none".to_owned(), |r| r.name.clone())
        };
        let before: Vec<u64> = states.iter().map(|s| s.labels).collect();
        let with =
            |sets: &[u64]| -> Vec<u64> { before.iter().zip(sets).map(|(b, s)| b | s).collect() };
        for call in calls(probe, access) {
            for (&n, b) in chain.iter().zip(&before) {
                self.kernel
                    .enforcer
                    .reset_labels(self.nodes[n].id, *b)
                    .unwrap();
            }
            let j = self
                .kernel
                .judge(self.nodes[node].id, &call)
                .ok_or_else(|| format!("no policy for session {node}"))?;
            let after: Vec<u64> = chain
                .iter()
                .map(|&n| self.kernel.enforcer.labels(self.nodes[n].id))
                .collect();
            let what = |other: &str| {
                format!(
                    "{call:?} by sessions {sessions:?} of set {set}: kernel {:?} by {} \
                     (labels {after:x?}), {other}",
                    j.verdict,
                    name(j.rule),
                )
            };
            if (j.verdict, j.rule, &after) != (model.0, model.1, &with(&model_sets)) {
                return Err(what(&format!(
                    "model {:?} by {} (labels {:x?})",
                    model.0,
                    name(model.1),
                    with(&model_sets)
                )));
            }
            if let Some((ev, eid, ename, esets)) = &engine
                && !corpus::agrees(
                    exact,
                    (j.verdict, j.rule, after.clone()),
                    (*ev, *eid, with(esets)),
                )
            {
                return Err(what(&format!(
                    "engine {ev:?} by {ename} (labels {:x?}), exact: {exact}",
                    with(esets)
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for n in &self.nodes {
            self.kernel.enforcer.remove(n.id);
        }
    }
}

fn fail_on(wrong: &[String], total: usize) {
    assert!(
        wrong.is_empty(),
        "{} of {total} calls wrong:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
}

/// Label masks worth judging with: none, all, each alone.
fn masks(set: &PolicySet) -> Vec<u64> {
    let n = set.labels().len();
    [0, (1u64 << n) - 1]
        .into_iter()
        .chain((0..n).map(|i| 1u64 << i))
        .collect()
}

/// Every profile of every test set, with every label mask, on every
/// listed address and port (both families for IPv4) and every listed
/// socket (with each address length, and abstract names); and a read
/// (with no label and with all), a write and an exec of every listed name
/// in every listed directory.
#[test]
fn kernel_decisions_agree_on_every_listed_target() {
    let mut h = Harness::new(corpus::SETS.clone());
    let roots = h.add_roots();
    let mut probes: Vec<corpus::Probe> = corpus::IPS
        .iter()
        .flat_map(|ip| {
            let ip = agentgate::policy::mapped(ip.parse().unwrap());
            corpus::PORTS
                .iter()
                .map(move |p| corpus::Probe::Inet(ip, *p))
        })
        .collect();
    probes.extend(
        corpus::SOCKETS
            .iter()
            .map(|s| corpus::Probe::Path(1, s.as_bytes().to_vec())),
    );
    let files: Vec<corpus::Probe> = corpus::DIRS
        .iter()
        .flat_map(|d| corpus::PARTS.iter().map(move |p| format!("{d}{p}")))
        .map(|p| agentgate::policy::normalize(p.as_bytes()).into_owned())
        .flat_map(|p| [8, 2, 0].map(|k| corpus::Probe::Path(k, p.clone())))
        .collect();
    let mut wrong = Vec::new();
    let mut total = 0;
    for &node in &roots {
        let all = masks(&h.sets[h.nodes[node].set])[1];
        for probe in &files {
            let read = matches!(probe, corpus::Probe::Path(8, _));
            for labels in [0, all].into_iter().take(if read { 2 } else { 1 }) {
                total += 1;
                let state = [State { labels, tool: None }];
                if let Err(e) = h.check(node, &state, probe) {
                    wrong.push(e);
                }
            }
        }
        for labels in masks(&h.sets[h.nodes[node].set]) {
            let state = [State { labels, tool: None }];
            for probe in &probes {
                total += 1;
                if let Err(e) = h.check(node, &state, probe) {
                    wrong.push(e);
                }
            }
            // Abstract names: the kernel does not judge them.
            let id = h.nodes[node].id;
            for call in [
                Call::Unix(b"\0dbus".to_vec(), 5),
                Call::Unix(b"\0".to_vec(), 1),
            ] {
                total += 1;
                let j = h.kernel.judge(id, &call).unwrap();
                if j.verdict != Verdict::None {
                    wrong.push(format!("{call:?}: {:?} by {}", j.verdict, j.rule));
                }
            }
        }
    }
    fail_on(&wrong, total);
}

/// Generated calls (the compile tests' strategies) by sessions alone and
/// at every depth of a delegation chain, up to one past MAX_CHAIN (whose
/// outermost session the kernel does not see), with labels and tool
/// calls on every session.
#[test]
fn kernel_decisions_agree_on_generated_calls() {
    let mut h = Harness::new(corpus::SETS.clone());
    let roots = h.add_roots();
    // Chains: in each set, sessions opened from every other session one
    // level up (at least one), with the set's profiles in turn.
    let mut nodes = roots.clone();
    for set in 0..h.sets.len() {
        let mut level: Vec<usize> = roots
            .iter()
            .copied()
            .filter(|r| h.nodes[*r].set == set)
            .collect();
        for depth in 1..=MAX_CHAIN {
            let profiles: Vec<String> = h.sets[set]
                .profiles()
                .iter()
                .map(|p| p.name.clone())
                .collect();
            level = level
                .iter()
                .step_by(2)
                .enumerate()
                .map(|(i, &parent)| {
                    h.add(set, &profiles[(i + depth) % profiles.len()], Some(parent))
                })
                .collect();
            nodes.extend(&level);
        }
    }
    assert!(
        nodes.iter().any(|n| h.chain(*n).len() == MAX_CHAIN + 1),
        "the corpus has a chain past MAX_CHAIN"
    );
    let h = RefCell::new(h);
    let states = prop::collection::vec(
        (0u64..256, prop::option::weighted(0.3, 0usize..8))
            .prop_map(|(labels, tool)| State { labels, tool }),
        MAX_CHAIN + 1,
    );
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        rng_seed: RngSeed::Fixed(0x5eed_dec1de),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(
            prop::sample::select(nodes),
            states,
            corpus::probe_strategy(),
        ),
        |(node, states, probe)| {
            h.borrow_mut()
                .check(node, &states, &probe)
                .map_err(TestCaseError::fail)
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A policy with rules whose keys are as long as a key holds (exact paths,
/// trees, suffixes; with labels), and with `over`, one byte longer too
/// (left to user space).
fn edge_policy(over: bool) -> PolicySet {
    let n = RULE_PATH_LEN;
    // The longest that fits, two shorter, and (with `over`) one longer.
    let upto = |max: usize| (max - 2..=max + 1).filter(move |l| over || *l <= max);
    let lit =
        |dir: &str, c: char, len: usize| format!("{dir}{}", c.to_string().repeat(len - dir.len()));
    let mut src = String::from(
        "apiVersion: agentgate.dev/v1\nkind: Profile\nmetadata: {name: edge}\n\
         spec: {read: [/**], exec: [/x/**], default: deny}\n---\n\
         apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {name: edge}\n\
         labels: {seen: x, hot: x}\nrules:\n",
    );
    let mut rule = |name: String, m: String, then: &str| {
        src.push_str(&format!(
            "  - {{name: {name}, reason: r, match: {m}, {then}}}\n"
        ));
    };
    // Exact paths hold one byte less than a key: its NUL ends them.
    for len in upto(n - 1) {
        let p = lit("/x/", 'e', len);
        rule(
            format!("exact{len}"),
            format!("{{open: {{path: {p}}}}}"),
            "action: allow, set_labels: [seen]",
        );
        rule(
            format!("exact-exec{len}"),
            format!("{{exec: {{path: {p}}}}}"),
            "action: deny",
        );
    }
    // A tree `dir/**` is `dir` exactly and the prefix `dir/`.
    for len in upto(n - 1) {
        let p = lit("/t/", 't', len);
        rule(
            format!("tree{len}"),
            format!("{{open: {{path: \"{p}/**\", access: [write]}}}}"),
            "action: allow",
        );
        rule(
            format!("tree-read{len}"),
            format!("{{open: {{path: \"{p}/**\", access: read}}}}"),
            "action: refer",
        );
    }
    for len in upto(n) {
        let s = "s".repeat(len);
        rule(
            format!("suffix{len}"),
            format!("{{open: {{path: \"/**/*{s}\", access: read}}}}"),
            "action: audit, set_labels: [hot]",
        );
        rule(
            format!("suffix-write{len}"),
            format!("{{open: {{path: \"/**/*{s}\", access: write}}}}"),
            "action: deny",
        );
        rule(
            format!("suffix-hot{len}"),
            format!("{{open: {{path: \"/**/*{s}\"}}, session: {{labels: [hot]}}}}"),
            "action: kill",
        );
    }
    // `/**/name`: the suffix `/name`.
    for len in upto(n - 1) {
        let name = "p".repeat(len);
        rule(
            format!("slashed{len}"),
            format!("{{open: {{path: \"/**/{name}\"}}}}"),
            "action: audit",
        );
    }
    rule(
        "sock".into(),
        "{connect: {unix: \"/**/*.sock\"}}".into(),
        "action: deny",
    );
    load_sources(&[("edge.yaml", src)]).unwrap_or_else(|d| panic!("{d:?}"))
}

/// Rules whose keys are as long as a key holds, and one byte longer, on
/// paths of every length around them and far past RULE_PATH_LEN. Where
/// every rule fits the kernel decides alone and must be the engine.
#[test]
fn kernel_keys_at_the_length_limits() {
    let n = RULE_PATH_LEN;
    let mut h = Harness::new(vec![
        Arc::new(edge_policy(false)),
        Arc::new(edge_policy(true)),
    ]);
    let fits = h.add(0, "edge", None);
    let over = h.add(1, "edge", None);
    assert_eq!(
        h.nodes[fits].rules.exact,
        [true; agent_common::ACCESS_COUNT]
    );
    assert!(!h.nodes[over].rules.exact[Access::Read as usize]);

    let long = |head: &[u8], len: usize| {
        let mut p = head.to_vec();
        p.push(b'/');
        p.resize(len.max(p.len()), b'z');
        p
    };
    let mut paths: Vec<Vec<u8>> = Vec::new();
    for (dir, c) in [("/x/", b'e'), ("/t/", b't')] {
        for len in n - 3..=n + 1 {
            let mut b = dir.as_bytes().to_vec();
            b.resize(len, c);
            paths.push([&b[..], b"x"].concat());
            paths.push([&b[..], b"/y"].concat());
            for total in [n - 1, n, n + 1, n + 2, 300, 700] {
                paths.push(long(&b, total));
            }
            paths.push(b);
        }
    }
    for (c, lens) in [(b's', n - 2..=n + 2), (b'p', n - 2..=n + 1)] {
        for len in lens {
            let s = vec![c; len];
            for head in ["/d/", "/d/x", "/"] {
                paths.push([head.as_bytes(), &s].concat());
                paths.push([head.as_bytes(), &s, b"x"].concat());
            }
            paths.push([&long(b"/d", 400)[..], b"/", &s].concat());
            paths.push([&long(b"/d", 400)[..], b"/x", &s].concat());
        }
    }
    paths.retain(|p| *p == agentgate::policy::normalize(p).into_owned());
    let mut wrong = Vec::new();
    let mut total = 0;
    for node in [fits, over] {
        for p in &paths {
            for k in [0, 8, 2, 3, 4, 7] {
                for labels in 0..4 {
                    total += 1;
                    let probe = corpus::Probe::Path(k, p.clone());
                    if let Err(e) = h.check(node, &[State { labels, tool: None }], &probe) {
                        wrong.push(e);
                    }
                }
            }
        }
        for sock in ["/run/x.sock", "/run/x.sockx", "/x.sock", "/run/a/b.sock"] {
            total += 1;
            let probe = corpus::Probe::Path(1, sock.into());
            if let Err(e) = h.check(node, &[State::default()], &probe) {
                wrong.push(e);
            }
        }
    }
    fail_on(&wrong, total);
}

/// A session past its TTL refuses (or kills) every call, and so does every
/// session delegated from it; a session with no policy is not judged.
#[test]
fn expired_sessions_refuse_for_their_whole_chain() {
    let mut h = Harness::new(vec![corpus::SETS[0].clone()]);
    let outer = h.add(0, "coding-agent", None);
    let inner = h.add(0, "default", Some(outer));
    let (outer, inner) = (h.nodes[outer].id, h.nodes[inner].id);
    let call = Call::Open(libc::O_RDONLY, b"/work/ws/src/main.rs".to_vec());
    let k = &mut h.kernel;
    assert_eq!(k.judge(inner, &call).unwrap().verdict, Verdict::Allow);
    assert!(k.judge(SessionId::MAX, &call).is_none());
    k.enforcer.expire(outer, false).unwrap();
    let j = k.judge(inner, &call).unwrap();
    assert_eq!((j.verdict, j.rule), (Verdict::Deny, 0));
    k.enforcer.expire(inner, true).unwrap();
    let j = k.judge(inner, &call).unwrap();
    assert_eq!((j.verdict, j.rule), (Verdict::Kill, 0));
    let j = k.judge(outer, &Call::Inet4([127, 0, 0, 1], 8000)).unwrap();
    assert_eq!((j.verdict, j.rule), (Verdict::Deny, 0));
}
