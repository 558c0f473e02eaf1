//! `agentgate policy check|explain`
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, bail};

use agent_common::Verdict;

use crate::{
    engine::{Engine, SessionHistory, each_subject, stronger},
    output,
    policy::{
        self, Diagnostic, Placement, PolicySet, SessionContext, Subject, action_name,
        compile_session, parse_event, placement,
    },
};

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check policy files; exit 1 with `file:line:col: reason` on any error.
    /// On success, say for every rule whether the kernel or user space runs it.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show the decision on one event and every rule that took part.
    Explain(ExplainArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Policy files or directories (default: /etc/agentgate/policies, else ./policies).
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    /// The session's workspace (default: the current directory).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// The session user's home, for `~` (default: $HOME); may be repeated.
    #[arg(long)]
    pub home: Vec<PathBuf>,
    /// The uid of the process (default: yours).
    #[arg(long)]
    pub uid: Option<u32>,
    /// An intent tag of the session; may be repeated.
    #[arg(long)]
    pub tag: Vec<String>,
    /// A label the session already holds; may be repeated.
    #[arg(long)]
    pub label: Vec<String>,
    /// A rule that already matched earlier in the session; may be repeated.
    #[arg(long)]
    pub after: Vec<String>,
    /// The event: exec PATH [ARG…] | open ACCESS[,ACCESS…] PATH |
    /// connect ADDR:PORT | connect unix:PATH
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub event: Vec<String>,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Check { paths } => check(&paths),
        PolicyCommand::Explain(a) => explain(a),
    }
}

