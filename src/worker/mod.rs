//! One client's steps: restore → fetch → write → persist → schedule the next, or back off and
//! retry. Between attempts a daemon's client is [`Parked`] in the supervisor, which wakes it;
//! `run --once` loops here ([`Worker::run`]). This is the only place that retries; it reads
//! no config and watches no OS events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{SemaphorePermit, mpsc, watch};
use tracing::{Instrument, debug, error, info, warn};

use crate::clock::Clock;
use crate::config::{ClientName, ClientSpec, OnExpiry};
use crate::hooks;
use crate::oauth::{FetchError, Session};
use crate::output;
use crate::rate;
use crate::schedule::{self, Failure};
use crate::state;
use crate::token::Token;

mod context;
mod parked;
mod write;
#[cfg(test)]
pub(crate) use context::RESTORES_AT_ONCE;
pub(crate) use context::{Queued, RestoreSlot, WorkerContext};
pub(crate) use parked::{Handed, Parked};
pub(crate) use write::settle_writes;
pub use write::write_outputs;
use write::{hand_over_outputs, remove_outputs, write_and_save};

/// How long an attempt waiting for a place in flight sleeps, at most, before it looks at its
/// token's expiry again (see [`Worker::until_placed`]).
const PLACE_RECHECK: Duration = Duration::from_secs(60);

/// What a worker tells the supervisor.
#[derive(Clone, Debug)]
pub(crate) enum Report {
    /// New files are in place (or were restored from state).
    Fresh {
        client: ClientName,
        expires_at: SystemTime,
        next_refresh: SystemTime,
        origin: Origin,
    },
    Failed {
        client: ClientName,
        message: String,
        at: SystemTime,
        retry_at: SystemTime,
        /// How long the attempt's request took.
        latency: Duration,
        /// Nothing was sent: a token file was unusable (`message` names it and says why).
        token_file: bool,
    },
    /// The token on disk has expired and no new one came.
    Expired { client: ClientName },
}

/// Where the token of a [`Report::Fresh`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The state file: a token saved before a restart, still good (no request was made).
    Saved,
    /// A token request that took `latency`.
    Fetched { latency: Duration },
}

/// Where a worker sends its reports, tagged with the worker's id so that a late report from a
/// stopped worker is not taken for its replacement's.
#[derive(Clone, Debug)]
pub(crate) struct Reporter {
    pub(crate) worker: u64,
    pub(crate) sender: mpsc::UnboundedSender<(u64, Report)>,
}

/// What the supervisor tells every client at once, as counts so far: a client acts on a count
/// that moved since it last looked ([`Parked::nudge`]); several moves while it is busy are one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Nudges {
    /// Refresh-now requests (SIGUSR1).
    pub(crate) refresh_now: u64,
    /// The wall clock stepped or the machine resumed: re-check every deadline.
    pub(crate) clock_changed: u64,
}

/// What a client running in its own task (`run --once`) hears while it waits.
pub(crate) struct Inbox {
    pub(crate) nudges: watch::Receiver<Nudges>,
}

/// A refresh-now request while a request is in flight or less than this after the last one
/// ended waits until this much time has passed, and every request meanwhile joins that one
/// refresh: a burst of SIGUSR1s costs one request a second, not one each.
const REFRESH_NOW_QUIET: Duration = Duration::from_secs(1);

/// How long a worker runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Until the first token is written; transient failures are retried until `deadline`.
    Once { deadline: SystemTime },
    /// Until the task is aborted.
    Daemon,
}

/// How a worker begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Reuse the saved token if it was fetched with the same settings and is not yet due;
    /// otherwise fetch.
    ReuseSaved,
    /// Fetch at once: what the token request sends has changed.
    Fetch,
}

pub(crate) struct Worker {
    spec: Arc<ClientSpec>,
    context: Arc<WorkerContext>,
    session: Session,
    reports: Option<Reporter>,
    /// Only for a client with `on_refresh` (most have none, and 10,000 gates were 1 MB).
    hooks: Option<hooks::Gate>,
}

