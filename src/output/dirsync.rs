//! Making renames durable in groups: one fsync of a directory covers every rename in it that
//! asked before that fsync began (group commit), on one syncer thread for the process.
//! It must not create, write or rename files (`atomic` does, then asks here).
//!
//! A round waits, before it syncs, while token writes are still coming ([`WriteComing`]: a
//! worker holds one from the moment its refresh is due until its files are renamed) and still
//! arriving (an ask at least every [`QUIET`]), but never longer than [`MAX_WAIT`] after its
//! first ask: so `run --once`, a start, SIGUSR1 or a reload with 1,000 clients in one
//! directory cost a handful of directory syncs, and a lone refresh is synced at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
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

/// The directories in which renames are not yet durable, each once.
#[derive(Debug, Default)]
pub(crate) struct RenamedIn(Vec<PathBuf>);

impl RenamedIn {
    pub(super) fn add(&mut self, dir: &Path) {
        if !self.0.iter().any(|known| known == dir) {
            self.0.push(dir.to_owned());
        }
    }

    /// Asks for the sync of each directory; the next round of the syncer covers them.
    /// If the syncer thread cannot be started, syncs them here and now.
    pub(crate) fn request_sync(self) -> DirSync {
        if self.0.is_empty() {
            return DirSync(Vec::new());
        }
        let syncer = syncer();
        let mut waiting = Vec::with_capacity(self.0.len());
        let mut state = syncer.lock();
        if !state.started {
            state.started = std::thread::Builder::new()
                .name("bearerd-dirsync".to_owned())
                .spawn(move || syncer.serve())
                .is_ok();
        }
        if !state.started {
            drop(state);
            return DirSync(
                self.0
                    .into_iter()
                    .map(|dir| {
                        let (sender, receiver) = oneshot::channel();
                        let _ = sender.send(sync_dir(&dir).map_err(|error| describe(&dir, &error)));
                        (dir, receiver)
                    })
                    .collect(),
            );
        }
        for dir in self.0 {
            let (sender, receiver) = oneshot::channel();
            state.asked.entry(dir.clone()).or_default().push(sender);
            waiting.push((dir, receiver));
        }
        let now = Instant::now();
        state.first_asked.get_or_insert(now);
        state.last_asked = Some(now);
        syncer.wake.notify_all();
        DirSync(waiting)
    }
}

/// The syncs a writer waits for before it reports its token written.
#[derive(Debug)]
pub(crate) struct DirSync(Vec<(PathBuf, oneshot::Receiver<Outcome>)>);

impl DirSync {
    /// Waits until every directory asked for is synced; the errors, joined, if any failed.
    pub(crate) async fn wait(self) -> Result<(), String> {
        let mut errors = Vec::new();
        for (dir, receiver) in self.0 {
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
/// files are renamed and their directories asked for): the syncer's rounds wait for it, up to
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
        assert_eq!(renamed.0.len(), 1);
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
