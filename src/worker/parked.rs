//! A daemon client between attempts ([`Parked`]) and the tasks the supervisor runs for it: an
//! attempt, then the wait for its files' sync round. It holds no timer: the supervisor wakes it.

use std::time::SystemTime;

use tracing::{Instrument, debug, error};

use super::{
    Attempted, Mode, Nudges, Progress, Queued, Restore, RestoreSlot, Restoring, Start, Syncing,
    Worker,
};
use crate::config::ClientName;

/// A daemon client between attempts, as the supervisor keeps it while no task runs for it:
/// its settings, session and progress, and no future. A sleeping task per client was most of
/// the memory with many clients (1.4 KB each, BENCHMARKS.md); the supervisor keeps every
/// parked client's wake-up time in one ordered map instead and spawns a task when it is due.
pub(crate) struct Parked {
    /// Tells this worker's reports from those of one it replaced.
    id: u64,
    worker: Worker,
    /// `pub(super)` for the worker's unit tests, which set up a client due at its expiry.
    pub(super) progress: Progress,
}

impl Worker {
    /// A daemon client as worker `id`, parked and due at once: its first task restores the
    /// saved token if `start` allows and it is still good, else makes its first attempt. No
    /// task yet: 10,000 clients starting at once are 10,000 boxes, and their tasks are
    /// spawned as there is room (see [`WorkerContext::enough_queued`]).
    pub(crate) fn park(self, id: u64, start: Start, nudged: Nudges) -> Box<Parked> {
        let mut progress = Progress::new(self.context.clock.now(), nudged);
        progress.restore = start == Start::ReuseSaved;
        Box::new(Parked {
            id,
            progress,
            worker: self,
        })
    }
}

impl Parked {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn name(&self) -> &ClientName {
        &self.worker.spec.name
    }

    /// When the supervisor must look at this client again: its next attempt, or its token's
    /// expiry if that comes first (to report it).
    pub(crate) fn wake_at(&self) -> SystemTime {
        self.progress.wake_at(self.worker.context.clock.now())
    }

    /// When its token expires, unless that has been reported: a due client held back in its
    /// place is looked at again then (see `Supervisor::wake_due`).
    pub(crate) fn unreported_expiry(&self) -> Option<SystemTime> {
        self.progress.unreported_expiry()
    }

    /// At its wake-up time (or after a nudge): whether an attempt is due now. A token on disk
    /// that has just expired is reported first (and its files removed if so configured), even
    /// when the attempt is due too: a retry is often due at the expiry, and may hang.
    pub(crate) fn due(&mut self) -> bool {
        let now = self.worker.context.clock.now();
        if let Some(token) = self.progress.newly_expired(now) {
            self.worker.span().in_scope(|| self.worker.expire(token));
        }
        now >= self.progress.due
    }

    /// What the supervisor told every client (`nudges`, counts so far) since this one last
    /// looked, and whether a token file it reads changed: a refresh-now brings the attempt
    /// forward, a clock change re-checks the deadlines, a token file retries a failure.
    pub(crate) fn nudge(&mut self, nudges: Nudges, token_file_changed: bool) {
        let Self {
            worker, progress, ..
        } = self;
        let clock = &worker.context.clock;
        let span = worker.span();
        let _entered = span.enter();
        if nudges.clock_changed != progress.nudged.clock_changed {
            debug!("clock changed; re-checking deadlines");
            progress.clock_changed(clock);
        }
        if nudges.refresh_now != progress.nudged.refresh_now {
            progress.refresh_requested(clock);
        }
        if token_file_changed {
            progress.token_file_changed(clock);
        }
        progress.nudged = nudges;
    }

    /// Whether its first task is to restore its saved token ([`restore`](Self::restore)),
    /// not an attempt.
    pub(crate) fn restores(&self) -> bool {
        self.progress.restore
    }

    /// The first task of a client that may reuse its saved token: if the token has not expired,
    /// its files written and handed over (their sync round is still to wait for; one already
    /// due for refresh is the last good token until a new one comes, and its attempt is due at
    /// once); if not, the client handed back due, for a first attempt that waits its turn like
    /// any other. A
    /// restore sends nothing, so it takes no place in flight nor in the queue for one (a
    /// restart of 10,000 clients is not held back behind a request that hangs); `restoring`
    /// counts it among the restores under way, which are bounded apart.
    pub(crate) async fn restore(mut self: Box<Self>, restoring: RestoreSlot) -> Handed {
        let Self {
            worker, progress, ..
        } = &mut *self;
        progress.restore = false;
        let span = worker.span();
        let restored = worker
            .begin_restore(Restore::Unexpired)
            .instrument(span)
            .await;
        drop(restoring);
        let pending = restored.map(Pending::Restored);
        (self, pending)
    }

    /// The task of a due client: one attempt, up to its files' hand-over (see
    /// [`Worker::try_attempt`]); `queued` counts it as waiting for a place until it has one.
    /// The client stays in its box meanwhile, so the task holds a pointer to it, not a copy.
    /// A written token comes back with its directories' sync still to wait for
    /// ([`synced`](Self::synced), a task much smaller than this one: at start-up thousands
    /// wait for a round at once).
    pub(crate) async fn attempt(mut self: Box<Self>, queued: Queued) -> Handed {
        let Self {
            worker, progress, ..
        } = &mut *self;
        match worker.try_attempt(progress, Some(queued)).await {
            Ok(Attempted::Written(syncing)) => return (self, Some(Pending::Refreshed(syncing))),
            Ok(Attempted::Failed(outcome)) => {
                let span = worker.span();
                span.in_scope(|| worker.conclude(progress, Mode::Daemon, outcome));
            }
            Err(message) => {
                // Wait as long as the longest backoff rather than spin.
                error!(client = %worker.spec.name, %message, "cannot make an attempt");
                let now = worker.context.clock.now();
                progress.due = now
                    .checked_add(worker.context.agent.backoff_max)
                    .unwrap_or(now);
            }
        }
        (self, None)
    }

    /// The rest of an attempt whose token is written (or of a restore): wait for the sync
    /// round, then report and schedule the next refresh, or back off if the sync failed (a
    /// failed restore leaves the first attempt due at once).
    pub(crate) async fn synced(mut self: Box<Self>, pending: Pending) -> Handed {
        let Self {
            worker, progress, ..
        } = &mut *self;
        match pending {
            Pending::Refreshed(syncing) => {
                let outcome = syncing.synced().await;
                let span = worker.span();
                span.in_scope(|| worker.conclude(progress, Mode::Daemon, outcome));
            }
            Pending::Restored(restoring) => {
                let synced = restoring.synced.wait().await;
                let span = worker.span();
                span.in_scope(|| {
                    worker.restored(progress, restoring.token, restoring.next, synced)
                });
            }
        }
        (self, None)
    }
}

/// What a daemon client's task hands back: the client, and the sync round its written token
/// still waits for, if any.
pub(crate) type Handed = (Box<Parked>, Option<Pending>);

/// A token whose files are handed over, waiting for their sync round.
pub(crate) enum Pending {
    Refreshed(Syncing),
    Restored(Restoring),
}
