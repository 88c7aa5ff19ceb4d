//! Shared test plumbing: a scratch directory, the built binary, a config builder, an in-process
//! token endpoint on its own runtime, a tiny HTTPS server, child processes whose output is
//! collected, a plain HTTP GET, and polling with a deadline instead of sleeps.
//! It holds no test's expectations: what a test checks stays in the test.

mod config;
pub mod pki;
mod tls_server;

use std::io::{BufRead as _, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bearerd_idp::{Idp, IdpSettings};

pub use config::{Client, Config};
pub use tls_server::TlsServer;

/// The `bearerd` binary cargo built for these tests.
pub const BEARERD: &str = env!("CARGO_BIN_EXE_bearerd");

/// A scratch directory with helpers to write files into it and run bearerd against them.
pub struct Harness {
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Writes `config` to `DIR/bearerd.toml`, the file [`Harness::command`] runs with.
    pub fn write_config(&self, config: &Config) -> PathBuf {
        self.write("bearerd.toml", &config.to_string())
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|error| panic!("read {relative}: {error}"))
    }

    /// `bearerd ARGS -c DIR/bearerd.toml`, with a clean, predictable environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with_config(&self.path("bearerd.toml"), args)
    }

    /// `bearerd ARGS -c CONFIG`.
    pub fn command_with_config(&self, config: &Path, args: &[&str]) -> Command {
        Self::bearerd(Command::new(BEARERD), config, args)
    }

    /// `RUNNER… bearerd ARGS -c CONFIG`: bearerd started by another program, e.g. `prlimit
    /// --nofile=256:256 --` or `setpriv … --`, given with its arguments, in the same environment.
    pub fn command_under(mut runner: Command, config: &Path, args: &[&str]) -> Command {
        runner.arg(BEARERD);
        Self::bearerd(runner, config, args)
    }

    fn bearerd(mut command: Command, config: &Path, args: &[&str]) -> Command {
        command
            .args(args)
            .arg("-c")
            .arg(config)
            .env_remove("BEARERD_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bearerd")
    }
}

/// What a finished command printed, for assertions and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `predicate` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut predicate: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if predicate() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-process token endpoint served by its own runtime thread, so tests can block on the
/// bearerd process while it answers.
pub struct TestIdp {
    pub idp: Idp,
    _runtime: tokio::runtime::Runtime,
}

impl TestIdp {
    pub fn start(settings: IdpSettings) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let idp = runtime
            .block_on(Idp::start(settings))
            .expect("start the token endpoint");
        Self {
            idp,
            _runtime: runtime,
        }
    }
}

impl std::ops::Deref for TestIdp {
    type Target = Idp;
    fn deref(&self) -> &Idp {
        &self.idp
    }
}

/// The lines a child process printed, each pipe read by a thread of its own for the child's
/// whole life, so the child never blocks on a full pipe.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Collects every line of `pipe` until it closes.
    pub fn collect(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        self.collect_but(pipe, |_| None::<()>).0
    }

    /// Collects every line of `pipe` but the first one `pick` takes, which goes to the receiver.
    pub fn collect_but<T: Send + 'static>(
        &self,
        pipe: impl Read + Send + 'static,
        mut pick: impl FnMut(&str) -> Option<T> + Send + 'static,
    ) -> (JoinHandle<()>, mpsc::Receiver<T>) {
        let (sender, receiver) = mpsc::channel();
        let lines = Arc::clone(&self.0);
        let reader = std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.is_some()
                    && let Some(picked) = pick(&line)
                {
                    if let Some(sender) = sender.take() {
                        let _ = sender.send(picked);
                    }
                    continue;
                }
                lines.lock().expect("lines").push(line);
            }
        });
        (reader, receiver)
    }

    /// Everything collected so far, one line after another.
    pub fn text(&self) -> String {
        self.0.lock().expect("lines").join("\n")
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .expect("lines")
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }
}

/// A running `bearerd run` whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    lines: Lines,
}

impl Daemon {
    pub fn start(harness: &Harness) -> Self {
        Self::start_with(harness.command(&["run"]))
    }

