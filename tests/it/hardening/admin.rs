//! Hardening: the admin endpoint (`[agent] listen`) under hostile connections.
//! Hostile clients get nowhere near bearerd's descriptors: probes keep answering, refreshes
//! keep going, and a slow client is closed by bearerd itself.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bearerd_idp::IdpSettings;

use super::api_client;
use crate::harness::{Config, Daemon, Harness, TestIdp, try_http_get, wait_until};

/// bearerd's descriptor limit in this test; the hostile connections outnumber it eight times.
const LIMIT: u64 = 256;
const HOSTILE: usize = 2_000;
/// `admin::HEADER_READ_TIMEOUT` (5 s) plus slack for a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

/// One `GET path` on a fresh connection; the status code, or why there was none.
fn status_of(address: SocketAddr, path: &str) -> Result<u16, String> {
    try_http_get(&address.to_string(), path, Duration::from_secs(5)).map(|response| response.status)
}

/// A connection that sends a request line, no end of headers, and then nothing; `None` if
/// bearerd's accept queue took no more.
fn half_sent(address: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3)).ok()?;
    // bearerd may already have closed it to make room: that is the point.
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n");
    Some(stream)
}

/// The test process holds the hostile ends: let it use its whole hard limit.
fn raise_own_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        limit.current = Some(maximum);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Tokens refreshed at half their life, quick retries, and one client.
fn config(idp: &TestIdp) -> Config {
    Config::new()
        .agent("refresh_at = 0.5")
        .backoff("200ms", "1s")
        .client(api_client(idp, "api-secret"))
}

/// `prlimit --nofile=SOFT:HARD bearerd run -c DIR/bearerd.toml`.
fn run_limited(harness: &Harness, soft: u64, hard: u64) -> Daemon {
    let mut prlimit = Command::new("prlimit");
    prlimit.arg(format!("--nofile={soft}:{hard}")).arg("--");
    let config = harness.path("bearerd.toml");
    Daemon::start_with(Harness::command_under(prlimit, &config, &["run"]))
}

#[test]
fn hostile_connections_starve_neither_probes_nor_refreshes() {
    raise_own_descriptor_limit();
    let idp = TestIdp::start(IdpSettings::default());
    // Short-lived tokens: bearerd must keep opening connections and files to refresh them.
    idp.add_client("api", "api-secret", Duration::from_secs(6));
    let harness = Harness::new();
    harness.write_config(&config(&idp).listen("127.0.0.1:0"));
    let daemon = run_limited(&harness, LIMIT, LIMIT);
    let address: SocketAddr = daemon.admin_address().parse().expect("admin address");
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));

    // A kubelet-like prober: a fresh connection and one GET /readyz every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut answered, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match status_of(address, "/readyz") {
                    Ok(200) => answered += 1,
                    Ok(other) => failures.push(format!("status {other}")),
                    Err(error) => failures.push(error),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (answered, failures)
        })
    };

    let refreshes_before = daemon.count("token refreshed");
    // Opening gives up once bearerd's accept queue stays full (connects time out): that is
    // already the starvation this test is about, and the probes show it.
    let (mut hostile, mut refused) = (Vec::new(), 0);
    while hostile.len() < HOSTILE && refused < 5 {
        match half_sent(address) {
            Some(stream) => hostile.push(stream),
            None => refused += 1,
        }
    }
    // Held open across several refreshes (one every ~3 s, with 3 s to spare before expiry).
    let refreshed = wait_until(Duration::from_secs(40), || {
        daemon.count("token refreshed") >= refreshes_before + 3
    });
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = prober.join().expect("prober");
    drop(hostile);

    let log = daemon.log();
    assert!(
        refreshed,
        "the token stopped being refreshed under {HOSTILE} hostile connections; log:\n{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        failures.is_empty() && answered >= 10,
        "/readyz answered 200 {answered} times and failed {} times: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );

    // A lone slow client (no other traffic now) is closed by bearerd, not left open.
    let mut slow = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
    slow.set_read_timeout(Some(CLOSED_WITHIN))
        .expect("read timeout");
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    let closed = loop {
        match slow.read(&mut buffer) {
            Ok(0) => break true,
            // A 408 or similar before the close is fine; keep reading to the end.
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true, // reset: closed too
        }
    };
    assert!(
        closed,
        "a half-sent request was still open after {:?}",
        started.elapsed()
    );
    assert_eq!(status_of(address, "/healthz"), Ok(200));
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api", "api-secret", Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp));
    let daemon = run_limited(&harness, 256, 1024);
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id()))
        .expect("read /proc/PID/limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files");
    let values: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(values, ["1024", "1024"], "{open_files}");
}

/// The packaged unit leaves room for max_concurrent_requests at its maximum (10,000) plus the
/// admin endpoint, soft limit included (`LimitNOFILE=N` sets both).
#[test]
fn the_systemd_unit_gives_bearerd_descriptor_headroom() {
    let unit_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/systemd/bearerd.service"
    );
    let unit = std::fs::read_to_string(unit_path).expect("read the unit");
    let value = unit
        .lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the unit");
    let soft: u64 = value
        .split(':')
        .next()
        .and_then(|soft| soft.parse().ok())
        .expect("a number");
    let needed = 10_000 + bearerd::admin::MAX_CONNECTIONS as u64 + 1_024;
    assert!(soft >= needed, "LimitNOFILE={value}: at least {needed}");
}
