//! `agentgate daemon`: load the programs, read their events, serve the
//! control socket, until SIGINT or SIGTERM.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::{Duration, UNIX_EPOCH},
};

use agent_common::{Counter, Hook, MAX_CHAIN, MODE_LSM, ProcTag, SessionId, counter_index};
use anyhow::{Context, bail};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

use crate::{
    adopt,
    audit::{self, AuditLog},
    control::{self, HookCounters, Request, Response, Socket, request, response},
    enforce::Enforcer,
    engine::Engine,
    journal::{self, LogTarget},
    judge::Judge,
    loader,
    observer::{self, ReaderStats},
    output::{self, JsonLines},
    pins,
    policy::{self, PolicySet, SessionContext},
    probe::{self, Mode},
    referrals::{Grant, Referrals},
    sessions::{Action, Ended, NewSession, Registry, Session},
    state,
};

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Policy files or directories (default: /etc/agentgate/policies, else the repo's policies/).
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    #[arg(long, default_value = "/var/lib/agentgate")]
    pub state_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Compute and log decisions, block nothing.
    #[arg(long)]
    pub audit_only: bool,
    /// Where verdicts go: json (every event as a JSON line on stdout, with
    /// its decision), journald (deny, kill and refer verdicts, structured),
    /// auto (journald when its socket exists, else json).
    #[arg(long, value_enum, default_value_t = LogTarget::Auto)]
    pub log: LogTarget,
    /// Send allow verdicts to journald too.
    #[arg(long)]
    pub log_allow: bool,
    /// journald's socket (tests run a private journald).
    #[arg(long, default_value = journal::DEFAULT_SOCKET, hide = true)]
    pub journal_socket: PathBuf,
    #[arg(long, env = "AGENTGATE_SOCKET", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 8 << 20)]
    pub ring_bytes: u32,
    /// Where maps and program links are pinned (on bpffs): they keep
    /// enforcing while no daemon runs, and the next daemon adopts them.
    #[arg(long, default_value = pins::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// What the daemon shares between its tasks. Lock order: engine, registry,
/// enforcer, tags.
pub struct Shared {
    tags: Mutex<BpfHashMap<MapData, u32, ProcTag>>,
    counters: PerCpuArray<MapData, u64>,
    pub(crate) registry: Mutex<Registry>,
    reader: Arc<ReaderStats>,
    mode: String,
    mode_detail: String,
    /// What the kernel probe found, one line per program type.
    probe: Vec<String>,
    pub(crate) enforcer: Mutex<Enforcer>,
    /// The policy in force; replaced whole on a good reload.
    pub(crate) engine: RwLock<Arc<Engine>>,
    pub(crate) referrals: Mutex<Referrals>,
    /// SHA-256 of the policy files in force, for the receipts.
    pub(crate) policy_hash: RwLock<Vec<u8>>,
    policy_paths: Vec<PathBuf>,
    pub(crate) audit_only: bool,
    programs: Vec<String>,
    state_dir: PathBuf,
    /// The label name of each bit of the kernel's masks
    /// (`Enforcer::label_names`), saved with the sessions.
    label_names: Mutex<Vec<String>>,
}

fn label_names(set: &PolicySet) -> Vec<String> {
    set.labels().iter().map(|(n, _)| n.to_owned()).collect()
}

impl Shared {
    /// Saves the registry for the next daemon (see `state`).
    pub(crate) fn persist(&self, registry: &Registry) {
        let labels = self.label_names.lock().unwrap();
        if let Err(e) = state::save(&self.state_dir, &labels, registry.iter()) {
            log::error!("saving the sessions: {e}");
        }
    }

    /// The session a live process is tagged with, if any.
    pub(crate) fn session_of(&self, pid: u32) -> Option<SessionId> {
        self.tags
            .lock()
            .unwrap()
            .get(&pid, 0)
            .ok()
            .map(|t| t.session)
    }
}

/// Where policies come from when `--policy` is not given.
fn default_policy_paths() -> Vec<PathBuf> {
    let etc = PathBuf::from("/etc/agentgate/policies");
    if etc.is_dir() {
        return vec![etc];
    }
    vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")]
}

/// Loads and checks the policy files: every error, with its place.
fn load_policy(paths: &[PathBuf]) -> anyhow::Result<Arc<PolicySet>> {
    policy::load(paths).map(Arc::new).map_err(|diags| {
        let all: Vec<String> = diags.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} error(s) in the policy ({}):\n  {}",
            all.len(),
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            all.join("\n  ")
        )
    })
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "agentgate daemon must run as root (it loads eBPF programs): run `sudo agentgate daemon`"
        );
    }
    let policy_paths = if args.policy.is_empty() {
        default_policy_paths()
    } else {
        args.policy.clone()
    };
    // A policy that does not check stops the start: enforcing nothing while
    // looking up is the failure this tool exists to prevent.
    let set = load_policy(&policy_paths)?;
    log::info!(
        "policy: {} rules, {} profiles ({}) from {}",
        set.rules().len(),
        set.profiles().len(),
        set.profiles()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        policy_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Before touching the pins: a running daemon owns them.
    if UnixStream::connect(&args.socket).await.is_ok() {
        bail!(
            "another agentgate daemon is running (socket {} answers)",
            args.socket.display()
        );
    }
    let saved = adopt::saved_sessions(&args.state_dir)?;
    loader::ensure_tracefs().context("probing the kernel")?;
    let probe = probe::probe();
    let mode = probe::choose_mode(args.mode, args.audit_only, &probe)?;
    let sink = journal::Sink::open(args.log, &args.journal_socket, args.log_allow)?;
    let audit = AuditLog::open(audit::Config::new(&args.state_dir)).with_context(|| {
        format!(
            "opening the audit log in {} (agentgate audit verify --state-dir {} checks it)",
            args.state_dir.display(),
            args.state_dir.display()
        )
    })?;
    log::info!(
        "verdicts to {}; decision receipts in {}/audit",
        sink.kind(),
        args.state_dir.display()
    );
    let mut loaded = loader::load(&loader::Options {
        ring_bytes: args.ring_bytes,
        lsm: mode.kernel_mode == MODE_LSM,
        pin_dir: args.pin_dir.clone(),
    })
    .context("starting the kernel side")?;
    let mut enforcer = Enforcer::take(&mut loaded.ebpf).context("reading the rule maps")?;
    enforcer
        .configure(mode.kernel_mode, !args.audit_only)
        .context("setting the enforcement mode")?;
    log::info!("mode {}: {}", mode.name, mode.detail);
    log::info!("probe: {}", probe.findings().join("; "));
    log::info!(
        "attached {} programs: {}",
        loaded.attached.len(),
        loaded.attached.join(", ")
    );

    match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(logger) => {
            tokio::spawn(forward_kernel_log(logger));
        }
        Err(e) => log::warn!("kernel programs' log is not available: {e}"),
    }

    let mut take = |name: &str| {
        loaded
            .ebpf
            .take_map(name)
            .with_context(|| format!("the kernel object lacks map {name}"))
    };
    let ring = RingBuf::try_from(take("EVENTS")?)?;
    let mut tags = BpfHashMap::try_from(take("TAGS")?)?;
    let counters = PerCpuArray::try_from(take("COUNTERS")?)?;
    let mut registry = Registry::new();
    adopt::restore(
        saved,
        &set,
        &loaded,
        &mut tags,
        &mut enforcer,
        &mut registry,
    )?;
    let labels = enforcer.label_names();
    let reader = Arc::new(ReaderStats::default());
    let shared = Arc::new(Shared {
        tags: Mutex::new(tags),
        counters,
        registry: Mutex::new(registry),
        reader: reader.clone(),
        mode: mode.name.to_owned(),
        mode_detail: mode.detail,
        probe: probe.findings(),
        enforcer: Mutex::new(enforcer),
        engine: RwLock::new(Arc::new(Engine::new(set))),
        referrals: Mutex::new(Referrals::default()),
        policy_hash: RwLock::new(policy_hash(&policy_paths)),
        policy_paths,
        audit_only: args.audit_only,
        programs: loaded.attached.clone(),
        state_dir: args.state_dir.clone(),
        label_names: Mutex::new(labels),
    });
    shared.persist(&shared.registry.lock().unwrap());

    // The agent socket first: a control socket that exists means the daemon
    // serves both.
    let agent_socket = control::agent_socket(&args.socket);
    let agents = bind_socket(&agent_socket).await?;
    let listener = bind_socket(&args.socket).await?;
    log::info!(
        "control socket at {}, agent socket at {}",
        args.socket.display(),
        agent_socket.display()
    );
    let server = tokio::spawn(serve(listener, shared.clone(), Socket::Control));
    let agent_server = tokio::spawn(serve(agents, shared.clone(), Socket::Agent));

    let observe = tokio::spawn(observer::run(
        ring,
        reader,
        Judge::new(
            shared.clone(),
            (sink.kind() == "json").then(|| JsonLines::new(std::io::stdout())),
            (sink.kind() == "journald").then_some(sink),
            audit,
        ),
    ));
    tokio::spawn(watch_policy(shared.clone()));
    tokio::spawn(expire_sessions(shared.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        r = observe => log::error!("event reader stopped: {r:?}"),
        r = server => log::error!("control socket stopped: {r:?}"),
        r = agent_server => log::error!("agent socket stopped: {r:?}"),
    }
    let _ = std::fs::remove_file(&args.socket);
    let _ = std::fs::remove_file(&agent_socket);
    if let Err(e) = shared.enforcer.lock().unwrap().unguard() {
        log::error!("releasing the guard on this daemon's pid: {e}");
    }
    log::info!(
        "the pinned programs under {} keep enforcing the last rules until a daemon adopts them \
         (`agentgate unload` removes them)",
        loaded.generation.dir.display()
    );
    Ok(())
}