    pub fn start_with(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bearerd run");
        let lines = Lines::default();
        lines.collect(child.stderr.take().expect("stderr"));
        Self { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.text()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines.count(needle)
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub fn wait_for(&self, needle: &str, n: usize, deadline: Duration) {
        assert!(
            wait_until(deadline, || self.count(needle) >= n),
            "no {n}× {needle:?} within {deadline:?}; log:\n{}",
            self.log()
        );
    }

    /// The address the `listen` endpoint serves on, once it does.
    // The one place that finds it: from the log line that announces it.
    pub fn admin_address(&self) -> String {
        let announced = "serving /healthz";
        self.wait_for(announced, 1, Duration::from_secs(10));
        let log = self.log();
        let line = log
            .lines()
            .find(|line| line.contains(announced))
            .expect("line");
        line.split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address field")
            .to_owned()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("send signal");
    }

    /// SIGKILL, and the exit reaped.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        self.signal(rustix::process::Signal::TERM);
        let start = Instant::now();
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        });
        let elapsed = start.elapsed();
        let status = status.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("bearerd did not exit after SIGTERM; log:\n{}", self.log())
        });
        (status, elapsed)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process a test talks to (the interop authorization servers), given its config as a
/// JSON file: its stdin held open, since such a server exits at EOF (so it dies with the test
/// process), both output pipes collected, and on drop its stdin closed (so it ends and cleans up
/// after itself, e.g. Django's database directory) and killed if it is still there 2 s later,
/// its output printed when the test failed.
pub struct Server {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    _config: tempfile::NamedTempFile,
    output: Lines,
}

impl Server {
    /// Starts `command CONFIG_FILE` and waits up to `deadline` for its ready line: the first line
    /// on stdout that is a JSON object with an `issuer`, which is returned. One that cannot run,
    /// exits or stays silent fails the test with `hint` (how to install it) and its output.
    pub fn start(
        name: &str,
        mut command: Command,
        config: &serde_json::Value,
        deadline: Duration,
        hint: &str,
    ) -> (Server, serde_json::Value) {
        let mut config_file = tempfile::Builder::new()
            .prefix("bearerd-server-")
            .suffix(".json")
            .tempfile()
            .expect("create the server config");
        serde_json::to_writer_pretty(&mut config_file, config).expect("write the server config");
        config_file.flush().expect("flush the server config");
        let mut child = command
            .arg(config_file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {name} ({:?}: {error}): {hint}",
                    command.get_program()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let output = Lines::default();
        let stderr = output.collect(child.stderr.take().expect("piped stderr"));
        let (stdout, ready) =
            output.collect_but(child.stdout.take().expect("piped stdout"), |line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .filter(|value| value.get("issuer").is_some())
            });
        match ready.recv_timeout(deadline) {
            Ok(ready) => {
                let server = Server {
                    name: name.to_owned(),
                    child,
                    stdin: Some(stdin),
                    _config: config_file,
                    output,
                };
                (server, ready)
            }
            Err(error) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Its last words: the readers end once the pipes close.
                wait_until(Duration::from_secs(5), || {
                    stderr.is_finished() && stdout.is_finished()
                });
                let reason = match error {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("printed no ready line within {deadline:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => format!("exited ({status:?})"),
                };
                panic!(
                    "{name} {reason}; {hint}\n--- its output ---\n{}",
                    output.text()
                );
            }
        }
    }

    /// Everything the server printed so far (its error log names why a request failed).
    pub fn log(&self) -> String {
        self.output.text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let child = &mut self.child;
        wait_until(Duration::from_secs(2), || {
            !matches!(child.try_wait(), Ok(None))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} output ---\n{}", self.name, self.log());
        }
    }
}

/// What an HTTP GET got back: the status, the body, and the whole response as it came.
pub struct Response {
    pub status: u16,
    pub body: String,
    pub text: String,
}

/// `GET PATH` over HTTP/1.1 to `address` (`host:port`), read to the end.
pub fn http_get(address: &str, path: &str) -> Response {
    try_http_get(address, path, Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("GET {path} from {address}: {error}"))
}

/// [`http_get`], or why there was no response: connecting and each read bounded by `timeout`.
pub fn try_http_get(address: &str, path: &str, timeout: Duration) -> Result<Response, String> {
    let socket: SocketAddr = address
        .parse()
        .map_err(|error| format!("address {address:?}: {error}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .map_err(|error| format!("connect: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("write: {error}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|error| format!("read: {error}"))?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok(Response { status, body, text })
}
