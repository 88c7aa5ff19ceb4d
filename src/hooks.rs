//! Telling consumers that new files are in place: the `on_refresh` command or signal.
//! An action runs in its own task with a timeout and never blocks or fails a refresh.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Instrument, debug, info, warn};

use crate::config::{ClientSpec, OnRefresh};

/// The most a pid file may hold: a pid and a newline need 12 bytes at most.
const PID_FILE_MAX_BYTES: u64 = 64;

/// `PATH` for commands when bearerd has none: systemd's default.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One client's actions: at most one runs at a time, and refreshes that land meanwhile merge
/// into one more run after it. Shared by the client's successive workers, so a reload does not
/// start a second action beside one still running.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate(Arc<Mutex<GateState>>);

#[derive(Debug, Default)]
struct GateState {
    running: bool,
    /// The newest spec asking for a run while one was running.
    pending: Option<Arc<ClientSpec>>,
    /// The last pid-file problem logged, so that each is logged once, not at every refresh.
    last_problem: Option<String>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the client's `on_refresh` action, if any, and returns at once; if one is running,
/// it runs once more after that one ends.
pub(crate) fn on_refresh(spec: &Arc<ClientSpec>, gate: &Gate) {
    if spec.on_refresh.is_none() {
        return;
    }
    {
        let mut state = gate.lock();
        if state.running {
            state.pending = Some(Arc::clone(spec));
            debug!("on_refresh is still running; it runs once more when it ends");
            return;
        }
        state.running = true;
    }
    let span = tracing::info_span!("on_refresh", client = %spec.name);
    let (mut spec, gate) = (Arc::clone(spec), gate.clone());
    tokio::spawn(
        async move {
            loop {
                run(&spec, &gate).await;
                let mut state = gate.lock();
                match state.pending.take() {
                    Some(next) => spec = next,
                    None => {
                        state.running = false;
                        break;
                    }
                }
            }
        }
        .instrument(span),
    );
}

async fn run(spec: &ClientSpec, gate: &Gate) {
    match spec.on_refresh.as_deref() {
        None => {}
        Some(OnRefresh::Command {
            argv,
            timeout,
            pass_env,
        }) => {
            let environment = command_environment(spec, pass_env, |name| std::env::var_os(name));
            run_command(argv, *timeout, environment).await;
        }
        Some(OnRefresh::Signal {
            signal,
            signal_name,
            pid_file,
        }) => {
            let result = send_signal(*signal, pid_file);
            let mut state = gate.lock();
            match result {
                Ok(pid) => {
                    state.last_problem = None;
                    info!(pid, signal = %signal_name, "signalled the consumer");
                }
                Err(message) if state.last_problem.as_deref() == Some(message.as_str()) => {
                    debug!(%message, signal = %signal_name, "cannot signal the consumer, still");
                }
                Err(message) => {
                    warn!(%message, signal = %signal_name, "cannot signal the consumer");
                    state.last_problem = Some(message);
                }
            }
        }
    }
}

/// A command's whole environment: `PATH` (bearerd's, or systemd's default), `LANG` and
/// `LC_ALL` when set, the `pass_env` variables that are set, and `BEARERD_CLIENT`,
/// `BEARERD_OUTPUT` (the first output's path), `BEARERD_OUTPUT_COUNT` and `BEARERD_OUTPUT_0`…
/// (each output's path, in config order). Nothing else: not the variables secrets came from.
pub(crate) fn command_environment(
    spec: &ClientSpec,
    pass_env: &[String],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> BTreeMap<String, OsString> {
    let mut environment = BTreeMap::new();
    let path = lookup("PATH")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    environment.insert("PATH".to_owned(), path);
    for name in ["LANG", "LC_ALL"]
        .into_iter()
        .chain(pass_env.iter().map(String::as_str))
    {
        if let Some(value) = lookup(name) {
            environment.insert(name.to_owned(), value);
        }
    }
    environment.insert("BEARERD_CLIENT".to_owned(), spec.name.as_str().into());
    if let Some(first) = spec.outputs.first() {
        environment.insert("BEARERD_OUTPUT".to_owned(), first.path.clone().into());
    }
    environment.insert(
        "BEARERD_OUTPUT_COUNT".to_owned(),
        spec.outputs.len().to_string().into(),
    );
    for (index, output) in spec.outputs.iter().enumerate() {
        environment.insert(
            format!("BEARERD_OUTPUT_{index}"),
            output.path.clone().into(),
        );
    }
    environment
}

async fn run_command(argv: &[String], timeout: Duration, environment: BTreeMap<String, OsString>) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(environment)
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

/// Reads the pid file afresh (the consumer may have restarted) and sends `signal`, only to
/// one process other than init and bearerd itself; any doubt signals nothing.
fn send_signal(signal: i32, pid_file: &Path) -> Result<i32, String> {
    let bytes = read_pid_file(pid_file)?;
    let pid = parse_pid(&bytes, std::process::id()).map_err(|problem| {
        format!(
            "pid_file {} {problem}; nothing was signalled",
            pid_file.display()
        )
    })?;
    if is_own_thread(pid) {
        return Err(format!(
            "pid_file {} holds {pid}, a thread of bearerd itself; nothing was signalled",
            pid_file.display()
        ));
    }
    let process = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("pid_file {} holds an invalid pid {pid}", pid_file.display()))?;
    let signal = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| format!("unsupported signal {signal}"))?;
    rustix::process::kill_process(process, signal).map_err(|error| {
        format!(
            "cannot signal pid {pid} from pid_file {}: {error}",
            pid_file.display()
        )
    })?;
    Ok(pid)
}

