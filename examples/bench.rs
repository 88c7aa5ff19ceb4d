//! The benchmark behind BENCHMARKS.md and the README's "Performance" section.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench            # full: a few minutes
//! cargo build --release && cargo run --release --example bench -- --short # seconds (CI)
//! ```
//!
//! It starts the in-process token endpoint ([`bearerd_idp`]) on 127.0.0.1 and runs the real
//! `bearerd` binary as a child process (found beside this example's directory:
//! `target/<profile>/examples/../bearerd`, or `--bin PATH`), so every figure is what an operator
//! would see: process start, config parsing, TLS setup, logging, fsyncs. Each scenario prints one
//! closing line, `bench NAME: figures…`:
//!
//! - `once_1*`: `run --once` wall time and CPU for one client, side by side with a `curl | jq`
//!   shell script and a Python `requests` script doing the same fetch and atomic write (temp
//!   file, fsync, rename, directory fsync), runs interleaved; with ratios.
//! - `once_1_https*`: `run --once` for one client over HTTPS (a TLS front on loopback, the
//!   bench's CA as `ca_file`), beside the same over plain HTTP and `curl | jq` over HTTPS.
//! - `once_1000_syncs`: the sync calls (fsync, fdatasync, …) of `run --once` for 1,000 clients
//!   in one directory, counted by `strace -f -c` (skipped without strace).
//! - `once_1000_cN`: `run --once` for 1,000 clients with `max_concurrent_requests = N`.
//! - `once_1000_rate_R`: `run --once` for 1,000 clients with `max_requests_per_second = R`
//!   (500 and 2,000): the wall time and the rate the endpoint saw, requests ÷ wall.
//! - `once_1000_pairs` (with `--against OLD`): `run --once` for 1,000 clients in one directory,
//!   alternated with the binary `OLD` in pairs (who goes first alternates too), each run into
//!   a fresh directory (the last one renamed away, not deleted: ext4 is slow to create files
//!   just after thousands were deleted); the ratio pair by pair, median, min and max.
//! - `restart_N`: a daemon with N clients (10,000; 1,000 with `--short`) restarted once every
//!   token is on disk: the time from its start to `READY=1` on a real `NOTIFY_SOCKET` (every
//!   client tried: here, each saved token reused), the requests it sent (expected 0) and its
//!   resident memory then; with `--against OLD`, the same with the old build, alternated.
//! - `rss_N`: the daemon's VmHWM/VmRSS once all N clients' tokens are on disk (N up to
//!   100,000), then `rss_per_client_A_B`: what each client adds between two of them.
//! - `cpu_per_refresh`: daemon utime+stime over many refreshes of short-lived tokens, per refresh.
//! - `idle_10`: context switches per minute, summed over every thread, with 10 clients holding
//!   1-hour tokens.
//! - `reload`: from an atomic config write (one client's scope changed) to that client's new
//!   token on disk; the file is polled every millisecond.
//! - `binary`: the size of the binary measured.
//!
//! Options: `--short` (CI: fewer runs and clients, same code paths), `--bin PATH` (measure
//! another build, e.g. a profile variant), `--against PATH` (an older build, for
//! `once_1000_pairs`; `--pairs N` of them, default 15), `--no-compare` (no curl/Python), `--only a,b` (families: once_1, https, syncs, once_many, rate, pairs, restart, rss, cpu,
//! idle, reload, binary), `--rss-clients 10000` (only these sizes of `rss_N`).
//! The full mode wants `curl`, `jq`, and `python3` with `requests`; a comparison whose tool is
//! missing is skipped and its line says so, in either mode. Budgets are not asserted here: the
//! README states them next to the figures.

// An example talks to a person on stdout, and writes its own config files plainly.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bearerd_idp::{Idp, IdpSettings};

/// How much work each scenario does.
struct Sizes {
    once_1_runs: usize,
    once_many_runs: usize,
    once_many_clients: usize,
    restart_clients: usize,
    concurrency: &'static [usize],
    rss_clients: &'static [usize],
    refresh_clients: usize,
    refresh_window: Duration,
    idle_window: Duration,
    reloads: usize,
}

const FULL: Sizes = Sizes {
    once_1_runs: 50,
    once_many_runs: 5,
    once_many_clients: 1000,
    restart_clients: 10_000,
    concurrency: &[4, 16, 64, 256],
    rss_clients: &[1, 10, 1000, 10_000, 100_000],
    refresh_clients: 200,
    refresh_window: Duration::from_secs(20),
    idle_window: Duration::from_secs(20),
    reloads: 10,
};

const SHORT: Sizes = Sizes {
    once_1_runs: 5,
    once_many_runs: 1,
    once_many_clients: 1000,
    restart_clients: 1000,
    concurrency: &[4, 64],
    rss_clients: &[1, 10, 1000],
    refresh_clients: 20,
    refresh_window: Duration::from_secs(3),
    idle_window: Duration::from_secs(3),
    reloads: 3,
};

/// Lifetime of the tokens that must not be refreshed during a measurement.
const LONG_LIFETIME: Duration = Duration::from_secs(3600);

/// Lifetime of the tokens in `cpu_per_refresh` (refreshed every ~1.6 s at `refresh_at = 0.8`).
const SHORT_LIFETIME: Duration = Duration::from_secs(2);

const CURL_SCRIPT: &str = r#"#!/bin/sh
# What a user writes instead of bearerd: fetch, then write atomically and durably.
set -eu
url=$1 id=$2 secret=$3 out=$4 ca=${5:-}
umask 077
response=$(curl -sS --fail ${ca:+--cacert "$ca"} -X POST --data grant_type=client_credentials \
    --data-urlencode "client_id=$id" --data-urlencode "client_secret=$secret" "$url")
