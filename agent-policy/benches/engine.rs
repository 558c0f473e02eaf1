//! `Engine::decide` with the shipped policies on a mix of events.
use std::{hint::black_box, net::SocketAddr, path::Path, sync::Arc};

use agentgate_policy::{
    engine::{Engine, SessionHistory},
    event::{ConnectAddr, Event, KernelVerdict, Process, Target},
    policy::{SessionContext, load},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn event(target: Target) -> Event {
    Event {
        session: 1,
        time_ns: 1,
        process: Process {
            uid: 1000,
            comm: "bash".into(),
            exe: Some("/usr/bin/bash".into()),
            ..Process::default()
        },
        target,
        kernel: KernelVerdict {
            verdict: "none",
            enforced: "none",
            rule: 0,
        },
    }
}

fn open(path: &str, flags: i32) -> Event {
    event(Target::Open {
        path: path.into(),
        raw_path: path.into(),
        dirfd: -100,
        flags,
        mode: 0o644,
    })
}

fn exec(path: &str, args: &[&str]) -> Event {
    event(Target::Exec {
        path: path.into(),
        raw_path: path.into(),
        argv: std::iter::once(path)
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
        dirfd: -100,
    })
}

fn connect(addr: &str) -> Event {
    let addr = match addr.strip_prefix("unix:") {
        Some(p) => ConnectAddr::Unix(p.into()),
        None => ConnectAddr::Inet(addr.parse::<SocketAddr>().expect("address")),
    };
    event(Target::Connect { addr })
}

fn mix() -> Vec<Event> {
    vec![
        open("/work/ws/src/main.rs", libc::O_RDONLY),
        open("/usr/lib/x86_64-linux-gnu/libc.so.6", libc::O_RDONLY),
        open(
            "/work/ws/target/debug/deps/x.o",
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        ),
        open("/tmp/cc1XyZ.s", libc::O_RDWR | libc::O_CREAT),
        open("/home/u/.ssh/id_rsa", libc::O_RDONLY),
        open("/home/u/.npm/_cacache/index-v5/aa/bb", libc::O_RDONLY),
        open("/work/ws/../ws/./src//lib.rs", libc::O_RDONLY),
        open("/etc/passwd", libc::O_RDONLY),
        exec("/usr/bin/git", &["status", "--porcelain"]),
        exec("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", &["-quiet", "x.c"]),
        connect("127.0.0.1:8000"),
        connect("93.184.216.34:443"),
        connect("unix:/run/nscd/socket"),
    ]
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = Arc::new(load(&[dir]).expect("shipped policies load"));
    let engine = Engine::new(set);
    let ctx = SessionContext::resolved(
        "coding-agent",
        vec![b"/work/ws".to_vec()],
        vec![b"/home/u".to_vec()],
        1000,
        vec![],
    );
    let hist = SessionHistory::new();
    let events = mix();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decide_mix", |b| {
        b.iter(|| {
            for ev in &events {
                black_box(engine.decide(black_box(ev), &ctx, &hist));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