/// Whether `pid` is one of bearerd's threads: a signal to a thread id reaches the process.
fn is_own_thread(pid: i32) -> bool {
    Path::new("/proc/self/task").join(pid.to_string()).exists()
}

/// The pid file's bytes: opened without blocking (a FIFO would hang the runtime), only a
/// regular file, and never more than [`PID_FILE_MAX_BYTES`] read.
fn read_pid_file(path: &Path) -> Result<Vec<u8>, String> {
    use rustix::fs::{Mode, OFlags};
    let cannot =
        |error: &dyn std::fmt::Display| format!("cannot read pid_file {}: {error}", path.display());
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = std::fs::File::from(
        rustix::fs::open(path, flags, Mode::empty()).map_err(|error| cannot(&error))?,
    );
    let metadata = file.metadata().map_err(|error| cannot(&error))?;
    if !metadata.is_file() {
        return Err(format!(
            "pid_file {} is not a regular file; nothing was signalled",
            path.display()
        ));
    }
    // Whoever can write the pid file chooses which of our user's processes gets the signal.
    use std::os::unix::fs::MetadataExt as _;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "pid_file {} can be written by group or others (mode {mode:04o}), so anyone could \
             choose the process; nothing was signalled",
            path.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me && metadata.uid() != 0 {
        return Err(format!(
            "pid_file {} is owned by uid {}, neither bearerd's user nor root; nothing was \
             signalled",
            path.display(),
            metadata.uid()
        ));
    }
    let mut bytes = Vec::new();
    file.take(PID_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| cannot(&error))?;
    if bytes.len() as u64 > PID_FILE_MAX_BYTES {
        return Err(format!(
            "pid_file {} is larger than {PID_FILE_MAX_BYTES} bytes, so it holds no process id; \
             nothing was signalled",
            path.display()
        ));
    }
    Ok(bytes)
}