token=$(printf '%s' "$response" | jq -er .access_token)
dir=$(dirname "$out")
tmp=$(mktemp "$dir/.token.XXXXXX")
printf '%s' "$token" >"$tmp"
sync "$tmp"
mv -f "$tmp" "$out"
sync "$dir"
"#;

const PYTHON_SCRIPT: &str = r#"# What a user writes instead of bearerd: fetch, then write atomically and durably.
import os, sys, tempfile
import requests

url, client_id, secret, out = sys.argv[1:5]
response = requests.post(url, timeout=10, data={
    "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
response.raise_for_status()
token = response.json()["access_token"]
directory = os.path.dirname(out) or "."
fd, tmp = tempfile.mkstemp(dir=directory, prefix=".token.")
with os.fdopen(fd, "w") as f:
    f.write(token)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, out)
dir_fd = os.open(directory, os.O_RDONLY)
os.fsync(dir_fd)
os.close(dir_fd)
"#;

struct Options {
    short: bool,
    /// Skip the curl and Python comparisons (when comparing builds of bearerd).
    no_compare: bool,
    bin: PathBuf,
    only: Vec<String>,
    /// `--rss-clients 10000,100000`: only these `rss_N` (e.g. one size under valgrind).
    rss_clients: Vec<usize>,
    /// `--against OLD`: the build `once_1000_pairs` alternates with.
    against: Option<PathBuf>,
    /// `--pairs N`: how many pairs `once_1000_pairs` runs.
    pairs: usize,
}

impl Options {
    /// Whether to run a family of scenarios: once_1, https, syncs, once_many, rate, pairs, restart, rss,
    /// cpu, idle,
    /// reload, binary.
    fn wants(&self, family: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == family)
    }
}

