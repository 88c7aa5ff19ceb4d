//! Hardening: `on_refresh` and the process itself. A pid file signals one process other than
//! init and bearerd, commands get a clean environment, refresh requests and hooks are bounded
//! under a burst of SIGUSR1, and the daemon is not dumpable.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use bearerd_idp::{Fault, IdpSettings};
use rustix::process::Signal;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, wait_until};

/// A uid nothing else uses, so that a bearerd that signalled "every process it may" (kill -1)
/// would reach only this module's own processes.
const SANDBOX_UID: u32 = 61873;

/// Quick retries and client `api` writing `api.token`, with `more`.
fn config(idp: &TestIdp, more: impl FnOnce(Client) -> Client) -> Config {
    Config::new().backoff("100ms", "500ms").client(more(
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id("api")
            .output("api.token"),
    ))
}

fn idp(lifetime: Duration) -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api", "api-secret", lifetime);
    idp
}

const SECRET: &str = "api-secret";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `setpriv` running what follows as `uid` (needs root).
fn as_user(uid: u32) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--"]);
    command
}

/// `bearerd ARGS -c DIR/bearerd.toml` as `uid`, with the harness's clean environment.
fn bearerd_as(harness: &Harness, uid: u32, args: &[&str]) -> Command {
    Harness::command_under(as_user(uid), &harness.path("bearerd.toml"), args)
}

/// Gives the scratch directory and everything in it to `uid`.
fn hand_over(harness: &Harness, uid: u32) {
    let dir = harness.dir.path();
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown the directory");
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).expect("chown a file");
    }
}

/// Replaces `path` by rename, so a reader never sees it half-written.
fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// A child process that is killed and reaped however the test ends.
struct Reaped(Child);

impl Reaped {
    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon_alive(daemon: &mut Daemon) -> bool {
    daemon.child.try_wait().expect("try_wait").is_none()
}

#[test]
fn a_pid_file_naming_a_group_every_process_init_or_bearerd_itself_signals_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to run bearerd and a sentinel as an unprivileged uid");
        return;
    }
    // 1 s tokens refreshed at half their life: a hook run about every half second.
    let idp = idp(Duration::from_secs(1));
    let harness = Harness::new();
    let pid_file = harness.path("app.pid");
    replace(&pid_file, "-1\n");
    harness.write_config(
        &config(&idp, |api| {
            api.secret(SECRET).on_refresh_signal("SIGTERM", &pid_file)
        })
        .agent("refresh_at = 0.5"),
    );
    hand_over(&harness, SANDBOX_UID);
    // Same uid as bearerd and in the test's process group: any of these pids, taken as a
    // target, would kill it (and the test runner is root, which bearerd may not signal).
    let mut sentinel = Reaped(
        as_user(SANDBOX_UID)
            .args(["sleep", "600"])
            .spawn()
            .expect("sentinel"),
    );
    let mut daemon = Daemon::start_with(bearerd_as(&harness, SANDBOX_UID, &["run"]));
    let own = daemon.child.id();
    let group = rustix::process::getpgrp().as_raw_nonzero().get();
    let file = pid_file.display().to_string();
    let cases = [
        ("-1".to_owned(), "holds -1: a negative number".to_owned()),
        (
            format!("-{group}"),
            format!("holds -{group}: a negative number"),
        ),
        (
            "0".to_owned(),
            "holds 0: only a process id greater than 1".to_owned(),
        ),
        (
            "1".to_owned(),
            "holds 1: only a process id greater than 1".to_owned(),
        ),
        (
            own.to_string(),
            format!("holds {own}, bearerd's own process id"),
        ),
    ];
    for (content, problem) in cases {
        replace(&pid_file, &format!("{content}\n"));
        // The hooks of the 2nd and 3rd refresh after the change surely read the new content.
        let before = daemon.count("token refreshed");
        daemon.wait_for("token refreshed", before + 4, Duration::from_secs(30));
        let needle = format!("pid_file {file} {problem}");
        assert_eq!(
            daemon.count(&needle),
            1,
            "pid file {content:?}: {needle:?} logged once; log:\n{}",
            daemon.log()
        );
        assert!(sentinel.alive(), "pid file {content:?} killed the sentinel");
        assert!(
            daemon_alive(&mut daemon),
            "pid file {content:?} killed bearerd; log:\n{}",
            daemon.log()
        );
    }

    // A real pid is signalled.
    replace(&pid_file, &format!("{}\n", sentinel.0.id()));
    assert!(
        wait_until(Duration::from_secs(20), || !sentinel.alive()),
        "the sentinel got SIGTERM; log:\n{}",
        daemon.log()
    );
    daemon.wait_for("signalled the consumer", 1, Duration::from_secs(5));
}

