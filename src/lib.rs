//! bearerd keeps OAuth 2.0 client-credentials access tokens fresh on disk.
//!
//! # Layout
//! - [`cli`]: the clap definition (the binary, the man page and completions use it).
//! - [`config`]: the TOML file → a validated [`config::Config`] (every error located).
//! - `files`: reading the config and the files it names: regular files within a size cap.
//! - [`secret`]: [`secret::Secret`], whose value only `expose()` reveals; fingerprints.
//! - [`token`](mod@token): [`token::Token`] and the RFC 6750 `b64token` check (a leaf).
//! - [`oauth`]: one token request (auth methods, discovery, response parsing).
//! - `schedule`: pure timing: refresh deadlines and backoff.
//! - [`clock`]: the only place that reads the wall clock or sleeps.
//! - `rate`: `[agent] max_requests_per_second`, a token bucket per token endpoint host (pure
//!   buckets; the clock sleeps).
//! - [`output`]: rendering formats (pure) and atomic, durable file writes.
//! - [`state`]: the per-client state file that lets a restart reuse a valid token, and the lock
//!   beside it that `token --cached` callers share.
//! - [`preflight`]: before work starts: the stale-temp sweep, permission warnings, file limit.
//! - [`exec_credential`]: the Kubernetes `ExecCredential` that `token` can print (pure).
//! - [`worker`]: one client's loop; the only place that retries.
//! - `supervisor`: the event loop; owns the workers, plans reloads, publishes status.
//! - [`events`]: signals, file changes and clock steps → `Event`s (the only OS-event code).
//! - `systemd`: sd_notify (reads status only).
//! - `metrics`, [`admin`]: Prometheus metrics and `/healthz`, `/readyz`, `/metrics`.
//! - `hooks`: `on_refresh` commands and signals.
//! - `token_command`: what `bearerd token` prints: a token fetched now, or with `--cached` the
//!   saved one while it is not due (callers take turns on the lock to fetch a new one).
//! - `check_command`: the `bearerd check` report.
//!
//! The entry points below are what the binary calls; tests and examples call them too. The
//! daemon is a function of its inputs: [`run`] takes its admin listener and event sources as
//! [`Inputs`], which the binary makes with [`Inputs::from_os`] and a test makes of its own.

pub mod admin;
mod check_command;
pub mod cli;
pub mod clock;
pub mod config;
pub mod events;
pub mod exec_credential;
mod files;
mod hooks;
mod metrics;
pub mod oauth;
pub mod output;
pub mod preflight;
mod rate;
mod schedule;
pub mod secret;
pub mod state;
mod supervisor;
mod systemd;
pub mod token;
mod token_command;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use self::token_command::{TokenError, TokenOptions};

use crate::clock::Clock;
use crate::config::Config;
use crate::secret::Secret;
use crate::worker::{Inbox, Mode, Nudges, Start, Worker, WorkerContext};

/// The clients that `run --once` could not serve, each with its last error.
#[derive(Debug)]
pub struct OnceFailure {
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for OnceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.failed.iter().map(|(name, _)| name.as_str()).collect();
        write!(f, "{} client(s) failed: {}", names.len(), names.join(", "))
    }
}

/// `bearerd run --once`: fetch every client's token (at most `max_concurrent_requests` at a
/// time), write its files and return; transient failures are retried until `deadline`.
/// A saved token that is not yet due for refresh is reused.
pub async fn run_once(
    config: &Config,
    deadline: Duration,
    clock: Clock,
) -> Result<(), OnceFailure> {
    preflight::sweep_stale_temps(config);
    let context = WorkerContext::new(config.agent.clone(), clock.clone());
    let now = clock.now();
    let deadline = now.checked_add(deadline).unwrap_or(now);
    // Kept until every worker ends, so no worker sees a closed channel.
    let (_nudges, nudged) = tokio::sync::watch::channel(Nudges::default());
    let mut tasks = tokio::task::JoinSet::new();
    for spec in &config.clients {
        let worker = Worker::new(Arc::clone(spec), Arc::clone(&context), None);
        let name = spec.name.to_string();
        let inbox = Inbox {
            nudges: nudged.clone(),
        };
        let run = worker.run(Mode::Once { deadline }, Start::ReuseSaved, inbox);
        tasks.spawn(async move { (name, run.await) });
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(message))) => failed.push((name, message)),
            Err(error) => failed.push(("?".to_owned(), format!("worker task failed: {error}"))),
        }
    }
    // A client that ran out of time may have left a write on its way.
    worker::settle_writes().await;
    failed.sort();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(OnceFailure { failed })
    }
}

/// `bearerd token [--cached] [--format FORMAT] NAME`: what to print on stdout, one token in
/// the chosen format. Without `cached`, a token fetched now (no retries, no files written).
/// With it, the saved token while it is not due for refresh, else one fetched now and saved
/// (see `token_command`). Nothing is fetched for a request that cannot be served (an unknown
/// client, an `apiVersion` bearerd does not speak).
pub async fn token(
    config: &Config,
    name: &str,
    options: &TokenOptions,
    clock: Clock,
) -> Result<Secret, TokenError> {
    token_command::token(config, name, options, clock).await
}

/// `bearerd check`: what the configuration would do, one client at a time. Never a secret.
pub fn check(config: &Config) -> String {
    check_command::report(config)
}

/// What the daemon takes from the outside world, made by its caller (as mini-redis's `run`
/// takes its listener and its shutdown signal): the real ones from [`Inputs::from_os`]; in a
/// test, a listener bound to `127.0.0.1:0` and [`events::Events::channel`].
pub struct Inputs {
    /// Where `/healthz`, `/readyz` and `/metrics` are served, whatever `[agent] listen` says;
    /// `None` serves nothing.
    pub admin: Option<tokio::net::TcpListener>,
    /// Signals, file changes and clock steps, or a test's stand-ins.
    pub events: events::Events,
}

impl Inputs {
    /// The daemon's real inputs: signal handlers, the clock watch, a watch on the config and the
    /// files it names, and `[agent] listen` bound. Call it within a tokio runtime.
    pub async fn from_os(config: &Config) -> Result<Self, String> {
        let events = events::Events::from_os(&config.watched_files())?;
        let admin = match config.agent.listen {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|error| format!("cannot listen on {address}: {error}"))?,
            ),
            None => None,
        };
        Ok(Self { admin, events })
    }
}

/// `bearerd run`: the daemon. Serves the admin endpoint on `inputs.admin` and acts on
/// `inputs.events` until `Event::Shutdown` (SIGTERM/SIGINT) or until every event sender is
/// gone; returns with no task left running.
pub async fn run(config: Config, clock: Clock, inputs: Inputs) {
    let Inputs { admin, events } = inputs;
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    let supervisor = supervisor::Supervisor::new(config, clock.clone(), notices_tx);
    let (events, mut tasks) = events.into_parts(supervisor.watched_files.subscribe());
    if let Some(listener) = admin {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving /healthz, /readyz and /metrics");
        }
        let observed = admin::Observed {
            status: supervisor.status(),
            metrics: supervisor.metrics(),
            clock: clock.clone(),
        };
        tasks.spawn(admin::serve(listener, observed));
    }
    let notifier = systemd::spawn(notices_rx, supervisor.status(), clock);
    supervisor.run(events).await;
    let _ = notifier.await;
    tasks.shutdown().await;
}