fn report(diags: &[Diagnostic]) -> ExitCode {
    for d in diags {
        eprintln!("{d}");
    }
    eprintln!(
        "{} error{}",
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = match policy::load(paths) {
        Ok(s) => s,
        Err(diags) => return Ok(report(&diags)),
    };
    print!("{}", placements(&set));
    for (name, description) in set.labels().iter() {
        let bit = set.labels().bit(name).unwrap_or(0).trailing_zeros();
        println!("label {name} = bit {bit}: {description}");
    }
    println!(
        "ok: {} rules, {} profiles, {} labels",
        set.rules().len(),
        set.profiles().len(),
        set.labels().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// One line per rule: where it is, what it does, and where it runs (per
/// profile, where that differs: `connect: {undeclared: true}` depends on
/// what each profile declares).
pub fn placements(set: &PolicySet) -> String {
    let mut out = String::new();
    for rule in set.rules() {
        let mut profiles: Vec<(&str, Verdict)> = set
            .profiles()
            .iter()
            .filter(|p| rule.profiles.is_empty() || rule.profiles.contains(&p.name))
            .map(|p| (p.name.as_str(), p.default))
            .collect();
        if profiles.is_empty() {
            // A set without profiles: no session can use it anyway.
            profiles.push(("default", Verdict::None));
        }
        // Profiles with the same placement, in set order; whether the
        // kernel defers to the daemon for any of them.
        let mut groups: Vec<(Placement, Vec<&str>, bool)> = Vec::new();
        for (name, default) in profiles {
            let ctx = SessionContext::resolved(
                name,
                vec![b"/workspace".to_vec()],
                vec![b"/home/user".to_vec()],
                1000,
                vec![],
            );
            let place = placement(rule, &ctx, default);
            let deferred = rule.action() < default;
            match groups.iter_mut().find(|(p, _, _)| *p == place) {
                Some((_, names, d)) => {
                    names.push(name);
                    *d |= deferred;
                }
                None => groups.push((place, vec![name], deferred)),
            }
        }
        let many = groups.len() > 1;
        let places: Vec<String> = groups
            .into_iter()
            .map(|(place, names, deferred)| {
                let place = match place {
                    Placement::Kernel => "kernel".to_owned(),
                    Placement::Partly(why) => format!("kernel, in part ({why})"),
                    Placement::UserSpace(why) => {
                        let note = if deferred {
                            "; the kernel lets its calls through and the daemon decides"
                        } else {
                            ""
                        };
                        format!("user space ({why}{note})")
                    }
                };
                if many {
                    format!("{place} for {}", names.join(", "))
                } else {
                    place
                }
            })
            .collect();
        let info = &rule.info;
        out.push_str(&format!(
            "{}: {} [{}] {}\n",
            info.at,
            info.name,
            action_name(info.action),
            places.join("; ")
        ));
    }
    out
}

fn default_policy_paths() -> Vec<PathBuf> {
    let etc = Path::new("/etc/agentgate/policies");
    vec![if etc.is_dir() {
        etc.to_owned()
    } else {
        PathBuf::from("policies")
    }]
}

fn explain(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let paths = if a.policy.is_empty() {
        default_policy_paths()
    } else {
        a.policy.clone()
    };
    let set = match policy::load(&paths) {
        Ok(s) => Arc::new(s),
        Err(diags) => return Ok(report(&diags)),
    };
    if set.profile(&a.profile).is_none() {
        let names: Vec<&str> = set.profiles().iter().map(|p| p.name.as_str()).collect();
        bail!("no profile `{}` (have: {})", a.profile, names.join(", "));
    }
    let workspace = match &a.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let homes: Vec<PathBuf> = if a.home.is_empty() {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .into_iter()
            .collect()
    } else {
        a.home.clone()
    };
    let home_refs: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = a.uid.unwrap_or_else(|| unsafe { libc::getuid() });
    let ctx = SessionContext::new(
        a.profile.clone(),
        &workspace,
        &home_refs,
        uid,
        a.tag.clone(),
    )
    .with_context(|| format!("workspace {}", workspace.display()))?;
    let mut hist = SessionHistory::new();
    for l in &a.label {
        let bit = set
            .labels()
            .bit(l)
            .with_context(|| format!("unknown label `{l}`"))?;
        hist.add_labels(bit);
    }
    for r in &a.after {
        let info = set
            .rule_by_name(r)
            .with_context(|| format!("unknown rule `{r}`"))?;
        hist.note_match(info.id, 1);
    }
    let ev = parse_event(&a.event, &ctx).map_err(anyhow::Error::msg)?;
    let engine = Engine::new(set.clone());
    let d = engine.decide(&ev, &ctx, &hist);

    println!(
        "event:    {} ({})",
        a.event.join(" "),
        output::target_string(&ev.target)
    );
    println!(
        "verdict:  {} ({})",
        action_name(d.verdict),
        d.outcome.name()
    );
    match &d.rule {
        Some(r) => println!("rule:     {} at {}", r.name, r.at),
        None => println!("rule:     none"),
    }
    println!("reason:   {}", d.reason());
    if d.set_labels != 0 {
        println!(
            "labels:   sets {}",
            set.labels().names(d.set_labels).join(", ")
        );
    }
    if let Ok(each) = each_subject(&ev, |s, _| match s {
        Subject::Inet { .. } | Subject::Unix { .. } => Some(set.declared_by(s, &ctx)),
        _ => None,
    }) && let Some(declared) = each.object
    {
        match declared {
            Some(r) => println!("declared: yes, by {} at {}", r.name, r.at),
            None => println!(
                "declared: no: no entry of profile {}'s connect scope covers it (what \
                 `connect: {{undeclared: true}}` matches)",
                ctx.profile
            ),
        }
    }
    let ks = compile_session(&set, &ctx)?;
    // The kernel looks each path of a change up on its own and takes the
    // stronger verdict.
    let kernel = each_subject(&ev, |s, access| {
        let exact = access.iter().all(|x| ks.exact[x as usize]);
        let (v, id, _) = ks.decide(s, access, hist.labels());
        ((v, id), exact)
    })
    .map(|each| {
        each.reduce(|(a, a_exact), (b, b_exact)| {
            (if stronger(b, a) { b } else { a }, a_exact && b_exact)
        })
    });
    if let Ok(((v, id), exact)) = kernel {
        let name = set
            .rule_info(id)
            .map_or("none (user space decides)", |r| r.name.as_str());
        let how = if exact {
            "the kernel decides this on its own"
        } else {
            "rules on this access run in user space: the daemon has the last word"
        };
        println!("kernel:   {} by {name}; {how}", action_name(v));
    }
    println!("rules that took part ({}):", d.matched.len());
    for m in &d.matched {
        if let Some(r) = set.rule_info(m.rule) {
            let acc: Vec<&str> = m.access.iter().map(policy::access_name).collect();
            println!(
                "  {:<6} {} [{}] at {}: {}",
                action_name(m.verdict),
                r.name,
                acc.join(","),
                r.at,
                r.reason
            );
        }
    }
    if d.matched.is_empty() {
        println!("  none: the profile's default applies");
    }
    Ok(if d.verdict.blocks() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::mapped;

    fn shipped() -> PolicySet {
        policy::load(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")]).unwrap()
    }

    #[test]
    fn check_says_per_profile_where_undeclared_runs() {
        let out = placements(&shipped());
        let line = out
            .lines()
            .find(|l| l.contains(" no-connect-after-secret [kill] "))
            .unwrap();
        assert!(line.contains("kernel for default"), "{line}");
        assert!(
            line.contains(
                "kernel, in part (profile coding-agent declares 127.0.0.0/8 for some ports only"
            ),
            "{line}"
        );
        assert!(line.contains(") for coding-agent"), "{line}");
        // Rules that run alike for every profile say it once.
        let line = out.lines().find(|l| l.contains(" no-ssh-keys ")).unwrap();
        assert!(line.ends_with("[deny] kernel"), "{line}");
    }

    #[test]
    fn explain_names_the_declaration_a_connect_falls_under() {
        let set = shipped();
        let ctx = SessionContext::resolved("coding-agent", vec![], vec![], 1000, vec![]);
        let inet = |ip: [u8; 4], port| Subject::Inet {
            ip: mapped(Ipv4Addr::from(ip).into()),
            port,
        };
        let by = |s: &Subject<'_>| set.declared_by(s, &ctx).map(|r| r.name.clone());
        assert_eq!(
            by(&inet([127, 0, 0, 1], 8000)).as_deref(),
            Some("coding-agent.connect.1")
        );
        assert_eq!(by(&inet([127, 0, 0, 1], 4444)), None);
        assert_eq!(by(&inet([10, 1, 2, 3], 443)), None);
        let sock = Subject::Unix {
            path: b"/run/agentgate/agent.sock",
        };
        assert_eq!(by(&sock).as_deref(), Some("coding-agent.connect.7"));
    }
}
