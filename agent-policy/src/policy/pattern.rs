//! Path patterns: globs rooted at `/`, `~` or `${workspace}`, matched on
//! lexically normalised paths, byte for byte (paths need not be UTF-8).
//!
//! The shapes the kernel can look up are recognised and matched without the
//! glob engine, so user space and kernel agree by construction:
//! an exact path, a tree (`dir/**`: `dir` and everything below it) and a
//! suffix (`/**/*.pem`, `/**/.env`). Anything else is a general glob.
use std::{borrow::Cow, ffi::OsStr, os::unix::ffi::OsStrExt};

use globset::{GlobBuilder, GlobMatcher};

use super::context::SessionContext;

/// Lexically normalised absolute path: no `//`, `.` or `..` components, no
/// trailing slash (except `/` itself). `..` at the root stays at the root. A
/// relative path is taken from the root, so it cannot escape a rule.
pub fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 1);
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            c => {
                out.push(b'/');
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

fn is_normal(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    if path.first() != Some(&b'/') || path.last() == Some(&b'/') {
        return false;
    }
    path[1..]
        .split(|b| *b == b'/')
        .all(|c| !matches!(c, b"" | b"." | b".."))
}

/// What a pattern is anchored at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Absolute,
    Home,
    Workspace,
}

#[derive(Clone, Debug)]
enum Body {
    Exact(Vec<u8>),
    /// `lit/**`: `lit` itself and everything below it.
    Tree(Vec<u8>),
    /// Paths ending in these bytes (absolute root only).
    Suffix(Vec<u8>),
    Glob {
        matcher: GlobMatcher,
        /// The bytes before the first wildcard: every match starts so.
        literal: Vec<u8>,
    },
}

/// A key the kernel's path maps can hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// Exactly this path.
    Exact(Vec<u8>),
    /// Every path starting with these bytes.
    Prefix(Vec<u8>),
    /// Every path ending with these bytes (`PATH_SUFFIX_RULES`).
    Suffix(Vec<u8>),
}

/// Longest exact path a kernel key holds (its NUL needs the last byte).
pub const KERNEL_EXACT_MAX: usize = agent_common::RULE_PATH_LEN - 1;
/// Longest prefix or suffix a kernel key holds.
pub const KERNEL_AFFIX_MAX: usize = agent_common::RULE_PATH_LEN;

#[derive(Clone, Debug)]
pub struct PathPattern {
    pub text: String,
    root: Root,
    body: Body,
}

fn has_meta(s: &[u8]) -> bool {
    s.iter()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b']' | b'{' | b'}' | b'\\'))
}

impl PathPattern {
    /// `socket` allows `@name` (an abstract unix socket).
    pub fn parse(text: &str, socket: bool) -> Result<Self, String> {
        let (root, body) = if let Some(rest) = text.strip_prefix("${workspace}") {
            (Root::Workspace, rest)
        } else if let Some(rest) = text.strip_prefix('~') {
            (Root::Home, rest)
        } else if text.starts_with('/') || (socket && text.starts_with('@')) {
            (Root::Absolute, text)
        } else if text.starts_with("**/") {
            return Self::parse(&format!("/{text}"), socket);
        } else {
            return Err(format!(
                "path pattern `{text}` must start with `/`, `~`, `${{workspace}}` or `**/`"
            ));
        };
        if root != Root::Absolute && !(body.is_empty() || body.starts_with('/')) {
            return Err(format!(
                "`{text}`: `~` and `${{workspace}}` must be followed by `/` (`~user` is not supported)"
            ));
        }
        if text.contains('\0') {
            return Err(format!(
                "`{}`: a path cannot contain NUL",
                text.escape_debug()
            ));
        }
        if body.contains("${") {
            return Err(format!(
                "`{text}`: unknown variable (only `${{workspace}}`, at the start)"
            ));
        }
        if !body.starts_with('@') {
            check_normal(text, body)?;
        }
        let b = body.as_bytes();
        let body = if !has_meta(b) {
            Body::Exact(b.to_vec())
        } else if let Some(lit) = b.strip_suffix(b"/**").filter(|l| !has_meta(l)) {
            Body::Tree(lit.to_vec())
        } else if let Some(tail) = b
            .strip_prefix(b"/**/")
            .filter(|t| root == Root::Absolute && !t.contains(&b'/'))
            .and_then(suffix_of)
        {
            tail
        } else {
            let matcher = GlobBuilder::new(body)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad glob `{text}`: {}", e.kind()))?
                .compile_matcher();
            let literal = b[..b.iter().position(|c| has_meta(&[*c])).unwrap_or(b.len())].to_vec();
            Body::Glob { matcher, literal }
        };
        Ok(Self {
            text: text.to_owned(),
            root,
            body,
        })
    }

