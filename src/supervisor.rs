//! The event loop: owns every client's worker (parked between attempts, in a task while one
//! runs), wakes each when it is due, applies reloads with [`plan`], and publishes [`Status`].
//! Everything that can make bearerd act arrives here as one `Event`. It never fetches, writes
//! token files or talks to the OS itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::config::{ClientName, Config, ConfigError};
use crate::events::{Event, ReloadCause};
use crate::hooks;
use crate::metrics::{Metrics, RequestResult};
use crate::preflight;
use crate::worker::{
    Handed, Nudges, Origin, Parked, Report, Reporter, Start, Worker, WorkerContext,
};

/// What every observer (readiness, metrics, systemd) knows about the clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Status {
    clients: BTreeMap<ClientName, ClientStatus>,
    /// Bumped on every successful reload.
    generation: u64,
    /// Kept as entries change, so that a summary or a readiness check after each report costs
    /// the same with 100,000 clients as with 10 (scanning every client each time made writing
    /// 60,000 tokens take two minutes).
    tally: Tally,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ClientStatus {
    /// At least one attempt finished (success or failure) since the client started.
    tried: bool,
    expires_at: Option<SystemTime>,
    next_refresh: Option<SystemTime>,
    last_error: Option<String>,
    /// The last attempt sent nothing because a token file was unusable: which and why.
    token_file_problem: Option<String>,
}

/// Counts over every [`ClientStatus`]; each entry is counted out before it changes and back in
/// after ([`Status::update`]).
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    untried: usize,
    failing: usize,
    /// Clients that have had no token yet.
    without_token: usize,
    /// How many tokens expire at each instant.
    expiries: BTreeMap<SystemTime, usize>,
    /// How many clients are next due at each instant.
    next_refreshes: BTreeMap<SystemTime, usize>,
}

impl Tally {
    fn count(&mut self, client: &ClientStatus, sign: Sign) {
        fn step(count: &mut usize, sign: Sign) {
            *count = match sign {
                Sign::In => *count + 1,
                Sign::Out => count.saturating_sub(1),
            };
        }
        fn step_at(counts: &mut BTreeMap<SystemTime, usize>, at: Option<SystemTime>, sign: Sign) {
            let Some(at) = at else { return };
            let count = counts.entry(at).or_default();
            step(count, sign);
            if *count == 0 {
                counts.remove(&at);
            }
        }
        if !client.tried {
            step(&mut self.untried, sign);
        }
        if client.last_error.is_some() {
            step(&mut self.failing, sign);
        }
        if client.expires_at.is_none() {
            step(&mut self.without_token, sign);
        }
        step_at(&mut self.expiries, client.expires_at, sign);
        step_at(&mut self.next_refreshes, client.next_refresh, sign);
    }

    /// Clients whose token has expired by `now` (only those are visited).
    fn expired(&self, now: SystemTime) -> usize {
        self.expiries.range(..=now).map(|(_, count)| count).sum()
    }
}

#[derive(Clone, Copy)]
enum Sign {
    In,
    Out,
}

#[cfg(test)]
thread_local! {
    /// How many times a walk over every client ran on this thread (what the tally avoids).
    static SCANS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Status {
    fn insert(&mut self, name: ClientName) {
        let entry = ClientStatus::default();
        self.tally.count(&entry, Sign::In);
        if let Some(old) = self.clients.insert(name, entry) {
            self.tally.count(&old, Sign::Out);
        }
    }

    fn remove(&mut self, name: &ClientName) {
        if let Some(old) = self.clients.remove(name) {
            self.tally.count(&old, Sign::Out);
        }
    }

    /// Changes one client's entry, if it is still there, keeping the tally.
    fn update(&mut self, name: &ClientName, change: impl FnOnce(&mut ClientStatus)) {
        let Some(entry) = self.clients.get_mut(name) else {
            return;
        };
        self.tally.count(entry, Sign::Out);
        change(entry);
        self.tally.count(entry, Sign::In);
    }

    /// Every client has been tried once.
    fn all_tried(&self) -> bool {
        self.tally.untried == 0
    }

    /// Every client has an unexpired token on disk.
    pub(crate) fn ready(&self, now: SystemTime) -> bool {
        self.tally.without_token == 0
            && self
                .tally
                .expiries
                .first_key_value()
                .is_none_or(|(first, _)| *first > now)
    }

    /// Clients without an unexpired token on disk (a walk over every client: for /readyz when
    /// not [`ready`](Self::ready)).
    pub(crate) fn unready(&self, now: SystemTime) -> Vec<&ClientName> {
        #[cfg(test)]
        SCANS.with(|scans| scans.set(scans.get() + 1));
        self.clients
            .iter()
            .filter(|(_, client)| client.expires_at.is_none_or(|expires_at| expires_at <= now))
            .map(|(name, _)| name)
            .collect()
    }

    /// Why an unready client's last attempt sent nothing, when a token file was the reason.
    pub(crate) fn token_file_problem(&self, client: &ClientName) -> Option<&str> {
        self.clients.get(client)?.token_file_problem.as_deref()
    }

    /// One line for `systemctl status`: "3 clients, 3 fresh, next refresh in 4m".
    pub(crate) fn summary(&self, now: SystemTime) -> String {
        let total = self.clients.len();
        let fresh = total
            .saturating_sub(self.tally.without_token)
            .saturating_sub(self.tally.expired(now));
        let failing = self.tally.failing;
        let mut line = format!("{total} clients, {fresh} fresh");
        if failing > 0 {
            line.push_str(&format!(", {failing} failing"));
        }
        if let Some((next, _)) = self.tally.next_refreshes.first_key_value() {
            let left = next.duration_since(now).unwrap_or(Duration::ZERO);
            line.push_str(&format!(
                ", next refresh in {}",
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ));
        }
        line
    }
}

/// Sleeps until `wake` (the earliest wake-up time of a parked client), or for ever if none.
async fn sleep_until(clock: &Clock, wake: Option<SystemTime>) {
    match wake {
        Some(wake) => clock.sleep_until(wake).await,
        None => std::future::pending().await,
    }
}

/// What a reload does, decided from the old and the new configuration alone.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Untouched: same settings, same worker, same timers.
    keep: Vec<ClientName>,
    stop: Vec<ClientName>,
    /// Each with how it begins: [`Start::ReuseSaved`] when the client is new or only files,
    /// hooks or `[agent]` changed; [`Start::Fetch`] when what its token request sends changed.
    start: Vec<(ClientName, Start)>,
}

