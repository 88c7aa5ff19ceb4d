//! Shared test plumbing: a scratch directory, the built binary, an in-process token endpoint
//! on its own runtime, and polling with a deadline instead of sleeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bearerd_idp::{Idp, IdpSettings};

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
        let mut command = Command::new(BEARERD);
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

/// A running `bearerd run` whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        Self { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub fn wait_for(&self, needle: &str, n: usize, deadline: Duration) {
        assert!(
            wait_until(deadline, || self.count(needle) >= n),
            "no {n}× {needle:?} within {deadline:?}; log:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("send signal");
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