/// Reloads the policy on SIGHUP and when a policy file changes (polled:
/// editors replace files in ways inotify watches miss).
async fn watch_policy(shared: Arc<Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        log::error!("cannot watch SIGHUP: policy reloads only on file change");
        return;
    };
    let mut seen = policy_stamp(&shared.policy_paths);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = policy_stamp(&shared.policy_paths);
                if now == seen {
                    continue;
                }
                seen = now;
                "a policy file changed"
            }
        };
        match reload(&shared) {
            Ok(n) => log::info!("policy reloaded ({why}): in force for {n} session(s)"),
            Err(e) => log::error!(
                "policy reload ({why}) refused, the previous policy stays in force: {e:#}"
            ),
        }
    }
}

/// Past its TTL a session may do nothing more: the kernel refuses every
/// call of its processes from then on (and the daemon refuses what only it
/// judges). The session stays listed, marked expired, until it is ended.
async fn expire_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now();
        let ended = shared.referrals.lock().unwrap().expire(now);
        for g in ended {
            let chain = shared.registry.lock().unwrap().chain(g.session);
            let mut enforcer = shared.enforcer.lock().unwrap();
            for s in chain {
                enforcer.revoke(s, g.id);
            }
            drop(enforcer);
            log::info!(
                "grant {} of session {} expired: referral {} is refused again",
                g.id,
                g.session,
                g.referral
            );
        }
        let mut registry = shared.registry.lock().unwrap();
        let mut changed = false;
        for s in registry.iter_mut() {
            if s.ended.is_some() || s.expires.is_none_or(|e| e > now) {
                continue;
            }
            s.ended = Some(Ended::Expired);
            changed = true;
            match shared.enforcer.lock().unwrap().expire(s.id, false) {
                Ok(()) => log::warn!(
                    "session {} expired (TTL): every further call of its processes is refused",
                    s.id
                ),
                Err(e) => log::error!("session {}: marking it expired: {e}", s.id),
            }
        }
        if changed {
            shared.persist(&registry);
        }
    }
}

