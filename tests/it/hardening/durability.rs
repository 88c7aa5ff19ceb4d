//! Durability paid once per batch (issue "Scale", item 2), seen through `strace`: every token
//! file is fsynced before its rename, a directory is synced once for many renames, state files
//! are never fsynced, and `on_refresh` runs only after the directory holding the new token is
//! synced. Without `strace` (or where it may not trace) each test says so on stderr and passes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bearerd_idp::IdpSettings;

use crate::harness::{Client, Config, Harness, TestIdp, text, wait_until};

/// The syscalls that make data durable.
const SYNC_CALLS: &str = "trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync";

/// Whether `strace` is here and allowed to trace; if not, says so loudly.
fn strace_works(test: &str) -> bool {
    let works = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !works {
        eprintln!(
            "SKIPPED {test}: `strace` is missing or may not trace here \
             (Debian: apt-get install strace; .ci/run installs it)"
        );
    }
    works
}

/// `strace -f -y -o TRACE -e EVENTS bearerd ARGS -c CONFIG`: each syscall names its file.
fn under_strace(trace: &Path, events: &str, config: &Path, args: &[&str]) -> Command {
    let mut strace = Command::new("strace");
    strace
        .args([
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-y",
            "-ttt",
            "-e",
            events,
            "-o",
        ])
        .arg(trace);
    Harness::command_under(strace, config, args)
}

/// The path `strace -y` printed for the descriptor a traced call took first.
fn fd_path(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    let end = start + line[start..].find('>')?;
    Some(&line[start..end])
}

#[test]
fn a_thousand_tokens_in_one_directory_cost_one_fsync_each_and_a_few_directory_syncs() {
    if !strace_works("durability::a_thousand_tokens…") {
        return;
    }
    let harness = Harness::new();
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        default_lifetime: Duration::from_secs(3600),
        ..IdpSettings::default()
    });
    let clients = 1000;
    let mut config = Config::new();
    for index in 0..clients {
        let name = format!("c{index:04}");
        config = config.client(
            Client::new(&name)
                .token_url(&idp.token_url())
                .client_id(&name)
                .secret("secret")
                .output(format!("out/{name}.token")),
        );
    }
    let config = harness.write_config(&config);
    let trace = harness.path("trace");
    let output = under_strace(&trace, SYNC_CALLS, &config, &["run", "--once"])
        .output()
        .expect("run strace");
    assert!(output.status.success(), "{}", text(&output.stderr));

    let out = harness.path("out");
    let out = out.to_str().expect("UTF-8 path");
    let trace = std::fs::read_to_string(&trace).expect("trace");
    let calls: Vec<&str> = trace.lines().filter(|line| line.contains('(')).collect();
    let mut temp_files = Vec::new();
    let (mut directory, mut other) = (Vec::new(), Vec::new());
    for call in &calls {
        match fd_path(call) {
            Some(path) if path == out => directory.push(*call),
            Some(path) if path.starts_with(out) && path.contains(".token.bearerd-tmp-") => {
                temp_files.push(path);
            }
            _ => other.push(*call),
        }
    }
    temp_files.sort_unstable();
    temp_files.dedup();
    assert_eq!(
        temp_files.len(),
        clients,
        "each temporary file fsynced once"
    );
    assert!(other.is_empty(), "no other file is synced: {other:#?}");
    assert!(
        (1..=10).contains(&directory.len()),
        "{} syncs of the directory for {clients} renames: {directory:#?}",
        directory.len()
    );
    assert!(calls.len() <= 1010, "{} sync calls", calls.len());
    eprintln!(
        "{} sync calls: {} temporary files, {} of the directory",
        calls.len(),
        temp_files.len(),
        directory.len()
    );
    assert_eq!(
        std::fs::read_dir(harness.path("out"))
            .expect("out")
            .filter(|entry| entry
                .as_ref()
                .is_ok_and(|entry| entry.file_name().to_string_lossy().ends_with(".token")))
            .count(),
        clients
    );
}

#[test]
fn on_refresh_runs_after_the_new_token_s_directory_is_synced() {
    if !strace_works("durability::on_refresh_runs_after…") {
        return;
    }
    let harness = Harness::new();
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        default_lifetime: Duration::from_secs(3600),
        ..IdpSettings::default()
    });
    let marker = harness.path("hook-ran");
    let hook = harness.write("hook.sh", "#!/bin/sh\necho ran >\"$1\"\n");
    let config = harness.write_config(
        &Config::new().client(
            Client::new("api")
                .token_url(&idp.token_url())
                .client_id("api")
                .secret("secret")
                .output("out/api.token")
                .on_refresh_run(&[
                    "/bin/sh",
                    hook.to_str().expect("UTF-8 path"),
                    marker.to_str().expect("UTF-8 path"),
                ]),
        ),
    );
    let trace = harness.path("trace");
    let events = format!("{SYNC_CALLS},rename,renameat,renameat2,execve");
    let mut strace = under_strace(&trace, &events, &config, &["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run strace");
    let ran = wait_until(Duration::from_secs(30), || marker.is_file());
    // bearerd is strace's child: stop it, and strace ends with it.
    let children = format!("/proc/{0}/task/{0}/children", strace.id());
    if let Some(pid) = std::fs::read_to_string(&children)
        .ok()
        .and_then(|pids| pids.split_whitespace().next()?.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if !wait_until(Duration::from_secs(10), || {
        strace.try_wait().is_ok_and(|status| status.is_some())
    }) {
        let _ = strace.kill();
    }
    let _ = strace.wait();
    assert!(ran, "on_refresh never ran");

    let trace = std::fs::read_to_string(&trace).expect("trace");
    let lines: Vec<&str> = trace.lines().collect();
    let out = harness.path("out");
    let out = out.to_str().expect("UTF-8 path");
    let position = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|line| found(line))
            .unwrap_or_else(|| panic!("no {what} in the trace:\n{trace}"))
    };
    let temp_synced = position("fsync of the temporary file", &|line| {
        line.contains("fsync(") && fd_path(line).is_some_and(|path| path.contains("bearerd-tmp"))
    });
    let renamed = position("rename onto api.token", &|line| {
        line.contains("rename") && line.contains("/out/api.token\"")
    });
    let dir_synced = position("sync of the directory", &|line| {
        line.contains("fsync(") && fd_path(line) == Some(out)
    });
    let hook_started = position("execve of the hook", &|line| {
        line.contains("execve(\"/bin/sh\"") && line.contains("hook.sh")
    });
    assert!(
        temp_synced < renamed && renamed < dir_synced && dir_synced < hook_started,
        "fsync(temp) {temp_synced}, rename {renamed}, fsync(dir) {dir_synced}, \
         on_refresh {hook_started}:\n{trace}"
    );
}