fn main() {
    let options = parse_args();
    let sizes = if options.short { &SHORT } else { &FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-idp")
        .enable_all()
        .build()
        .expect("cannot start the token endpoint's runtime");
    let scratch = tempfile::Builder::new()
        .prefix("bearerd-bench-")
        .tempdir()
        .expect("cannot create a scratch directory");
    let bench = Bench {
        bin: options.bin.clone(),
        root: scratch.path().to_path_buf(),
        runtime,
        clk_tck: clock_ticks_per_second(),
    };
    let profile = profile_of(&std::env::current_exe().unwrap_or_default());
    eprintln!(
        "bench: {} ({profile}, {} bytes), {} mode, scratch {}, load average {}",
        options.bin.display(),
        file_size(&options.bin),
        if options.short { "short" } else { "full" },
        bench.root.display(),
        load_average()
    );
    if profile != "release" {
        eprintln!(
            "bench: not a release build: the figures below say nothing about bearerd's speed"
        );
    }

    if options.wants("once_1") {
        bench.once_1(sizes.once_1_runs, !options.no_compare);
    }
    if options.wants("https") {
        bench.once_1_https(sizes.once_1_runs, !options.no_compare);
    }
    if options.wants("syncs") {
        bench.once_many_syncs(sizes.once_many_clients);
    }
    if options.wants("once_many") {
        for &concurrency in sizes.concurrency {
            bench.once_many(sizes.once_many_clients, concurrency, sizes.once_many_runs);
        }
    }
    if options.wants("rate") {
        for per_second in [500, 2000] {
            bench.once_many_rate(sizes.once_many_clients, per_second);
        }
    }
    if options.wants("pairs") {
        match &options.against {
            Some(against) => bench.once_many_pairs(sizes.once_many_clients, against, options.pairs),
            None => println!("bench once_1000_pairs: skipped (no --against OLD_BINARY)"),
        }
    }
    if options.wants("restart") {
        bench.restart(sizes.restart_clients, options.against.as_deref());
    }
    if options.wants("rss") {
        let rss_clients = if options.rss_clients.is_empty() {
            sizes.rss_clients
        } else {
            &options.rss_clients[..]
        };
        let anon: Vec<(usize, u64)> = rss_clients
            .iter()
            .map(|&clients| (clients, bench.rss(clients)))
            .collect();
        if options.short {
            println!("bench rss_10000: skipped in --short mode (takes several seconds)");
            println!("bench rss_100000: skipped in --short mode (takes a minute or more)");
        }
        print_rss_slopes(&anon);
    }
    if options.wants("cpu") {
        bench.cpu_per_refresh(sizes.refresh_clients, sizes.refresh_window);
    }
    if options.wants("idle") {
        bench.idle(10, sizes.idle_window);
    }
    if options.wants("reload") {
        bench.reload(sizes.reloads);
    }
    if options.wants("binary") {
        let bytes = file_size(&options.bin);
        println!(
            "bench binary: bytes={bytes} mib={:.2} profile={profile} path={}",
            mib(bytes),
            options.bin.display()
        );
    }
    eprintln!("bench: done, load average {}", load_average());
}

fn parse_args() -> Options {
    let mut short = false;
    let mut no_compare = false;
    let mut bin = None;
    let mut only = Vec::new();
    let mut rss_clients = Vec::new();
    let mut against = None;
    let mut pairs = 15;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => short = true,
            "--no-compare" => no_compare = true,
            "--bin" => bin = Some(PathBuf::from(args.next().expect("--bin needs a path"))),
            "--only" => {
                let list = args.next().expect("--only needs scenario names, a,b");
                only.extend(list.split(',').map(str::to_owned));
            }
            "--against" => {
                against = Some(PathBuf::from(
                    args.next()
                        .expect("--against needs a path to another bearerd"),
                ));
            }
            "--pairs" => {
                pairs = args
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .expect("--pairs needs a number above 0");
            }
            "--rss-clients" => {
                let list = args.next().expect("--rss-clients needs numbers, 10,1000");
                rss_clients.extend(
                    list.split(',')
                        .map(|n| n.parse::<usize>().expect("--rss-clients: not a number")),
                );
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: bench [--short] [--no-compare] [--bin PATH] [--only once_1,https,syncs,once_many,rate,pairs,restart,rss,cpu,idle,reload,binary] [--rss-clients 10,10000] [--against OLD_BIN [--pairs 15]]"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("bench: unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let bin = bin.unwrap_or_else(default_binary);
    if !bin.is_file() {
        eprintln!(
            "bench: no bearerd binary at {}: build it first with `cargo build --release` \
             (or `cargo build` for a debug run), or pass --bin PATH",
            bin.display()
        );
        std::process::exit(2);
    }
    if let Some(against) = against.as_ref().filter(|against| !against.is_file()) {
        eprintln!(
            "bench: no bearerd binary at {} (--against)",
            against.display()
        );
        std::process::exit(2);
    }
    Options {
        short,
        no_compare,
        bin,
        only,
        rss_clients,
        against,
        pairs,
    }
}

/// `target/<profile>/examples/bench` → `target/<profile>/bearerd`.
fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the bench executable");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("bearerd"))
        .unwrap_or_else(|| PathBuf::from("bearerd"))
}

/// `release` for `target/release/examples/bench` (the bench and the binary it found share it).
fn profile_of(exe: &Path) -> String {
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Bench {
    bin: PathBuf,
    root: PathBuf,
    runtime: tokio::runtime::Runtime,
    clk_tck: f64,
}

/// A client of one scenario's config.
struct Client {
    name: String,
    scope: Option<String>,
}

impl Bench {
    fn idp(&self, lifetime: Duration) -> Idp {
        let settings = IdpSettings {
            accept_unknown_clients: true,
            default_lifetime: lifetime,
            ..IdpSettings::default()
        };
        self.runtime
            .block_on(Idp::start(settings))
            .expect("cannot start the token endpoint")
    }

    /// A fresh directory for one scenario, with `bearerd.toml` (mode 0600) and `out/`.
    fn scenario_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("out")).expect("cannot create a scenario directory");
        dir
    }

    fn write_config(dir: &Path, idp: &Idp, agent: &str, clients: &[Client]) -> PathBuf {
        if clients.len() > 10_000 {
            return Self::write_compact_config(dir, idp, agent, clients);
        }
        let mut text = format!("[agent]\n{agent}\n");
        for client in clients {
            let name = &client.name;
            let _ = write!(
                text,
                "\n[clients.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{name}\"\n\
                 client_secret = \"secret-{name}\"\nauth_method = \"client_secret_post\"\n",
                url = idp.token_url()
            );
            if let Some(scope) = &client.scope {
                let _ = writeln!(text, "scope = \"{scope}\"");
            }
            let _ = write!(
                text,
                "[[clients.{name}.output]]\npath = \"out/{name}.token\"\n"
            );
        }
        let path = dir.join("bearerd.toml");
        write_atomic(&path, text.as_bytes());
        path
    }

    /// The same clients with each on one line (inline tables, no spaces, the default
    /// `client_secret_basic`): 100,000 clients in the usual layout are 20.7 MB, over bearerd's
    /// 16 MiB cap on a config file; this is ~12.5 MB.
    fn write_compact_config(dir: &Path, idp: &Idp, agent: &str, clients: &[Client]) -> PathBuf {
        let url = idp.token_url();
        let mut text = format!("[agent]\n{agent}\n\n[clients]\n");
        for client in clients {
            let name = &client.name;
            let _ = write!(
                text,
                "{name}={{token_url=\"{url}\",client_id=\"{name}\",client_secret=\"secret-{name}\","
            );
            if let Some(scope) = &client.scope {
                let _ = write!(text, "scope=\"{scope}\",");
            }
            let _ = writeln!(text, "output=[{{path=\"out/{name}.token\"}}]}}");
        }
        let path = dir.join("bearerd.toml");
        write_atomic(&path, text.as_bytes());
        path
    }

    fn clients(count: usize) -> Vec<Client> {
        (0..count)
            .map(|index| Client {
                name: format!("c{index:05}"),
                scope: None,
            })
            .collect()
    }

    fn bearerd(&self, dir: &Path, args: &[&str]) -> Command {
        self.bearerd_with(&self.bin, dir, args)
    }

    /// [`Self::bearerd`] with another build of it.
    fn bearerd_with(&self, bin: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin);
        command
            .args(args)
            .arg("-c")
            .arg(dir.join("bearerd.toml"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir));
        command
    }

    /// (a) `run --once` for one client, interleaved with the curl and Python scripts.
    fn once_1(&self, runs: usize, compare: bool) {
        let dir = self.scenario_dir("once_1");
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(1));
        let curl_script = dir.join("fetch-token.sh");
        std::fs::write(&curl_script, CURL_SCRIPT).expect("cannot write the curl script");
        let python_script = dir.join("fetch-token.py");
        std::fs::write(&python_script, PYTHON_SCRIPT).expect("cannot write the Python script");
        let curl_missing = missing_tools(&[("curl", &["--version"]), ("jq", &["--version"])]);
        let python_missing = missing_tools(&[("python3", &["-c", "import requests"])]);
        let url = idp.token_url();
        let out = dir.join("out");
        let token_path = out.join("c00000.token");
        let script_args = |script: &Path| -> Vec<String> {
            vec![
                script.display().to_string(),
                url.clone(),
                "c00000".to_owned(),
                "secret-c00000".to_owned(),
                token_path.display().to_string(),
            ]
        };
        let mut tools: Vec<(&str, Option<String>, Command)> = vec![
            ("bearerd", None, self.bearerd(&dir, &["run", "--once"])),
            ("curl_jq", curl_missing, {
                let mut command = Command::new("sh");
                command.args(script_args(&curl_script));
                command
            }),
            ("python_requests", python_missing, {
                let mut command = Command::new("python3");
                command.args(script_args(&python_script));
                command
            }),
        ];
        if !compare {
            tools.truncate(1);
        }
        for (_, _, command) in &mut tools {
            command.stdin(Stdio::null()).stdout(Stdio::null());
        }
        let mut walls: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut cpus: Vec<f64> = vec![0.0; tools.len()];
        // One warm-up round (page cache, Python's bytecode cache), then interleaved runs so
        // that a change of machine load hits every tool alike.
        for round in 0..=runs {
            for (index, (name, missing, command)) in tools.iter_mut().enumerate() {
                if missing.is_some() {
                    continue;
                }
                reset_dir(&out);
                let cpu_before = self.children_cpu_ms();
                let started = Instant::now();
                let status = command.status().expect("cannot start a fetcher");
                let wall = started.elapsed();
                let cpu = self.children_cpu_ms() - cpu_before;
                check_exit(name, status, &dir);
                assert!(token_path.is_file(), "{name} wrote no token file");
                if round > 0 {
                    walls[index].push(ms(wall));
                    cpus[index] += cpu;
                }
            }
        }
        let bearerd_wall = median(&walls[0]);
        for (index, (name, missing, _)) in tools.iter().enumerate() {
            let scenario = if index == 0 {
                "once_1".to_owned()
            } else {
                format!("once_1_{name}")
            };
            if let Some(missing) = missing {
                println!("bench {scenario}: skipped ({missing} not found)");
                continue;
            }
            let wall = median(&walls[index]);
            let mut line = format!(
                "bench {scenario}: wall_ms={wall:.1} (median of {runs}, min {:.1}, max {:.1}) \
                 cpu_ms={:.1} (mean, user+sys)",
                min(&walls[index]),
                max(&walls[index]),
                cpus[index] / runs as f64,
            );
            if index > 0 {
                let _ = write!(line, " bearerd_ratio={:.3}", bearerd_wall / wall);
            } else {
                let _ = write!(line, " requests={}", idp.token_request_count());
            }
            println!("{line}");
        }
    }

    /// (a) `run --once` for many clients at one concurrency bound.
    fn once_many(&self, clients: usize, concurrency: usize, runs: usize) {
        let scenario = format!("once_{clients}_c{concurrency}");
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        let agent = format!("max_concurrent_requests = {concurrency}");
        Self::write_config(&dir, &idp, &agent, &Self::clients(clients));
        let out = dir.join("out");
        let mut walls = Vec::new();
        let mut cpu = 0.0;
        for _ in 0..runs {
            reset_dir(&out);
            let cpu_before = self.children_cpu_ms();
            let started = Instant::now();
            let status = self
                .bearerd(&dir, &["run", "--once"])
                .status()
                .expect("cannot start bearerd");
            walls.push(ms(started.elapsed()));
            cpu += self.children_cpu_ms() - cpu_before;
            check_exit("bearerd run --once", status, &dir);
        }
        let files = count_files(&out, ".token");
        assert_eq!(files, clients, "every client's token is on disk");
        println!(
            "bench {scenario}: wall_ms={:.1} (median of {runs}, min {:.1}) cpu_ms={:.1} \
             per_client_ms={:.3} requests={}",
            median(&walls),
            min(&walls),
            cpu / runs as f64,
            median(&walls) / clients as f64,
            idp.token_request_count()
        );
    }

    /// `run --once` for `clients` clients at `max_requests_per_second = per_second` (one host):
    /// the rate the endpoint saw over the run, beside the one asked for.
    fn once_many_rate(&self, clients: usize, per_second: u32) {
        let scenario = format!("once_{clients}_rate_{per_second}");
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        let agent = format!("max_requests_per_second = {per_second}");
        Self::write_config(&dir, &idp, &agent, &Self::clients(clients));
        reset_dir(&dir.join("out"));
        let started = Instant::now();
        let status = self
            .bearerd(&dir, &["run", "--once"])
            .status()
            .expect("cannot start bearerd");
        let wall = started.elapsed();
        check_exit("bearerd run --once", status, &dir);
        let requests = idp.token_request_count();
        println!(
            "bench {scenario}: wall_ms={:.0} requests={requests} seen_per_second={:.0} \
             (asked {per_second}; at most {} in flight)",
            ms(wall),
            requests as f64 / wall.as_secs_f64(),
            4
        );
    }

    /// `run --once` for `clients` clients, alternated with the build `against` in `pairs`
    /// pairs (the first of each pair alternates), each run into a fresh `out`: the ratio of
    /// the two, pair by pair. Both builds talk to the same endpoint with the same config.
    fn once_many_pairs(&self, clients: usize, against: &Path, pairs: usize) {
        let dir = self.scenario_dir("once_pairs");
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        let out = dir.join("out");
        let run = |bin: &Path| {
            reset_dir(&out);
            let mut command = self.bearerd_with(bin, &dir, &["run", "--once"]);
            let started = Instant::now();
            let status = command.status().expect("cannot start bearerd");
            let wall = ms(started.elapsed());
            check_exit("bearerd run --once", status, &dir);
            assert_eq!(
                count_files(&out, ".token"),
                clients,
                "every client's token is on disk"
            );
            wall
        };
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (mine, other) = if pair % 2 == 0 {
                let mine = run(&self.bin);
                (mine, run(against))
            } else {
                let other = run(against);
                (run(&self.bin), other)
            };
            ours.push(mine);
            theirs.push(other);
            ratios.push(mine / other);
        }
        println!(
            "bench once_{clients}_pairs: wall_ms={:.1} against_wall_ms={:.1} (medians of {pairs}) \
             ratio_median={:.2} ratio_min={:.2} ratio_max={:.2} against={}",
            median(&ours),
            median(&theirs),
            median(&ratios),
            min(&ratios),
            ratios.iter().copied().fold(f64::MIN, f64::max),
            against.display()
        );
    }

    /// Starts the daemon and waits until every client's token file exists.
    fn daemon(&self, dir: &Path, idp: &Idp, clients: usize) -> (Daemon, Duration) {
        let started = Instant::now();
        let child = self
            .bearerd(dir, &["run"])
            .spawn()
            .expect("cannot start bearerd run");
        let daemon = Daemon { child };
        let out = dir.join("out");
        let limit = Duration::from_secs(60 + clients as u64 / 50);
        loop {
            if idp.token_request_count() >= clients && count_files(&out, ".token") >= clients {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "the daemon wrote {} of {clients} tokens in {limit:?}; see {}",
                count_files(&out, ".token"),
                dir.join("bearerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (daemon, started.elapsed())
    }

    /// (b) Resident memory once every client has its token; returns the anonymous part (KiB).
    fn rss(&self, clients: usize) -> u64 {
        let scenario = format!("rss_{clients}");
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        let (daemon, took) = self.daemon(&dir, &idp, clients);
        // Let the blocking writer threads and allocator settle.
        std::thread::sleep(Duration::from_millis(300));
        let status = proc_status(daemon.pid());
        let threads = std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
            .map(|entries| entries.count())
            .unwrap_or(0);
        let hwm = status.get("VmHWM").copied().unwrap_or(0);
        let rss = status.get("VmRSS").copied().unwrap_or(0);
        let anon = status.get("RssAnon").copied().unwrap_or(0);
        drop(daemon);
        println!(
            "bench {scenario}: vmhwm_mib={:.2} vmrss_mib={:.2} (anon {:.2}, file {:.2}) \
             threads={threads} all_tokens_ms={:.0} (max_concurrent_requests 4)",
            kib_to_mib(hwm),
            kib_to_mib(rss),
            kib_to_mib(anon),
            kib_to_mib(status.get("RssFile").copied().unwrap_or(0)),
            ms(took)
        );
        anon
    }

    /// A restart with every token saved: start a daemon of `clients` clients, wait for every
    /// token, stop it; then, three times (alternated with `against` if given, who goes first
    /// alternating too), start it again
    /// and time it until `READY=1` arrives on a notify socket, with the requests it sent.
    fn restart(&self, clients: usize, against: Option<&Path>) {
        use std::os::unix::net::UnixDatagram;
        let scenario = format!("restart_{clients}");
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        drop(self.daemon(&dir, &idp, clients));
        let socket_path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("cannot bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("cannot set a timeout on the notify socket");
        let restart = |bin: &Path| {
            let requests = idp.token_request_count();
            let started = Instant::now();
            let child = self
                .bearerd_with(bin, &dir, &["run"])
                .env("NOTIFY_SOCKET", &socket_path)
                .spawn()
                .expect("cannot start bearerd run");
            let daemon = Daemon { child };
            let mut message = [0u8; 4096];
            loop {
                let length = socket
                    .recv(&mut message)
                    .unwrap_or_else(|error| panic!("no READY=1 from {}: {error}", bin.display()));
                let text = String::from_utf8_lossy(&message[..length]);
                if text.lines().any(|line| line == "READY=1") {
                    break;
                }
            }
            let ready = started.elapsed();
            drop(daemon);
            (ms(ready), idp.token_request_count() - requests)
        };
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..3 {
            match against {
                Some(against) if round % 2 == 1 => {
                    theirs.push(restart(against));
                    ours.push(restart(&self.bin));
                }
                Some(against) => {
                    ours.push(restart(&self.bin));
                    theirs.push(restart(against));
                }
                None => ours.push(restart(&self.bin)),
            }
        }
        let line = |runs: &[(f64, usize)]| {
            let ready: Vec<f64> = runs.iter().map(|run| run.0).collect();
            let requests: usize = runs.iter().map(|run| run.1).sum();
            format!(
                "ready_ms={:.0} (median of {}, min {:.0}) requests={requests}",
                median(&ready),
                runs.len(),
                min(&ready),
            )
        };
        match against {
            Some(against) => println!(
                "bench {scenario}: {} against: {} ({})",
                line(&ours),
                line(&theirs),
                against.display()
            ),
            None => println!("bench {scenario}: {} (saved tokens reused)", line(&ours)),
        }
    }

    /// (c) CPU time per refresh: short-lived tokens, many refreshes.
    fn cpu_per_refresh(&self, clients: usize, window: Duration) {
        let dir = self.scenario_dir("cpu_per_refresh");
        let idp = self.idp(SHORT_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        let (daemon, _) = self.daemon(&dir, &idp, clients);
        let requests_before = idp.token_request_count();
        let cpu_before = proc_cpu_ticks(daemon.pid());
        std::thread::sleep(window);
        let cpu_after = proc_cpu_ticks(daemon.pid());
        let refreshes = idp.token_request_count() - requests_before;
        drop(daemon);
        let cpu_ms = (cpu_after - cpu_before) as f64 * 1000.0 / self.clk_tck;
        println!(
            "bench cpu_per_refresh: cpu_us_per_refresh={:.0} refreshes={refreshes} \
             cpu_ms={cpu_ms:.0} window_s={} clients={clients} lifetime_s={} \
             (2 files fsynced per refresh: token + state)",
            if refreshes == 0 {
                0.0
            } else {
                cpu_ms * 1000.0 / refreshes as f64
            },
            window.as_secs(),
            SHORT_LIFETIME.as_secs()
        );
    }

    /// (d) Context switches of every thread while 10 clients hold 1-hour tokens.
    fn idle(&self, clients: usize, window: Duration) {
        let scenario = format!("idle_{clients}");
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        let (daemon, _) = self.daemon(&dir, &idp, clients);
        std::thread::sleep(Duration::from_millis(500));
        let before = thread_switches(daemon.pid());
        let cpu_before = proc_cpu_ticks(daemon.pid());
        std::thread::sleep(window);
        let after = thread_switches(daemon.pid());
        let cpu_after = proc_cpu_ticks(daemon.pid());
        let requests = idp.token_request_count();
        drop(daemon);
        let mut total = 0u64;
        let mut by_thread = Vec::new();
        for (tid, (name, count)) in &after {
            let earlier = before.get(tid).map_or(0, |(_, count)| *count);
            let delta = count.saturating_sub(earlier);
            total += delta;
            if delta > 0 {
                by_thread.push(format!("{name}:{delta}"));
            }
        }
        let gone = before
            .keys()
            .filter(|tid| !after.contains_key(*tid))
            .count();
        let per_minute = total as f64 * 60.0 / window.as_secs_f64();
        println!(
            "bench {scenario}: switches_per_min={per_minute:.1} switches={total} window_s={} \
             threads={}→{} (exited {gone}) cpu_ticks={} requests={requests} by_thread=[{}]",
            window.as_secs(),
            before.len(),
            after.len(),
            cpu_after - cpu_before,
            by_thread.join(",")
        );
    }

    /// (e) Config write → new token on disk, for one changed client of ten.
    fn reload(&self, reloads: usize) {
        let dir = self.scenario_dir("reload");
        let idp = self.idp(LONG_LIFETIME);
        let mut clients = Self::clients(10);
        Self::write_config(&dir, &idp, "", &clients);
        let (daemon, _) = self.daemon(&dir, &idp, clients.len());
        let token_path = dir.join("out").join("c00000.token");
        let mut latencies = Vec::new();
        for reload in 0..reloads {
            std::thread::sleep(Duration::from_millis(300));
            let before = std::fs::read(&token_path).expect("the token file exists");
            clients[0].scope = Some(format!("scope-{reload}"));
            let started = Instant::now();
            Self::write_config(&dir, &idp, "", &clients);
            loop {
                if std::fs::read(&token_path).is_ok_and(|now| now != before) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no new token 10 s after a config change; see {}",
                    dir.join("bearerd.log").display()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies.push(ms(started.elapsed()));
        }
        drop(daemon);
        println!(
            "bench reload: latency_ms={:.1} (median of {reloads}, min {:.1}, max {:.1}) \
             requests={} (10 + one per reload)",
            median(&latencies),
            min(&latencies),
            max(&latencies),
            idp.token_request_count()
        );
    }

    /// CPU (user + system) of every child waited for so far, in milliseconds.
    fn children_cpu_ms(&self) -> f64 {
        let fields = stat_fields("/proc/self/stat");
        // After the command name: cutime and cstime are fields 16 and 17 of proc(5).
        let ticks = field(&fields, 16) + field(&fields, 17);
        ticks as f64 * 1000.0 / self.clk_tck
    }
}

/// A running daemon; stopped with SIGTERM (then SIGKILL) when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_file(dir: &Path) -> Stdio {
    std::fs::File::create(dir.join("bearerd.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn check_exit(name: &str, status: ExitStatus, dir: &Path) {
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("bearerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        panic!("{name} failed ({status}); last log lines: {tail:?}");
    }
}

/// Which of these tools cannot be run, as "jq" or "curl, jq"; `None` when all can.
fn missing_tools(tools: &[(&str, &[&str])]) -> Option<String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, args)| {
            !Command::new(tool)
                .args(*args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .map(|(tool, args)| {
            if args.contains(&"import requests") {
                "python3 with requests"
            } else {
                tool
            }
        })
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("toml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("cannot create the config");
    file.write_all(bytes).expect("cannot write the config");
    std::fs::rename(&tmp, path).expect("cannot rename the config");
}

/// Makes `dir` a new empty directory. An existing one is renamed into `trash` beside it, not
/// deleted: on ext4, creating files just after thousands were deleted is slow (the inode
/// allocator skips inodes freed in the last half minute), which would time the deletion, not
/// bearerd. The trash goes with the scratch directory.
fn reset_dir(dir: &Path) {
    if dir.exists() {
        let trash = dir.with_file_name("trash");
        std::fs::create_dir_all(&trash).expect("cannot create the trash directory");
        let mut index = 0;
        while trash.join(index.to_string()).exists() {
            index += 1;
        }
        std::fs::rename(dir, trash.join(index.to_string()))
            .expect("cannot move the output directory aside");
    }
    std::fs::create_dir_all(dir).expect("cannot create the output directory");
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

/// `Name:  1234 kB` lines of /proc/PID/status, as kB (or plain counts).
/// What each client adds: the slope of the anonymous resident memory between two `rss_N` runs.
fn print_rss_slopes(anon: &[(usize, u64)]) {
    for pair in anon.windows(2) {
        let ((fewer, fewer_kib), (more, more_kib)) = (pair[0], pair[1]);
        if fewer < 1000 {
            continue;
        }
        let bytes = (more_kib as f64 - fewer_kib as f64) * 1024.0 / (more - fewer) as f64;
        println!("bench rss_per_client_{fewer}_{more}: anon_bytes_per_client={bytes:.0}");
    }
}

fn proc_status(pid: u32) -> HashMap<String, u64> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

fn parse_status(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let number = value.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), number))
        })
        .collect()
}

/// Per thread id: (name, voluntary + nonvoluntary context switches).
fn thread_switches(pid: u32) -> HashMap<String, (String, u64)> {
    let mut threads = HashMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|line| line.strip_prefix("Name:"))
            .map_or_else(String::new, |name| name.trim().to_owned());
        let status = parse_status(&text);
        let switches = status.get("voluntary_ctxt_switches").copied().unwrap_or(0)
            + status
                .get("nonvoluntary_ctxt_switches")
                .copied()
                .unwrap_or(0);
        threads.insert(
            entry.file_name().to_string_lossy().into_owned(),
            (name, switches),
        );
    }
    threads
}

/// The fields of a /proc stat file after the `(comm)`, numbered as in proc(5) (state = 3).
fn stat_fields(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let rest = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    rest.split_whitespace().map(str::to_owned).collect()
}

fn field(fields: &[String], number: usize) -> u64 {
    fields
        .get(number - 3)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (all its threads, living and dead), in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(&format!("/proc/{pid}/stat"));
    field(&fields, 14) + field(&fields, 15)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The scenarios of issue 14 ("Scale"): directory syncs per batch, and HTTPS as users have it.
impl Bench {
    /// `run --once` for 1,000 clients in one directory under `strace -f -c`: every call that
    /// makes data durable, by name. The wall time under strace is not a figure.
    fn once_many_syncs(&self, clients: usize) {
        let scenario = format!("once_{clients}_syncs");
        if let Some(missing) = missing_tools(&[("strace", &["-V"])]) {
            println!("bench {scenario}: skipped ({missing} not found)");
            return;
        }
        let dir = self.scenario_dir(&scenario);
        let idp = self.idp(LONG_LIFETIME);
        Self::write_config(&dir, &idp, "", &Self::clients(clients));
        let summary = dir.join("strace-summary.txt");
        let mut command = Command::new("strace");
        command
            .args(["-f", "-c", "-U", "name,calls", "-e", SYNC_CALLS, "-o"])
            .arg(&summary)
            .arg(&self.bin)
            .args(["run", "--once", "-c"])
            .arg(dir.join("bearerd.toml"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir));
        let status = command.status().expect("cannot start strace");
        check_exit("strace bearerd run --once", status, &dir);
        assert_eq!(count_files(&dir.join("out"), ".token"), clients);
        let text = std::fs::read_to_string(&summary).unwrap_or_default();
        let mut by_call = Vec::new();
        let mut total = 0;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(calls)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(calls) = calls.parse::<u64>() else {
                continue;
            };
            if name == "total" {
                total = calls;
            } else {
                by_call.push(format!("{name} {calls}"));
            }
        }
        println!(
            "bench {scenario}: sync_calls={total} ({}) clients={clients} one directory \
             (max_concurrent_requests 4; strace -f -c -e {SYNC_CALLS})",
            by_call.join(", ")
        );
    }

    /// `run --once` for one client against the token endpoint behind a TLS front on loopback
    /// (`ca_file` names the bench's CA), interleaved with the same over plain HTTP and with the
    /// `curl | jq` script over HTTPS (`--cacert`); `tls_ms` = HTTPS median − HTTP median.
    fn once_1_https(&self, runs: usize, compare: bool) {
        let dir = self.scenario_dir("once_1_https");
        let Some(pki) = TestCa::create(&dir) else {
            println!("bench once_1_https: skipped (openssl not found)");
            return;
        };
        let idp = self.idp(LONG_LIFETIME);
        let front = TlsFront::start(&pki, idp.address());
        let token_path_of_idp = idp
            .token_url()
            .splitn(4, '/')
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        let https_url = front.url(&format!("/{token_path_of_idp}"));
        let out = dir.join("out");
        let token_path = out.join("c00000.token");
        let plain_dir = self.scenario_dir("once_1_https_plain");
        write_one_client(&plain_dir, &idp.token_url(), None);
        write_one_client(&dir, &https_url, Some(&pki.ca));
        let curl_script = dir.join("fetch-token.sh");
        std::fs::write(&curl_script, CURL_SCRIPT).expect("cannot write the curl script");
        let curl_missing = missing_tools(&[("curl", &["--version"]), ("jq", &["--version"])]);
        let mut curl = Command::new("sh");
        curl.arg(&curl_script)
            .args([&https_url, "c00000", "secret-c00000"])
            .arg(&token_path)
            .arg(&pki.ca);
        // The system's roots as a Debian user has them: OpenSSL's variables, when this shell
        // has them (some images set both), would make bearerd read exactly what they name.
        let bearerd = |dir: &Path| {
            let mut command = self.bearerd(dir, &["run", "--once"]);
            command
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_CERT_DIR");
            command
        };
        let mut tools: Vec<(&str, &Path, Option<String>, Command)> = vec![
            ("http", &plain_dir, None, bearerd(&plain_dir)),
            ("https", &dir, None, bearerd(&dir)),
            ("curl_jq", &dir, curl_missing, curl),
        ];
        if !compare {
            tools.truncate(2);
        }
        let mut walls: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut cpus: Vec<f64> = vec![0.0; tools.len()];
        for round in 0..=runs {
            for (index, (name, tool_dir, missing, command)) in tools.iter_mut().enumerate() {
                if missing.is_some() {
                    continue;
                }
                let tool_out = tool_dir.join("out");
                reset_dir(&tool_out);
                command.stdin(Stdio::null()).stdout(Stdio::null());
                let cpu_before = self.children_cpu_ms();
                let started = Instant::now();
                let status = command.status().expect("cannot start a fetcher");
                let wall = started.elapsed();
                let cpu = self.children_cpu_ms() - cpu_before;
                check_exit(name, status, tool_dir);
                assert!(
                    tool_out.join("c00000.token").is_file(),
                    "{name} wrote no token file"
                );
                if round > 0 {
                    walls[index].push(ms(wall));
                    cpus[index] += cpu;
                }
            }
        }
        let line = |index: usize| {
            format!(
                "wall_ms={:.1} (median of {runs}, min {:.1}, max {:.1}) cpu_ms={:.1} (mean, user+sys)",
                median(&walls[index]),
                min(&walls[index]),
                max(&walls[index]),
                cpus[index] / runs as f64
            )
        };
        println!(
            "bench once_1_https: {} tls_ms={:.1} (median https − median http) requests={} via {} TLS connections",
            line(1),
            median(&walls[1]) - median(&walls[0]),
            idp.token_request_count(),
            front.connections()
        );
        println!("bench once_1_https_http: {}", line(0));
        if let Some((_, _, missing, _)) = tools.get(2) {
            match missing {
                Some(missing) => {
                    println!("bench once_1_https_curl_jq: skipped ({missing} not found)")
                }
                None => println!(
                    "bench once_1_https_curl_jq: {} bearerd_ratio={:.3}",
                    line(2),
                    median(&walls[1]) / median(&walls[2])
                ),
            }
        }
    }
}

/// The calls that make data durable, as strace names them.
const SYNC_CALLS: &str = "trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync";

/// `DIR/bearerd.toml` with one client `c00000` posting to `url`, trusting `ca_file` if given.
fn write_one_client(dir: &Path, url: &str, ca_file: Option<&Path>) {
    let mut text = format!(
        "[clients.c00000]\ntoken_url = \"{url}\"\nclient_id = \"c00000\"\n\
         client_secret = \"secret-c00000\"\nauth_method = \"client_secret_post\"\n"
    );
    if let Some(ca_file) = ca_file {
        let _ = writeln!(text, "ca_file = \"{}\"", ca_file.display());
    }
    text.push_str("[[clients.c00000.output]]\npath = \"out/c00000.token\"\n");
    write_atomic(&dir.join("bearerd.toml"), text.as_bytes());
}

/// A private CA and a server certificate for 127.0.0.1 it signed (P-256, a day), made with
/// the `openssl` command as the tests' `harness/pki.rs` makes them.
struct TestCa {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn create(dir: &Path) -> Option<TestCa> {
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        let key = |name| {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ])
        };
        let made = key("ca.key")
            && openssl(&[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=bearerd bench CA",
                "-days",
                "1",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.pem",
            ])
            && key("server.key")
            && openssl(&[
                "req",
                "-x509",
                "-new",
                "-key",
                "server.key",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-subj",
                "/CN=127.0.0.1",
                "-days",
                "1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-out",
                "server.pem",
            ]);
        made.then(|| TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        })
    }
}