/// SHA-256 over the policy files' names and contents, in load order.
fn policy_hash(paths: &[PathBuf]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (file, _) in policy_stamp(paths) {
        ctx.update(file.as_os_str().as_encoded_bytes());
        ctx.update(&std::fs::read(&file).unwrap_or_default());
    }
    ctx.finish().as_ref().to_vec()
}

/// SHA-256 of a file, empty when it cannot be read.
fn file_sha256(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .map(|b| {
            ring::digest::digest(&ring::digest::SHA256, &b)
                .as_ref()
                .to_vec()
        })
        .unwrap_or_default()
}

/// Names and modification times of the policy files, to notice changes.
fn policy_stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        let entries: Vec<PathBuf> = if p.is_dir() {
            std::fs::read_dir(p)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        } else {
            vec![p.clone()]
        };
        for e in entries {
            let mtime = std::fs::metadata(&e).and_then(|m| m.modified()).ok();
            out.push((e, mtime));
        }
    }
    out.sort();
    out
}

/// Checks the policy files and, only if every file and every session's
/// compilation is good, puts the new policy in force everywhere at once.
fn reload(shared: &Shared) -> anyhow::Result<usize> {
    let set = load_policy(&shared.policy_paths)?;
    let mut engine = shared.engine.write().unwrap();
    let mut registry = shared.registry.lock().unwrap();
    let mut compiled = Vec::new();
    for s in registry.iter() {
        let what = || format!("session {} (profile {})", s.id, s.ctx.profile);
        let c = policy::compile_session(&set, &s.ctx).with_context(what)?;
        let tools = policy::compile_tools(&set, &s.ctx).with_context(what)?;
        compiled.push((s.id, s.spec.parent, c, tools));
    }
    let mut enforcer = shared.enforcer.lock().unwrap();
    enforcer
        .use_labels(&label_names(&set))
        .context("giving the policy's labels their kernel bits")?;
    for (id, parent, c, tools) in &compiled {
        if let Err(e) = enforcer.install(*id, &c.kernel, &policy::kernel_tools(tools), *parent) {
            let _ = enforcer.use_labels(&label_names(engine.policy()));
            return Err(e).with_context(|| format!("session {id}: installing its rules"));
        }
    }
    let old = engine.policy().clone();
    let mut compiled: std::collections::HashMap<SessionId, _> = compiled
        .into_iter()
        .map(|(id, _, c, t)| (id, (c, t)))
        .collect();
    for s in registry.iter_mut() {
        if let Some((c, t)) = compiled.remove(&s.id) {
            s.compiled = c;
            s.tools = t;
        }
        // The kernel's masks keep their bits (Enforcer::use_labels): only
        // the daemon's own record is renumbered.
        s.history = s.history.carry_over(&old, &set);
    }
    let referrals = shared.referrals.lock().unwrap();
    for g in referrals.grants() {
        install_grant(&registry, &mut enforcer, g)
            .with_context(|| format!("session {}: re-installing grant {}", g.session, g.id))?;
    }
    drop(referrals);
    let n = registry.len();
    *shared.label_names.lock().unwrap() = enforcer.label_names();
    shared.persist(&registry);
    *engine = Arc::new(Engine::new(set));
    *shared.policy_hash.write().unwrap() = policy_hash(&shared.policy_paths);
    Ok(n)
}

