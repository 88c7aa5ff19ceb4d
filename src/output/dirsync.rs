//! Making token writes durable in groups, on two syncer threads shared by the process: the data
//! syncer makes temporary files durable and then has `atomic` rename them ([`sync_then`]), the
//! directory syncer makes the renames durable ([`RenamedIn`]); each round covers every ask that
//! came before it began (group commit). It must not create, write or rename files itself
//! (`atomic` does: the rename is the [`Finish`] it hands over).
//!
//! A data round takes every temporary file waiting, without waiting for more: more than [`FEW`]
//! on one filesystem are made durable by one `syncfs` (one journal commit, where an fsync each
//! is a commit each), a few by an fsync each, so a lone refresh never flushes the filesystem;
//! only then is each renamed. Writers do not wait for it, so a batch's files pile up behind a
//! round and the next covers them all.
//! A directory round waits, before it syncs, while token writes are still coming
//! ([`WriteComing`]: a worker holds one from the moment its refresh is due until its files are
//! handed over, and the data syncer one per file until it is renamed) and still arriving (an
//! ask at least every [`QUIET`]), but never longer than [`MAX_WAIT`] after its first ask: so
//! `run --once`, a start, SIGUSR1 or a reload with 1,000 clients in one directory cost a
//! handful of directory syncs, and a lone refresh is synced at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A round that waits for writes still coming runs anyway when no ask came for this long
/// (say, the writes coming wait for a slow token endpoint).
const QUIET: Duration = Duration::from_millis(250);

/// The longest a round waits for writes still coming: what a long batch may add to the moment
/// a token is reported written and its `on_refresh` runs.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// The outcome of one directory's sync, as each waiter receives it: an error names the path.
type Outcome = Result<(), String>;

/// fsync of the directory `dir`: makes the renames in it durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all())
}

fn describe(dir: &Path, error: &io::Error) -> String {
    format!("cannot sync directory {}: {error}", dir.display())
}

/// A data round with more temporary files than this on one filesystem syncs that filesystem
/// once; with this many or fewer it fsyncs each of them.
const FEW: usize = 2;

/// What `atomic` does once a temporary file is durable (or could not be made so): rename it
/// into place, or remove it and say why; returns the directory to sync.
pub(super) type Finish = Box<dyn FnOnce(io::Result<()>) -> Result<PathBuf, String> + Send>;

/// A temporary file handed over for its data round, then its rename and its directory's sync.
struct Handed {
    /// The temporary file, closed: a batch of 1,000 must not hold 1,000 descriptors.
    temp: PathBuf,
    finish: Finish,
    reply: oneshot::Sender<Result<DirSync, String>>,
    /// Until its rename is asked a directory sync for, a directory round waits for it.
    _coming: WriteComing,
}

/// Hands `file` (a temporary file, written, not yet renamed) to the data syncer: its next round
/// makes it durable together with every other file waiting, then runs `finish` (the rename) and
/// asks for the directory's sync, which the result covers. If the syncer thread cannot be
/// started, does all that here and now.
pub(super) fn sync_then(temp: PathBuf, finish: Finish, renamed: &mut RenamedIn) {
    let syncer = data_syncer();
    let (reply, receiver) = oneshot::channel();
    renamed.handed.push(receiver);
    let handed = Handed {
        temp,
        finish,
        reply,
        _coming: WriteComing::new(),
    };
    let mut state = lock(&syncer.state);
    if !state.started {
        state.started = std::thread::Builder::new()
            .name("bearerd-datasync".to_owned())
            .spawn(move || syncer.serve())
            .is_ok();
    }
    if !state.started {
        drop(state);
        let synced = fsync_path(&handed.temp);
        finish_one(handed, synced);
        return;
    }
    state.waiting.push(handed);
    syncer.wake.notify_all();
}

/// fsync of the file at `path` (our temporary file, in a directory only we write).
fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path).and_then(|file| file.sync_all())
}

/// Renames the file (or not) and tells the writer what to wait for.
fn finish_one(handed: Handed, synced: io::Result<()>) {
    let Handed {
        temp: _,
        finish,
        reply,
        _coming,
    } = handed;
    let outcome = finish(synced).map(|dir| {
        let mut renamed = RenamedIn::default();
        renamed.add(&dir);
        renamed.request_sync()
    });
    // A writer that went away (its worker was stopped) needs no answer.
    let _ = reply.send(outcome);
}

/// The one data syncer of the process: a filesystem is shared by everything in it.
struct DataSyncer {
    state: Mutex<DataState>,
    wake: Condvar,
}

