//! OS events turned into [`Event`]s: signals, changes to watched files (by content, debounced)
//! and wall-clock steps. The only code that touches signal handlers, inotify or timerfd; it
//! decides nothing about what an event means.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use notify::Watcher;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Everything that can make the supervisor act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP (or a changed file the config names, as the supervisor decides).
    Reload(ReloadCause),
    /// The content of these watched files changed (the config, a file it names, a token
    /// file), all at once after a quiet moment.
    FilesChanged(Vec<PathBuf>),
    /// SIGUSR1: refresh every client now.
    RefreshAll,
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The wall clock was set or the machine resumed: every deadline must be re-checked.
    ClockChanged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadCause {
    Signal,
    FileChanged(PathBuf),
}

/// The daemon's event sources: one channel, fed by the OS sources that `Events::from_os`
/// installs and by every [`Events::sender`] (a test's stand-ins, or a demo's shutdown).
pub struct Events {
    sender: mpsc::UnboundedSender<Event>,
    receiver: mpsc::UnboundedReceiver<Event>,
    file_watch: Option<FileWatch>,
    /// The OS sources' tasks.
    tasks: JoinSet<()>,
}

impl Events {
    /// No OS source: only what is sent through [`Events::sender`] arrives.
    pub fn channel() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver,
            file_watch: None,
            tasks: JoinSet::new(),
        }
    }

    /// The real sources: signals, wall-clock steps and changes to `files` (the config and the
    /// files it names). Only signal handlers are required: without a clock watch or a file
    /// watch the daemon runs on, and a warning says what it will miss. Call it within a tokio
    /// runtime.
    pub(crate) fn from_os(files: &[PathBuf]) -> Result<Self, String> {
        let mut events = Self::channel();
        spawn_signals(&mut events.tasks, events.sender.clone())
            .map_err(|error| format!("cannot install signal handlers: {error}"))?;
        if let Err(error) = spawn_clock_watch(&mut events.tasks, events.sender.clone()) {
            warn!(%error, "cannot watch for clock changes; a resume may be noticed late");
        }
        match FileWatch::start(&mut events.tasks, files, events.sender.clone()) {
            Ok(watch) => events.file_watch = Some(watch),
            Err(error) => warn!(%error, "config changes need SIGHUP"),
        }
        Ok(events)
    }

    /// A way in for events of the caller's own (a clock jump, a shutdown).
    pub fn sender(&self) -> mpsc::UnboundedSender<Event> {
        self.sender.clone()
    }

    /// Splits into the receiver, for the supervisor, and the sources' tasks, for the caller to
    /// shut down. From now on the file watch, if there is one, watches the files `watched`
    /// lists: the supervisor's list, which a reload replaces. The receiver closes once the
    /// sources and every [`Events::sender`] are gone.
    pub(crate) fn into_parts(
        mut self,
        mut watched: watch::Receiver<Vec<PathBuf>>,
    ) -> (mpsc::UnboundedReceiver<Event>, JoinSet<()>) {
        if let Some(mut file_watch) = self.file_watch.take() {
            self.tasks.spawn(async move {
                while watched.changed().await.is_ok() {
                    let files = watched.borrow_and_update().clone();
                    file_watch.set_files(&files);
                }
            });
        }
        (self.receiver, self.tasks)
    }
}

