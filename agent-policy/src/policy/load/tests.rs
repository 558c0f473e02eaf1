use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shipped_sources() -> Vec<(String, Vec<u8>)> {
    ["default.yaml", "coding-agent.yaml", "ops-agent.yaml"]
        .iter()
        .map(|f| {
            let p = repo().join("policies").join(f);
            (f.to_string(), std::fs::read(p).unwrap())
        })
        .collect()
}

#[test]
fn shipped_policies_pass_check() {
    let set = load(&[repo().join("policies")]).unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    for p in ["default", "coding-agent", "ops-agent"] {
        assert!(set.profile(p).is_some(), "profile {p}");
    }
    assert!(set.labels().bit("secret-read").is_some());
    // Every rule has a reason, and every id resolves.
    for info in set.rule_table() {
        assert!(!info.reason.trim().is_empty(), "{}", info.name);
        assert_eq!(set.rule_info(info.id).unwrap().name, info.name);
    }
}

/// `# expect: LINE:COL text` on the first line of each bad file.
fn expectation(text: &str) -> (Pos, String) {
    let first = text.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("# expect: ")
        .expect("first line: # expect: L:C text");
    let (at, msg) = rest.split_once(' ').unwrap();
    let (l, c) = at.split_once(':').unwrap();
    (
        Pos {
            line: l.parse().unwrap(),
            col: c.parse().unwrap(),
        },
        msg.to_owned(),
    )
}