/// Decides a reload. A change of `[agent]` restarts every worker, but lets them reuse their
/// saved tokens; a change to what a token request sends (including the secret) refetches.
fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    let agent_changed = old.agent != new.agent;
    for client in &old.clients {
        if new.client(client.name.as_str()).is_none() {
            plan.stop.push(client.name.clone());
        }
    }
    for client in &new.clients {
        match old.client(client.name.as_str()) {
            None => plan.start.push((client.name.clone(), Start::ReuseSaved)),
            Some(previous) if previous == client && !agent_changed => {
                plan.keep.push(client.name.clone());
            }
            Some(previous) => {
                plan.stop.push(client.name.clone());
                let start = if previous.request == client.request {
                    Start::ReuseSaved
                } else {
                    Start::Fetch
                };
                plan.start.push((client.name.clone(), start));
            }
        }
    }
    plan
}

/// Reads and validates configs on a thread of its own, so that a slow load never stalls the
/// event loop, nor the admin endpoint on the same thread. One long-lived thread rather than the
/// blocking pool: loads spread over the pool's threads each left a malloc arena holding a
/// config's worth of memory (the resident set of the `load::` test tripled). The thread ends
/// when the supervisor drops `paths`.
struct Loader {
    paths: std::sync::mpsc::Sender<PathBuf>,
    loaded: mpsc::UnboundedReceiver<Result<Config, ConfigError>>,
}