async fn forward_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(mut fd) = observer::readable_fd(logger) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Binds a socket. Any local user may connect (to open a session for their
/// own process); the handler decides per request from the peer's
/// credentials. A live socket means another daemon: refuse to steal it.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another agentgate daemon is running (socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, shared: Arc<Shared>, socket: Socket) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, &shared, socket).await {
                log::warn!("{socket:?} connection: {e:#}");
            }
        });
    }
}

/// The peer as the kernel reports it.
struct Peer {
    pid: u32,
    uid: u32,
}

async fn handle_connection(
    stream: UnixStream,
    shared: &Shared,
    socket: Socket,
) -> anyhow::Result<()> {
    let cred = stream.peer_cred().context("reading peer credentials")?;
    let peer = Peer {
        pid: cred
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .context("peer has no pid")?,
        uid: cred.uid(),
    };
    let mut framed = Framed::new(stream, control::codec());
    while let Some(frame) = framed.next().await {
        let reply = match frame {
            Ok(bytes) => match <Request as prost::Message>::decode(bytes.freeze()) {
                Ok(req) => handle_request(req, &peer, shared, socket),
                Err(e) => response::Body::Error(format!("malformed request: {e}")),
            },
            // Oversized or broken frame: answer once and hang up.
            Err(e) => {
                let body = response::Body::Error(format!("malformed frame: {e}"));
                let bytes = prost::Message::encode_to_vec(&Response { body: Some(body) });
                let _ = framed.send(bytes::Bytes::from(bytes)).await;
                return Ok(());
            }
        };
        let bytes = prost::Message::encode_to_vec(&Response { body: Some(reply) });
        framed.send(bytes::Bytes::from(bytes)).await?;
    }
    Ok(())
}

fn handle_request(req: Request, peer: &Peer, shared: &Shared, socket: Socket) -> response::Body {
    // A process inside a session must not steer its own guard: the control
    // socket serves it nothing. The agent socket serves only processes
    // inside a session, and only what can narrow them: a delegated session,
    // a tool call.
    let session = shared.session_of(peer.pid);
    let narrowing = matches!(
        req.body,
        Some(
            request::Body::OpenSession(_)
                | request::Body::ActionBegin(_)
                | request::Body::ActionEnd(_)
        )
    );
    match (socket, session) {
        (Socket::Control, Some(session)) => {
            return response::Body::Error(format!(
                "refused: the caller (pid {}) is inside session {session}",
                peer.pid
            ));
        }
        (Socket::Agent, None) => {
            return response::Body::Error(format!(
                "refused: the agent socket serves processes inside its session (the caller, pid \
                 {}, is in none): use the control socket",
                peer.pid
            ));
        }
        (Socket::Agent, Some(session)) if !narrowing => {
            return response::Body::Error(format!(
                "refused: inside session {session}, only delegated sessions and tool calls are \
                 served"
            ));
        }
        _ => {}
    }
    let done = |r: anyhow::Result<()>| match r {
        Ok(()) => response::Body::Done(control::Done {}),
        Err(e) => response::Body::Error(format!("{e:#}")),
    };
    match req.body {
        Some(request::Body::OpenSession(open)) => match open_session(open, peer, shared) {
            Ok(id) => response::Body::SessionOpened(control::SessionOpened { id }),
            Err(e) => response::Body::Error(format!("{e:#}")),
        },
        Some(request::Body::Status(_)) => response::Body::Status(status(shared)),
        Some(request::Body::ListSessions(_)) => response::Body::Sessions(control::Sessions {
            sessions: shared
                .registry
                .lock()
                .unwrap()
                .iter()
                .map(session_info)
                .collect(),
        }),
        Some(request::Body::EndSession(end)) => done(end_session(end.id, peer, shared)),
        Some(request::Body::ListReferrals(_)) => response::Body::Referrals(list_referrals(shared)),
        Some(request::Body::AnswerReferral(a)) => done(answer_referral(a, peer, shared)),
        Some(request::Body::ActionBegin(a)) => match begin_action(a, peer, shared) {
            Ok(id) => response::Body::ActionStarted(control::ActionStarted { id }),
            Err(e) => response::Body::Error(format!("{e:#}")),
        },
        Some(request::Body::ActionEnd(a)) => done(end_action(a.id, peer, shared)),
        Some(request::Body::ShowSession(show)) => match show_session(show.id, shared) {
            Ok(d) => response::Body::SessionDetail(d),
            Err(e) => response::Body::Error(format!("{e:#}")),
        },
        None => response::Body::Error("malformed request: empty".into()),
    }
}

