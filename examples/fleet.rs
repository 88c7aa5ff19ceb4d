//! The fleet benchmark behind BENCHMARKS.md, "A fleet and a polite rate (issue 14)".
//!
//! ```sh
//! cargo build --release --bin bearerd && cargo run --release --example fleet            # 200 processes, ~3 min
//! cargo build --release --bin bearerd && cargo run --release --example fleet -- --short # 20 processes, ~40 s
//! ```
//!
//! It starts N real `bearerd run` processes on loopback (the binary beside this example's
//! directory, or `--bin PATH`), each with its own config, output and state directory and one
//! client, as N pods of one deployment would run, against one in-process token endpoint
//! ([`bearerd_idp`]) that rate-limits like an authorization server does per source address:
//! above its rate it answers 429 (no `Retry-After`) and counts nothing. It prints what the
//! endpoint sees, one closing line per scenario:
//!
//! - `fleet_cold_start`: all N started at once with empty state: the token requests per second
//!   at the peak (all, and those answered 200), the 429s, the time until every token is written.
//! - `fleet_rolling_restart`: each process in turn stopped (SIGTERM) and started again on its
//!   state directory: token requests during the whole roll (expected: none, the saved tokens
//!   are reused) and the time per restart.
//! - `fleet_refresh_wave`: a fresh fleet whose tokens were all issued within a second or two
//!   (the limit lifted for its start), with short lifetimes, so that all refresh in one wave:
//!   how far the refresh jitter (up to 5 % of the lifetime) spreads the wave, its peak per
//!   second and its 429s.
//!
//! Options: `--processes N` (default 200; 20 with `--short`), `--lifetime SECONDS` of the wave's
//! tokens (default 60; 20 with `--short`), `--server-rate R` (the endpoint's requests per second
//! and burst, default 20), `--bin PATH`. Nothing is asserted: the figures go to BENCHMARKS.md.

// An example talks to a person on stdout, and writes its own config files plainly.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bearerd_idp::{Idp, IdpSettings, RateLimit, RecordedRequest, TOKEN_PATH};

/// Tokens that must not be refreshed during the cold start and the rolling restart.
const LONG_LIFETIME: Duration = Duration::from_secs(3600);

/// What each process sets: one request a second per host, as docs/operating.md advises for
/// Camunda SaaS (with one client per process it paces only the retries).
const CLIENT_RATE: &str = "1";

/// bearerd's `refresh_at` default and its jitter (src/schedule.rs): refresh between 75 % and
/// 80 % of the lifetime.
const REFRESH_AT: f64 = 0.8;
const JITTER_FRACTION: f64 = 0.05;

struct Options {
    processes: usize,
    lifetime: Duration,
    server_rate: f64,
    bin: PathBuf,
}

fn main() {
    let options = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fleet-idp")
        .enable_all()
        .build()
        .expect("cannot start the token endpoint's runtime");
    let scratch = tempfile::Builder::new()
        .prefix("bearerd-fleet-")
        .tempdir()
        .expect("cannot create a scratch directory");
    eprintln!(
        "fleet: {} processes of {}, endpoint limit {}/s (burst {}), scratch {}",
        options.processes,
        options.bin.display(),
        options.server_rate,
        options.server_rate,
        scratch.path().display()
    );
    let limit = RateLimit {
        per_second: options.server_rate,
        burst: options.server_rate,
        retry_after: None,
    };
    let settings = |lifetime| IdpSettings {
        accept_unknown_clients: true,
        default_lifetime: lifetime,
        ..IdpSettings::default()
    };

    let idp = runtime
        .block_on(Idp::start(settings(LONG_LIFETIME)))
        .expect("cannot start the token endpoint");
    idp.set_rate_limit(Some(limit.clone()));
    let mut fleet = Fleet::new(
        &options.bin,
        &scratch.path().join("a"),
        &idp,
        options.processes,
    );
    cold_start(&mut fleet, &idp, &options);
    rolling_restart(&mut fleet, &idp);
    drop(fleet);

    let idp = runtime
        .block_on(Idp::start(settings(options.lifetime)))
        .expect("cannot start the token endpoint");
    let mut fleet = Fleet::new(
        &options.bin,
        &scratch.path().join("b"),
        &idp,
        options.processes,
    );
    refresh_wave(&mut fleet, &idp, &limit, &options);
}

