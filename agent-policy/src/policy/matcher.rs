//! Compiled matchers: what a rule looks at in an event and its process.
use std::{ffi::OsStr, net::Ipv6Addr, os::unix::ffi::OsStrExt, sync::Arc};

use agent_common::Access;
use globset::GlobSet;

use super::{
    context::SessionContext,
    net::InetMatch,
    pattern::{PathPattern, normalize},
};
use crate::event::Process;

/// A set of [`Access`] kinds, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessMask(pub u8);

impl AccessMask {
    pub const fn of(a: Access) -> Self {
        Self(1 << a as u8)
    }
    pub const fn with(self, a: Access) -> Self {
        Self(self.0 | 1 << a as u8)
    }
    pub const fn has(self, a: Access) -> bool {
        self.0 & (1 << a as u8) != 0
    }
    pub const fn intersects(self, o: Self) -> bool {
        self.0 & o.0 != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Access> {
        ALL_ACCESS.into_iter().filter(move |a| self.has(*a))
    }
}

pub const ALL_ACCESS: [Access; agent_common::ACCESS_COUNT] = [
    Access::Read,
    Access::Write,
    Access::Create,
    Access::Exec,
    Access::ConnectUnix,
    Access::ConnectInet,
];

pub fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Create => "create",
        Access::Exec => "exec",
        Access::ConnectUnix => "connect-unix",
        Access::ConnectInet => "connect-inet",
    }
}

/// What a call acts on, normalised.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    Exec { path: &'a [u8], argv: &'a [String] },
    Open { path: &'a [u8] },
    Inet { ip: Ipv6Addr, port: u16 },
    Unix { path: &'a [u8] },
}

impl Subject<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Exec { .. } => Kind::Exec,
            Self::Open { .. } => Kind::Open,
            Self::Inet { .. } | Self::Unix { .. } => Kind::Connect,
        }
    }
}

/// Paths: any of `patterns` or `regexes` (none given: any path), and none of
/// `except`.
#[derive(Clone, Debug, Default)]
pub struct PathSet {
    pub patterns: Vec<PathPattern>,
    pub regexes: Vec<regex::bytes::Regex>,
    pub except: Vec<PathPattern>,
}

impl PathSet {
    pub fn matches(&self, path: &[u8], ctx: &SessionContext) -> bool {
        let any = self.patterns.is_empty() && self.regexes.is_empty();
        (any || self.patterns.iter().any(|p| p.matches(path, ctx))
            || self.regexes.iter().any(|r| r.is_match(path)))
            && !self.except.iter().any(|p| p.matches(path, ctx))
    }
}

#[derive(Clone, Debug, Default)]
pub struct ExecMatch {
    pub path: PathSet,
    /// Some argument after argv[0] matches one of these globs.
    pub args: Option<GlobSet>,
    /// Matched against the arguments joined with single spaces.
    pub argv_regex: Option<regex::Regex>,
}

#[derive(Clone, Debug)]
pub enum ConnectMatch {
    Any,
    Inet(InetMatch),
    Unix(PathSet),
    /// `undeclared: true`: a connect that no `connect:` scope entry of the
    /// session's profile covers.
    Undeclared(Declared),
}

/// What each profile declares in its `connect:` scope (its
/// `PROFILE.connect.N` rules; tool scopes only narrow, so they declare
/// nothing). Empty until the policy set is assembled, where the profiles
/// are known.
#[derive(Clone, Debug, Default)]
pub struct Declared(pub Arc<Vec<(String, Vec<ConnectMatch>)>>);

impl Declared {
    /// The entries `profile` declares (none for a profile without a
    /// `connect:` scope, or one the set does not have).
    pub fn of(&self, profile: &str) -> &[ConnectMatch] {
        self.0
            .iter()
            .find(|(p, _)| p == profile)
            .map_or(&[], |(_, m)| m.as_slice())
    }
}

impl ConnectMatch {
    /// Whether a connect to `s` matches (`false` for calls that are not
    /// connects).
    pub fn matches(&self, s: &Subject<'_>, ctx: &SessionContext) -> bool {
        match (self, s) {
            (Self::Any, Subject::Inet { .. } | Subject::Unix { .. }) => true,
            (Self::Inet(m), Subject::Inet { ip, port }) => m.matches(*ip, *port),
            (Self::Unix(p), Subject::Unix { path }) => p.matches(path, ctx),
            (Self::Undeclared(d), Subject::Inet { .. } | Subject::Unix { .. }) => {
                !d.of(&ctx.profile).iter().any(|m| m.matches(s, ctx))
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub enum TargetMatch {
    Exec(ExecMatch),
    Open { path: PathSet, access: AccessMask },
    Connect(ConnectMatch),
}

/// The event kinds, as indices of per-kind rule lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec = 0,
    Open = 1,
    Connect = 2,
}

impl TargetMatch {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Exec(_) => Kind::Exec,
            Self::Open { .. } => Kind::Open,
            Self::Connect(_) => Kind::Connect,
        }
    }

    pub fn access(&self) -> AccessMask {
        match self {
            Self::Exec(_) => AccessMask::of(Access::Exec),
            Self::Open { access, .. } => *access,
            Self::Connect(ConnectMatch::Any | ConnectMatch::Undeclared(_)) => {
                AccessMask::of(Access::ConnectInet).with(Access::ConnectUnix)
            }
            Self::Connect(ConnectMatch::Inet(_)) => AccessMask::of(Access::ConnectInet),
            Self::Connect(ConnectMatch::Unix(_)) => AccessMask::of(Access::ConnectUnix),
        }
    }

    pub fn matches(&self, s: &Subject<'_>, ctx: &SessionContext) -> bool {
        match (self, s) {
            (Self::Exec(m), Subject::Exec { path, argv }) => {
                m.path.matches(path, ctx)
                    && m.args
                        .as_ref()
                        .is_none_or(|g| argv.iter().skip(1).any(|a| g.is_match(OsStr::new(a))))
                    && m.argv_regex
                        .as_ref()
                        .is_none_or(|r| r.is_match(&argv.join(" ")))
            }
            (Self::Open { path: p, .. }, Subject::Open { path }) => p.matches(path, ctx),
            (Self::Connect(c), _) => c.matches(s, ctx),
            _ => false,
        }
    }
}

/// Conditions on the process that made the call (user space only).
#[derive(Clone, Debug, Default)]
pub struct ProcessMatch {
    pub uids: Vec<u32>,
    pub comm: Option<GlobSet>,
    pub exe: Option<PathSet>,
    /// Some ancestor's executable matches.
    pub ancestor: Option<PathSet>,
}

impl ProcessMatch {
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.comm.is_none() && self.exe.is_none() && self.ancestor.is_none()
    }

    pub fn matches(&self, p: &Process, ctx: &SessionContext) -> bool {
        let path_ok = |set: &PathSet, path: &std::path::Path| {
            set.matches(&normalize(path.as_os_str().as_bytes()), ctx)
        };
        (self.uids.is_empty() || self.uids.contains(&p.uid))
            && self
                .comm
                .as_ref()
                .is_none_or(|g| g.is_match(OsStr::new(&p.comm)))
            && self
                .exe
                .as_ref()
                .is_none_or(|s| p.exe.as_deref().is_some_and(|e| path_ok(s, e)))
            && self
                .ancestor
                .as_ref()
                .is_none_or(|s| p.ancestors.iter().any(|a| path_ok(s, a)))
    }
}