/// How long file events must be quiet before the files are compared: an editor's save or a
/// kubelet `..data` swap is several events, and must be one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Forwards SIGTERM/SIGINT/SIGHUP/SIGUSR1 as events until the receiver is gone.
fn spawn_signals(
    tasks: &mut JoinSet<()>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    tasks.spawn(async move {
        while let Some(signal) = signals.next().await {
            let event = match signal {
                SIGHUP => Event::Reload(ReloadCause::Signal),
                SIGUSR1 => Event::RefreshAll,
                _ => Event::Shutdown,
            };
            if events.send(event).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Watches files through their directories (so editors' rename-replace and kubelet's
/// `..data` symlink swap are seen) and reports a file whose content really changed.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    watched_dirs: BTreeSet<PathBuf>,
    files: Arc<Mutex<BTreeMap<PathBuf, Option<Digest>>>>,
}

type Digest = [u8; 32];

impl FileWatch {
    fn start(
        tasks: &mut JoinSet<()>,
        files: &[PathBuf],
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, String> {
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
        let watcher =
            notify::recommended_watcher(
                move |result: notify::Result<notify::Event>| match result {
                    // Opening a file changes nothing, and the digest below opens every watched
                    // file: counting opens made each comparison trigger the next, 10 times a
                    // second for as long as the daemon ran.
                    Ok(event)
                        if matches!(
                            event.kind,
                            notify::EventKind::Access(notify::event::AccessKind::Open(_))
                        ) => {}
                    Ok(_) => {
                        let _ = raw_tx.send(());
                    }
                    Err(error) => warn!(%error, "file watch error"),
                },
            )
            .map_err(|error| format!("cannot watch files: {error}"))?;
        let shared: Arc<Mutex<BTreeMap<PathBuf, Option<Digest>>>> = Arc::default();
        let mut watch = Self {
            watcher,
            watched_dirs: BTreeSet::new(),
            files: Arc::clone(&shared),
        };
        watch.set_files(files);
        tasks.spawn(async move {
            while raw_rx.recv().await.is_some() {
                // Wait for a quiet moment, then compare contents once.
                loop {
                    match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let changed: Vec<PathBuf> = {
                    let mut files = shared.lock().unwrap_or_else(|p| p.into_inner());
                    let mut changed = Vec::new();
                    for (path, digest) in files.iter_mut() {
                        let now = digest_of(path);
                        if now != *digest {
                            *digest = now;
                            changed.push(path.clone());
                        }
                    }
                    changed
                };
                if !changed.is_empty() {
                    debug!(files = changed.len(), "watched files changed");
                    if events.send(Event::FilesChanged(changed)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }

    /// Replaces the set of watched files (after a reload). A file already watched keeps its
    /// baseline (the content last compared), so an edit that lands between a reload and this
    /// call is still seen as a change; a newly watched file's current content is its baseline.
    fn set_files(&mut self, files: &[PathBuf]) {
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|file| match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        for gone in self.watched_dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.watched_dirs) {
            if let Err(error) = self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                warn!(path = %dir.display(), %error, "cannot watch directory; use SIGHUP to reload");
            }
        }
        self.watched_dirs = dirs;
        let mut known = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let baseline = files
            .iter()
            .map(|file| {
                let digest = known.get(file).copied().unwrap_or_else(|| digest_of(file));
                (file.clone(), digest)
            })
            .collect();
        *known = baseline;
    }
}

fn digest_of(path: &Path) -> Option<Digest> {
    let bytes = crate::files::read(path, crate::files::Kind::Watched).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().try_into().ok()
}

/// Reports wall-clock steps and resumes from suspend: a `CLOCK_REALTIME` timerfd armed with
/// `TFD_TIMER_CANCEL_ON_SET` is cancelled by the kernel whenever the clock is set, which
/// includes the jump at resume. One descriptor for the whole process, no polling.
fn spawn_clock_watch(
    tasks: &mut JoinSet<()>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create,
        timerfd_settime,
    };
    let fd: OwnedFd = timerfd_create(
        TimerfdClockId::Realtime,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    // Far in the future: the timer should never fire, only be cancelled.
    let arm = |fd: &OwnedFd| {
        let far = rustix::time::Timespec {
            tv_sec: 32_503_680_000, // year 3000
            tv_nsec: 0,
        };
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        timerfd_settime(
            fd,
            TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
            &Itimerspec {
                it_interval: zero,
                it_value: far,
            },
        )
        .map(|_| ())
    };
    arm(&fd)?;
    // `AsyncFd::new` is deprecated for types whose descriptor may be closed behind tokio's
    // back; an `OwnedFd` moved in here cannot be, and `register` would need `unsafe`.
    #[allow(deprecated)]
    let fd = AsyncFd::new(fd)?;
    tasks.spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let mut buffer = [0u8; 8];
            match guard.try_io(|inner| {
                rustix::io::read(inner.get_ref(), &mut buffer).map_err(std::io::Error::from)
            }) {
                Err(_would_block) => continue,
                Ok(Ok(_)) => {}
                Ok(Err(error))
                    if error.raw_os_error() == Some(rustix::io::Errno::CANCELED.raw_os_error()) =>
                {
                    if events.send(Event::ClockChanged).is_err() {
                        return;
                    }
                }
                Ok(Err(error)) => {
                    warn!(%error, "clock watch failed; clock steps will be noticed late");
                    return;
                }
            }
            if let Err(error) = arm(fd.get_ref()) {
                warn!(%error, "cannot re-arm the clock watch");
                return;
            }
        }
    });
    Ok(())
}
