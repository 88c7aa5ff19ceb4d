//! One client's life: restore → fetch → write → persist → sleep, or back off and retry.
//! This is the only place that retries; it reads no config and watches no OS events.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, error, info, warn};

use crate::clock::Clock;
use crate::config::{Agent, ClientName, ClientSpec, OnExpiry};
use crate::hooks;
use crate::oauth::{HttpClients, Session};
use crate::output;
use crate::schedule::{self, Backoff, Failure};
use crate::state;
use crate::token::Token;

/// What every worker of one configuration shares: agent settings, the clock, the bound on
/// requests in flight, and HTTP clients (one per distinct TLS setting, so connection pools and
/// root stores are shared).
pub struct Shared {
    pub agent: Agent,
    pub clock: Clock,
    pub permits: Arc<Semaphore>,
    pub(crate) http: HttpClients,
}

impl Shared {
    pub fn new(agent: Agent, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(agent.max_concurrent_requests)),
            http: HttpClients::new(agent.http_timeout),
            agent,
            clock,
        })
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            min: self.agent.backoff_min,
            max: self.agent.backoff_max,
        }
    }
}

/// Renders and writes every output of `spec`; returns whether any file changed. The writes run
/// on a blocking thread, so cancelling the caller cannot interrupt one half-way.
pub async fn write_outputs(spec: &Arc<ClientSpec>, token: &Token) -> Result<bool, String> {
    let spec = Arc::clone(spec);
    let token = token.clone();
    tokio::task::spawn_blocking(move || {
        let mut changed = false;
        let mut errors = Vec::new();
        for output in &spec.outputs {
            let bytes = output::render(&output.format, &token, spec.name.as_str());
            match output::write_if_changed(&output.path, &bytes, output.mode) {
                Ok(wrote) => changed |= wrote,
                Err(error) => errors.push(error.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(changed)
        } else {
            Err(errors.join("; "))
        }
    })
    .await
    .map_err(|error| format!("writer task failed: {error}"))?
}

/// [`state::save`] on a blocking thread: its two fsyncs must not stall every other client on
/// the runtime's one thread (nor can cancelling the caller interrupt the write).
async fn save_state(
    path: &std::path::Path,
    spec: &Arc<ClientSpec>,
    token: &Token,
) -> Result<(), String> {
    let (path, spec, token) = (path.to_path_buf(), Arc::clone(spec), token.clone());
    tokio::task::spawn_blocking(move || state::save(&path, &spec, &token))
        .await
        .map_err(|error| format!("state writer task failed: {error}"))?
}

fn remove_outputs(spec: &ClientSpec) {
    for output in &spec.outputs {
        if let Err(error) = output::remove_output(&output.path) {
            warn!(%error, "cannot remove an expired token file");
        }
    }
}

/// What a worker tells the supervisor.
#[derive(Clone, Debug)]
pub enum Report {
    /// New files are in place (or were restored from state).
    Fresh {
        client: ClientName,
        expires_at: SystemTime,
        next_refresh: SystemTime,
        latency: Option<Duration>,
        restored: bool,
    },
    Failed {
        client: ClientName,
        message: String,
        at: SystemTime,
        retry_at: SystemTime,
        latency: Option<Duration>,
    },
    /// The token on disk has expired and no new one came.
    Expired { client: ClientName },
}

/// Where a worker sends its reports, tagged with the worker's id so that a late report from a
/// stopped worker is not taken for its replacement's.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub worker: u64,
    pub sender: mpsc::UnboundedSender<(u64, Report)>,
}

/// What the supervisor can tell a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    RefreshNow,
    /// The wall clock stepped or the machine resumed: re-check every deadline.
    ClockChanged,
}

/// A refresh-now request while a request is in flight or less than this after the last one
/// ended waits until this much time has passed, and every request meanwhile joins that one
/// refresh: a burst of SIGUSR1s costs one request a second, not one each.
pub const REFRESH_NOW_QUIET: Duration = Duration::from_secs(1);

