//! Load and churn: a thousand clients with short-lived tokens against a slow endpoint while the
//! config is rewritten again and again (clients added, removed, changed). Measured from
//! `/proc/PID`: threads, open descriptors and memory must not grow beyond a stated bound, and
//! every client of the final config must hold an unexpired token at the end.
//! The normal suite runs a short version; `cargo test --test it load:: -- --ignored` the long one.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bearerd_idp::{Fault, IdpSettings};

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, wait_until};

/// How big the churn is.
struct Load {
    clients: usize,
    rewrites: usize,
    /// The least time between two rewrites (each also waits for the previous reload).
    spacing: Duration,
    lifetime: Duration,
    delay: Duration,
}

/// What `/proc/PID` says about the daemon.
#[derive(Clone, Copy, Debug)]
struct Usage {
    threads: u64,
    fds: usize,
    rss_kib: u64,
    hwm_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    Usage {
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .count(),
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// Generation `generation` of the config: a sliding window of `clients` clients (each rewrite
/// drops the 10 oldest and adds 10 new), and every 50th client's scope changed.
fn config(url: &str, load: &Load, generation: usize) -> String {
    let config = Config::new()
        .agent("max_concurrent_requests = 64")
        .backoff("200ms", "2s")
        .http_timeout("5s");
    let clients = (first(generation)..first(generation) + load.clients).map(|number| {
        let scope = if number % 50 == generation % 50 {
            format!("gen-{generation}")
        } else {
            "base".to_owned()
        };
        let name = format!("c{number:05}");
        Client::new(&name)
            .token_url(url)
            .client_id(&name)
            .secret("s")
            .scope(&scope)
            .output_as(format!("out/{name}.env"), "env")
    });
    config.clients(clients).to_string()
}

fn first(generation: usize) -> usize {
    generation * 10
}

/// The clients of `generation` whose env file does not hold an unexpired token.
fn stale(dir: &Path, load: &Load, generation: usize) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("now")
        .as_secs();
    (first(generation)..first(generation) + load.clients)
        .filter_map(|number| {
            let env = std::fs::read_to_string(dir.join(format!("out/c{number:05}.env")))
                .unwrap_or_default();
            let expires_at = env
                .lines()
                .find_map(|line| line.strip_prefix(&format!("C{number:05}_TOKEN_EXPIRES_AT=")))
                .and_then(|value| value.parse::<u64>().ok());
            expires_at
                .is_none_or(|at| at <= now)
                .then(|| format!("c{number:05}"))
        })
        .collect()
}

fn churn(load: &Load) -> (Usage, Usage, Duration) {
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        default_lifetime: load.lifetime,
        ..IdpSettings::default()
    });
    idp.set_fault(Fault::Delay(load.delay));
    let url = idp.token_url();
    let harness = Harness::new();
    let path = harness.path("bearerd.toml");
    harness.write("bearerd.toml", &config(&url, load, 0));
    let daemon = Daemon::start(&harness);
    let pid = daemon.child.id();
    assert!(
        wait_until(Duration::from_secs(60), || stale(
            harness.dir.path(),
            load,
            0
        )
        .is_empty()),
        "not every client got a token; log tail:\n{}",
        tail(&daemon.log())
    );
    let start = usage(pid);
    let started = Instant::now();
    for generation in 1..=load.rewrites {
        let rewrite_at = Instant::now();
        let staging = harness.path("bearerd.toml.new");
        std::fs::write(&staging, config(&url, load, generation)).expect("stage");
        std::fs::rename(&staging, &path).expect("replace");
        daemon.wait_for(
            "configuration reloaded",
            generation,
            Duration::from_secs(30),
        );
        // Pacing, not synchronisation: the reload was awaited above.
        std::thread::sleep(load.spacing.saturating_sub(rewrite_at.elapsed()));
    }
    // Every client of the last config is fresh (a removed client's file is left as it was).
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            left = stale(harness.dir.path(), load, load.rewrites);
            left.is_empty()
        }),
        "{} clients stale at the end, e.g. {:?}; log tail:\n{}",
        left.len(),
        &left[..left.len().min(10)],
        tail(&daemon.log())
    );
    let end = usage(pid);
    let elapsed = started.elapsed();
    let errors = daemon.count(" ERROR ") + daemon.count("panicked");
    assert_eq!(errors, 0, "errors in the log:\n{}", tail(&daemon.log()));
    let (status, _) = daemon.terminate();
    assert!(status.success());
    eprintln!(
        "{} clients, {} rewrites in {elapsed:.1?}, {} token requests; start {start:?}; end {end:?}",
        load.clients,
        load.rewrites,
        idp.token_request_count()
    );
    (start, end, elapsed)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The bounds: threads and descriptors may differ only by what pools hold at a given moment
/// (tokio's blocking threads for file writes, idle HTTP connections: each at most the
/// request concurrency, 64); memory may grow by at most half plus 16 MiB (allocator slack),
/// never with the number of rewrites.
fn assert_bounded(start: Usage, end: Usage) {
    assert!(
        end.threads <= start.threads + 64,
        "threads grew: {start:?} → {end:?}"
    );
    assert!(
        end.fds <= start.fds + 64,
        "descriptors grew: {start:?} → {end:?}"
    );
    for (before, after) in [(start.rss_kib, end.rss_kib), (start.hwm_kib, end.hwm_kib)] {
        assert!(
            after <= before + before / 2 + 16 * 1024,
            "memory grew: {start:?} → {end:?}"
        );
    }
}

/// In the normal suite: 1,000 clients with 8-second tokens behind a 100 ms endpoint, 50
/// rewrites at least 300 ms apart (about 20 s of churn).
#[test]
fn a_thousand_clients_and_fifty_rewrites_stay_bounded_and_fresh() {
    let (start, end, _) = churn(&Load {
        clients: 1000,
        rewrites: 50,
        spacing: Duration::from_millis(300),
        lifetime: Duration::from_secs(8),
        delay: Duration::from_millis(100),
    });
    assert_bounded(start, end);
}

/// The long version (about 5 minutes): `cargo test --test it load:: -- --ignored --nocapture`. Results are recorded in docs/reliability.md.
#[test]
#[ignore = "runs for about five minutes"]
fn a_thousand_clients_for_five_minutes_stay_bounded_and_fresh() {
    let (start, end, _) = churn(&Load {
        clients: 1000,
        rewrites: 50,
        spacing: Duration::from_secs(6),
        lifetime: Duration::from_secs(10),
        delay: Duration::from_millis(150),
    });
    assert_bounded(start, end);
}