#[derive(Default)]
struct DataState {
    /// Temporary files handed over since the current round began.
    waiting: Vec<Handed>,
    started: bool,
}

fn data_syncer() -> &'static DataSyncer {
    static SYNCER: OnceLock<DataSyncer> = OnceLock::new();
    SYNCER.get_or_init(|| DataSyncer {
        state: Mutex::new(DataState::default()),
        wake: Condvar::new(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DataSyncer {
    /// The data syncer thread: round after round, take every file waiting, make them durable,
    /// rename them. A round does not wait for more: the files handed over while one runs make
    /// the next.
    fn serve(&self) {
        loop {
            let round = {
                let mut state = lock(&self.state);
                while state.waiting.is_empty() {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                std::mem::take(&mut state.waiting)
            };
            sync_round(round);
        }
    }
}

/// One data round: per filesystem, one `syncfs` for more than [`FEW`] files, else an fsync
/// each; then each file's rename, in the order they were handed over within its filesystem.
fn sync_round(round: Vec<Handed>) {
    let mut by_filesystem: HashMap<_, Vec<Handed>> = HashMap::new();
    for handed in round {
        match std::fs::symlink_metadata(&handed.temp) {
            Ok(metadata) => by_filesystem
                .entry(metadata.dev())
                .or_default()
                .push(handed),
            Err(error) => finish_one(handed, Err(error)),
        }
    }
    for group in by_filesystem.into_values() {
        if group.len() <= FEW {
            for handed in group {
                let synced = fsync_path(&handed.temp);
                finish_one(handed, synced);
            }
            continue;
        }
        let synced = group.first().map_or(Ok(()), |handed| {
            File::open(&handed.temp).and_then(|file| Ok(rustix::fs::syncfs(&file)?))
        });
        for handed in group {
            let synced = match &synced {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            finish_one(handed, synced);
        }
    }
}

/// The directories in which renames are not yet durable, each once, and the temporary files
/// handed to the data syncer, not yet renamed.
#[derive(Debug, Default)]
pub(crate) struct RenamedIn {
    dirs: Vec<PathBuf>,
    handed: Vec<oneshot::Receiver<Result<DirSync, String>>>,
}

impl RenamedIn {
    pub(super) fn add(&mut self, dir: &Path) {
        if !self.dirs.iter().any(|known| known == dir) {
            self.dirs.push(dir.to_owned());
        }
    }

    /// Asks for the sync of each directory; the next round of the syncer covers them. The
    /// files handed over ask for theirs once renamed. If the syncer thread cannot be started,
    /// syncs the directories here and now.
    pub(crate) fn request_sync(self) -> DirSync {
        let handed = self.handed;
        if self.dirs.is_empty() {
            return DirSync {
                handed,
                dirs: Vec::new(),
            };
        }
        let syncer = syncer();
        let mut waiting = Vec::with_capacity(self.dirs.len());
        let mut state = syncer.lock();
        if !state.started {
            state.started = std::thread::Builder::new()
                .name("bearerd-dirsync".to_owned())
                .spawn(move || syncer.serve())
                .is_ok();
        }
        if !state.started {
            drop(state);
            return DirSync {
                handed,
                dirs: self
                    .dirs
                    .into_iter()
                    .map(|dir| {
                        let (sender, receiver) = oneshot::channel();
                        let _ = sender.send(sync_dir(&dir).map_err(|error| describe(&dir, &error)));
                        (dir, receiver)
                    })
                    .collect(),
            };
        }
        for dir in self.dirs {
            let (sender, receiver) = oneshot::channel();
            state.asked.entry(dir.clone()).or_default().push(sender);
            waiting.push((dir, receiver));
        }
        let now = Instant::now();
        state.first_asked.get_or_insert(now);
        state.last_asked = Some(now);
        syncer.wake.notify_all();
        DirSync {
            handed,
            dirs: waiting,
        }
    }
}

/// The syncs a writer waits for before it reports its token written.
#[derive(Debug)]
pub(crate) struct DirSync {
    /// Files handed to the data syncer: each answers, once renamed, with its directory's sync.
    handed: Vec<oneshot::Receiver<Result<DirSync, String>>>,
    dirs: Vec<(PathBuf, oneshot::Receiver<Outcome>)>,
}

impl DirSync {
    /// Waits until every file handed over is renamed and every directory asked for is synced;
    /// the errors, joined, if any failed.
    pub(crate) async fn wait(self) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut dirs = self.dirs;
        for receiver in self.handed {
            match receiver.await {
                Ok(Ok(renamed)) => dirs.extend(renamed.dirs),
                Ok(Err(message)) => errors.push(message),
                Err(_) => errors.push("cannot write a token file: the syncer stopped".to_owned()),
            }
        }
        for (dir, receiver) in dirs {
            match receiver.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => errors.push(message),
                Err(_) => errors.push(format!(
                    "cannot sync directory {}: the syncer stopped",
                    dir.display()
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Held while a token write is on its way (a worker from taking its place in flight until its
/// files are handed over, the data syncer until each is renamed and its directory asked for):
/// the directory syncer's rounds wait for it, up to
/// [`MAX_WAIT`], so that one directory sync covers the whole batch.
#[derive(Debug)]
pub(crate) struct WriteComing(());

impl WriteComing {
    pub(crate) fn new() -> Self {
        syncer().lock().writes_coming += 1;
        Self(())
    }
}

impl Drop for WriteComing {
    fn drop(&mut self) {
        let syncer = syncer();
        let mut state = syncer.lock();
        state.writes_coming = state.writes_coming.saturating_sub(1);
        if state.writes_coming == 0 {
            syncer.wake.notify_all();
        }
    }
}

/// The one syncer of the process: directories are shared by everything in it.
struct Syncer {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Directories asked for since the current round began, with who waits for each.
    asked: HashMap<PathBuf, Vec<oneshot::Sender<Outcome>>>,
    /// When the first and the last of `asked` came.
    first_asked: Option<Instant>,
    last_asked: Option<Instant>,
    writes_coming: usize,
    /// Whether a round is being synced (taken from `asked`, its waiters not yet told).
    syncing: bool,
    started: bool,
}

fn syncer() -> &'static Syncer {
    static SYNCER: OnceLock<Syncer> = OnceLock::new();
    SYNCER.get_or_init(|| Syncer {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    })
}

impl Syncer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The syncer thread: round after round, take what was asked, sync each directory once,
    /// tell every waiter.
    fn serve(&self) {
        loop {
            let round = self.next_round();
            for (dir, waiters) in round {
                let outcome = sync_dir(&dir).map_err(|error| describe(&dir, &error));
                for waiter in waiters {
                    // A waiter that went away (its worker was stopped) needs no answer.
                    let _ = waiter.send(outcome.clone());
                }
            }
            self.lock().syncing = false;
            self.wake.notify_all();
        }
    }

    /// Waits for asks, then until no write is coming, none was asked for [`QUIET`], or
    /// [`MAX_WAIT`] has passed since the first; returns them, and asks from now on go to the
    /// next round.
    fn next_round(&self) -> HashMap<PathBuf, Vec<oneshot::Sender<Outcome>>> {
        let mut state = self.lock();
        loop {
            let (Some(first), Some(last)) = (state.first_asked, state.last_asked) else {
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            let left = MAX_WAIT
                .saturating_sub(first.elapsed())
                .min(QUIET.saturating_sub(last.elapsed()));
            if state.writes_coming == 0 || left.is_zero() {
                state.first_asked = None;
                state.last_asked = None;
                state.syncing = true;
                return std::mem::take(&mut state.asked);
            }
            state = self
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// Waits, up to `bound`, until no token write is on its way: every write begun has handed its
/// temporary files over, each has been renamed (or removed), and every directory asked for
/// has been synced. For a clean exit, once no new write can begin: a process that exits with
/// files still in the data syncer's hands leaves their temporary files behind (swept at the
/// next start, but litter until then) and the token not in place. Returns whether it settled.
pub(crate) fn settle(bound: Duration) -> bool {
    let syncer = syncer();
    let until = Instant::now() + bound;
    let mut state = syncer.lock();
    while state.writes_coming > 0 || !state.asked.is_empty() || state.syncing {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        state = syncer
            .wake
            .wait_timeout(state, left)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_sync_is_reported_per_directory_and_names_the_path_when_it_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut renamed = RenamedIn::default();
        renamed.add(dir.path());
        renamed.add(dir.path());
        assert_eq!(renamed.dirs.len(), 1);
        let missing = dir.path().join("missing");
        renamed.add(&missing);
        let error = block_on(renamed.request_sync().wait()).expect_err("missing directory");
        assert_eq!(
            error,
            format!(
                "cannot sync directory {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        block_on(RenamedIn::default().request_sync().wait()).expect("nothing to sync");
    }

    #[test]
    fn a_round_waits_for_a_write_coming_but_not_past_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let coming = WriteComing::new();
        let mut renamed = RenamedIn::default();
        renamed.add(dir.path());
        // Without the bound this would wait for `coming` forever.
        block_on(renamed.request_sync().wait()).expect("synced");
        drop(coming);
    }
}