/// Where one worker's loop stands between its steps.
struct Progress {
    /// The token this worker last wrote (or restored), if any: its expiry is watched.
    current: Option<Token>,
    /// When to fetch next: the refresh deadline, a retry after backoff, or a refresh-now.
    due: SystemTime,
    /// Failures since the last success or refresh-now: how far the backoff has grown.
    attempt: u32,
    /// The last failure's message, so that a failure is logged at `warn` once per change.
    last_error: Option<String>,
    /// `current` expired and that was reported (once, until a new token comes).
    expired_reported: bool,
    /// When the last request ended (nudges sent while it was in flight are read after it).
    last_request: Option<Instant>,
    /// A refresh-now is already waiting for the quiet second to pass.
    refresh_waiting: bool,
    /// The supervisor's nudges already acted on.
    nudged: Nudges,
    /// The last failure carried the server's `Retry-After`: `due` honours it, and a token
    /// file's change does not bring the retry forward.
    server_asked_to_wait: bool,
    /// A daemon client not yet started: its first task tries the saved token first.
    restore: bool,
}

impl Worker {
    pub(crate) fn new(
        spec: Arc<ClientSpec>,
        context: Arc<WorkerContext>,
        reports: Option<Reporter>,
    ) -> Self {
        Self {
            session: Session::new(),
            hooks: spec.on_refresh.is_some().then(hooks::Gate::default),
            spec,
            context,
            reports,
        }
    }

    /// Runs `on_refresh` actions through `gate`, which outlives this worker (one per client).
    pub(crate) fn with_hooks(mut self, gate: hooks::Gate) -> Self {
        self.hooks = Some(gate);
        self
    }

    /// Where this client's state is saved: worked out at each use rather than held, as idle
    /// workers are most of the memory with many clients.
    fn state_path(&self) -> PathBuf {
        state::path(&self.context.agent, &self.spec)
    }

    /// The worker's `client` span. Each step runs in one, made when the step begins: a span
    /// held while a worker sleeps cost every idle client ~350 bytes (BENCHMARKS.md).
    fn span(&self) -> tracing::Span {
        tracing::info_span!("client", client = %self.spec.name)
    }

    /// Runs the client in its own task until `mode` says stop, beginning as `start` says:
    /// `run --once`, where every client's task waits out its own backoff. Returns the first
    /// error in `Once` mode. (A daemon's clients are [`Parked`] between attempts instead.)
    pub(crate) async fn run(
        mut self,
        mode: Mode,
        start: Start,
        mut inbox: Inbox,
    ) -> Result<(), String> {
        let nudged = *inbox.nudges.borrow_and_update();
        let mut progress = Progress::new(self.context.clock.now(), nudged);
        if start == Start::ReuseSaved {
            let span = self.span();
            if self.restore(&mut progress).instrument(span).await
                && matches!(mode, Mode::Once { .. })
            {
                return Ok(());
            }
        }
        loop {
            self.wait_until_due(&mut progress, &mut inbox).await;
            if let Some(ended) = self.step(&mut progress, mode, None).await {
                return ended;
            }
        }
    }

    /// One attempt, once due: [`try_attempt`](Self::try_attempt), wait for the directories'
    /// sync, then schedule the next. Returns `Some` when `mode` says the worker is done.
    async fn step(
        &mut self,
        progress: &mut Progress,
        mode: Mode,
        queued: Option<Queued>,
    ) -> Option<Result<(), String>> {
        let outcome = match self.try_attempt(progress, queued).await {
            Err(message) => return Some(Err(message)),
            Ok(Attempted::Written(syncing)) => syncing.synced().await,
            Ok(Attempted::Failed(outcome)) => outcome,
        };
        let span = self.span();
        span.in_scope(|| self.conclude(progress, mode, outcome))
    }