/// TLS on 127.0.0.1 in front of the plain token endpoint: each connection's requests are
/// relayed one by one (HTTP/1.1 with `content-length`, as the endpoint answers) over one
/// upstream connection. Threads, blocking I/O: the bench's own side stays out of the runtime
/// that serves the endpoint.
struct TlsFront {
    address: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsFront {
    fn start(pki: &TestCa, upstream: std::net::SocketAddr) -> TlsFront {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_file(&pki.key).expect("server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server TLS config");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
        let address = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let config = Arc::clone(&config);
                std::thread::spawn(move || relay(config, stream, upstream));
            }
        });
        TlsFront {
            address,
            connections,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One TLS connection: request after request relayed to `upstream` and answered back.
fn relay(
    config: std::sync::Arc<rustls::ServerConfig>,
    stream: std::net::TcpStream,
    upstream: std::net::SocketAddr,
) {
    use std::io::{BufReader, Write as _};
    let _ = stream.set_nodelay(true);
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut client = BufReader::new(rustls::StreamOwned::new(connection, stream));
    let Ok(server) = std::net::TcpStream::connect(upstream) else {
        return;
    };
    let _ = server.set_nodelay(true);
    let mut server_writer = server.try_clone().expect("clone the upstream connection");
    let mut server = BufReader::new(server);
    while let Some(request) = http_message(&mut client) {
        if server_writer.write_all(&request).is_err() {
            return;
        }
        let Some(response) = http_message(&mut server) else {
            return;
        };
        let tls = client.get_mut();
        if tls.write_all(&response).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
    let tls = client.get_mut();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// One HTTP/1.1 message read whole: the head up to the blank line and `content-length` bytes
/// of body. `None` at the end of the stream or on anything else.
fn http_message(reader: &mut impl std::io::BufRead) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut length = 0;
    loop {
        let start = message.len();
        if reader.read_until(b'\n', &mut message).ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&message[start..]).into_owned();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let start = message.len();
    message.resize(start + length, 0);
    reader.read_exact(&mut message[start..]).ok()?;
    Some(message)
}