#[test]
fn a_pid_file_that_is_a_fifo_is_refused_without_stalling_the_daemon() {
    let idp = idp(Duration::from_secs(1));
    let harness = Harness::new();
    let pid_file = harness.path("app.pid");
    let made = Command::new("mkfifo")
        .arg(&pid_file)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    harness.write_config(
        &config(&idp, |api| {
            api.secret(SECRET).on_refresh_signal("SIGHUP", &pid_file)
        })
        .agent("refresh_at = 0.5"),
    );
    let daemon = Daemon::start(&harness);
    // Opening a FIFO for reading waits for a writer: that stalled the whole daemon.
    daemon.wait_for("token refreshed", 4, Duration::from_secs(30));
    let needle = format!("pid_file {} is not a regular file", pid_file.display());
    assert_eq!(daemon.count(&needle), 1, "log:\n{}", daemon.log());
}

/// The environment an `on_refresh` command saw: its own initial environment, as the kernel
/// recorded it at exec (so the shell adds nothing).
fn run_and_dump_environment(harness: &Harness, mut command: Command) -> BTreeMap<String, String> {
    let dump = harness.path("environ");
    let _ = std::fs::remove_file(&dump);
    // Without a saved token the daemon fetches, and the new files make the hook run.
    let _ = std::fs::remove_file(harness.path(".api.bearerd-state.json"));
    command.stdout(std::process::Stdio::null());
    let daemon = Daemon::start_with(command);
    assert!(
        wait_until(Duration::from_secs(10), || dump.exists()),
        "the hook ran; log:\n{}",
        daemon.log()
    );
    drop(daemon);
    let bytes = std::fs::read(&dump).expect("read the dump");
    String::from_utf8(bytes)
        .expect("utf-8")
        .split('\0')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, value) = entry.split_once('=').expect("NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn on_refresh_commands_see_only_the_documented_variables_and_pass_env() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    let dump = harness.path("environ");
    let dump_command = format!(
        "cat /proc/$$/environ > '{dump}.tmp' && mv '{dump}.tmp' '{dump}'",
        dump = dump.display()
    );
    harness.write_config(&config(&idp, |api| {
        api.secret("${HOOKS_TEST_SECRET_SOURCE}")
            .output("odd:name.token")
            .on_refresh_run(&["sh", "-c", &dump_command])
            .pass_env(&["HOOKS_TEST_PASSED", "HOOKS_TEST_UNSET"])
    }));
    let daemon_command = || {
        let mut command = harness.command(&["run"]);
        command
            .env("HOOKS_TEST_SECRET_SOURCE", "api-secret")
            .env("HOOKS_TEST_PASSED", "passed: yes")
            .env("HOOKS_TEST_NOT_PASSED", "not passed")
            .env_remove("HOOKS_TEST_UNSET")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C")
            .env("HOME", "/nonexistent-home");
        command
    };
    let path = std::env::var("PATH").expect("the tests have a PATH");
    let output = |name: &str| harness.path(name).display().to_string();
    let mut expected: BTreeMap<String, String> = [
        ("PATH", path.as_str()),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C"),
        ("HOOKS_TEST_PASSED", "passed: yes"),
        ("BEARERD_CLIENT", "api"),
        ("BEARERD_OUTPUT", &output("api.token")),
        ("BEARERD_OUTPUT_COUNT", "2"),
        ("BEARERD_OUTPUT_0", &output("api.token")),
        ("BEARERD_OUTPUT_1", &output("odd:name.token")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();

    let environment = run_and_dump_environment(&harness, daemon_command());
    assert_eq!(environment, expected);
    assert!(
        environment
            .values()
            .all(|value| !value.contains("api-secret")),
        "{environment:?}"
    );

    // Without a PATH of its own, bearerd gives commands systemd's default one.
    let mut command = daemon_command();
    command.env_remove("PATH");
    expected.insert(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    );
    assert_eq!(run_and_dump_environment(&harness, command), expected);
}

#[test]
fn a_burst_of_sigusr1_costs_a_few_requests_and_runs_one_hook_at_a_time() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    let token = harness.path("api.token");
    let runs = harness.path("runs.log");
    // The workload: a hook that takes a while, marking its start and end with the token it saw.
    let script = harness.write(
        "hook.sh",
        &format!(
            "t=$(cat '{token}')\necho \"start $t\" >> '{runs}'\nsleep 0.2\necho \"end $t\" >> '{runs}'\n",
            token = token.display(),
            runs = runs.display()
        ),
    );
    let script = script.to_str().expect("UTF-8 path");
    harness.write_config(&config(&idp, |api| {
        api.secret(SECRET)
            .on_refresh_command(&["sh", script], "10s")
    }));
    let daemon = Daemon::start(&harness);
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || lines().len() == 2),
        "the first hook ran; log:\n{}",
        daemon.log()
    );
    assert_eq!(idp.token_request_count(), 1);

    let started = Instant::now();
    let mut last_signal = SystemTime::now();
    for _ in 0..300 {
        last_signal = SystemTime::now();
        daemon.signal(Signal::USR1);
        std::thread::sleep(Duration::from_millis(5));
    }
    let burst = started.elapsed();

    // Settled: no request is lost, so a token was fetched after the last SIGUSR1; it was
    // written, and a hook run that saw it has ended.
    let settled = wait_until(Duration::from_secs(30), || {
        let requests = idp.requests();
        let current = std::fs::read_to_string(&token).unwrap_or_default();
        requests
            .last()
            .is_some_and(|last| last.received_at >= last_signal)
            && daemon.count("token refreshed") == requests.len()
            && lines().last() == Some(&format!("end {current}"))
    });
    let lines = lines();
    assert!(
        settled,
        "a refresh after the last SIGUSR1, and a hook run after it: {lines:#?}\nlog:\n{}",
        daemon.log()
    );

    // Refresh-now requests wait until the last request is a second old and merge into one:
    // one request at start, one at the burst's first moment, at most one per further second
    // of it, one after it for the signals of its last second, and one for scheduling delays.
    let bound = 4 + burst.as_secs() as usize;
    let requests = idp.requests();
    assert!(
        (2..=bound).contains(&requests.len()),
        "{} token requests for a {burst:?} burst (bound {bound}); log:\n{}",
        requests.len(),
        daemon.log()
    );

    // One hook at a time: every start is followed by its own end before the next start.
    assert!(lines.len() >= 4 && lines.len() % 2 == 0, "{lines:#?}");
    for pair in lines.chunks(2) {
        let started = pair[0].strip_prefix("start ");
        assert!(
            started.is_some() && pair[1].strip_prefix("end ") == started,
            "overlapping hooks: {lines:#?}"
        );
    }
}

/// The owner of `/proc/PID/status`: a non-dumpable process's files there belong to root.
fn proc_owner(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("the process runs")
        .uid()
}

#[test]
fn bearerd_is_not_dumpable_so_its_memory_and_environment_stay_private() {
    if !is_root() {
        eprintln!("skipped: needs root to run bearerd as an unprivileged uid");
        return;
    }
    let uid = 65534;
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(
        &config(&idp, |api| api.secret(SECRET).on_refresh_run(&["true"])).http_timeout("60s"),
    );
    hand_over(&harness, uid);

    let mut run = bearerd_as(&harness, uid, &["run"]);
    run.env("SOME_SECRET_SOURCE", "x");
    let daemon = Daemon::start_with(run);
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
    assert_eq!(proc_owner(daemon.child.id()), 0, "run is dumpable");
    drop(daemon);

    // `token` too, caught while it waits for an answer that never comes.
    idp.set_fault(Fault::Hang);
    let mut token = Reaped(
        bearerd_as(&harness, uid, &["token", "api"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("bearerd token"),
    );
    assert!(wait_until(Duration::from_secs(10), || idp
        .token_request_count()
        >= 2));
    assert!(token.alive());
    assert_eq!(proc_owner(token.0.id()), 0, "token is dumpable");
}