    /// Waits for a place in flight (and the host's request rate), then fetches and writes.
    /// `queued` counts the attempt as waiting for its place until it has it. Fails only if
    /// the bound on requests in flight is closed, which nothing does.
    async fn try_attempt(
        &mut self,
        progress: &mut Progress,
        queued: Option<Queued>,
    ) -> Result<Attempted, String> {
        // From now until its files are renamed, this worker's write is coming: a batch's
        // directory syncs wait for it (a bounded time), so one sync covers the batch.
        let coming = output::WriteComing::new();
        // The place in flight is held until the token is in and a writer's place is free (see
        // `attempt`). It is taken once the host's request rate allows a request (every attempt
        // spends a turn, failed ones too), and after the backoff and any Retry-After: the rate
        // only ever adds to that wait.
        let permits = Arc::clone(&self.context.permits);
        // Without a rate, nothing boxed while waiting for a place: 10,000 clients starting
        // at once would each hold a box and their host's name (+3 MiB resident).
        let in_flight = if self.context.rate.per_second().is_none() {
            self.until_placed(progress, permits.acquire()).await
        } else {
            let host = rate::host_of(self.session.next_url(&self.spec.request));
            let paced = self
                .context
                .rate
                .paced(host, &self.context.clock, permits.acquire());
            self.until_placed(progress, Box::pin(paced)).await
        };
        drop(queued);
        let Ok(in_flight) = in_flight else {
            return Err("shutting down".to_owned());
        };
        // Boxed, once the place is taken: an attempt's state lives only while it runs, so
        // a task waiting for a place does not carry it, nor one waiting for a sync round.
        let span = self.span();
        let attempt = self.attempt(progress, coming, in_flight).instrument(span);
        Ok(Box::pin(attempt).await)
    }

    /// Waits for `place` (a place in flight); if the token on disk expires meanwhile, reports
    /// it at its time (and removes its files with `on_expiry = "remove"`), as a parked client
    /// would: behind requests that hang, the wait for a place can outlast a token. The timer
    /// is set again at least every [`PLACE_RECHECK`], so a step of the wall clock is noticed.
    async fn until_placed<F: Future>(&self, progress: &mut Progress, place: F) -> F::Output {
        let mut place = std::pin::pin!(place);
        loop {
            let clock = &self.context.clock;
            let Some(expiry) = progress.unreported_expiry() else {
                return place.await;
            };
            let wake = clock
                .now()
                .checked_add(PLACE_RECHECK)
                .map_or(expiry, |later| expiry.min(later));
            tokio::select! {
                placed = &mut place => return placed,
                () = clock.sleep_until(wake) => {
                    if let Some(token) = progress.newly_expired(clock.now()) {
                        self.span().in_scope(|| self.expire(token));
                    }
                }
            }
        }
    }

    /// One attempt, once due and in flight: fetch, then write the files and state. Returns
    /// what is left: the directories' sync to wait for, or the failure.
    async fn attempt(
        &mut self,
        progress: &mut Progress,
        coming: output::WriteComing,
        in_flight: SemaphorePermit<'_>,
    ) -> Attempted {
        let (fetched, latency) = self.fetch(progress).await;
        let now = self.context.clock.now();
        let failed = |failed| {
            Attempted::Failed(Outcome {
                result: Err(failed),
                now,
                latency,
            })
        };
        let token = match fetched {
            Ok(token) => token,
            Err(error) => return failed(FailedAttempt::request(&error)),
        };
        // The place in flight is handed over to a place among the writers: the next request can
        // go while this token is written, and a disk slower than the server holds requests
        // back rather than piling up written tokens.
        let Ok(writing) = self.context.writers.acquire().await else {
            return failed(FailedAttempt::write("shutting down".to_owned()));
        };
        drop(in_flight);
        let written = write_and_save(&self.state_path(), &self.spec, &token, coming).await;
        drop(writing);
        let written = match written {
            Ok(written) => written,
            Err(message) => return failed(FailedAttempt::write(message)),
        };
        if let Err(message) = written.state {
            warn!(%message, "cannot save state; a restart will fetch again");
        }
        Attempted::Written(Syncing {
            token,
            changed: written.changed,
            synced: written.synced,
            now,
            latency,
        })
    }