fn parse_args() -> Options {
    let mut short = false;
    let mut processes = None;
    let mut lifetime = None;
    let mut server_rate = 20.0;
    let mut bin = None;
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>, name: &str| -> f64 {
        value
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => short = true,
            "--processes" => processes = Some(number(args.next(), "--processes") as usize),
            "--lifetime" => lifetime = Some(number(args.next(), "--lifetime")),
            "--server-rate" => server_rate = number(args.next(), "--server-rate"),
            "--bin" => bin = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                eprintln!(
                    "usage: fleet [--short] [--processes N] [--lifetime SECONDS] \
                     [--server-rate R] [--bin PATH]"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("fleet: unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let bin = bin.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("cannot locate the fleet executable");
        exe.parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("bearerd"))
            .unwrap_or_else(|| PathBuf::from("bearerd"))
    });
    if !bin.is_file() {
        eprintln!(
            "fleet: no bearerd binary at {}: build it first with \
             `cargo build --release --bin bearerd`, or pass --bin PATH",
            bin.display()
        );
        std::process::exit(2);
    }
    Options {
        processes: processes.unwrap_or(if short { 20 } else { 200 }),
        lifetime: Duration::from_secs_f64(lifetime.unwrap_or(if short { 20.0 } else { 60.0 })),
        server_rate,
        bin,
    }
}

/// N bearerd processes, each in its own directory `pNNN/` with `bearerd.toml`, `out/app.token`,
/// `state/` and `bearerd.log`; all are stopped when dropped.
struct Fleet {
    bin: PathBuf,
    dirs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

impl Fleet {
    fn new(bin: &Path, root: &Path, idp: &Idp, processes: usize) -> Self {
        let dirs: Vec<PathBuf> = (0..processes)
            .map(|number| root.join(format!("p{number:03}")))
            .collect();
        for (number, dir) in dirs.iter().enumerate() {
            std::fs::create_dir_all(dir.join("out")).expect("cannot create a process directory");
            let config = format!(
                "[agent]\nmax_requests_per_second = {CLIENT_RATE}\nstate_dir = \"state\"\n\n\
                 [clients.app]\ntoken_url = \"{}\"\nclient_id = \"p{number:03}\"\n\
                 client_secret = \"s\"\n\n[[clients.app.output]]\npath = \"out/app.token\"\n",
                idp.token_url()
            );
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join("bearerd.toml"))
                .expect("cannot create a config");
            file.write_all(config.as_bytes())
                .expect("cannot write a config");
        }
        Self {
            bin: bin.to_path_buf(),
            children: dirs.iter().map(|_| None).collect(),
            dirs,
        }
    }

    fn start(&mut self, index: usize) {
        let dir = &self.dirs[index];
        let log = std::fs::File::create(dir.join("bearerd.log")).expect("cannot create a log");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("-c")
            .arg(dir.join("bearerd.toml"))
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start bearerd");
        self.children[index] = Some(child);
    }

