//! Durability paid once per batch (issue "Scale", item 2), seen through `strace`: every token
//! file is made durable (a `syncfs` for a batch, an fsync for a lone refresh) after its last
//! write and before its rename, a directory is synced once for many renames, state files are
//! never fsynced, and `on_refresh` runs only after the directory holding the new token is
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

/// The temporary file a `rename` line of `strace` moves (its first argument), if it is one.
fn renamed_temp(line: &str) -> Option<&str> {
    if !line.contains("rename") {
        return None;
    }
    let start = line.find('"')? + 1;
    let end = start + line[start..].find('"')?;
    Some(&line[start..end]).filter(|path| path.contains(".token.bearerd-tmp-"))
}

#[test]
fn a_thousand_tokens_in_one_directory_cost_a_few_syncfs_and_a_few_directory_syncs() {
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
    let events = format!("{SYNC_CALLS},write,rename,renameat,renameat2");
    let output = under_strace(&trace, &events, &config, &["run", "--once"])
        .output()
        .expect("run strace");
    assert!(output.status.success(), "{}", text(&output.stderr));

    let out = harness.path("out");
    let out = out.to_str().expect("UTF-8 path");
    let trace = std::fs::read_to_string(&trace).expect("trace");
    // Lines in the order strace wrote them: a call's line (or its `<unfinished ...>` half)
    // comes after it began and no later than it ended, so "line A before line B" holds for a
    // write that ended before a sync began, and a sync that ended before a rename began.
    let lines: Vec<&str> = trace.lines().collect();
    let is_sync = |line: &str| {
        [
            "fsync(",
            "fdatasync(",
            "syncfs(",
            "sync(",
            "sync_file_range(",
            "msync(",
        ]
        .iter()
        .any(|call| line.contains(call))
    };
    let mut last_write = std::collections::HashMap::new();
    let mut syncs = Vec::new();
    let (mut directory, mut syncfs, mut other) = (0, 0, Vec::new());
    let mut covered = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let path = fd_path(line).unwrap_or("");
        let temp = path.starts_with(out) && path.contains(".token.bearerd-tmp-");
        if line.contains("write(") && !line.contains("resumed>") {
            if temp {
                last_write.insert(path, index);
            }
        } else if is_sync(line) && !line.contains("resumed>") {
            match line {
                _ if path == out && line.contains("fsync(") => directory += 1,
                _ if path.starts_with(out) && line.contains("syncfs(") => {
                    syncfs += 1;
                    syncs.push((index, None));
                }
                _ if temp && line.contains("fsync(") => syncs.push((index, Some(path))),
                _ => other.push(*line),
            }
        } else if let Some(renamed) = renamed_temp(line) {
            let written = *last_write
                .get(renamed)
                .unwrap_or_else(|| panic!("{renamed} renamed but never written"));
            let durable = syncs.iter().any(|&(at, file)| {
                written < at && at < index && file.is_none_or(|file| file == renamed)
            });
            assert!(
                durable,
                "{renamed} renamed (line {index}) before a sync covered it"
            );
            covered.push(renamed);
        }
    }
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(
        covered.len(),
        clients,
        "each temporary file made durable, then renamed"
    );
    assert!(other.is_empty(), "no other file is synced: {other:#?}");
    assert!(
        (1..=10).contains(&directory),
        "{directory} syncs of the directory for {clients} renames"
    );
    let calls = syncs.len() + directory;
    assert!(calls <= 1010, "{calls} sync calls");
    assert!(
        syncfs > 0,
        "a batch of {clients} is synced by syncfs, not a fsync each"
    );
    eprintln!(
        "{calls} sync calls: {syncfs} syncfs, {} fsyncs of temporary files, {directory} of \
         the directory",
        syncs.len() - syncfs,
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
        !trace.contains("syncfs("),
        "a lone refresh fsyncs its file, it does not flush the filesystem:\n{trace}"
    );
    assert!(
        temp_synced < renamed && renamed < dir_synced && dir_synced < hook_started,
        "fsync(temp) {temp_synced}, rename {renamed}, fsync(dir) {dir_synced}, \
         on_refresh {hook_started}:\n{trace}"
    );
}