    /// An attempt's outcome, once its files are durable: report and schedule the next refresh,
    /// or back off. Returns `Some` when `mode` says the worker is done.
    fn conclude(
        &self,
        progress: &mut Progress,
        mode: Mode,
        outcome: Outcome,
    ) -> Option<Result<(), String>> {
        let Outcome {
            result,
            now,
            latency,
        } = outcome;
        match result {
            Ok((token, changed)) => {
                self.succeeded(progress, token, changed, latency);
                matches!(mode, Mode::Once { .. }).then_some(Ok(()))
            }
            Err(failed) => {
                self.back_off(progress, &failed, now, latency);
                match mode {
                    Mode::Once { deadline }
                        if failed.failure == Failure::Permanent || progress.due > deadline =>
                    {
                        Some(Err(failed.message))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Reuses the saved token if it was fetched with the same settings and is not yet due:
    /// writes its files and reports it. Returns whether it did.
    async fn restore(&self, progress: &mut Progress) -> bool {
        let Some(restoring) = self.begin_restore(Restore::NotYetDue).await else {
            return false;
        };
        let synced = restoring.synced.wait().await;
        self.restored(progress, restoring.token, restoring.next, synced)
    }

    /// The saved token, if it was fetched with the same settings and `which` allows it, with
    /// its files written and handed over: their sync is still to wait for.
    async fn begin_restore(&self, which: Restore) -> Option<Restoring> {
        let token = state::load(&self.state_path(), &self.spec)?;
        let next = self.next_refresh(&token);
        let now = self.context.clock.now();
        let usable = match which {
            Restore::NotYetDue => now < next,
            Restore::Unexpired => now < token.expires_at,
        };
        if !usable {
            return None;
        }
        match hand_over_outputs(&self.spec, &token).await {
            Ok((_, synced)) => Some(Restoring {
                token,
                next,
                synced,
            }),
            Err(message) => {
                warn!(%message, "cannot restore the saved token's files");
                None
            }
        }
    }

    /// A restored token's files are durable (or not): report it and schedule its refresh.
    /// Returns whether it is in use.
    fn restored(
        &self,
        progress: &mut Progress,
        token: Token,
        next: SystemTime,
        synced: Result<(), String>,
    ) -> bool {
        if let Err(message) = synced {
            warn!(%message, "cannot restore the saved token's files");
            return false;
        }
        info!(
            token = %token.access_token.fingerprint(),
            expires_at = %humantime::format_rfc3339_seconds(token.expires_at),
            next_refresh = %humantime::format_rfc3339_seconds(next),
            "reusing the saved token"
        );
        self.report(Report::Fresh {
            client: self.spec.name.clone(),
            expires_at: token.expires_at,
            next_refresh: next,
            origin: Origin::Saved,
        });
        progress.due = next;
        progress.current = Some(token);
        true
    }

    /// Sleeps until the fetch is due, reporting the current token's expiry if that comes
    /// first. Meanwhile a refresh-now brings the fetch forward and a clock change re-checks.
    async fn wait_until_due(&self, progress: &mut Progress, inbox: &mut Inbox) {
        let clock = &self.context.clock;
        let Inbox { nudges } = inbox;
        let mut nudges_open = true;
        loop {
            let now = clock.now();
            let wake = progress.wake_at(now);
            if wake <= now {
                return;
            }
            tokio::select! {
                () = clock.sleep_until(wake) => {}
                changed = nudges.changed(), if nudges_open => {
                    if changed.is_err() {
                        // The supervisor is gone: a daemon worker only ends by abort, so keep
                        // going on timers alone.
                        nudges_open = false;
                        continue;
                    }
                    let span = self.span();
                    let _entered = span.enter();
                    let nudged = *nudges.borrow_and_update();
                    if nudged.clock_changed != progress.nudged.clock_changed {
                        debug!("clock changed; re-checking deadlines");
                        progress.clock_changed(clock);
                    }
                    if nudged.refresh_now != progress.nudged.refresh_now {
                        progress.refresh_requested(clock);
                    }
                    progress.nudged = nudged;
                }
            }
            let now = clock.now();
            if let Some(token) = progress.newly_expired(now) {
                self.span().in_scope(|| self.expire(token));
            }
            if now >= progress.due {
                return;
            }
        }
    }

    /// One token request; also returns how long it took.
    async fn fetch(&mut self, progress: &mut Progress) -> (Result<Token, FetchError>, Duration) {
        progress.refresh_waiting = false;
        let started = Instant::now();
        // Boxed, after the place in flight was taken: the request's state machine is large and
        // lives only while fetching. Inline, it would sit in every idle worker's task; boxed
        // before the wait, 10,000 clients starting at once would each hold one (BENCHMARKS.md,
        // memory per client).
        let fetched = Box::pin(self.session.fetch(
            &self.spec.request,
            &self.context.http,
            &self.context.clock,
            self.context.agent.default_lifetime,
        ))
        .await;
        let latency = started.elapsed();
        progress.last_request = Some(Instant::now());
        (fetched, latency)
    }

    /// A new token is on disk: log, report, run `on_refresh` if a file changed, and schedule
    /// the next refresh.
    fn succeeded(&self, progress: &mut Progress, token: Token, changed: bool, latency: Duration) {
        let next = self.next_refresh(&token);
        if progress.last_error.take().is_some() {
            info!("recovered");
        }
        progress.server_asked_to_wait = false;
        info!(
            token = %token.access_token.fingerprint(),
            expires_at = %humantime::format_rfc3339_seconds(token.expires_at),
            next_refresh = %humantime::format_rfc3339_seconds(next),
            changed,
            "token refreshed"
        );
        self.report(Report::Fresh {
            client: self.spec.name.clone(),
            expires_at: token.expires_at,
            next_refresh: next,
            origin: Origin::Fetched { latency },
        });
        if changed && let Some(gate) = &self.hooks {
            hooks::on_refresh(&self.spec, gate);
        }
        progress.attempt = 0;
        progress.expired_reported = false;
        progress.due = next;
        progress.current = Some(token);
    }

    /// An attempt failed at `now`: schedule the retry, log (at `warn` or `error` once per
    /// change of message, else at `debug`) and report.
    fn back_off(
        &self,
        progress: &mut Progress,
        failed: &FailedAttempt,
        now: SystemTime,
        latency: Duration,
    ) {
        let expires_at = progress.current.as_ref().map(|token| token.expires_at);
        let delay = self.context.backoff().delay(
            failed.failure,
            progress.attempt,
            failed.retry_after,
            now,
            expires_at,
            rand::random::<f64>(),
        );
        progress.attempt = progress.attempt.saturating_add(1);
        progress.due = now.checked_add(delay).unwrap_or(now);
        progress.server_asked_to_wait = failed.retry_after.is_some();
        let message = &failed.message;
        let retry_in = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
        if progress.last_error.as_deref() != Some(message.as_str()) {
            match failed.failure {
                Failure::Permanent => {
                    error!(error = %message, %retry_in, "token request failed; will not heal without a change")
                }
                Failure::Transient => {
                    warn!(error = %message, %retry_in, "token request failed")
                }
            }
        } else {
            debug!(error = %message, %retry_in, attempt = progress.attempt, "token request failed again");
        }
        progress.last_error = Some(message.clone());
        self.report(Report::Failed {
            client: self.spec.name.clone(),
            message: message.clone(),
            at: now,
            retry_at: progress.due,
            latency,
            token_file: failed.token_file,
        });
    }

    fn next_refresh(&self, token: &Token) -> SystemTime {
        schedule::refresh_deadline(
            token.issued_at,
            token.expires_at,
            self.context.agent.refresh_at,
            rand::random::<f64>(),
        )
    }

    /// The token on disk expired and no new one came: warn, remove its files if so configured,
    /// and report.
    fn expire(&self, token: &Token) {
        warn!(
            token = %token.access_token.fingerprint(),
            "the token on disk has expired and no new one could be fetched"
        );
        if self.spec.on_expiry == OnExpiry::Remove {
            remove_outputs(&self.spec);
            state::remove(&self.state_path());
            info!("removed the expired token's files (on_expiry = \"remove\")");
        }
        self.report(Report::Expired {
            client: self.spec.name.clone(),
        });
    }

    fn report(&self, report: Report) {
        if let Some(reporter) = &self.reports {
            let _ = reporter.sender.send((reporter.worker, report));
        }
    }
}

/// Which saved token a restore reuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restore {
    /// One not yet due for refresh (`run --once`: it exits with what it restores).
    NotYetDue,
    /// Any not yet expired (a daemon): one already due is still the last good token, put back
    /// on disk (a reboot may have emptied `/run`) and watched to its expiry, while its refresh
    /// is attempted at once.
    Unexpired,
}

/// A saved token being reused: its files handed over, their sync to wait for.
pub(crate) struct Restoring {
    token: Token,
    next: SystemTime,
    synced: output::DirSync,
}

/// What an attempt leaves once its box is freed.
enum Attempted {
    /// The token's files and state are written and the place in flight given back; their
    /// directories' sync round is still to come.
    Written(Syncing),
    Failed(Outcome),
}

/// A written token waiting for its directories' sync: all a worker holds meanwhile.
pub(crate) struct Syncing {
    token: Token,
    changed: bool,
    synced: output::DirSync,
    now: SystemTime,
    latency: Duration,
}

impl Syncing {
    /// Waits for the sync round; a failed sync fails the attempt (the good token is dropped).
    async fn synced(self) -> Outcome {
        let Self {
            token,
            changed,
            synced,
            now,
            latency,
        } = self;
        let result = match synced.wait().await {
            Ok(()) => Ok((token, changed)),
            Err(message) => Err(FailedAttempt::write(message)),
        };
        Outcome {
            result,
            now,
            latency,
        }
    }
}

/// How an attempt ended: the token and whether a file changed, or why it failed; `now` is
/// when its request ended.
struct Outcome {
    result: Result<(Token, bool), FailedAttempt>,
    now: SystemTime,
    latency: Duration,
}

/// Why an attempt failed, as far as the backoff and the log are concerned.
struct FailedAttempt {
    failure: Failure,
    retry_after: Option<Duration>,
    message: String,
    /// A token file was unusable, so nothing was sent.
    token_file: bool,
}

impl FailedAttempt {
    fn request(error: &FetchError) -> Self {
        Self {
            failure: if error.is_permanent() {
                Failure::Permanent
            } else {
                Failure::Transient
            },
            retry_after: error.retry_after(),
            message: error.to_string(),
            token_file: error.is_token_file(),
        }
    }

    /// Files could not be written: the good token is kept out of memory too, so the next
    /// attempt starts clean; a write fault is treated as transient.
    fn write(message: String) -> Self {
        Self {
            failure: Failure::Transient,
            retry_after: None,
            message,
            token_file: false,
        }
    }
}

impl Progress {
    fn new(now: SystemTime, nudged: Nudges) -> Self {
        Self {
            nudged,
            current: None,
            due: now,
            attempt: 0,
            last_error: None,
            expired_reported: false,
            last_request: None,
            refresh_waiting: false,
            server_asked_to_wait: false,
            restore: false,
        }
    }

    /// A token file this client reads changed. A healthy client keeps its token (the next
    /// refresh reads the new file); one waiting on a failure retries now, since a fresh file
    /// may be what heals it, unless the server asked it to wait (SPEC: honour `Retry-After`).
    fn token_file_changed(&mut self, clock: &Clock) {
        if self.last_error.is_none() {
            return;
        }
        if self.server_asked_to_wait {
            info!(
                "a token file changed; the server asked to wait (Retry-After), so the retry stays as planned"
            );
            return;
        }
        info!("a token file changed; retrying");
        self.refresh_requested(clock);
    }

    /// When to wake up: when the fetch is due, or when the current token expires if that comes
    /// first (to report it).
    fn wake_at(&self, now: SystemTime) -> SystemTime {
        let expiry = self
            .unreported_expiry()
            .filter(|expires_at| *expires_at > now);
        match expiry {
            Some(expires_at) => self.due.min(expires_at),
            None => self.due,
        }
    }

    /// When the current token expires, unless that has been reported already.
    fn unreported_expiry(&self) -> Option<SystemTime> {
        self.current
            .as_ref()
            .map(|token| token.expires_at)
            .filter(|_| !self.expired_reported)
    }

    /// The current token, the first time it is seen expired at `now`.
    fn newly_expired(&mut self, now: SystemTime) -> Option<&Token> {
        let token = self.current.as_ref()?;
        if now < token.expires_at || self.expired_reported {
            return None;
        }
        self.expired_reported = true;
        Some(token)
    }

    /// What is left of the quiet second after the last request (monotonic, so a clock step
    /// does not stretch it).
    fn quiet_left(&self) -> Duration {
        self.last_request
            .map(|ended| REFRESH_NOW_QUIET.saturating_sub(ended.elapsed()))
            .unwrap_or_default()
    }

    /// The wall clock stepped: a waiting refresh-now keeps only what is left of its quiet
    /// second, or a step back would postpone it (and every SIGUSR1 joining it) by the step.
    fn clock_changed(&mut self, clock: &Clock) {
        if self.refresh_waiting {
            let now = clock.now();
            self.due = now.checked_add(self.quiet_left()).unwrap_or(now);
        }
    }

    /// A refresh-now: due at once, or when the last request is a second old; requests
    /// meanwhile join that one.
    fn refresh_requested(&mut self, clock: &Clock) {
        if self.refresh_waiting {
            debug!("refresh requested; joins the one already waiting");
            return;
        }
        let quiet = self.quiet_left();
        let now = clock.now();
        let at = now.checked_add(quiet).unwrap_or(now);
        if at >= self.due {
            debug!("refresh requested; one is due by then anyway");
            return;
        }
        if quiet.is_zero() {
            info!("refresh requested");
        } else {
            let wait = Duration::from_millis(quiet.as_millis() as u64);
            info!(
                wait = %humantime::format_duration(wait),
                "refresh requested; waiting for the last request to be a second old"
            );
        }
        self.due = at;
        self.attempt = 0;
        self.refresh_waiting = true;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::Path;
    use std::task::{Context, Waker};

    use super::*;
    use crate::config::Agent;

    /// A config with one client, `api`, its `extra` settings and one output at `output`.
    fn api_client(extra: &str, output: &Path) -> crate::config::Config {
        let text = format!(
            "[clients.api]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"api\"\n\
             client_secret = \"s\"\n{extra}[[clients.api.output]]\npath = {:?}\n",
            output.display().to_string()
        );
        crate::config::Config::parse(Path::new("/etc/bearerd/bearerd.toml"), &text, &|_| {
            Err(std::env::VarError::NotPresent)
        })
        .expect("valid config")
    }

    /// A refresh-now waiting out its quiet second is not postponed by a step of the wall
    /// clock: after a step back of an hour it is due within the second, as before the step.
    #[test]
    fn a_clock_step_back_does_not_postpone_a_waiting_refresh_now() {
        let clock = Clock::system();
        let mut progress = Progress::new(clock.now(), Nudges::default());
        progress.due = clock.now() + Duration::from_secs(3600);
        progress.last_request = Some(Instant::now());
        progress.refresh_requested(&clock);
        assert!(progress.refresh_waiting);
        let asked = progress.due;
        // What a step back of an hour does to a deadline computed before it.
        progress.due = asked + Duration::from_secs(3600);
        progress.clock_changed(&clock);
        let left = progress
            .due
            .duration_since(clock.now())
            .unwrap_or(Duration::ZERO);
        assert!(
            left <= REFRESH_NOW_QUIET,
            "due in {left:?}, not within the quiet second"
        );
        // Later requests still join the one waiting.
        progress.refresh_requested(&clock);
        assert!(progress.refresh_waiting);
    }

    /// A reload that changes `[agent]` but not `max_requests_per_second` keeps the hosts'
    /// buckets (their next turns), so restarted workers cannot send early; a new rate starts
    /// new buckets.
    #[test]
    fn the_request_rate_outlives_an_agent_change_that_leaves_it_alone() {
        let limited = Agent {
            max_requests_per_second: Some(2.0),
            ..Agent::default()
        };
        let context = WorkerContext::new(limited.clone(), Clock::system());
        let renewed = context.renewed(Agent {
            refresh_at: 0.5,
            ..limited.clone()
        });
        assert!(Arc::ptr_eq(&context.rate, &renewed.rate));
        let faster = renewed.renewed(Agent {
            max_requests_per_second: Some(4.0),
            ..limited
        });
        assert!(!Arc::ptr_eq(&renewed.rate, &faster.rate));
        assert_eq!(faster.rate.per_second(), Some(4.0));
    }

    /// A parked client whose retry falls due at its token's expiry (the backoff never sleeps
    /// past it, so the two often coincide) reports the expiry and removes the files with
    /// `on_expiry = "remove"` when it wakes, before its attempt: that attempt may hang for
    /// `http_timeout`, and the expired file must not stay meanwhile.
    #[test]
    #[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
    fn a_client_due_at_its_tokens_expiry_reports_it_before_the_attempt() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let output = directory.path().join("api.token");
        std::fs::write(&output, "abc.def").expect("token file");
        let config = api_client("on_expiry = \"remove\"\n", &output);
        let spec = Arc::clone(&config.clients[0]);
        let context = WorkerContext::new(config.agent.clone(), Clock::system());
        let (sender, mut reports) = mpsc::unbounded_channel();
        let reporter = Reporter { worker: 1, sender };
        let worker = Worker::new(spec, context, Some(reporter));
        let mut parked = worker.park(1, Start::Fetch, Nudges::default());
        let expired_at = SystemTime::now() - Duration::from_secs(1);
        parked.progress.current = Some(crate::token::sample_between(
            "abc.def",
            expired_at - Duration::from_secs(3600),
            expired_at,
        ));
        parked.progress.due = expired_at;
        assert!(parked.due(), "the retry is due");
        assert!(
            matches!(reports.try_recv(), Ok((1, Report::Expired { .. }))),
            "the expiry is reported when the client wakes"
        );
        assert!(!output.exists(), "the expired token's file is removed");
    }

    /// A worker aborted (a reload, SIGTERM) once its token files are being written still saves
    /// the state, so the next start reuses the token instead of fetching one more.
    #[test]
    fn the_state_is_saved_when_the_worker_is_aborted_during_the_write() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let output = directory.path().join("api.token");
        let config = api_client("", &output);
        let spec = Arc::clone(&config.clients[0]);
        let state_path = state::path(&config.agent, &spec);
        let issued_at = SystemTime::now();
        let token = crate::token::sample_between(
            "abc.def",
            issued_at,
            issued_at + Duration::from_secs(3600),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _entered = runtime.enter();
        // Polled once, the write is under way; dropping the future is what an abort does.
        let coming = output::WriteComing::new();
        let mut writing = Box::pin(write_and_save(&state_path, &spec, &token, coming));
        let _ = writing
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        drop(writing);

        // The token file is renamed into place by the data syncer, after its round: it and the
        // state both get there, whatever the abort.
        let deadline = Instant::now() + Duration::from_secs(30);
        let saved = loop {
            let renamed = std::fs::read_to_string(&output).is_ok_and(|text| text == "abc.def");
            if let Some(saved) = state::load(&state_path, &spec).filter(|_| renamed) {
                break saved;
            }
            assert!(
                Instant::now() < deadline,
                "the state was not saved, or the token file not written, after the abort"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(saved.access_token.expose(), "abc.def");
    }

    /// An attempt waiting for its place in flight (every place taken by requests that hang)
    /// reports the token on disk expiring meanwhile at its time, and removes its files with
    /// `on_expiry = "remove"`, rather than when the place comes.
    #[test]
    #[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
    fn a_token_that_expires_while_its_attempt_waits_for_a_place_is_reported() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let output = directory.path().join("api.token");
        std::fs::write(&output, "abc.def").expect("token file");
        let config = api_client("on_expiry = \"remove\"\n", &output);
        let spec = Arc::clone(&config.clients[0]);
        let clock = Clock::system();
        let context = WorkerContext::new(config.agent.clone(), clock.clone());
        let places = context.agent.max_concurrent_requests as u32;
        let _taken = Arc::clone(&context.permits)
            .try_acquire_many_owned(places)
            .expect("every place");
        let (sender, mut reports) = mpsc::unbounded_channel();
        let mut worker = Worker::new(spec, context, Some(Reporter { worker: 1, sender }));
        let now = clock.now();
        let mut progress = Progress::new(now, Nudges::default());
        progress.current = Some(crate::token::sample_between(
            "abc.def",
            now - Duration::from_secs(3600),
            now + Duration::from_millis(300),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let removed = async {
                while output.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                _ = worker.try_attempt(&mut progress, None) => panic!("the attempt got a place"),
                () = removed => {}
                () = tokio::time::sleep(Duration::from_secs(10)) => {
                    panic!("the expired token's file is still there")
                }
            }
        });
        assert!(
            matches!(reports.try_recv(), Ok((1, Report::Expired { .. }))),
            "the expiry is reported"
        );
    }
}