    /// SIGTERM, and the exit waited for (SIGKILL after 10 s).
    fn stop(&mut self, index: usize) {
        let Some(mut child) = self.children[index].take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn has_token(&self, index: usize) -> bool {
        std::fs::metadata(self.dirs[index].join("out/app.token")).is_ok_and(|meta| meta.len() > 0)
    }

    fn log_has(&self, index: usize, needle: &str) -> bool {
        std::fs::read_to_string(self.dirs[index].join("bearerd.log"))
            .is_ok_and(|log| log.contains(needle))
    }

    /// Starts every process at once; returns how long the spawns took and when every token
    /// was on disk (measured from `started`).
    fn start_all(&mut self, started: Instant) -> (Duration, Duration) {
        for index in 0..self.dirs.len() {
            self.start(index);
        }
        let spawned = started.elapsed();
        let limit = Duration::from_secs(600);
        let mut waiting: Vec<usize> = (0..self.dirs.len()).collect();
        while !waiting.is_empty() {
            waiting.retain(|&index| !self.has_token(index));
            assert!(
                started.elapsed() < limit,
                "{} processes have no token after {limit:?}; see {}",
                waiting.len(),
                self.dirs[waiting[0]].join("bearerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (spawned, started.elapsed())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter().flatten() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for index in 0..self.children.len() {
            self.stop(index);
        }
    }
}

/// Token requests only (the endpoint also records discovery, which these clients never ask for).
fn token_requests(idp: &Idp) -> Vec<RecordedRequest> {
    idp.requests()
        .into_iter()
        .filter(|request| request.path == TOKEN_PATH)
        .collect()
}

/// The most of `times` within any one second (a sliding window).
fn peak_per_second(times: &[SystemTime]) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut peak = 0;
    let mut first = 0;
    for (last, time) in times.iter().enumerate() {
        while time
            .duration_since(times[first])
            .is_ok_and(|gap| gap >= Duration::from_secs(1))
        {
            first += 1;
        }
        peak = peak.max(last + 1 - first);
    }
    peak
}

fn span(times: &[SystemTime]) -> Duration {
    match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) => last.duration_since(*first).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn answered(requests: &[RecordedRequest], rate_limited: bool) -> Vec<SystemTime> {
    requests
        .iter()
        .filter(|request| request.rate_limited == rate_limited)
        .map(|request| request.received_at)
        .collect()
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn cold_start(fleet: &mut Fleet, idp: &Idp, options: &Options) {
    let started = Instant::now();
    let (spawned, ready) = fleet.start_all(started);
    let requests = token_requests(idp);
    let ok = answered(&requests, false);
    let limited = answered(&requests, true);
    println!(
        "bench fleet_cold_start: processes={} ready_s={:.1} spawn_s={:.2} requests={} ok={} \
         rate_limited={} peak_rps={} peak_ok_rps={} server_rate={}/s burst={} retry_after=none \
         max_requests_per_second={CLIENT_RATE}",
        options.processes,
        seconds(ready),
        seconds(spawned),
        requests.len(),
        ok.len(),
        limited.len(),
        peak_per_second(&requests.iter().map(|r| r.received_at).collect::<Vec<_>>()),
        peak_per_second(&ok),
        options.server_rate,
        options.server_rate,
    );
}

fn rolling_restart(fleet: &mut Fleet, idp: &Idp) {
    let before = token_requests(idp).len();
    let started = Instant::now();
    let mut restarts = Vec::new();
    for index in 0..fleet.dirs.len() {
        let one = Instant::now();
        fleet.stop(index);
        fleet.start(index);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fleet.log_has(index, "reusing the saved token") {
            assert!(
                !fleet.log_has(index, "token refreshed") && Instant::now() < deadline,
                "process {index} did not reuse its saved token; see {}",
                fleet.dirs[index].join("bearerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        restarts.push(one.elapsed().as_secs_f64() * 1000.0);
    }
    let took = started.elapsed();
    let requests = &token_requests(idp)[before..];
    restarts.sort_by(f64::total_cmp);
    println!(
        "bench fleet_rolling_restart: processes={} restarts={} requests={} rate_limited={} \
         took_s={:.1} restart_ms={:.1} (median; stop, start, saved token reused; max {:.1})",
        fleet.dirs.len(),
        restarts.len(),
        requests.len(),
        answered(requests, true).len(),
        seconds(took),
        restarts[restarts.len() / 2],
        restarts.last().copied().unwrap_or_default()
    );
}

fn refresh_wave(fleet: &mut Fleet, idp: &Idp, limit: &RateLimit, options: &Options) {
    let (_, ready) = fleet.start_all(Instant::now());
    let issued = token_requests(idp);
    let before = issued.len();
    idp.set_rate_limit(Some(limit.clone()));
    // Every process has refreshed once it has a second 200.
    let deadline = Instant::now() + options.lifetime * 2 + Duration::from_secs(120);
    let requests = loop {
        let requests = token_requests(idp);
        let mut ok: HashMap<String, usize> = HashMap::new();
        for request in requests.iter().filter(|request| !request.rate_limited) {
            *ok.entry(request.client_id.clone().unwrap_or_default())
                .or_default() += 1;
        }
        if ok.len() == options.processes && ok.values().all(|&count| count >= 2) {
            break requests;
        }
        assert!(
            Instant::now() < deadline,
            "not every process refreshed by the deadline"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let wave = &requests[before..];
    let issue_times: Vec<SystemTime> = issued.iter().map(|request| request.received_at).collect();
    let ok = answered(wave, false);
    let limited = answered(wave, true);
    let all: Vec<SystemTime> = wave.iter().map(|request| request.received_at).collect();
    let jitter = options.lifetime.mul_f64(JITTER_FRACTION);
    println!(
        "bench fleet_refresh_wave: processes={} lifetime_s={} refresh_at={REFRESH_AT} \
         jitter_window_s={:.1} issue_spread_s={:.1} (start ready in {:.1}, no limit) \
         refresh_spread_s={:.1} (first to last refresh request) ok_spread_s={:.1} requests={} \
         ok={} rate_limited={} peak_rps={} peak_ok_rps={} server_rate={}/s",
        options.processes,
        options.lifetime.as_secs(),
        seconds(jitter),
        seconds(span(&issue_times)),
        seconds(ready),
        seconds(span(&all)),
        seconds(span(&ok)),
        wave.len(),
        ok.len(),
        limited.len(),
        peak_per_second(&all),
        peak_per_second(&ok),
        options.server_rate,
    );
}
