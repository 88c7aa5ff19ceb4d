//! Shared test plumbing: a scratch directory, the built binary, an in-process token endpoint
//! on its own runtime, and polling with a deadline instead of sleeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bearerd::idp::{Idp, IdpSettings};

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
        let mut command = Command::new(BEARERD);
        command
            .args(args)
            .arg("-c")
            .arg(self.path("bearerd.toml"))
            .env_remove("BEARERD_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bearerd")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bearerd")
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

/// Whether `path` exists and holds exactly `bytes`.
pub fn holds(path: &Path, bytes: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|content| content == bytes)
}
