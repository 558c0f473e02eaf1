//! The command line: `agentgate daemon|exec|status|sessions|policy|audit`.
use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::{
    confine,
    control::{self, request, response},
    daemon::{self, DaemonArgs},
};

#[derive(Parser, Debug)]
#[command(
    name = "agentgate",
    version,
    about = "Runtime authorization for AI agents, enforced in the kernel with eBPF"
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "AGENTGATE_SOCKET", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the kernel programs and judge agent sessions (needs root).
    Daemon(DaemonArgs),
    /// Run a command inside a new agent session.
    Exec(ExecArgs),
    /// Mode, attached programs, counters.
    Status,
    /// List, show or end sessions.
    Sessions {
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// Check, explain and compile policies.
    Policy(crate::policy_cli::PolicyArgs),
    /// Referrals: calls refused until a human decides.
    Referrals,
    /// Grant a referral just in time; the grant expires by itself.
    Approve {
        id: u64,
        /// How long the grant lasts, e.g. 1m or 2h.
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "10m")]
        duration: Duration,
        /// exact: this path or address; prefix: everything under the path.
        #[arg(long, value_enum, default_value_t = Scope::Exact)]
        scope: Scope,
    },
    /// Refuse a referral for good.
    Reject { id: u64 },
    /// Verify and export the audit log.
    Audit(crate::audit::cli::AuditArgs),
    /// Remove the pinned programs and maps (uninstall): enforcement stops.
    /// Needs root, no running daemon, and a caller outside every session.
    Unload {
        #[arg(long, default_value = crate::pins::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// From an agent runtime inside a session: declare a tool call. Until
    /// it ends, the session's calls are attributed to it and judged by the
    /// tool's scope (the profile's `tools:`) as well as the session's.
    Action {
        #[command(subcommand)]
        command: ActionCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ActionCommand {
    /// A tool call begins; prints its id.
    Begin {
        /// The tool's name, as the profile's `tools:` names it.
        tool: String,
        /// The tool's parameters (for the record), e.g. JSON.
        #[arg(long, default_value = "")]
        params: String,
        /// Why the agent calls it (for the record).
        #[arg(long, default_value = "")]
        rationale: String,
    },
    /// The tool call ends.
    End { id: u64 },
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Profile that scopes the session (see policies/).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// What the agent was asked to do.
    #[arg(long, default_value = "")]
    pub intent: String,
    /// An intent tag that rules can match (repeatable), e.g. `--tag expenses`.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The directory the agent works in.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Session lifetime, e.g. 30m or 2h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Exact,
    Prefix,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    List,
    Show { id: u64 },
    End { id: u64 },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .target(env_logger::Target::Stderr)
                .init();
            runtime(true)
                .and_then(|rt| rt.block_on(daemon::run(args)))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Exec(args) => exec(&session_socket(&cli.socket), args),
        Command::Status => print_status(&cli.socket),
        Command::Sessions { command } => {
            sessions(&cli.socket, command.unwrap_or(SessionsCommand::List))
        }
        Command::Policy(args) => crate::policy_cli::run(args),
        Command::Referrals => list_referrals(&cli.socket),
        Command::Approve {
            id,
            duration,
            scope,
        } => answer(
            &cli.socket,
            control::AnswerReferral {
                id,
                approve: true,
                for_secs: duration.as_secs().max(1),
                prefix: scope == Scope::Prefix,
            },
        ),
        Command::Reject { id } => answer(
            &cli.socket,
            control::AnswerReferral {
                id,
                approve: false,
                for_secs: 0,
                prefix: false,
            },
        ),
        Command::Audit(args) => crate::audit::cli::run(args),
        Command::Action { command } => action(&control::agent_socket(&cli.socket), command),
        Command::Unload { pin_dir } => unload(&pin_dir, &cli.socket),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn unload(pin_dir: &Path, socket: &Path) -> anyhow::Result<ExitCode> {
    let removed = crate::pins::unload(pin_dir, socket)
        .with_context(|| format!("unloading {}", pin_dir.display()))?;
    for dir in &removed {
        println!("removed {} (its programs are detached)", dir.display());
    }
    if removed.is_empty() {
        println!("nothing pinned under {}", pin_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `exec` opens its session: inside a session (a delegated one) the
/// agent socket, else the control socket.
fn session_socket(socket: &Path) -> PathBuf {
    if std::env::var_os("AGENTGATE_SESSION").is_some() {
        control::agent_socket(socket)
    } else {
        socket.to_path_buf()
    }
}

fn runtime(multi: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().context("starting the async runtime")
}

fn call(socket: &Path, body: request::Body) -> anyhow::Result<response::Body> {
    Ok(runtime(false)?.block_on(control::call(socket, body))?)
}

/// The program `cmd` names, as execvp would find it.
fn resolve_command(cmd: &str) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = if cmd.contains('/') {
        vec![PathBuf::from(cmd)]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(cmd))
            .collect()
    };
    let found = candidates.iter().find(|p| p.is_file());
    let Some(path) = found else {
        bail!("command not found: {cmd}");
    };
    let mode = path
        .metadata()
        .with_context(|| format!("{}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o111 == 0 {
        bail!(
            "{} is not executable (mode {:o})",
            path.display(),
            mode & 0o777
        );
    }
    Ok(path.clone())
}

fn exec(socket: &Path, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let program = resolve_command(&args.command[0])?;
    let workspace = match &args.workspace {
        Some(w) => {
            std::fs::canonicalize(w).with_context(|| format!("workspace {}", w.display()))?
        }
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let open = control::OpenSession {
        pid: std::process::id(),
        profile: args.profile,
        intent: args.intent,
        workspace: workspace.display().to_string(),
        ttl_secs: args.ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
        command: args.command.clone(),
        principal: std::env::var("SUDO_USER").unwrap_or_default(),
        home: std::env::var("HOME").unwrap_or_default(),
        intent_tags: args.tags,
        program: program.display().to_string(),
    };
    let opened = match call(socket, request::Body::OpenSession(open))? {
        response::Body::SessionOpened(s) => s,
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let id = opened.id;
    // Fail closed: an agent does not run in a session without its layer.
    confine::install(confine::Guard {
        daemon_pid: opened.daemon_pid,
        lsm: opened.lsm,
    })
    .with_context(|| format!("session {id}: cannot put the seccomp layer under the agent"))?;
    // This process is now in the session; exec keeps the pid, so the
    // command's first instruction already runs tagged.
    let err = std::process::Command::new(&program)
        .arg0(&args.command[0])
        .args(&args.command[1..])
        .env("AGENTGATE_SESSION", id.to_string())
        .exec();
    bail!("session {id}: cannot run {}: {err}", program.display())
}

fn print_status(socket: &Path) -> anyhow::Result<ExitCode> {
    let response::Body::Status(s) = call(socket, request::Body::Status(control::StatusRequest {}))?
    else {
        bail!("unexpected reply from the daemon");
    };
    println!("mode: {}", s.mode);
    println!("  {}", s.mode_detail);
    println!("probe:");
    for line in &s.probe {
        println!("  {line}");
    }
    println!("programs attached: {}", s.programs.len());
    for p in &s.programs {
        println!("  {p}");
    }
    println!("sessions: {}", s.sessions);
    println!(
        "events read: {} (malformed: {})",
        s.events_read, s.events_malformed
    );
    println!("processes cached: {}", s.cached_processes);
    println!("files known by inode: {}", s.known_inodes);
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12}",
        "hook", "seen", "emitted", "dropped", "blocked"
    );
    for c in &s.counters {
        println!(
            "{:<10} {:>12} {:>12} {:>12} {:>12}",
            c.hook, c.seen, c.emitted, c.dropped, c.blocked
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list_referrals(socket: &Path) -> anyhow::Result<ExitCode> {
    let response::Body::Referrals(list) = call(
        socket,
        request::Body::ListReferrals(control::ListReferrals {}),
    )?
    else {
        bail!("unexpected reply from the daemon");
    };
    for r in &list.referrals {
        println!(
            "{}\t{}\tsession {}\tpid {}\t{} {}\trule {}\tage {}s\tintent {:?}\t{}",
            r.id,
            r.state,
            r.session,
            r.pid,
            r.kind,
            r.target,
            r.rule,
            r.age_secs,
            r.intent,
            r.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn answer(socket: &Path, a: control::AnswerReferral) -> anyhow::Result<ExitCode> {
    let (id, approve, secs) = (a.id, a.approve, a.for_secs);
    call(socket, request::Body::AnswerReferral(a))?;
    if approve {
        println!("referral {id} approved for {secs}s");
    } else {
        println!("referral {id} rejected");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_session(d: &control::SessionDetail) {
    let Some(s) = &d.info else {
        return;
    };
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    };
    println!("session {}", s.id);
    println!("  principal:  {} (uid {})", s.principal, s.uid);
    println!("  agent:      {} sha256:{}", d.agent_exe, d.agent_sha256);
    if !d.confinement.is_empty() {
        println!("  confined:   {}", d.confinement);
    }
    println!("  command:    {:?}", s.command);
    println!("  profile:    {}", s.profile);
    println!("  intent:     {:?} tags {:?}", s.intent, d.intent_tags);
    println!("  workspace:  {}", s.workspace);
    println!("  created:    {}", when(s.created_unix));
    if s.expires_unix != 0 {
        println!("  expires:    {}", when(s.expires_unix));
    }
    if !d.ended.is_empty() {
        println!("  ENDED:      {} (every further call is refused)", d.ended);
    }
    println!("  delegation: {:?} (innermost first)", d.chain);
    if !d.children.is_empty() {
        println!("  opened:     {:?}", d.children);
    }
    println!("  processes:  {:?}", d.pids);
    println!("  labels:     {:?}", d.labels);
    println!("  drift:      {:.2}", d.drift_score);
    println!("  tools:      {:?}", d.tools);
    if d.action_id != 0 {
        println!(
            "  tool call:  {} {} {} ({})",
            d.action_id, d.action_tool, d.action_params, d.action_rationale
        );
    }
    println!("  referrals pending: {}", d.pending_referrals);
    if d.records_lost != 0 {
        println!(
            "  LOST:       {} record(s) of its calls (ring buffer full): the kernel judged them alone; \
             the daemon's labels, referrals, drift and receipts missed them (a larger --ring-bytes helps)",
            d.records_lost
        );
    }
}

fn action(socket: &Path, command: ActionCommand) -> anyhow::Result<ExitCode> {
    match command {
        ActionCommand::Begin {
            tool,
            params,
            rationale,
        } => {
            let body = request::Body::ActionBegin(control::ActionBegin {
                tool,
                params,
                rationale,
            });
            let response::Body::ActionStarted(a) = call(socket, body)? else {
                bail!("unexpected reply from the daemon");
            };
            println!("{}", a.id);
        }
        ActionCommand::End { id } => {
            call(socket, request::Body::ActionEnd(control::ActionEnd { id }))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sessions(socket: &Path, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionsCommand::End { id } => {
            call(
                socket,
                request::Body::EndSession(control::EndSession { id }),
            )?;
            println!("session {id} ended");
        }
        SessionsCommand::List => {
            let response::Body::Sessions(list) = call(
                socket,
                request::Body::ListSessions(control::ListSessions {}),
            )?
            else {
                bail!("unexpected reply from the daemon");
            };
            for s in &list.sessions {
                println!(
                    "{}\tpid {}\t{}\tprofile {}\t{}intent {:?}\tworkspace {}\tcommand {:?}",
                    s.id,
                    s.pid,
                    s.principal,
                    s.profile,
                    if s.parent != 0 {
                        format!("from session {}\t", s.parent)
                    } else {
                        String::new()
                    },
                    s.intent,
                    s.workspace,
                    s.command
                );
            }
        }
        SessionsCommand::Show { id } => {
            let response::Body::SessionDetail(d) = call(
                socket,
                request::Body::ShowSession(control::ShowSession { id }),
            )?
            else {
                bail!("unexpected reply from the daemon");
            };
            print_session(&d);
        }
    }
    Ok(ExitCode::SUCCESS)
}