/// (start time in boot-clock ns, ppid) of a live process, from /proc.
fn proc_start(pid: u32) -> anyhow::Result<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the last ')' (comm may contain spaces and parentheses).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = fields
        .get(1)
        .and_then(|f| f.parse().ok())
        .context("no ppid in /proc stat")?;
    let ticks: u64 = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .context("no starttime in /proc stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks * (1_000_000_000 / hz), ppid))
}

fn open_session(
    open: control::OpenSession,
    peer: &Peer,
    shared: &Shared,
) -> anyhow::Result<SessionId> {
    if open.pid != peer.pid {
        bail!(
            "a process may only open a session for itself (asked for pid {}, caller is {})",
            open.pid,
            peer.pid
        );
    }
    let (start_ns, ppid) = proc_start(peer.pid)?;
    let requested_ttl = (open.ttl_secs > 0).then(|| Duration::from_secs(open.ttl_secs));
    // Opened from inside a session: a delegated session, judged by its own
    // scope and by every session it was delegated from.
    let delegation = match shared.session_of(peer.pid) {
        None => None,
        Some(p) => Some(delegating(p, &shared.registry.lock().unwrap())?),
    };
    let principal = match &delegation {
        // The human stays the one the delegating session acts for.
        Some(d) => d.principal.clone(),
        None if open.principal.is_empty() => user_name(peer.uid),
        None => open.principal,
    };
    // The rules go into the kernel before the pid is tagged: the session's
    // first call is already judged by them.
    let engine = shared.engine.read().unwrap().clone();
    let set = engine.policy();
    let Some(profile) = set.profile(&open.profile) else {
        bail!(
            "no profile {:?} in the policy (profiles: {})",
            open.profile,
            set.profiles()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // The session lives as long as asked, and never longer than its profile
    // allows.
    let parent_left = delegation.as_ref().and_then(|d| d.left);
    let ttl = [requested_ttl, profile.ttl, parent_left]
        .into_iter()
        .flatten()
        .min();
    let mut homes: Vec<PathBuf> = Vec::new();
    if !open.home.is_empty() {
        homes.push(PathBuf::from(&open.home));
    }
    if let Some(home) = user_home(peer.uid)
        && !homes.contains(&home)
    {
        homes.push(home);
    }
    let home_refs: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
    let ctx = SessionContext::new(
        &open.profile,
        Path::new(&open.workspace),
        &home_refs,
        peer.uid,
        open.intent_tags.clone(),
    )
    .with_context(|| format!("workspace {:?}", open.workspace))?;
    let compiled = policy::compile_session(set, &ctx)
        .with_context(|| format!("compiling profile {:?}", open.profile))?;
    let tools = policy::compile_tools(set, &ctx)
        .with_context(|| format!("compiling the tools of profile {:?}", open.profile))?;
    let parent = delegation.as_ref().map_or(0, |d| d.id);
    let mut registry = shared.registry.lock().unwrap();
    let id = registry.next_id();
    shared
        .enforcer
        .lock()
        .unwrap()
        .install(id, &compiled.kernel, &policy::kernel_tools(&tools), parent)
        .context("installing the session's rules in the kernel")?;
    let session = registry.open(
        NewSession {
            pid: peer.pid,
            uid: peer.uid,
            principal,
            profile: open.profile,
            intent: open.intent,
            workspace: open.workspace,
            command: open.command,
            ttl,
            agent_sha256: file_sha256(&open.program),
            agent_exe: open.program,
            parent,
        },
        ctx,
        compiled,
        tools,
    );
    debug_assert_eq!(session.id, id);
    let tag = ProcTag {
        session: id,
        start_ns,
        ppid,
        _pad: 0,
    };
    if let Err(e) = shared.tags.lock().unwrap().insert(peer.pid, tag, 0) {
        registry.remove(id);
        shared.enforcer.lock().unwrap().remove(id);
        bail!("cannot tag pid {}: {e}", peer.pid);
    }
    shared.persist(&registry);
    log::info!(
        "session {id} opened for pid {} (uid {}){}: {:?}",
        peer.pid,
        peer.uid,
        if parent != 0 {
            format!(" from inside session {parent}")
        } else {
            String::new()
        },
        registry.get(id).map(|s| &s.spec.intent)
    );
    Ok(id)
}

/// The session a new one is delegated from, as far as the new one is
/// concerned.
struct Delegation {
    id: SessionId,
    principal: String,
    /// What is left of its lifetime: the new session's is no longer.
    left: Option<Duration>,
}

/// Sessions one session may have opened, directly or not.
const MAX_DELEGATED: usize = 256;

fn delegating(id: SessionId, registry: &Registry) -> anyhow::Result<Delegation> {
    let s = registry
        .get(id)
        .with_context(|| format!("the caller's session {id} is not known"))?;
    if s.ended.is_some() {
        bail!("session {id} has ended: it cannot open sessions");
    }
    let depth = registry.chain(id).len();
    if depth >= MAX_CHAIN {
        bail!(
            "session {id} is already {depth} sessions deep in delegation; at most {MAX_CHAIN} \
             sessions judge a call"
        );
    }
    // Sessions take kernel map entries: a session may not crowd out others
    // by opening sessions without end.
    let opened = registry.descendants(id).len();
    if opened >= MAX_DELEGATED {
        bail!(
            "session {id} has opened {opened} sessions already (at most {MAX_DELEGATED}); end some \
             with `agentgate sessions end` from outside"
        );
    }
    let now = std::time::SystemTime::now();
    Ok(Delegation {
        id,
        principal: s.spec.principal.clone(),
        left: s
            .expires
            .map(|e| e.duration_since(now).unwrap_or(Duration::from_secs(1))),
    })
}

/// Installs a grant in the session that asked and in the sessions it was
/// delegated from: each of them judges the call, so each must let it
/// through — for this one target, for the grant's time.
fn install_grant(registry: &Registry, enforcer: &mut Enforcer, g: &Grant) -> anyhow::Result<()> {
    for id in registry.chain(g.session) {
        let Some(s) = registry.get(id) else {
            continue;
        };
        enforcer.grant(id, g.id, &s.grant_rules(&g.target, g.access, g.rule()))?;
    }
    Ok(())
}

/// A tool call begins, declared by the agent runtime inside the session:
/// the session's calls are attributed to it and, when the profile declares
/// a scope for the tool, must be inside that scope too (the kernel judges
/// them by both from now on).
fn begin_action(a: control::ActionBegin, peer: &Peer, shared: &Shared) -> anyhow::Result<u64> {
    let Some(id) = shared.session_of(peer.pid) else {
        bail!(
            "action messages come from the agent runtime inside its session (the caller, pid {}, \
             is in none): run `agentgate action begin` under `agentgate exec`",
            peer.pid
        );
    };
    if a.tool.is_empty() || !policy::valid_name(&a.tool) {
        bail!(
            "bad tool name {:?} (letters, digits, `-`, `_` and `.`)",
            a.tool
        );
    }
    let mut registry = shared.registry.lock().unwrap();
    let s = registry
        .get_mut(id)
        .with_context(|| format!("session {id} is not known"))?;
    if let Some(open) = &s.action {
        bail!(
            "tool call {} ({}) of session {id} is still open: end it first",
            open.id,
            open.tool
        );
    }
    let scoped = s.tools.iter().any(|(n, _)| *n == a.tool);
    shared
        .enforcer
        .lock()
        .unwrap()
        .set_tool(id, scoped.then_some(a.tool.as_str()))
        .context("putting the tool's scope in force")?;
    let action = Action {
        id: NEXT_ACTION.fetch_add(1, Ordering::Relaxed),
        tool: a.tool,
        params: a.params,
        rationale: a.rationale,
        started_ns: output::boot_ns(),
    };
    log::info!(
        "session {id}: tool call {} begins: {} {} ({}){}",
        action.id,
        action.tool,
        action.params,
        action.rationale,
        if scoped {
            ""
        } else {
            "; the profile declares no scope for this tool: attributed, not narrowed"
        }
    );
    let aid = action.id;
    s.action = Some(action);
    Ok(aid)
}

static NEXT_ACTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn end_action(action: u64, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let Some(id) = shared.session_of(peer.pid) else {
        bail!(
            "action messages come from the agent runtime inside its session (the caller, pid {}, \
             is in none)",
            peer.pid
        );
    };
    let mut registry = shared.registry.lock().unwrap();
    let s = registry
        .get_mut(id)
        .with_context(|| format!("session {id} is not known"))?;
    match &s.action {
        Some(a) if a.id == action => {}
        Some(a) => bail!(
            "tool call {action} is not the one in progress in session {id} ({} is)",
            a.id
        ),
        None => bail!("session {id} has no tool call in progress"),
    }
    shared
        .enforcer
        .lock()
        .unwrap()
        .set_tool(id, None)
        .context("taking the tool's scope out")?;
    let a = s.action.take().expect("checked above");
    log::info!("session {id}: tool call {} ({}) ends", a.id, a.tool);
    s.last_action = Some((a, output::boot_ns()));
    Ok(())
}

/// Ends a session and every session opened from it. Their processes go
/// back to the session this one was opened from, if any; else they are
/// untagged.
fn end_session(id: SessionId, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let mut registry = shared.registry.lock().unwrap();
    let session = registry
        .get(id)
        .with_context(|| format!("no session {id}"))?;
    if peer.uid != 0 && peer.uid != session.spec.uid {
        bail!(
            "only root or the session's owner (uid {}) may end session {id}",
            session.spec.uid
        );
    }
    let parent = Some(session.spec.parent).filter(|p| registry.get(*p).is_some());
    let mut ending = registry.descendants(id);
    ending.push(id);
    let mut tags = shared.tags.lock().unwrap();
    let pids: Vec<(u32, ProcTag)> = tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, t)| ending.contains(&t.session))
        .collect();
    for (pid, tag) in pids {
        let _ = match parent {
            Some(p) => tags.insert(pid, ProcTag { session: p, ..tag }, 0),
            None => tags.remove(&pid),
        };
    }
    drop(tags);
    // Grants of the ending sessions also live in the sessions they were
    // delegated from: take them out there before the sessions go.
    let grants: Vec<(SessionId, u64)> = shared
        .referrals
        .lock()
        .unwrap()
        .grants()
        .filter(|g| ending.contains(&g.session))
        .map(|g| (g.session, g.id))
        .collect();
    for (session, grant) in grants {
        for id in registry.chain(session) {
            shared.enforcer.lock().unwrap().revoke(id, grant);
        }
    }
    for s in &ending {
        shared.enforcer.lock().unwrap().remove(*s);
        shared.referrals.lock().unwrap().forget_session(*s);
        registry.remove(*s);
    }
    shared.persist(&registry);
    log::info!(
        "session {id} ended by uid {}{}{}",
        peer.uid,
        if ending.len() > 1 {
            format!(" with the {} session(s) opened from it", ending.len() - 1)
        } else {
            String::new()
        },
        match parent {
            Some(p) => format!("; its processes are back in session {p}"),
            None => String::new(),
        }
    );
    Ok(())
}

