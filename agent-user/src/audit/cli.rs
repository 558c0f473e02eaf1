//! `agentgate audit verify|export|pubkey`.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};

use super::{
    export::{self, Filter, Format},
    receipt::hex,
    sign::{self, Verifier},
    store::Reader,
    verify::{VerifyError, verify},
};

const DEFAULT_STATE_DIR: &str = "/var/lib/agentgate";

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every link and signature of the audit log (works while the daemon runs).
    Verify {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Public key to check signatures with (64 hex digits, as `audit pubkey`
        /// prints). Default: the copy in the state directory; keep one
        /// elsewhere, since whoever can edit the log can edit that copy too.
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Write receipts as JSON lines on stdout.
    Export {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Only this session's receipts.
        #[arg(long)]
        session: Option<u64>,
        /// Only receipts from this time on: RFC 3339 (2026-11-22T10:00:00Z) or
        /// an age (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Receipts as stored (the default).
        #[arg(long, conflicts_with = "ocsf")]
        json: bool,
        /// OCSF 1.1 events (Process / File System / Network Activity).
        #[arg(long)]
        ocsf: bool,
    },
    /// Print the public key that checks the log's signatures.
    Pubkey {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Also write it to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify { state_dir, pubkey } => run_verify(&state_dir, pubkey),
        AuditCommand::Export {
            state_dir,
            session,
            since,
            json: _,
            ocsf,
        } => {
            let filter = Filter {
                session,
                since_ns: since.as_deref().map(parse_since).transpose()?,
            };
            let format = if ocsf { Format::Ocsf } else { Format::Json };
            let reader = Reader::open(&state_dir)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::export(&reader, &filter, format, &mut out)?;
            out.flush().context("writing the export")?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Pubkey { state_dir, out } => {
            let key = Verifier::from_file(&state_dir.join(sign::PUBLIC_KEY_FILE))
                .context("the daemon makes the key pair when it first opens the audit log")?;
            let text = format!("{}\n", hex(key.public_key()));
            if let Some(path) = out {
                std::fs::write(&path, &text).with_context(|| format!("{}", path.display()))?;
            }
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_verify(state_dir: &Path, pubkey: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let key_path = pubkey.unwrap_or_else(|| state_dir.join(sign::PUBLIC_KEY_FILE));
    let key = Verifier::from_file(&key_path)?;
    let reader = Reader::open(state_dir)?;
    let where_ = reader.path().display().to_string();
    match verify(&reader, &key) {
        Ok(v) => {
            let range = v
                .range
                .map_or("empty".to_owned(), |(a, b)| format!("receipts {a}..={b}"));
            let signed = v.signed_up_to.map_or("nothing signed yet".to_owned(), |s| {
                format!("signed up to {s}")
            });
            let start = v
                .start
                .map(|s| format!(", starts at {s} after retention"))
                .unwrap_or_default();
            println!(
                "audit log {where_}: ok: {range} ({} receipts, {} checkpoints, {signed}{start}; key {})",
                v.receipts,
                v.checkpoints,
                &hex(key.public_key())[..16],
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Bad(failure)) => bail!("audit log {where_}: {failure}"),
        Err(VerifyError::Store(e)) => Err(e.into()),
    }
}

/// RFC 3339, or an age before now.
fn parse_since(text: &str) -> anyhow::Result<u64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(text).with_context(|| {
                format!("--since {text:?}: neither an RFC 3339 time nor an age like 2h")
            })?;
            SystemTime::now()
                .checked_sub(age)
                .with_context(|| format!("--since {text:?}: too far back"))?
        }
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_ages() {
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000_000_000
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let two_h = parse_since("2h").unwrap();
        assert!((now - two_h).abs_diff(7_200_000_000_000) < 5_000_000_000);
        assert!(parse_since("yesterday-ish").is_err());
    }
}