/// How long a worker lives.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Until the first token is written; transient failures are retried until `deadline`.
    Once { deadline: SystemTime },
    /// Until the task is aborted.
    Daemon,
}

pub struct Worker {
    spec: Arc<ClientSpec>,
    shared: Arc<Shared>,
    session: Session,
    state_path: std::path::PathBuf,
    reports: Option<Reporter>,
    hooks: hooks::Gate,
}

impl Worker {
    pub fn new(spec: Arc<ClientSpec>, shared: Arc<Shared>, reports: Option<Reporter>) -> Self {
        let state_path = state::path(&shared.agent, &spec);
        Self {
            session: Session::new(Arc::clone(&spec)),
            spec,
            shared,
            state_path,
            reports,
            hooks: hooks::Gate::default(),
        }
    }

    /// Runs `on_refresh` actions through `gate`, which outlives this worker (one per client).
    pub fn with_hooks(mut self, gate: hooks::Gate) -> Self {
        self.hooks = gate;
        self
    }

    /// Runs the client until `mode` says stop. `restore`: reuse a saved token fetched with
    /// the same settings while it is not yet due. Returns the first error in `Once` mode.
    pub async fn run(
        mut self,
        mode: Mode,
        restore: bool,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), String> {
        let span = tracing::info_span!("client", client = %self.spec.name);
        async move { self.life(mode, restore, &mut commands).await }
            .instrument(span)
            .await
    }