fn list_referrals(shared: &Shared) -> control::Referrals {
    let registry = shared.registry.lock().unwrap();
    let referrals = shared.referrals.lock().unwrap();
    let now = std::time::SystemTime::now();
    control::Referrals {
        referrals: referrals
            .all()
            .map(|r| control::ReferralInfo {
                id: r.id,
                session: r.session,
                intent: registry
                    .get(r.session)
                    .map(|s| s.spec.intent.clone())
                    .unwrap_or_default(),
                kind: r.kind.into(),
                target: r.target.clone(),
                rule: r.rule.clone(),
                reason: r.reason.clone(),
                age_secs: now.duration_since(r.created).unwrap_or_default().as_secs(),
                state: r.state.name().into(),
                pid: r.pid,
            })
            .collect(),
    }
}

/// A human's answer. The caller is outside every session (checked for
/// every request) and must be root or the session's owner.
fn answer_referral(a: control::AnswerReferral, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let registry = shared.registry.lock().unwrap();
    let mut referrals = shared.referrals.lock().unwrap();
    let r = referrals
        .get(a.id)
        .with_context(|| format!("no referral {}", a.id))?;
    let session = registry
        .get(r.session)
        .with_context(|| format!("session {} of referral {} has ended", r.session, a.id))?;
    if peer.uid != 0 && peer.uid != session.spec.uid {
        bail!(
            "only root or the session's owner (uid {}) may answer referral {}",
            session.spec.uid,
            a.id
        );
    }
    let approve = a
        .approve
        .then(|| (Duration::from_secs(a.for_secs.max(1)), a.prefix));
    let grant: Option<Grant> = referrals
        .answer(a.id, approve, std::time::SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let Some(g) = grant else {
        log::info!("referral {} rejected by uid {}", a.id, peer.uid);
        return Ok(());
    };
    install_grant(&registry, &mut shared.enforcer.lock().unwrap(), &g)
        .context("installing the grant in the kernel")?;
    log::warn!(
        "referral {} approved by uid {} for {}s{}: grant {} for session {}",
        a.id,
        peer.uid,
        a.for_secs.max(1),
        if a.prefix { " (prefix)" } else { "" },
        g.id,
        g.session
    );
    Ok(())
}

/// The /etc/passwd fields of `uid`.
fn passwd_entry(uid: u32) -> Option<Vec<String>> {
    std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str()))
                .then(|| f.iter().map(|s| (*s).to_owned()).collect())
        })
    })
}

