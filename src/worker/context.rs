//! What every worker of one configuration shares ([`WorkerContext`]): agent settings, the
//! clock, the places in flight and among the writers, the request rate, the HTTP clients, and
//! the counts of attempts queued and restores under way that the supervisor holds clients
//! back by. It fetches, writes and decides nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore};

use crate::clock::Clock;
use crate::config::Agent;
use crate::oauth::HttpClients;
use crate::rate::RateLimits;
use crate::schedule::Backoff;

/// What every worker of one configuration uses besides its own client: agent settings, the
/// clock, the bound on requests in flight, the request rate per host, and HTTP clients (one
/// per distinct TLS setting, so connection pools and root stores are shared). A change of
/// `[agent]` makes a new one ([`WorkerContext::renewed`]).
pub(crate) struct WorkerContext {
    pub(super) agent: Agent,
    pub(super) clock: Clock,
    pub(super) permits: Arc<Semaphore>,
    /// As many token writes at once as requests in flight.
    pub(super) writers: Semaphore,
    pub(super) rate: Arc<RateLimits>,
    pub(crate) http: HttpClients,
    /// Attempts spawned that have not yet taken their place in flight ([`Queued`]).
    pub(super) queued: AtomicUsize,
    /// Restores under way ([`RestoreSlot`]).
    pub(super) restoring: AtomicUsize,
    /// Told each time one of them takes its place (or goes away).
    pub(super) placed: Notify,
}

impl WorkerContext {
    pub(crate) fn new(agent: Agent, clock: Clock) -> Arc<Self> {
        let rate = RateLimits::new(agent.max_requests_per_second);
        Self::with_rate(agent, clock, rate)
    }

    /// The context for a changed `[agent]`: new but for the request rate's buckets, kept
    /// while `max_requests_per_second` is unchanged, so that a reload (which restarts every
    /// worker) cannot let a host's next request go early.
    pub(crate) fn renewed(&self, agent: Agent) -> Arc<Self> {
        let rate = if self.rate.per_second() == agent.max_requests_per_second {
            Arc::clone(&self.rate)
        } else {
            RateLimits::new(agent.max_requests_per_second)
        };
        Self::with_rate(agent, self.clock.clone(), rate)
    }

    fn with_rate(agent: Agent, clock: Clock, rate: Arc<RateLimits>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(agent.max_concurrent_requests)),
            writers: Semaphore::new(agent.max_concurrent_requests),
            http: HttpClients::new(agent.http_timeout),
            queued: AtomicUsize::new(0),
            restoring: AtomicUsize::new(0),
            placed: Notify::new(),
            rate,
            agent,
            clock,
        })
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether a daemon should hold back its due clients rather than spawn their attempts:
    /// as many attempts as there are places in flight already wait for one. Their tasks are
    /// the memory of a start or a refresh-now with many clients (10,000 waiting tasks were
    /// 14 MB, and their holes stayed: BENCHMARKS.md); held back, a client is a parked box.
    /// Not with a request rate, where a host's clients queue for its turns and must not keep
    /// another host's waiting behind them.
    pub(crate) fn enough_queued(&self) -> bool {
        self.rate.per_second().is_none()
            && self.queued.load(Ordering::SeqCst) >= self.agent.max_concurrent_requests
    }

    /// Resolves when a queued attempt has taken its place in flight (or gone away), if
    /// [`enough_queued`](Self::enough_queued) said so since.
    pub(crate) async fn placed(&self) {
        self.placed.notified().await;
    }

    /// Counts an attempt about to be spawned as queued, until the guard is dropped.
    pub(crate) fn queue(self: &Arc<Self>) -> Queued {
        self.queued.fetch_add(1, Ordering::SeqCst);
        Queued(Arc::clone(self))
    }

    /// Whether as many restores as may run at once ([`RESTORES_AT_ONCE`]) are under way.
    pub(crate) fn enough_restoring(&self) -> bool {
        self.restoring.load(Ordering::SeqCst) >= RESTORES_AT_ONCE
    }

    /// How many restores are under way.
    #[cfg(test)]
    pub(crate) fn restoring_now(&self) -> usize {
        self.restoring.load(Ordering::SeqCst)
    }

    /// Counts a restore about to be spawned as under way, until the slot is dropped.
    pub(crate) fn restore_slot(self: &Arc<Self>) -> RestoreSlot {
        self.restoring.fetch_add(1, Ordering::SeqCst);
        RestoreSlot(Arc::clone(self))
    }

    pub(super) fn backoff(&self) -> Backoff {
        Backoff {
            min: self.agent.backoff_min,
            max: self.agent.backoff_max,
        }
    }
}

/// How many daemon clients restore their saved tokens at once (at a start, or a reload that
/// starts clients): each reads its state file (on the runtime's thread), compares or writes its
/// token files on a blocking thread, and waits for the sync round of any it rewrites. Enough to keep the blocking threads busy; few
/// enough that their tasks weigh nothing (BENCHMARKS.md, restart).
pub(crate) const RESTORES_AT_ONCE: usize = 64;

/// A restore under way: see [`WorkerContext::restore_slot`].
pub(crate) struct RestoreSlot(Arc<WorkerContext>);

impl Drop for RestoreSlot {
    fn drop(&mut self) {
        self.0.restoring.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An attempt spawned and waiting for its place in flight: see [`WorkerContext::queue`].
pub(crate) struct Queued(Arc<WorkerContext>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
        // One stored wake-up at most: the supervisor looks at its queue again either way.
        self.0.placed.notify_one();
    }
}