/// A pid file's content as one process id: decimal digits, surrounding whitespace allowed,
/// greater than 1 and not `own`. Zero and negative numbers address process groups or every
/// process, 1 is init: the error says what the file holds.
fn parse_pid(bytes: &[u8], own: u32) -> Result<i32, String> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Err("is empty, not a process id".to_owned());
    }
    if let Some(digits) = trimmed.strip_prefix('-')
        && !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit())
    {
        return Err(format!(
            "holds {trimmed}: a negative number names a process group (-1: every process); \
             only a process id greater than 1 is signalled"
        ));
    }
    let pid = trimmed
        .bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| trimmed.parse::<i32>().ok())
        .flatten()
        .ok_or_else(|| format!("holds {trimmed:?}, not a process id"))?;
    if pid <= 1 {
        return Err(format!(
            "holds {pid}: only a process id greater than 1 is signalled"
        ));
    }
    if u32::try_from(pid).is_ok_and(|pid| pid == own) {
        return Err(format!("holds {pid}, bearerd's own process id"));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid file others could write (a `/tmp`-like directory, a careless chmod) is refused:
    /// its writer would choose which of our processes is signalled.
    #[test]
    fn a_pid_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("app.pid");
        std::fs::File::create(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, b"4242\n"))
            .expect("write the pid file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            read_pid_file(&path).expect("a pid file only we can write"),
            b"4242\n"
        );
        for mode in [0o666, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let error = read_pid_file(&path).expect_err("refused");
            assert!(
                error.contains(&format!(
                    "can be written by group or others (mode {mode:04o})"
                )),
                "{error}"
            );
        }
    }

    fn spec_with_command(command: &str) -> Arc<ClientSpec> {
        let text = format!(
            "[clients.api]\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"api\"\n\
             client_secret = \"s\"\n[[clients.api.output]]\npath = \"/run/api.token\"\n\
             [clients.api.on_refresh]\ncommand = [\"sh\", \"-c\", {command:?}]\n"
        );
        let config = crate::config::Config::parse(Path::new("/etc/bearerd.toml"), &text, &|_| {
            Err(std::env::VarError::NotPresent)
        })
        .expect("valid config");
        Arc::clone(&config.clients[0])
    }

    #[tokio::test]
    async fn refreshes_during_a_run_merge_into_one_more_run() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = dir.path().join("runs");
        let spec = spec_with_command(&format!("echo run >> '{}'; sleep 0.3", runs.display()));
        let gate = Gate::default();
        for _ in 0..10 {
            on_refresh(&spec, &gate);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while gate.lock().running && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!gate.lock().running, "the runs ended");
        let text = std::fs::read_to_string(&runs).expect("runs");
        assert_eq!(
            text.lines().count(),
            2,
            "one run, then one for the nine merged"
        );
    }

    #[test]
    fn only_a_plain_pid_above_one_that_is_not_ours_is_accepted() {
        let own = 4242;
        for (bytes, expected) in [
            (&b"1234"[..], Ok(1234)),
            (b"1234\n", Ok(1234)),
            (b" 77 \r\n", Ok(77)),
            (b"2147483647", Ok(i32::MAX)),
        ] {
            assert_eq!(parse_pid(bytes, own), expected, "{bytes:?}");
        }
        for bytes in [
            &b""[..],
            b"\n",
            b"-1",
            b"-4242",
            b"0",
            b"1",
            b"4242",
            b"+5",
            b"5x",
            b"5 6",
            b"0x10",
            b"2147483648",
            b"99999999999999999999999",
            b"\xff\xfe",
            b"12\x00",
        ] {
            assert!(parse_pid(bytes, own).is_err(), "{bytes:?} was accepted");
        }
        assert_eq!(
            parse_pid(b"-1\n", own),
            Err(
                "holds -1: a negative number names a process group (-1: every process); \
                 only a process id greater than 1 is signalled"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_pid(b"12ab", own),
            Err("holds \"12ab\", not a process id".to_owned())
        );
        assert_eq!(
            parse_pid(b"1", own),
            Err("holds 1: only a process id greater than 1 is signalled".to_owned())
        );
    }

    #[test]
    fn our_own_threads_are_recognised() {
        let main = i32::try_from(std::process::id()).expect("pid");
        assert!(is_own_thread(main));
        assert!(!is_own_thread(1));
    }

    #[test]
    fn a_pid_file_that_is_not_a_small_regular_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().expect("dir");
        let big = dir.path().join("big.pid");
        std::fs::File::create(&big)
            .and_then(|mut file| std::io::Write::write_all(&mut file, &[b'7'; 65]))
            .expect("write");
        let error = read_pid_file(&big).expect_err("too big");
        assert!(error.contains("larger than 64 bytes"), "{error}");
        assert!(error.contains(&big.display().to_string()), "{error}");
        let error = read_pid_file(dir.path()).expect_err("a directory");
        assert!(error.contains("not a regular file"), "{error}");
        let missing = dir.path().join("missing.pid");
        let error = read_pid_file(&missing).expect_err("missing");
        assert!(error.contains(&missing.display().to_string()), "{error}");
    }
}