fn user_name(uid: u32) -> String {
    passwd_entry(uid)
        .and_then(|f| f.first().cloned())
        .unwrap_or_else(|| format!("uid:{uid}"))
}

fn user_home(uid: u32) -> Option<PathBuf> {
    passwd_entry(uid).and_then(|f| f.get(5).map(PathBuf::from))
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn session_info(s: &Session) -> control::SessionInfo {
    let spec = s.spec.clone();
    control::SessionInfo {
        id: s.id,
        pid: spec.pid,
        uid: spec.uid,
        principal: spec.principal,
        profile: spec.profile,
        intent: spec.intent,
        workspace: spec.workspace,
        created_unix: unix_secs(s.created),
        expires_unix: s.expires.map(unix_secs).unwrap_or(0),
        command: spec.command,
        parent: spec.parent,
    }
}

fn show_session(id: SessionId, shared: &Shared) -> anyhow::Result<control::SessionDetail> {
    let engine = shared.engine.read().unwrap().clone();
    let registry = shared.registry.lock().unwrap();
    let s = registry
        .get(id)
        .with_context(|| format!("no session {id}"))?;
    let labels = shared.enforcer.lock().unwrap().labels(id) | s.history.labels();
    let mut pids: Vec<u32> = shared
        .tags
        .lock()
        .unwrap()
        .iter()
        .filter_map(Result::ok)
        .filter(|(pid, t)| {
            t.session == id && std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    let pending = shared
        .referrals
        .lock()
        .unwrap()
        .all()
        .filter(|r| r.session == id && r.state == crate::referrals::State::Pending)
        .count();
    let action = s.action.clone();
    Ok(control::SessionDetail {
        info: Some(session_info(s)),
        intent_tags: s.ctx.intent_tags.clone(),
        agent_exe: s.spec.agent_exe.clone(),
        agent_sha256: s
            .spec
            .agent_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        chain: registry.chain(id),
        children: registry
            .iter()
            .filter(|c| c.spec.parent == id)
            .map(|c| c.id)
            .collect(),
        pids,
        labels: engine
            .policy()
            .labels()
            .names(labels)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        drift_score: s.drift.score(),
        ended: match s.ended {
            Some(Ended::Expired) => "expired".into(),
            Some(Ended::Drifted) => "drifted".into(),
            None => String::new(),
        },
        action_id: action.as_ref().map_or(0, |a| a.id),
        action_tool: action.as_ref().map(|a| a.tool.clone()).unwrap_or_default(),
        action_params: action
            .as_ref()
            .map(|a| a.params.clone())
            .unwrap_or_default(),
        action_rationale: action.map(|a| a.rationale).unwrap_or_default(),
        tools: s.tools.iter().map(|(n, _)| n.clone()).collect(),
        pending_referrals: pending as u32,
    })
}

fn status(shared: &Shared) -> control::Status {
    let sum = |hook: Hook, counter: Counter| -> u64 {
        shared
            .counters
            .get(&counter_index(hook, counter), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    };
    control::Status {
        mode: shared.mode.clone(),
        mode_detail: shared.mode_detail.clone(),
        probe: shared.probe.clone(),
        programs: shared.programs.clone(),
        counters: Hook::ALL
            .iter()
            .map(|&h| HookCounters {
                hook: h.name().into(),
                seen: sum(h, Counter::Seen),
                emitted: sum(h, Counter::Emitted),
                dropped: sum(h, Counter::Dropped),
                blocked: sum(h, Counter::Blocked),
            })
            .collect(),
        sessions: shared.registry.lock().unwrap().len() as u32,
        events_read: shared.reader.read.load(Ordering::Relaxed),
        events_malformed: shared.reader.malformed.load(Ordering::Relaxed),
    }
}
