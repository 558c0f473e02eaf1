//! `agentgate daemon`: load the programs, read their events, serve the
//! control socket, until SIGINT or SIGTERM.
//!
//! Wiring only: [`shared`] is the state and its one lock, [`server`] the
//! sockets and who may ask what, [`handlers`] the requests, [`judge`] the
//! pipeline every kernel event goes through, [`reload`] the policy in
//! force, [`expiry`] the clock.
mod expiry;
mod handlers;
mod judge;
mod reload;
mod server;
mod shared;

use std::{path::PathBuf, sync::Arc};

use agent_common::{MODE_LSM, map};
use anyhow::{Context, bail};
use aya::maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf};
use tokio::net::UnixStream;

use self::{
    judge::Judge,
    shared::{Facts, Shared, State},
};
use crate::{
    adopt,
    audit::{self, AuditLog},
    control::{self, Socket},
    enforce::Enforcer,
    engine::Engine,
    journal::{self, LogTarget},
    loader,
    observer::{self, ReaderStats},
    output::JsonLines,
    pins,
    probe::{self, Mode},
    referrals::Referrals,
    sessions::Registry,
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

/// A panic anywhere ends the daemon, at once and visibly: one that went on
/// would judge with half its state (a task gone, a lock poisoned) while the
/// kernel kept enforcing only its own part. The pinned programs keep
/// enforcing the last rules until a supervisor starts the next daemon,
/// which adopts them.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        log::error!(
            "agentgate daemon panicked ({info}); exiting so that a supervisor restarts it — the \
             pinned programs keep enforcing meanwhile"
        );
        std::process::abort();
    }));
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "agentgate daemon must run as root (it loads eBPF programs): run `sudo agentgate daemon`"
        );
    }
    exit_on_panic();
    let policy_paths = if args.policy.is_empty() {
        reload::default_paths()
    } else {
        args.policy.clone()
    };
    // A policy that does not check stops the start: enforcing nothing while
    // looking up is the failure this tool exists to prevent.
    let set = reload::load(&policy_paths)?;
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
    let ring = RingBuf::try_from(take(map::EVENTS)?)?;
    let mut tags = BpfHashMap::try_from(take(map::TAGS)?)?;
    let counters = PerCpuArray::try_from(take(map::COUNTERS)?)?;
    let mut registry = Registry::new();
    adopt::restore(
        saved,
        &set,
        &loaded,
        &mut tags,
        &mut enforcer,
        &mut registry,
    )?;
    let reader = Arc::new(ReaderStats::default());
    let shared = Arc::new(Shared::new(
        Facts {
            mode: mode.name.to_owned(),
            mode_detail: mode.detail,
            probe: probe.findings(),
            programs: loaded.attached.clone(),
            policy_paths,
            state_dir: args.state_dir.clone(),
            audit_only: args.audit_only,
        },
        counters,
        reader.clone(),
        State {
            engine: Arc::new(Engine::new(set)),
            registry,
            enforcer,
            referrals: Referrals::default(),
            tags,
        },
    ));
    shared.lock().persist(&shared.facts);

    // The agent socket first: a control socket that exists means the daemon
    // serves both.
    let agent_socket = control::agent_socket(&args.socket);
    let agents = server::bind(&agent_socket).await?;
    let listener = server::bind(&args.socket).await?;
    log::info!(
        "control socket at {}, agent socket at {}",
        args.socket.display(),
        agent_socket.display()
    );
    let control_server = tokio::spawn(server::serve(listener, shared.clone(), Socket::Control));
    let agent_server = tokio::spawn(server::serve(agents, shared.clone(), Socket::Agent));

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
    tokio::spawn(reload::watch(shared.clone()));
    tokio::spawn(expiry::run(shared.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        r = observe => log::error!("event reader stopped: {r:?}"),
        r = control_server => log::error!("control socket stopped: {r:?}"),
        r = agent_server => log::error!("agent socket stopped: {r:?}"),
    }
    let _ = std::fs::remove_file(&args.socket);
    let _ = std::fs::remove_file(&agent_socket);
    if let Err(e) = shared.lock().enforcer.unguard() {
        log::error!("releasing the guard on this daemon's pid: {e}");
    }
    log::info!(
        "the pinned programs under {} keep enforcing the last rules until a daemon adopts them \
         (`agentgate unload` removes them)",
        loaded.generation.dir.display()
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt, process::Command, time::Duration};

    const CHILD: &str = "AGENTGATE_PANIC_CHILD";

    /// Today a panicking tokio task just ends that task: the reader or a
    /// handler would be gone while the daemon answered on.
    #[test]
    fn a_panic_in_any_task_ends_the_daemon() {
        if std::env::var_os(CHILD).is_some() {
            super::exit_on_panic();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                tokio::spawn(async { panic!("on purpose") });
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            // Limped on past the panic.
            std::process::exit(0);
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::tests::a_panic_in_any_task_ends_the_daemon",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