    async fn life(
        &mut self,
        mode: Mode,
        restore: bool,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), String> {
        let clock = self.shared.clock.clone();
        let mut current: Option<Token> = None;
        let mut due = clock.now();
        if restore && let Some(token) = state::load(&self.state_path, &self.spec) {
            let next = self.next_refresh(&token);
            if clock.now() < next {
                match write_outputs(&self.spec, &token).await {
                    Ok(_) => {
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
                            latency: None,
                            restored: true,
                        });
                        if matches!(mode, Mode::Once { .. }) {
                            return Ok(());
                        }
                        due = next;
                        current = Some(token);
                    }
                    Err(message) => warn!(%message, "cannot restore the saved token's files"),
                }
            }
        }
        let mut attempt: u32 = 0;
        let mut last_error: Option<String> = None;
        let mut expired_reported = false;
        // When the last request ended (commands sent while it was in flight are read after
        // it), and whether a refresh-now is already waiting for the quiet second to pass.
        let mut last_request: Option<Instant> = None;
        let mut refresh_waiting = false;
        loop {
            // Sleep until the refresh is due (or the current token expires, to report it).
            let now = clock.now();
            let expiry = current
                .as_ref()
                .map(|token| token.expires_at)
                .filter(|expires_at| *expires_at > now && !expired_reported);
            let wake = match expiry {
                Some(expires_at) => due.min(expires_at),
                None => due,
            };
            if wake > now {
                tokio::select! {
                    () = clock.sleep_until(wake) => {}
                    command = commands.recv() => match command {
                        Some(Command::RefreshNow) if refresh_waiting => {
                            debug!("refresh requested; joins the one already waiting");
                        }
                        Some(Command::RefreshNow) => {
                            let quiet = last_request
                                .map(|ended| REFRESH_NOW_QUIET.saturating_sub(ended.elapsed()))
                                .unwrap_or_default();
                            let now = clock.now();
                            let at = now.checked_add(quiet).unwrap_or(now);
                            if at < due {
                                if quiet.is_zero() {
                                    info!("refresh requested");
                                } else {
                                    let wait = Duration::from_millis(quiet.as_millis() as u64);
                                    info!(
                                        wait = %humantime::format_duration(wait),
                                        "refresh requested; waiting for the last request to be a second old"
                                    );
                                }
                                due = at;
                                attempt = 0;
                                refresh_waiting = true;
                            } else {
                                debug!("refresh requested; one is due by then anyway");
                            }
                        }
                        Some(Command::ClockChanged) => debug!("clock changed; re-checking deadlines"),
                        None => {
                            // The supervisor dropped us: a daemon worker only ends by abort,
                            // so keep going on timers alone.
                            std::future::pending::<()>().await;
                        }
                    },
                }
                let now = clock.now();
                if let Some(token) = &current
                    && now >= token.expires_at
                    && !expired_reported
                {
                    expired_reported = true;
                    self.expired(token);
                }
                if now < due {
                    continue;
                }
            }

            // The place in flight first, then the request's state machine, boxed: it is large
            // and lives only while fetching. Inline, it would sit in every idle worker's task;
            // boxed before the wait, 10,000 clients starting at once would each hold one
            // (BENCHMARKS.md, memory per client).
            let permits = Arc::clone(&self.shared.permits);
            let Ok(_permit) = permits.acquire().await else {
                return Err("shutting down".to_owned());
            };
            refresh_waiting = false;
            let started = Instant::now();
            let result = Box::pin(self.session.fetch(
                &self.shared.http,
                &self.shared.clock,
                self.shared.agent.default_lifetime,
            ))
            .await;
            let latency = started.elapsed();
            last_request = Some(Instant::now());
            let now = clock.now();
            let failure = match result {
                Ok(token) => match write_outputs(&self.spec, &token).await {
                    Ok(changed) => {
                        if let Err(message) = save_state(&self.state_path, &self.spec, &token).await
                        {
                            warn!(%message, "cannot save state; a restart will fetch again");
                        }
                        let next = self.next_refresh(&token);
                        if last_error.take().is_some() {
                            info!("recovered");
                        }
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
                            latency: Some(latency),
                            restored: false,
                        });
                        if changed {
                            hooks::on_refresh(&self.spec, &self.hooks);
                        }
                        if matches!(mode, Mode::Once { .. }) {
                            return Ok(());
                        }
                        attempt = 0;
                        expired_reported = false;
                        due = next;
                        current = Some(token);
                        continue;
                    }
                    // Files could not be written: keep the good token out of memory too, so
                    // the next attempt starts clean; a write fault is treated as transient.
                    Err(message) => (Failure::Transient, None, message),
                },
                Err(error) => {
                    let failure = if error.is_permanent() {
                        Failure::Permanent
                    } else {
                        Failure::Transient
                    };
                    (failure, error.retry_after(), error.to_string())
                }
            };
            let (failure, retry_after, message) = failure;
            let expires_at = current.as_ref().map(|token| token.expires_at);
            let delay = self.shared.backoff().delay(
                failure,
                attempt,
                retry_after,
                now,
                expires_at,
                rand::random::<f64>(),
            );
            attempt = attempt.saturating_add(1);
            due = now.checked_add(delay).unwrap_or(now);
            let retry_in = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
            if last_error.as_deref() != Some(message.as_str()) {
                match failure {
                    Failure::Permanent => {
                        error!(error = %message, %retry_in, "token request failed; will not heal without a change")
                    }
                    Failure::Transient => {
                        warn!(error = %message, %retry_in, "token request failed")
                    }
                }
            } else {
                debug!(error = %message, %retry_in, attempt, "token request failed again");
            }
            last_error = Some(message.clone());
            self.report(Report::Failed {
                client: self.spec.name.clone(),
                message: message.clone(),
                at: now,
                retry_at: due,
                latency: Some(latency),
            });
            if let Mode::Once { deadline } = mode
                && (failure == Failure::Permanent || due > deadline)
            {
                return Err(message);
            }
        }
    }

    fn next_refresh(&self, token: &Token) -> SystemTime {
        schedule::refresh_deadline(
            token.issued_at,
            token.expires_at,
            self.shared.agent.refresh_at,
            rand::random::<f64>(),
        )
    }

    fn expired(&self, token: &Token) {
        warn!(
            token = %token.access_token.fingerprint(),
            "the token on disk has expired and no new one could be fetched"
        );
        if self.spec.on_expiry == OnExpiry::Remove {
            remove_outputs(&self.spec);
            state::remove(&self.state_path);
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
