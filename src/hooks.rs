//! Telling consumers that new files are in place: the `on_refresh` command or signal.
//! An action runs in its own task with a timeout and never blocks or fails a refresh.

use std::time::Duration;

use tracing::{Instrument, info, warn};

use crate::config::{ClientSpec, OnRefresh};

/// Starts the client's `on_refresh` action, if any, and returns at once.
pub fn on_refresh(spec: &ClientSpec) {
    let Some(action) = spec.on_refresh.clone() else {
        return;
    };
    let span = tracing::info_span!("on_refresh", client = %spec.name);
    tokio::spawn(run(action).instrument(span));
}

async fn run(action: OnRefresh) {
    match action {
        OnRefresh::Command { argv, timeout } => run_command(&argv, timeout).await,
        OnRefresh::Signal {
            signal,
            signal_name,
            pid_file,
        } => match send_signal(signal, &pid_file) {
            Ok(pid) => info!(pid, signal = %signal_name, "signalled the consumer"),
            Err(message) => warn!(%message, signal = %signal_name, "cannot signal the consumer"),
        },
    }
}

async fn run_command(argv: &[String], timeout: Duration) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            warn!(command = %program, %error, "cannot start on_refresh command");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            info!(command = %program, "on_refresh command succeeded")
        }
        Ok(Ok(status)) => warn!(command = %program, %status, "on_refresh command failed"),
        Ok(Err(error)) => warn!(command = %program, %error, "cannot wait for on_refresh command"),
        Err(_) => {
            let _ = child.start_kill();
            warn!(
                command = %program,
                timeout = %humantime::format_duration(timeout),
                "on_refresh command timed out and was killed"
            );
        }
    }
}

/// Reads the pid file afresh (the consumer may have restarted) and sends `signal`.
fn send_signal(signal: i32, pid_file: &std::path::Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|error| format!("cannot read pid_file {}: {error}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("pid_file {} does not hold a process id", pid_file.display()))?;
    let process = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("pid_file {} holds an invalid pid {pid}", pid_file.display()))?;
    let signal = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| format!("unsupported signal {signal}"))?;
    rustix::process::kill_process(process, signal)
        .map_err(|error| format!("cannot signal pid {pid}: {error}"))?;
    Ok(pid)
}