impl Loader {
    fn start() -> std::io::Result<Self> {
        let (paths, requests) = std::sync::mpsc::channel::<PathBuf>();
        let (results, loaded) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("bearerd-config".to_owned())
            .spawn(move || {
                while let Ok(path) = requests.recv() {
                    if results.send(Config::load(&path)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { paths, loaded })
    }
}

/// One configured client: the worker that serves it (its `id` tells its reports from those of
/// a worker it replaced) and whether a task runs for it now.
struct Slot {
    id: u64,
    state: SlotState,
}

enum SlotState {
    /// A task restores, fetches, writes or waits for the sync round; it hands the client back
    /// parked. A token file that changed meanwhile is told to it then.
    Busy {
        abort: AbortHandle,
        token_file_changed: bool,
    },
    /// Started, waiting in [`Supervisor::restores`] for its turn to restore its saved token.
    /// A refresh-now or a clock change meanwhile is told to it once it is parked (they are
    /// counts); a token file that changed is not (it only retries a failure, and this client
    /// has not failed yet).
    WaitingToRestore { parked: Box<Parked> },
    /// Between attempts, with no task: `wake` is its key in [`Supervisor::wakes`], `expiry`
    /// its key in [`Supervisor::expiries`] if it is there.
    Parked {
        parked: Box<Parked>,
        wake: SystemTime,
        expiry: Option<SystemTime>,
    },
}

/// Something the supervisor tells the outside world about (systemd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Reloading,
    Stopping,
}

/// The daemon's core. `events` carries signals, file changes and clock steps (or a test's
/// stand-ins); returns after `Event::Shutdown` or when `events` closes, with no task left.
pub(crate) struct Supervisor {
    config: Config,
    context: Arc<WorkerContext>,
    workers: HashMap<ClientName, Slot>,
    /// Every parked client by wake-up time (and worker id, as two may share a time): one ordered
    /// map and one timer for all, rather than a sleeping task each.
    wakes: BTreeMap<(SystemTime, u64), ClientName>,
    /// While due clients are held back: the wake-up times up to this one have been looked at
    /// (expiries reported), and the due clients among them wait their turn.
    checked: SystemTime,
    /// Due clients held back in their place, by their token's expiry, while it is still to be
    /// reported: the wakes do not look at them again once they have been looked at, and a
    /// queue behind requests that hang can outlast a token.
    expiries: BTreeMap<(SystemTime, u64), ClientName>,
    /// Clients waiting to restore their saved token, in the order they started (a stopped or
    /// replaced one is skipped when its turn comes): a restore sends nothing and takes no place
    /// in flight, but only `worker::context::RESTORES_AT_ONCE` run at once.
    restores: VecDeque<(u64, ClientName)>,
    /// Per client, kept while the client is configured: its worker may be replaced while an
    /// `on_refresh` action runs.
    hooks: HashMap<ClientName, hooks::Gate>,
    /// The tasks of busy clients, each ending with its client parked again.
    tasks: JoinSet<Handed>,
    /// Refresh-now and clock changes so far: told to parked clients at once, to busy ones when
    /// they are parked.
    nudges: Nudges,
    reports_tx: mpsc::UnboundedSender<(u64, Report)>,
    reports: mpsc::UnboundedReceiver<(u64, Report)>,
    next_worker: u64,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    notices: mpsc::UnboundedSender<Notice>,
    /// Started at the first reload.
    loader: Option<Loader>,
    /// The loader is reading and validating the config.
    loading: bool,
    /// A reload was asked for while `loading`: load once more after it, so the last change wins.
    reload_again: bool,
    /// Files to watch changed after a reload; read by the caller.
    pub(crate) watched_files: watch::Sender<Vec<PathBuf>>,
}

impl Supervisor {
    pub(crate) fn new(
        config: Config,
        clock: Clock,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let context = WorkerContext::new(config.agent.clone(), clock);
        let (watched_files, _) = watch::channel(config.watched_files());
        Self {
            context,
            workers: HashMap::new(),
            wakes: BTreeMap::new(),
            checked: SystemTime::UNIX_EPOCH,
            expiries: BTreeMap::new(),
            restores: VecDeque::new(),
            hooks: HashMap::new(),
            tasks: JoinSet::new(),
            nudges: Nudges::default(),
            reports_tx,
            reports,
            next_worker: 0,
            status: watch::channel(Status::default()).0,
            metrics: Arc::new(Metrics::default()),
            notices,
            loader: None,
            loading: false,
            reload_again: false,
            watched_files,
            config,
        }
    }

    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        preflight::sweep_stale_temps(&self.config);
        let names: Vec<ClientName> = self.config.clients.iter().map(|c| c.name.clone()).collect();
        // Sized once: grown by doubling, each old table is left as a hole in the heap.
        self.workers.reserve(names.len());
        for name in names {
            self.start(&name, Start::ReuseSaved);
        }
        let mut ready_sent = self.config.clients.is_empty();
        if ready_sent {
            let _ = self.notices.send(Notice::Ready);
        }
        loop {
            let clock = self.context.clock().clone();
            let context = Arc::clone(&self.context);
            let held_back = context.enough_queued();
            let next_wake = self.next_wake(held_back, clock.now());
            tokio::select! {
                event = events.recv() => match event {
                    None | Some(Event::Shutdown) => break,
                    Some(Event::Reload(cause)) => self.reload(cause),
                    Some(Event::FilesChanged(paths)) => self.files_changed(paths),
                    Some(Event::RefreshAll) => {
                        info!("refreshing every client now");
                        self.nudges.refresh_now += 1;
                        self.nudge_parked();
                    }
                    Some(Event::ClockChanged) => {
                        info!("the wall clock changed; re-checking every deadline");
                        self.nudges.clock_changed += 1;
                        self.nudge_parked();
                    }
                },
                Some((worker, report)) = self.reports.recv() => {
                    self.record(worker, report);
                    if !ready_sent && self.status.borrow().all_tried() {
                        ready_sent = true;
                        let _ = self.notices.send(Notice::Ready);
                    }
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match joined {
                        Ok(parked) => self.park(parked),
                        Err(error) if error.is_panic() => error!("a worker panicked: {error}"),
                        Err(_) => {}
                    }
                    self.start_restores();
                }
                () = sleep_until(&clock, next_wake), if next_wake.is_some() => {
                    self.wake_due();
                }
                () = context.placed(), if held_back => self.wake_due(),
                loaded = async {
                    match self.loader.as_mut() {
                        Some(loader) => loader.loaded.recv().await,
                        None => std::future::pending().await,
                    }
                }, if self.loading => {
                    self.loading = false;
                    match loaded {
                        Some(loaded) => self.loaded(loaded),
                        None => {
                            self.loader = None;
                            error!("the configuration loader stopped; keeping the running one");
                            self.reload_done();
                        }
                    }
                }
            }
        }
        let _ = self.notices.send(Notice::Stopping);
        info!("stopping");
        self.tasks.shutdown().await;
        crate::worker::settle_writes().await;
    }

    fn start(&mut self, name: &ClientName, start: Start) {
        let Some(spec) = self.config.client(name.as_str()) else {
            return;
        };
        self.next_worker += 1;
        let id = self.next_worker;
        let reporter = Reporter {
            worker: id,
            sender: self.reports_tx.clone(),
        };
        let mut worker = Worker::new(Arc::clone(spec), Arc::clone(&self.context), Some(reporter));
        if spec.on_refresh.is_some() {
            worker = worker.with_hooks(self.hooks.entry(name.clone()).or_default().clone());
        }
        self.status
            .send_modify(|status| status.insert(name.clone()));
        self.settle(worker.park(id, start, self.nudges));
    }

    /// Runs `task` for a client; it hands the client back.
    fn spawn(&mut self, task: impl Future<Output = Handed> + Send + 'static) -> SlotState {
        SlotState::Busy {
            abort: self.tasks.spawn(task),
            token_file_changed: false,
        }
    }

    /// A task handed its client back: wait for its token's sync round if it has one; then tell
    /// it what it missed and run its next attempt now if it is due, else keep it until it is.
    fn park(&mut self, (mut parked, pending): Handed) {
        let Some(slot) = self
            .workers
            .get_mut(parked.name())
            .filter(|slot| slot.id == parked.id())
        else {
            return; // stopped or replaced meanwhile
        };
        let token_file_changed = matches!(
            slot.state,
            SlotState::Busy {
                token_file_changed: true,
                ..
            }
        );
        if let Some(pending) = pending {
            let abort = self.tasks.spawn(parked.synced(pending));
            slot.state = SlotState::Busy {
                abort,
                token_file_changed,
            };
            return;
        }
        parked.nudge(self.nudges, token_file_changed);
        self.settle(parked);
    }

    /// Keeps a parked client until its wake-up time, or runs its attempt now if it is due and
    /// not enough attempts wait for a place already (then it waits its turn in the wakes,
    /// in the order it fell due).
    fn settle(&mut self, mut parked: Box<Parked>) {
        let (name, id) = (parked.name().clone(), parked.id());
        if parked.restores() {
            // In turn: its restore starts now if there is room and no one before it waits.
            self.restores.push_back((id, name.clone()));
            let state = SlotState::WaitingToRestore { parked };
            self.workers.insert(name, Slot { id, state });
            self.start_restores();
            return;
        }
        let due = parked.due();
        let state = if due && !self.context.enough_queued() {
            let queued = self.context.queue();
            self.spawn(parked.attempt(queued))
        } else {
            let wake = parked.wake_at();
            self.wakes.insert((wake, id), name.clone());
            let expiry = due.then(|| parked.unreported_expiry()).flatten();
            if let Some(expiry) = expiry {
                self.expiries.insert((expiry, id), name.clone());
            }
            SlotState::Parked {
                parked,
                wake,
                expiry,
            }
        };
        self.workers.insert(name, Slot { id, state });
    }

    /// Starts the restores waiting their turn, while fewer than can run at once are under way.
    fn start_restores(&mut self) {
        while !self.context.enough_restoring()
            && let Some((id, name)) = self.restores.pop_front()
        {
            let waiting = self.workers.get(&name).is_some_and(|slot| {
                slot.id == id && matches!(slot.state, SlotState::WaitingToRestore { .. })
            });
            if !waiting {
                continue; // stopped or replaced meanwhile
            }
            let Some(Slot {
                state: SlotState::WaitingToRestore { parked },
                ..
            }) = self.workers.remove(&name)
            else {
                continue;
            };
            let restoring = self.context.restore_slot();
            let state = self.spawn(parked.restore(restoring));
            self.workers.insert(name, Slot { id, state });
        }
    }

    /// The next wake-up time to sleep until: the first, or while due clients are held back
    /// (they wait for `placed`), the first not yet looked at (all after `now` if the clock
    /// stepped back).
    fn next_wake(&self, held_back: bool, now: SystemTime) -> Option<SystemTime> {
        let mut wakes = if held_back {
            let checked = (self.checked.min(now), u64::MAX);
            self.wakes
                .range((Bound::Excluded(checked), Bound::Unbounded))
        } else {
            self.wakes.range(..)
        };
        let wake = wakes.next().map(|((wake, _), _)| *wake);
        let expiry = self.expiries.keys().next().map(|(expiry, _)| *expiry);
        match (wake, expiry) {
            (Some(wake), Some(expiry)) => Some(wake.min(expiry)),
            (wake, expiry) => wake.or(expiry),
        }
    }

    /// Looks at every parked client whose wake-up time has come, while there is room for
    /// their attempts; held back, still at those that have not been looked at (a token that
    /// expires is reported at its time, as when each client had a timer of its own).
    fn wake_due(&mut self) {
        let now = self.context.clock().now();
        self.expire_held_back(now);
        while !self.context.enough_queued()
            && let Some(entry) = self.wakes.first_entry()
            && entry.key().0 <= now
        {
            let ((_, id), name) = entry.remove_entry();
            if let Some(parked) = self.take_parked(&name, id) {
                self.settle(parked);
            }
        }
        if !self.context.enough_queued() {
            return;
        }
        // A step back of the clock: look again from now on.
        let checked = (self.checked.min(now), u64::MAX);
        let come: Vec<(u64, ClientName)> = self
            .wakes
            .range((Bound::Excluded(checked), Bound::Included((now, u64::MAX))))
            .map(|((_, id), name)| (*id, name.clone()))
            .collect();
        self.checked = now;
        for (id, name) in come {
            let Some(Slot {
                state:
                    SlotState::Parked {
                        parked,
                        expiry: kept,
                        ..
                    },
                ..
            }) = self.workers.get_mut(&name).filter(|slot| slot.id == id)
            else {
                continue;
            };
            // A due client keeps its place (its expiry, if to come, is looked at in its
            // time); one that only had an expiry to report wakes later.
            if parked.due() {
                // The token, and so its expiry, does not change while parked.
                if let Some(expiry) = parked.unreported_expiry() {
                    *kept = Some(expiry);
                    self.expiries.insert((expiry, id), name);
                }
            } else if let Some(parked) = self.take_parked(&name, id) {
                self.settle(parked);
            }
        }
    }

    /// Reports the expiries that have come of due clients held back in their place (and
    /// removes their files if so configured); they keep their place.
    fn expire_held_back(&mut self, now: SystemTime) {
        while let Some(entry) = self.expiries.first_entry()
            && entry.key().0 <= now
        {
            let ((_, id), name) = entry.remove_entry();
            if let Some(Slot {
                state: SlotState::Parked { parked, expiry, .. },
                ..
            }) = self.workers.get_mut(&name).filter(|slot| slot.id == id)
            {
                *expiry = None;
                // Reports the expiry; due it was, and due it stays.
                parked.due();
            }
        }
    }

    /// Tells every parked client the nudges (a refresh-now, a clock change) and settles it
    /// again: due now, or at its new wake-up time.
    fn nudge_parked(&mut self) {
        let parked: Vec<(ClientName, u64)> = self
            .workers
            .iter()
            .filter(|(_, slot)| matches!(slot.state, SlotState::Parked { .. }))
            .map(|(name, slot)| (name.clone(), slot.id))
            .collect();
        for (name, id) in parked {
            self.nudge_one(name, id, false);
        }
    }

    /// Tells one client the nudges (and whether a token file it reads changed): at once if
    /// parked, when it is parked if busy.
    fn nudge_one(&mut self, name: ClientName, id: u64, token_file_changed: bool) {
        if let Some(Slot {
            state:
                SlotState::Busy {
                    token_file_changed: pending,
                    ..
                },
            ..
        }) = self.workers.get_mut(&name)
        {
            *pending |= token_file_changed;
            return;
        }
        if let Some(mut parked) = self.take_parked(&name, id) {
            parked.nudge(self.nudges, token_file_changed);
            self.settle(parked);
        }
    }

    /// The parked client `name` (worker `id`), taken out of the workers and the wakes (to be
    /// settled again).
    fn take_parked(&mut self, name: &ClientName, id: u64) -> Option<Box<Parked>> {
        let slot = self.workers.get(name).filter(|slot| slot.id == id)?;
        if !matches!(slot.state, SlotState::Parked { .. }) {
            return None;
        }
        let slot = self.workers.remove(name)?;
        match slot.state {
            SlotState::Parked {
                parked,
                wake,
                expiry,
            } => {
                self.wakes.remove(&(wake, id));
                if let Some(expiry) = expiry {
                    self.expiries.remove(&(expiry, id));
                }
                Some(parked)
            }
            SlotState::Busy { .. } | SlotState::WaitingToRestore { .. } => None,
        }
    }

    fn stop(&mut self, name: &ClientName) {
        if let Some(slot) = self.workers.remove(name) {
            match slot.state {
                SlotState::Busy { abort, .. } => abort.abort(),
                // Skipped when its turn comes.
                SlotState::WaitingToRestore { .. } => {}
                SlotState::Parked { wake, expiry, .. } => {
                    self.wakes.remove(&(wake, slot.id));
                    if let Some(expiry) = expiry {
                        self.expiries.remove(&(expiry, slot.id));
                    }
                }
            }
        }
        if self.config.client(name.as_str()).is_none() {
            self.hooks.remove(name);
        }
        self.metrics.forget(name);
        self.status.send_modify(|status| status.remove(name));
    }

    /// Watched files changed: a token file retries the clients that read it and are waiting
    /// on a failure (it is read at every request, so the config is unchanged); any other file
    /// reloads.
    fn files_changed(&mut self, paths: Vec<PathBuf>) {
        let token_files = self.config.token_files();
        let (token_paths, others): (Vec<PathBuf>, Vec<PathBuf>) = paths
            .into_iter()
            .partition(|path| token_files.binary_search(path).is_ok());
        let mut nudge = Vec::new();
        for path in &token_paths {
            for client in &self.config.clients {
                let reads = client
                    .request
                    .token_files()
                    .iter()
                    .any(|(_, file)| *file == path.as_path());
                if reads && let Some(slot) = self.workers.get(&client.name) {
                    debug!(client = %client.name, path = %path.display(), "token file changed");
                    nudge.push((client.name.clone(), slot.id));
                }
            }
        }
        for (name, id) in nudge {
            self.nudge_one(name, id, true);
        }
        if let Some(first) = others.into_iter().next() {
            self.reload(ReloadCause::FileChanged(first));
        }
    }

    fn reload(&mut self, cause: ReloadCause) {
        match &cause {
            ReloadCause::Signal => info!("reloading (SIGHUP)"),
            ReloadCause::FileChanged(path) => {
                info!(path = %path.display(), "reloading (file changed)")
            }
        }
        if self.loading {
            self.reload_again = true;
            return;
        }
        let _ = self.notices.send(Notice::Reloading);
        self.load();
    }

    /// Hands the config's path to the loader (started if need be); its answer arrives in `run`.
    fn load(&mut self) {
        if self.loader.is_none() {
            match Loader::start() {
                Ok(loader) => self.loader = Some(loader),
                Err(error) => {
                    error!(
                        "cannot start a thread to load the configuration, keeping the running one: {error}"
                    );
                    self.reload_done();
                    return;
                }
            }
        }
        let path = self.config.path.clone();
        if self
            .loader
            .as_ref()
            .is_some_and(|loader| loader.paths.send(path).is_ok())
        {
            self.loading = true;
        } else {
            self.loader = None;
            error!("the configuration loader stopped; keeping the running one");
            self.reload_done();
        }
    }

    /// Loads again if a reload was asked for meanwhile, else tells systemd the reload is over.
    fn reload_done(&mut self) {
        if std::mem::take(&mut self.reload_again) {
            self.load();
        } else {
            let _ = self.notices.send(Notice::Ready);
        }
    }

    /// Applies a loaded config, or reports why it is refused.
    fn loaded(&mut self, loaded: Result<Config, ConfigError>) {
        match loaded {
            Err(error) => {
                self.metrics.config_reloaded(false);
                for line in error.to_string().lines() {
                    error!("invalid configuration, keeping the running one: {line}");
                }
            }
            Ok(new) => {
                self.metrics.config_reloaded(true);
                let plan = plan(&self.config, &new);
                if self.config.agent.listen != new.agent.listen {
                    warn!("a change of [agent] listen takes effect at the next restart");
                }
                if self.config.agent != new.agent {
                    self.context = self.context.renewed(new.agent.clone());
                } else {
                    // Certificates, keys and CA files may have changed in place.
                    self.context.http.forget();
                }
                self.config = new;
                for name in &plan.stop {
                    self.stop(name);
                }
                self.workers.reserve(plan.start.len());
                for (name, start) in &plan.start {
                    self.start(name, *start);
                }
                info!(
                    kept = plan.keep.len(),
                    started = plan.start.len(),
                    stopped = plan.stop.len(),
                    "configuration reloaded"
                );
                self.status.send_modify(|status| status.generation += 1);
                self.watched_files.send_replace(self.config.watched_files());
            }
        }
        self.reload_done();
    }

    fn record(&mut self, worker: u64, report: Report) {
        let client = match &report {
            Report::Fresh { client, .. }
            | Report::Failed { client, .. }
            | Report::Expired { client } => client.clone(),
        };
        if self
            .workers
            .get(&client)
            .is_none_or(|running| running.id != worker)
        {
            return; // a late report from a worker that was just stopped or replaced
        }
        let reads_token_files = self
            .config
            .client(client.as_str())
            .is_some_and(|spec| !spec.request.token_files().is_empty());
        match &report {
            Report::Fresh { .. } if reads_token_files => {
                self.metrics.token_files_checked(&client, true);
            }
            Report::Failed { token_file, .. } if reads_token_files => {
                self.metrics.token_files_checked(&client, !token_file);
            }
            _ => {}
        }
        match &report {
            Report::Fresh {
                expires_at, origin, ..
            } => {
                self.metrics.token_written(&client, *expires_at);
                if let Origin::Fetched { latency } = origin {
                    self.metrics
                        .request_finished(&client, RequestResult::Success, *latency);
                }
            }
            Report::Failed { at, latency, .. } => {
                self.metrics.request_failed_at(&client, *at);
                self.metrics
                    .request_finished(&client, RequestResult::Failure, *latency);
            }
            Report::Expired { .. } => {}
        }
        self.status.send_modify(|status| {
            status.update(&client, |entry| {
                entry.tried = true;
                match report {
                    Report::Fresh {
                        expires_at,
                        next_refresh,
                        ..
                    } => {
                        entry.expires_at = Some(expires_at);
                        entry.next_refresh = Some(next_refresh);
                        entry.last_error = None;
                        entry.token_file_problem = None;
                    }
                    Report::Failed {
                        message,
                        retry_at,
                        token_file,
                        ..
                    } => {
                        entry.token_file_problem = token_file.then(|| message.clone());
                        entry.last_error = Some(message);
                        entry.next_refresh = Some(retry_at);
                    }
                    Report::Expired { .. } => {
                        warn!(client = %client, "token expired");
                    }
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            std::path::Path::new("/etc/bearerd/bearerd.toml"),
            text,
            &|_| Err(std::env::VarError::NotPresent),
        )
        .expect("valid config")
    }

    fn client(name: &str, extra: &str) -> String {
        format!(
            "[clients.{name}]\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"{name}\"\n\
             client_secret = \"s\"\n{extra}\n[[clients.{name}.output]]\npath = \"/run/{name}.token\"\n"
        )
    }

    fn names(list: &[ClientName]) -> Vec<&str> {
        list.iter().map(ClientName::as_str).collect()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    /// The daemon's kind of runtime: one thread, with timers and I/O.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn names_of(count: usize) -> Vec<ClientName> {
        (0..count)
            .map(|index| ClientName::parse(&format!("c{index}")).expect("name"))
            .collect()
    }

    /// Writing every token costs the same status work per report with any number of clients:
    /// after each of 1,000 reports, the summary, the readiness check and the supervisor's
    /// "all tried" walk no list of clients (a walk each made start-up quadratic).
    #[test]
    fn the_summary_after_each_report_walks_no_list_of_clients() {
        let names = names_of(1000);
        let mut status = Status::default();
        for name in &names {
            status.insert(name.clone());
        }
        assert!(!status.ready(at(0)) && !status.all_tried());
        SCANS.with(|scans| scans.set(0));
        for (index, name) in names.iter().enumerate() {
            status.update(name, |entry| {
                entry.tried = true;
                entry.expires_at = Some(at(3600));
                entry.next_refresh = Some(at(2880 + index as u64));
            });
            let _ = status.summary(at(0));
            let _ = status.ready(at(0));
            let _ = status.all_tried();
        }
        assert_eq!(SCANS.with(std::cell::Cell::get), 0);
        assert_eq!(
            status.summary(at(0)),
            "1000 clients, 1000 fresh, next refresh in 48m"
        );
        assert!(status.ready(at(0)) && status.all_tried());
        assert!(!status.ready(at(3600)));
        assert_eq!(
            status.summary(at(3600)),
            "1000 clients, 0 fresh, next refresh in 0s"
        );
    }

    /// The tally says what a walk over every client says, through inserts, failures,
    /// expiries, recoveries and removals.
    #[test]
    fn the_tally_agrees_with_the_clients() {
        fn walked(status: &Status, now: SystemTime) -> (usize, usize, bool, Option<SystemTime>) {
            let clients = status.clients.values();
            let fresh = clients
                .clone()
                .filter(|c| c.expires_at.is_some_and(|e| e > now))
                .count();
            let failing = clients.clone().filter(|c| c.last_error.is_some()).count();
            let tried = clients.clone().all(|c| c.tried);
            (
                fresh,
                failing,
                tried,
                clients.filter_map(|c| c.next_refresh).min(),
            )
        }
        let names = names_of(40);
        let mut status = Status::default();
        for (round, name) in names.iter().cycle().take(400).enumerate() {
            let step = round as u64;
            match round % 7 {
                0 | 3 => status.insert(name.clone()),
                1 => status.update(name, |entry| {
                    entry.tried = true;
                    entry.last_error = Some("refused".to_owned());
                    entry.next_refresh = Some(at(step % 13));
                }),
                2 | 5 => status.update(name, |entry| {
                    entry.tried = true;
                    entry.last_error = None;
                    entry.expires_at = Some(at(step % 11));
                    entry.next_refresh = Some(at(step % 17));
                }),
                4 => status.remove(name),
                _ => {}
            }
            for now in [at(0), at(5), at(20)] {
                let (fresh, failing, tried, next) = walked(&status, now);
                let mut expected = format!("{} clients, {fresh} fresh", status.clients.len());
                if failing > 0 {
                    expected.push_str(&format!(", {failing} failing"));
                }
                if let Some(next) = next {
                    let left = next.duration_since(now).unwrap_or(Duration::ZERO);
                    expected.push_str(&format!(
                        ", next refresh in {}",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    ));
                }
                assert_eq!(status.summary(now), expected, "round {round}");
                assert_eq!(status.ready(now), status.unready(now).is_empty());
                assert_eq!(status.all_tried(), tried);
            }
        }
    }

    /// Due clients beyond what can wait for a place in flight stay parked, a box each and no
    /// task: 30 clients due at once with two places hold two attempts in flight (their
    /// requests hang) and two queued, not 30 tasks; the rest wait their turn in the wakes.
    #[test]
    fn due_clients_wait_parked_until_there_is_room_for_their_attempt() {
        // Never accepts: a connection completes in the backlog and its request hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let address = listener.local_addr().expect("address");
        let outputs = tempfile::tempdir().expect("tempdir");
        let mut text = "[agent]\nmax_concurrent_requests = 2\nhttp_timeout = \"1h\"\n".to_owned();
        for index in 0..30 {
            text.push_str(&format!(
                "[clients.c{index}]\ntoken_url = \"http://{address}/token\"\n\
                 allow_insecure_http = true\nclient_id = \"c{index}\"\nclient_secret = \"s\"\n\
                 [[clients.c{index}.output]]\npath = \"{}/c{index}.token\"\n",
                outputs.path().display()
            ));
        }
        runtime().block_on(async {
            let (notices, _notices) = mpsc::unbounded_channel();
            let mut supervisor = Supervisor::new(config(&text), Clock::system(), notices);
            // Each first looks for a saved token (a restore takes no place), finds none and is
            // due at once: two attempts, 28 parked. The attempts hang; the restores end.
            for name in names_of(30) {
                supervisor.start(&name, Start::ReuseSaved);
            }
            assert_eq!(supervisor.tasks.len(), 30, "every restore runs at once");
            for _ in 0..30 {
                let handed = supervisor.tasks.join_next().await.expect("a restore");
                supervisor.park(handed.expect("handed back"));
            }
            assert_eq!(supervisor.tasks.len(), 2);
            assert_eq!(supervisor.wakes.len(), 28);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while supervisor.tasks.len() < 4 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} attempts spawned, {} parked",
                    supervisor.tasks.len(),
                    supervisor.wakes.len()
                );
                tokio::task::yield_now().await;
                supervisor.wake_due();
            }
            // However long they wait, no more are spawned.
            for _ in 0..100 {
                tokio::task::yield_now().await;
                supervisor.wake_due();
            }
            assert_eq!(supervisor.tasks.len(), 4, "two in flight, two queued");
            assert_eq!(supervisor.wakes.len(), 26, "the rest parked");
            assert!(supervisor.context.enough_queued());
        });
        drop(listener);
    }

    /// A server that never answers: a connection completes in the backlog and its request
    /// hangs (for the test's hour-long `http_timeout`).
    fn hung_server() -> (std::net::TcpListener, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let address = listener.local_addr().expect("address");
        (listener, address)
    }

    /// A config of one place in flight, hour-long timeouts, state in `dir/state` and, per
    /// client (name, token endpoint, extra keys), a token file `dir/NAME.token`.
    fn held_back_config(
        dir: &std::path::Path,
        agent: &str,
        clients: &[(&str, std::net::SocketAddr, &str)],
    ) -> Config {
        let dir = dir.display();
        let mut text = format!(
            "[agent]\nmax_concurrent_requests = 1\nhttp_timeout = \"1h\"\n{agent}\
             state_dir = \"{dir}/state\"\n"
        );
        for (name, address, extra) in clients {
            text.push_str(&format!(
                "[clients.{name}]\ntoken_url = \"http://{address}/token\"\n\
                 allow_insecure_http = true\nclient_id = \"{name}\"\nclient_secret = \"s\"\n\
                 {extra}[[clients.{name}.output]]\npath = \"{dir}/{name}.token\"\n"
            ));
        }
        config(&text)
    }

    /// Saves `name`'s state: a token `value`, issued now, good for an hour.
    fn save_token(config: &Config, name: &str, value: &str) {
        let spec = Arc::clone(config.client(name).expect("client"));
        let issued_at = SystemTime::now();
        let token =
            crate::token::sample_between(value, issued_at, issued_at + Duration::from_secs(3600));
        crate::state::save(&crate::state::path(&config.agent, &spec), &spec, &token)
            .expect("state saved");
    }

    fn is_parked(supervisor: &Supervisor, name: &ClientName) -> bool {
        supervisor
            .workers
            .get(name)
            .is_some_and(|slot| matches!(slot.state, SlotState::Parked { .. }))
    }

    /// Whether, among the reports so far (all taken), `name`'s token was reported expired.
    fn reported_expired(supervisor: &mut Supervisor, name: &ClientName) -> bool {
        let mut expired = false;
        while let Ok((_, report)) = supervisor.reports.try_recv() {
            expired |= matches!(report, Report::Expired { client } if client == *name);
        }
        expired
    }

    /// Hands back the tasks that end until `name` is parked.
    async fn until_parked(supervisor: &mut Supervisor, name: &ClientName) {
        while !is_parked(supervisor, name) {
            let handed = supervisor.tasks.join_next().await.expect("a task");
            supervisor.park(handed.expect("handed back"));
        }
    }

    /// Starts `b` and `c` (whose server hangs) so that due clients are held back: b's request
    /// hangs in the one place in flight, c waits for it.
    async fn hold_back(supervisor: &mut Supervisor) {
        supervisor.start(&ClientName::parse("b").expect("name"), Start::Fetch);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while supervisor.context.enough_queued() {
            assert!(
                std::time::Instant::now() < deadline,
                "b never took its place"
            );
            tokio::task::yield_now().await;
        }
        supervisor.start(&ClientName::parse("c").expect("name"), Start::Fetch);
        assert!(supervisor.context.enough_queued());
    }

    /// A restore sends nothing, so it is not held back behind requests that hang: with the
    /// one place in flight and the queue taken, 100 clients with saved tokens are all restored
    /// (their files written, each reported fresh), at most `RESTORES_AT_ONCE` at a time and
    /// in the order they started.
    #[test]
    fn restores_are_not_held_back_behind_requests_that_hang() {
        use crate::worker::RESTORES_AT_ONCE;
        let (listener, hung) = hung_server();
        let directory = tempfile::tempdir().expect("tempdir");
        let saved = names_of(100);
        let mut clients: Vec<(&str, std::net::SocketAddr, &str)> =
            saved.iter().map(|name| (name.as_str(), hung, "")).collect();
        clients.extend([("b", hung, ""), ("c", hung, "")]);
        let config = held_back_config(directory.path(), "", &clients);
        for name in &saved {
            save_token(&config, name.as_str(), &format!("token-{name}"));
        }
        runtime().block_on(async {
            let (notices, _notices) = mpsc::unbounded_channel();
            let mut supervisor = Supervisor::new(config, Clock::system(), notices);
            hold_back(&mut supervisor).await;
            for name in &saved {
                supervisor.start(name, Start::ReuseSaved);
            }
            assert_eq!(supervisor.tasks.len(), 2 + RESTORES_AT_ONCE);
            let waiting: Vec<&ClientName> =
                supervisor.restores.iter().map(|(_, name)| name).collect();
            let last_started: Vec<&ClientName> = saved[RESTORES_AT_ONCE..].iter().collect();
            assert_eq!(
                waiting, last_started,
                "the rest wait in the order they started"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut fresh = Vec::new();
            while fresh.len() < saved.len() {
                let joined = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(deadline),
                    supervisor.tasks.join_next(),
                )
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of 100 restored; the rest wait behind b and c",
                        fresh.len()
                    )
                });
                supervisor.park(joined.expect("a task").expect("handed back"));
                supervisor.start_restores();
                assert!(supervisor.context.restoring_now() <= RESTORES_AT_ONCE);
                while let Ok((_, report)) = supervisor.reports.try_recv() {
                    if let Report::Fresh {
                        client,
                        origin: Origin::Saved,
                        ..
                    } = report
                    {
                        fresh.push(client);
                    }
                }
            }
            let (mut restored, mut started) = (fresh.clone(), saved.clone());
            restored.sort();
            started.sort();
            assert_eq!(restored, started, "each restored once");
            for name in &saved {
                let file = directory.path().join(format!("{name}.token"));
                assert_eq!(
                    std::fs::read_to_string(&file).expect("token file"),
                    format!("token-{name}")
                );
            }
            // The tasks that ended are handed back; b's and c's still hang.
            while supervisor.tasks.len() > 2 {
                let joined = supervisor.tasks.join_next().await.expect("a task");
                supervisor.park(joined.expect("handed back"));
            }
            assert!(supervisor.restores.is_empty());
            assert_eq!(supervisor.context.restoring_now(), 0);
        });
        drop(listener);
    }

    /// While due clients are held back (the places in flight and the queue are taken by
    /// requests that hang), a parked client's token that expires is still reported at its
    /// time and, with `on_expiry = "remove"`, its files removed, as when each client had a
    /// timer of its own: the wake-up times that pass while held back are looked at.
    #[test]
    fn an_expiry_is_reported_while_due_clients_are_held_back() {
        let (listener, hung) = hung_server();
        // Nothing listens there once it is dropped: a request is refused at once.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|closed| closed.local_addr())
            .expect("address");
        let directory = tempfile::tempdir().expect("tempdir");
        let config = held_back_config(
            directory.path(),
            "backoff_min = \"1h\"\nbackoff_max = \"1h\"\n",
            &[
                ("x", refused, "on_expiry = \"remove\"\n"),
                ("b", hung, ""),
                ("c", hung, ""),
            ],
        );
        save_token(&config, "x", "abc.def");
        let x = ClientName::parse("x").expect("name");
        let x_token = directory.path().join("x.token");
        let clock = Clock::system();
        runtime().block_on(async {
            let (notices, _notices) = mpsc::unbounded_channel();
            let mut supervisor = Supervisor::new(config, clock.clone(), notices);
            // x restores its saved token and is parked until its refresh.
            supervisor.start(&x, Start::ReuseSaved);
            until_parked(&mut supervisor, &x).await;
            assert!(x_token.exists(), "the saved token is restored");
            // Its refresh, near the token's end, is refused: the retry, an hour later, comes
            // after the expiry, so x wakes at the expiry only to report it.
            clock.jump(Duration::from_secs(59 * 60));
            supervisor.wake_due();
            until_parked(&mut supervisor, &x).await;
            hold_back(&mut supervisor).await;
            while supervisor.reports.try_recv().is_ok() {}
            // The token expires.
            clock.jump(Duration::from_secs(2 * 60));
            supervisor.wake_due();
            assert!(!x_token.exists(), "the expired token's file is removed");
            assert!(
                reported_expired(&mut supervisor, &x),
                "x's expiry is reported"
            );
            assert!(
                supervisor
                    .next_wake(true, clock.now())
                    .is_some_and(|wake| wake > clock.now()),
                "the timer waits for the next wake-up, not for ever nor at once"
            );
        });
        drop(listener);
    }

    /// A daemon restarted after a saved token's refresh point but before its expiry, with the
    /// server refusing: the token is put back on disk (a reboot emptied the directory) as the
    /// last good one, its refresh is attempted at once, and at its expiry it is reported and,
    /// with `on_expiry = "remove"`, its file removed.
    #[test]
    fn a_saved_token_already_due_is_put_back_until_it_expires() {
        // Nothing listens there once it is dropped: a request is refused at once.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|closed| closed.local_addr())
            .expect("address");
        let directory = tempfile::tempdir().expect("tempdir");
        let config = held_back_config(
            directory.path(),
            "backoff_min = \"1h\"\nbackoff_max = \"1h\"\n",
            &[("x", refused, "on_expiry = \"remove\"\n")],
        );
        save_token(&config, "x", "abc.def");
        let x = ClientName::parse("x").expect("name");
        let x_token = directory.path().join("x.token");
        let clock = Clock::system();
        // The restart comes after the refresh point (0.8 of the hour), before the expiry.
        clock.jump(Duration::from_secs(59 * 60));
        runtime().block_on(async {
            let (notices, _notices) = mpsc::unbounded_channel();
            let mut supervisor = Supervisor::new(config, clock.clone(), notices);
            supervisor.start(&x, Start::ReuseSaved);
            // Restored, then its attempt is refused: the retry comes after the expiry.
            let mut reports = Vec::new();
            while reports.len() < 2 {
                let handed = supervisor.tasks.join_next().await.expect("a task");
                supervisor.park(handed.expect("handed back"));
                while let Ok((_, report)) = supervisor.reports.try_recv() {
                    reports.push(report);
                }
            }
            assert!(
                matches!(
                    &reports[0],
                    Report::Fresh {
                        origin: Origin::Saved,
                        ..
                    }
                ),
                "the saved token is reused: {reports:?}"
            );
            assert!(
                matches!(&reports[1], Report::Failed { .. }),
                "and its refresh attempted at once: {reports:?}"
            );
            assert_eq!(
                std::fs::read_to_string(&x_token).expect("the token file"),
                "abc.def"
            );
            until_parked(&mut supervisor, &x).await;
            clock.jump(Duration::from_secs(2 * 60));
            supervisor.wake_due();
            assert!(
                reported_expired(&mut supervisor, &x),
                "the expiry is reported"
            );
            assert!(!x_token.exists(), "the expired token's file is removed");
        });
    }

    /// A client whose refresh is due but held back in its place (every place in flight and
    /// in the queue taken by requests that hang) still has its token's expiry reported at its
    /// time, and with `on_expiry = "remove"` its files removed; it keeps its place.
    #[test]
    fn the_expiry_of_a_due_client_held_back_is_reported_in_its_time() {
        let (listener, hung) = hung_server();
        let directory = tempfile::tempdir().expect("tempdir");
        let config = held_back_config(
            directory.path(),
            "",
            &[
                ("x", hung, "on_expiry = \"remove\"\n"),
                ("b", hung, ""),
                ("c", hung, ""),
            ],
        );
        save_token(&config, "x", "abc.def");
        let x = ClientName::parse("x").expect("name");
        let x_token = directory.path().join("x.token");
        let clock = Clock::system();
        runtime().block_on(async {
            let (notices, _notices) = mpsc::unbounded_channel();
            let mut supervisor = Supervisor::new(config, clock.clone(), notices);
            // x restores its saved token and is parked until its refresh.
            supervisor.start(&x, Start::ReuseSaved);
            until_parked(&mut supervisor, &x).await;
            assert!(x_token.exists(), "the saved token is restored");
            hold_back(&mut supervisor).await;
            while supervisor.reports.try_recv().is_ok() {}
            // x's refresh falls due: it waits its turn, parked.
            clock.jump(Duration::from_secs(58 * 60));
            supervisor.wake_due();
            assert!(is_parked(&supervisor, &x), "x waits its turn");
            assert!(x_token.exists(), "x's token is still good");
            assert!(
                supervisor
                    .next_wake(true, clock.now())
                    .is_some_and(|wake| wake > clock.now()),
                "the timer waits for x's expiry"
            );
            // The token expires before x's turn comes.
            clock.jump(Duration::from_secs(3 * 60));
            assert!(
                supervisor
                    .next_wake(true, clock.now())
                    .is_some_and(|wake| wake <= clock.now()),
                "x's expiry is due"
            );
            supervisor.wake_due();
            assert!(!x_token.exists(), "the expired token's file is removed");
            assert!(
                reported_expired(&mut supervisor, &x),
                "x's expiry is reported"
            );
            assert!(is_parked(&supervisor, &x), "x keeps its place");
            assert!(
                supervisor.expiries.is_empty(),
                "x's expiry is looked at once"
            );
            assert!(
                supervisor.next_wake(true, clock.now()).is_none(),
                "nothing is left to wake for until a place comes"
            );
        });
        drop(listener);
    }

    #[test]
    fn an_unchanged_config_keeps_every_client() {
        let old = config(&format!("{}{}", client("a", ""), client("b", "")));
        let plan = plan(&old, &old.clone());
        assert_eq!(names(&plan.keep), ["a", "b"]);
        assert!(plan.stop.is_empty() && plan.start.is_empty());
    }

    #[test]
    fn added_removed_and_changed_clients_are_told_apart() {
        let old = config(&format!(
            "{}{}{}",
            client("kept", ""),
            client("gone", ""),
            client("scoped", "")
        ));
        let new = config(&format!(
            "{}{}{}",
            client("kept", ""),
            client("scoped", "scope = \"x\""),
            client("added", "")
        ));
        let plan = plan(&old, &new);
        assert_eq!(names(&plan.keep), ["kept"]);
        assert_eq!(names(&plan.stop), ["gone", "scoped"]);
        let start: Vec<(&str, Start)> = plan
            .start
            .iter()
            .map(|(name, start)| (name.as_str(), *start))
            .collect();
        // A new client may reuse a saved token; a changed request must be fetched again.
        assert_eq!(
            start,
            [("added", Start::ReuseSaved), ("scoped", Start::Fetch)]
        );
    }

    #[test]
    fn a_change_of_outputs_only_restarts_with_the_saved_token() {
        let old = config(&client("a", ""));
        let new =
            config(&client("a", "").replace("path = \"/run/a.token\"", "path = \"/run/a2.token\""));
        let plan = plan(&old, &new);
        assert_eq!(
            plan.start,
            [(ClientName::parse("a").expect("name"), Start::ReuseSaved)]
        );
    }

    #[test]
    fn a_changed_secret_is_fetched_again() {
        let old = config(&client("a", ""));
        let new =
            config(&client("a", "").replace("client_secret = \"s\"", "client_secret = \"t\""));
        assert_eq!(
            plan(&old, &new).start,
            [(ClientName::parse("a").expect("name"), Start::Fetch)]
        );
    }

    #[test]
    fn an_agent_change_restarts_everyone_with_saved_tokens() {
        let old = config(&client("a", ""));
        let new = config(&format!("[agent]\nrefresh_at = 0.5\n{}", client("a", "")));
        let plan = plan(&old, &new);
        assert!(plan.keep.is_empty());
        assert_eq!(names(&plan.stop), ["a"]);
        assert_eq!(
            plan.start,
            [(ClientName::parse("a").expect("name"), Start::ReuseSaved)]
        );
    }
}