    /// Whether `path` (already normalised) matches.
    pub fn matches(&self, path: &[u8], ctx: &SessionContext) -> bool {
        match self.root {
            Root::Absolute => self.body_matches(path),
            Root::Home => self.under_any(ctx.homes(), path),
            Root::Workspace => self.under_any(ctx.workspaces(), path),
        }
    }

    fn under_any(&self, bases: &[Vec<u8>], path: &[u8]) -> bool {
        bases.iter().any(|base| {
            path.strip_prefix(base.as_slice())
                .is_some_and(|rest| self.body_matches(rest))
        })
    }

    fn body_matches(&self, rest: &[u8]) -> bool {
        match &self.body {
            Body::Exact(lit) => rest == lit.as_slice(),
            Body::Tree(lit) => rest
                .strip_prefix(lit.as_slice())
                .is_some_and(|r| r.is_empty() || r[0] == b'/'),
            Body::Suffix(s) => rest.ends_with(s),
            Body::Glob { matcher, .. } => matcher.is_match(OsStr::from_bytes(rest)),
        }
    }

    fn bases<'a>(&self, ctx: &'a SessionContext) -> &'a [Vec<u8>] {
        match self.root {
            Root::Absolute => std::slice::from_ref(&EMPTY),
            Root::Home => ctx.homes(),
            Root::Workspace => ctx.workspaces(),
        }
    }

    /// An abstract unix socket name (`@name`), which the kernel does not
    /// judge.
    pub fn is_abstract(&self) -> bool {
        self.text.starts_with('@')
    }

    /// The kernel keys that match exactly what this pattern matches in this
    /// session, or why there are none.
    pub fn kernel_keys(&self, ctx: &SessionContext) -> Result<Vec<KernelPath>, String> {
        if self.is_abstract() {
            return Err(format!(
                "`{}`: abstract socket names are judged in user space",
                self.text
            ));
        }
        let mut keys = Vec::new();
        for base in self.bases(ctx) {
            let join = |lit: &[u8]| [base.as_slice(), lit].concat();
            match &self.body {
                Body::Exact(lit) => {
                    let p = join(lit);
                    if p.len() > KERNEL_EXACT_MAX {
                        return Err(format!(
                            "`{}` is longer than {KERNEL_EXACT_MAX} bytes",
                            self.text
                        ));
                    }
                    keys.push(KernelPath::Exact(p));
                }
                Body::Tree(lit) => {
                    let p = join(lit);
                    if p.len() + 1 > KERNEL_AFFIX_MAX {
                        return Err(format!(
                            "`{}` is longer than {} bytes",
                            self.text,
                            KERNEL_AFFIX_MAX - 1
                        ));
                    }
                    if !p.is_empty() {
                        keys.push(KernelPath::Exact(p.clone()));
                    }
                    keys.push(KernelPath::Prefix([p.as_slice(), b"/"].concat()));
                }
                Body::Suffix(s) => {
                    if s.len() > KERNEL_AFFIX_MAX {
                        return Err(format!(
                            "`{}` is longer than {KERNEL_AFFIX_MAX} bytes",
                            self.text
                        ));
                    }
                    keys.push(KernelPath::Suffix(s.clone()));
                }
                Body::Glob { .. } => {
                    return Err(format!(
                        "`{}` is a general glob (the kernel takes exact paths, `dir/**` and `/**/*suffix`)",
                        self.text
                    ));
                }
            }
        }
        Ok(keys)
    }

    /// Kernel keys that match at least what this pattern matches.
    /// A general glob: no kernel shape of its own.
    pub fn is_glob(&self) -> bool {
        matches!(self.body, Body::Glob { .. })
    }

    /// The pattern's text up to its first wildcard.
    pub fn literal(&self) -> &[u8] {
        let t = self.text.as_bytes();
        &t[..t.iter().position(|c| has_meta(&[*c])).unwrap_or(t.len())]
    }

    pub fn widened_keys(&self, ctx: &SessionContext) -> Vec<KernelPath> {
        self.bases(ctx)
            .iter()
            .map(|base| {
                let (lit, suffix) = match &self.body {
                    Body::Exact(l) | Body::Tree(l) => (l.as_slice(), false),
                    Body::Glob { literal, .. } => (literal.as_slice(), false),
                    Body::Suffix(s) => (s.as_slice(), true),
                };
                if suffix {
                    let s = &lit[lit.len().saturating_sub(KERNEL_AFFIX_MAX)..];
                    return KernelPath::Suffix(s.to_vec());
                }
                let mut p = [base.as_slice(), lit].concat();
                p.truncate(KERNEL_AFFIX_MAX);
                KernelPath::Prefix(p)
            })
            .collect()
    }

    /// Whether every path this pattern can match also matches `other`
    /// (decided only for exact and tree shapes with the same root; `false`
    /// when unsure).
    pub fn within(&self, other: &PathPattern) -> bool {
        if self.root != other.root {
            return false;
        }
        let lit = match &self.body {
            Body::Exact(l) | Body::Tree(l) => l,
            _ => return false,
        };
        match (&self.body, &other.body) {
            (Body::Exact(_), _) => other.body_matches(lit),
            (Body::Tree(_), Body::Tree(o)) => lit
                .strip_prefix(o.as_slice())
                .is_some_and(|r| r.is_empty() || r[0] == b'/'),
            _ => false,
        }
    }
}