#[test]
fn every_bad_file_is_caught_at_its_place() {
    let dir = repo().join("tests/policies/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{} bad files", files.len());
    let mut wrong = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let (pos, msg) = expectation(&String::from_utf8_lossy(&bytes));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match load_sources(&[(name.clone(), bytes)]) {
            Ok(_) => wrong.push(format!("{name}: loaded without error")),
            Err(d) if d.len() != 1 => wrong.push(format!("{name}: {} errors: {d:?}", d.len())),
            Err(d) => {
                let d = &d[0];
                if (d.at.pos, &*d.at.file) != (pos, name.as_str()) || !d.message.contains(&msg) {
                    wrong.push(format!("{name}: expected {pos} `{msg}`, got {d}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_command_reports_file_line_col() {
    let f = repo().join("tests/policies/bad/unknown-field.yaml");
    let d = load(std::slice::from_ref(&f)).unwrap_err();
    assert_eq!(
        d[0].to_string(),
        format!("{}:9:5: {}", f.display(), d[0].message)
    );
}

#[test]
fn labels_are_declared_once_and_at_most_64() {
    let mut doc =
        String::from("apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {name: x}\nlabels:\n");
    for i in 0..65 {
        doc.push_str(&format!("  l{i}: label {i}\n"));
    }
    let d = load_sources(&[("many.yaml", doc.as_bytes())]).unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].at.pos, Pos { line: 69, col: 3 });
    assert!(d[0].message.contains("more than 64"));

    let a = "apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {name: a}\nlabels: {x: one}\n";
    let d = load_sources(&[("a.yaml", a), ("b.yaml", a)]).unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        "b.yaml:4:10: label `x` is already declared at a.yaml:4:10"
    );
}

#[test]
fn label_bits_follow_declaration_order_and_translate() {
    let doc = |labels: &str| {
        format!(
            "apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {{name: a}}\nlabels: {{{labels}}}\n"
        )
    };
    let old = load_sources(&[("a", doc("x: 1, y: 2"))]).unwrap();
    let new = load_sources(&[("a", doc("z: 0, y: 2"))]).unwrap();
    assert_eq!(old.labels().bit("x"), Some(1));
    assert_eq!(old.labels().bit("y"), Some(2));
    assert_eq!(old.labels().translate(3, new.labels()), 2);
}

#[test]
fn multi_document_files_and_empty_documents_load() {
    let src = "---\n---\napiVersion: agentgate.dev/v1\nkind: Profile\nmetadata: {name: p}\nspec: {default: deny}\n---\n";
    let set = load_sources(&[("m.yaml", src)]).unwrap();
    assert_eq!(set.profiles().len(), 1);
    assert!(load(&[repo().join("no/such/dir")]).is_err());
}

#[test]
fn undeclared_stands_alone_in_a_rules_match() {
    let prefix = "  - {name: r, reason: r, match: {connect: ";
    let rule = |m: &str| {
        format!(
            "apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {{name: x}}\nrules:\n{prefix}{m}}}, action: deny}}\n"
        )
    };
    for (m, at, msg) in [
        (
            "{undeclared: true, addr: 10.0.0.0/8}",
            "true",
            "`undeclared` and `addr` together",
        ),
        (
            "{port: 443, undeclared: true}",
            "true",
            "`undeclared` and `port` together",
        ),
        (
            "{unix: /run/x.sock, undeclared: true}",
            "true",
            "`undeclared` and `unix` together",
        ),
        ("{undeclared: false}", "false", "leave `undeclared` out"),
        (
            "{undeclared: yes}",
            "yes",
            "`undeclared` must be `true`, not a scalar",
        ),
        (
            "{undeclared: [true]}",
            "[true]",
            "`undeclared` must be `true`, not a list",
        ),
    ] {
        let d = load_sources(&[("r.yaml", rule(m))]).unwrap_err();
        assert_eq!(d.len(), 1, "{m}: {d:?}");
        let col = (prefix.len() + m.find(at).unwrap() + 1) as u32;
        assert_eq!(d[0].at.pos, Pos { line: 5, col }, "{m}: {}", d[0]);
        assert!(d[0].message.contains(msg), "{m}: {}", d[0]);
    }
    let set = load_sources(&[("r.yaml", rule("{undeclared: true}"))]).unwrap();
    assert_eq!(set.rules().len(), 1);
    // Two rules on undeclared connects with the same conditions are one.
    let line = |name: &str| {
        format!(
            "  - {{name: {name}, reason: r, match: {{connect: {{undeclared: true}}}}, action: kill}}\n"
        )
    };
    let two = format!(
        "apiVersion: agentgate.dev/v1\nkind: Policy\nmetadata: {{name: x}}\nrules:\n{}{}",
        line("r"),
        line("s")
    );
    let d = load_sources(&[("r.yaml", two)]).unwrap_err();
    assert!(d[0].message.contains("has the same match as"), "{}", d[0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn loader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = load_sources(&[("fuzz.yaml", bytes)]);
    }

    #[test]
    fn loader_never_panics_on_mutated_policies(
        file in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..8),
    ) {
        let mut bytes = shipped_sources()[file].1.clone();
        for (at, op, b) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                2 => {
                    let special = b"-:[]{}&*!|>'\"#%@` \n\t";
                    bytes.insert(i, special[b as usize % special.len()]);
                }
                _ => { bytes.truncate(i); }
            }
        }
        // Errors are expected; each must name a position inside the file.
        if let Err(diags) = load_sources(&[("m.yaml", &bytes)]) {
            let lines = bytes.iter().filter(|c| **c == b'\n').count() as u32 + 2;
            for d in diags {
                prop_assert!(d.at.pos.line >= 1 && d.at.pos.line <= lines, "{}", d);
            }
        }
    }
}

#[test]
fn the_digest_names_the_bytes_that_were_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut sources = Vec::new();
    for name in ["coding-agent.yaml", "default.yaml", "ops-agent.yaml"] {
        let bytes = std::fs::read(repo().join("policies").join(name)).unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        sources.push((file.display().to_string(), bytes));
    }
    let set = load(&[dir.path().to_owned()]).unwrap();
    let same = load_sources(&sources).unwrap();
    assert_eq!(set.digest(), same.digest());
    assert_eq!(set.digest().len(), 32);
    // A file changes after loading: the set still names what it was built
    // from (a receipt must not name bytes that were never loaded).
    std::fs::write(dir.path().join("ops-agent.yaml"), b"# edited\n").unwrap();
    assert_eq!(set.digest(), same.digest());
    sources[2].1.extend_from_slice(b"\n# edited\n");
    assert_ne!(load_sources(&sources).unwrap().digest(), set.digest());
}