static EMPTY: Vec<u8> = Vec::new();

/// `*LIT` or `LIT` after `/**/`, as suffix bytes.
fn suffix_of(tail: &[u8]) -> Option<Body> {
    match tail.strip_prefix(b"*") {
        Some(lit) if !has_meta(lit) && !lit.is_empty() => Some(Body::Suffix(lit.to_vec())),
        Some(b"") => Some(Body::Tree(Vec::new())),
        Some(_) => None,
        None if !has_meta(tail) => Some(Body::Suffix([b"/", tail].concat())),
        None => None,
    }
}

/// Events are normalised before matching, so a pattern that is not can
/// never match: refuse it.
fn check_normal(text: &str, body: &str) -> Result<(), String> {
    if body.is_empty() || body == "/" {
        return Ok(());
    }
    if body.ends_with('/') {
        return Err(format!(
            "`{text}` ends with `/`: paths are matched without a trailing slash (write `{}` or `{}**`)",
            text.trim_end_matches('/'),
            text
        ));
    }
    if body[1..].split('/').any(|c| matches!(c, "" | "." | "..")) {
        return Err(format!(
            "`{text}` has an empty, `.` or `..` component: paths are normalised before matching, so it can never match"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SessionContext {
        SessionContext::resolved(
            "p",
            vec![b"/work/ws".to_vec()],
            vec![b"/home/u".to_vec()],
            1000,
            vec![],
        )
    }

    fn m(p: &str, path: &[u8]) -> bool {
        PathPattern::parse(p, false)
            .unwrap()
            .matches(&normalize(path), &ctx())
    }

    #[test]
    fn normalises_dots_slashes_and_escapes_from_root() {
        assert_eq!(&*normalize(b"/a//b/./c/../d/"), b"/a/b/d");
        assert_eq!(&*normalize(b"/../../etc/shadow"), b"/etc/shadow");
        assert_eq!(&*normalize(b"/"), b"/");
        assert_eq!(&*normalize(b"//"), b"/");
        assert_eq!(&*normalize(b"/a/.."), b"/");
        assert_eq!(&*normalize(b"rel/x"), b"/rel/x");
        assert!(matches!(normalize(b"/usr/bin/git"), Cow::Borrowed(_)));
    }

    #[test]
    fn shapes_match_as_documented() {
        assert!(m("~/.ssh/**", b"/home/u/.ssh"));
        assert!(m("~/.ssh/**", b"/home/u/.ssh/id_rsa"));
        assert!(!m("~/.ssh/**", b"/home/u/.sshx"));
        assert!(m("~/.ssh/**", b"/home/u/work/../.ssh//id_rsa"));
        assert!(m("${workspace}/**", b"/work/ws"));
        assert!(m("${workspace}/**", b"/work/ws/a/b"));
        assert!(!m("${workspace}/**", b"/work/ws2/a"));
        assert!(!m("${workspace}/**", b"/work/ws/../secret"));
        assert!(m("/**/*.pem", b"/etc/ssl/x.pem"));
        assert!(m("**/.env", b"/work/ws/.env"));
        assert!(!m("**/.env", b"/work/ws/x.env"));
        assert!(m("/usr/bin/python3*", b"/usr/bin/python3.11"));
        assert!(!m("/usr/bin/python3*", b"/usr/bin/python3/x"));
        assert!(m("/home/*/.aws/**", b"/home/other/.aws/credentials"));
        assert!(m("/**", b"/"));
        assert!(m("/etc/shadow", b"/etc/shadow"));
        assert!(!m("/etc/shadow", b"/etc/shadow-"));
    }

    #[test]
    fn non_utf8_and_long_paths_match_bytewise() {
        assert!(m("/tmp/**", b"/tmp/\xff\xfe/x"));
        assert!(m("/tmp/*/x", b"/tmp/\xff\xfe/x"));
        let long = [b"/tmp/".as_slice(), &[b'a'; 5000]].concat();
        assert!(m("/tmp/**", &long));
        assert!(!m("/tmp", &long));
    }

    #[test]
    fn refuses_patterns_that_cannot_match_or_parse() {
        for bad in [
            "etc/passwd",
            "~user/x",
            "/etc/",
            "/a/../b",
            "/a//b",
            "/a/[",
            "${home}/x",
            "${workspace}x",
        ] {
            assert!(PathPattern::parse(bad, false).is_err(), "{bad}");
        }
        assert!(PathPattern::parse("@dbus", true).is_ok());
        assert!(PathPattern::parse("@dbus", false).is_err());
    }

    #[test]
    fn kernel_keys_for_each_shape() {
        let k = |p: &str| PathPattern::parse(p, false).unwrap().kernel_keys(&ctx());
        assert_eq!(
            k("~/.ssh/**").unwrap(),
            vec![
                KernelPath::Exact(b"/home/u/.ssh".to_vec()),
                KernelPath::Prefix(b"/home/u/.ssh/".to_vec())
            ]
        );
        assert_eq!(k("/**").unwrap(), vec![KernelPath::Prefix(b"/".to_vec())]);
        assert_eq!(
            k("/**/*.pem").unwrap(),
            vec![KernelPath::Suffix(b".pem".to_vec())]
        );
        assert!(k("/home/*/.ssh/**").is_err());
        let long = format!("/{}", "a".repeat(300));
        assert!(k(&long).is_err());
        let w = PathPattern::parse("/usr/lib/python3*/x", false)
            .unwrap()
            .widened_keys(&ctx());
        assert_eq!(w, vec![KernelPath::Prefix(b"/usr/lib/python3".to_vec())]);
    }
}
