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
//!
//! The entry points below are what the binary calls; tests and examples call them too. The
//! daemon is a function of its inputs: [`run`] takes its admin listener and event sources as
//! [`Inputs`], which the binary makes with [`Inputs::from_os`] and a test makes of its own.

pub mod admin;
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
mod schedule;
pub mod secret;
pub mod state;
mod supervisor;
mod systemd;
pub mod token;
pub mod worker;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::cli::TokenFormat;
use crate::clock::Clock;
use crate::config::{Agent, Auth, ClientSpec, Config, Endpoint, SecretSource};
use crate::exec_credential::ApiVersion;
use crate::oauth::{HttpClients, Session};
use crate::output::Format;
use crate::secret::Secret;
use crate::token::Token;
use crate::worker::{Mode, Start, Worker, WorkerContext};

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
    let mut tasks = tokio::task::JoinSet::new();
    for client in &config.clients {
        let spec = Arc::new(client.clone());
        let worker = Worker::new(spec, Arc::clone(&context), None);
        let name = client.name.to_string();
        // The sender stays alive until the worker ends, so the worker never sees a closed
        // command channel.
        let (commands_tx, commands) = mpsc::unbounded_channel();
        tasks.spawn(async move {
            let result = worker
                .run(Mode::Once { deadline }, Start::ReuseSaved, commands)
                .await;
            drop(commands_tx);
            (name, result)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(message))) => failed.push((name, message)),
            Err(error) => failed.push(("?".to_owned(), format!("worker task failed: {error}"))),
        }
    }
    failed.sort();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(OnceFailure { failed })
    }
}

/// Why `bearerd token` printed no token: a usage error (exit 2) or a failed fetch (1).
#[derive(Debug)]
pub enum TokenError {
    UnknownClient(String),
    /// The request cannot be served as asked (an `apiVersion` bearerd does not speak).
    Usage(String),
    Failed(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownClient(message) | Self::Usage(message) | Self::Failed(message) => {
                f.write_str(message)
            }
        }
    }
}

/// How `bearerd token` gets its token and what it prints.
#[derive(Clone, Debug, Default)]
pub struct TokenOptions {
    /// Reuse the saved token while it is not due, else fetch one and save it.
    pub cached: bool,
    pub format: TokenFormat,
    /// `KUBERNETES_EXEC_INFO`, if set; only `exec-credential` reads it.
    pub exec_info: Option<OsString>,
}

/// How often a `--cached` caller that finds the lock held tries it again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// How long a `--cached` caller waits for another caller's fetch: the holder makes at most two
/// requests (discovery, token), each bounded by `http_timeout`; past that it is stuck, not slow.
fn lock_wait(agent: &Agent) -> Duration {
    agent
        .http_timeout
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(5))
}

/// `bearerd token [--cached] [--format FORMAT] NAME`: what to print on stdout, one token in
/// the chosen format. Without `cached`, a token fetched now (no retries, no files written).
/// With it, see [`cached_token`]. Nothing is fetched for a request that cannot be served
/// (an unknown client, an `apiVersion` bearerd does not speak).
pub async fn token(
    config: &Config,
    name: &str,
    options: &TokenOptions,
    clock: Clock,
) -> Result<Secret, TokenError> {
    let Some(client) = config.client(name) else {
        let names: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
        return Err(TokenError::UnknownClient(format!(
            "no client named {name:?} in {} (clients: {})",
            config.path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let printed = Printed::choose(options, client)?;
    let token = if options.cached {
        cached_token(config, client, &clock).await?
    } else {
        fetch_token(config, client, &clock).await?
    };
    Ok(printed.render(&token, client))
}

/// One request for `client`'s token, now.
async fn fetch_token(
    config: &Config,
    client: &ClientSpec,
    clock: &Clock,
) -> Result<Token, TokenError> {
    let http_clients = HttpClients::new(config.agent.http_timeout);
    Session::new()
        .fetch(
            &client.request,
            &http_clients,
            clock,
            config.agent.default_lifetime,
        )
        .await
        .map_err(|error| TokenError::Failed(format!("client {}: {error}", client.name)))
}

/// `--cached`: the token in `client`'s state file (the one a daemon of this config keeps) while
/// it is before its refresh point, else one fetched now and saved there with the daemon's
/// writer, so that the daemon, `run --once` and the next caller reuse it. Concurrent callers
/// take turns on the lock beside the state file and look again once they hold it, so they send
/// one request between them. Token files are not written: they are the daemon's.
async fn cached_token(
    config: &Config,
    client: &ClientSpec,
    clock: &Clock,
) -> Result<Token, TokenError> {
    let failed = |message: String| TokenError::Failed(format!("client {}: {message}", client.name));
    let path = state::path(&config.agent, client);
    if let Some(token) = reusable(&config.agent, &path, client, clock.now()) {
        return Ok(token);
    }
    let lock = state::LockFile::open(&state::lock_path(&path)).map_err(failed)?;
    let waiting = Instant::now();
    while !lock.try_lock().map_err(failed)? {
        let wait = lock_wait(&config.agent);
        if waiting.elapsed() >= wait {
            return Err(failed(format!(
                "another process has held {} for {} without finishing its request; \
                 is a `bearerd token --cached` stuck?",
                lock.path().display(),
                humantime::format_duration(wait)
            )));
        }
        clock.sleep(LOCK_POLL).await;
    }
    // Whoever held the lock may have just saved a fresh token.
    if let Some(token) = reusable(&config.agent, &path, client, clock.now()) {
        return Ok(token);
    }
    let token = fetch_token(config, client, clock).await?;
    match state::save(&path, client, &token) {
        Ok(()) => tracing::debug!(
            client = %client.name,
            token = %token.access_token.fingerprint(),
            path = %path.display(),
            "fetched and saved a token"
        ),
        Err(message) => tracing::warn!(
            client = %client.name,
            %message,
            "cannot save the token; the next --cached call will fetch again"
        ),
    }
    drop(lock);
    Ok(token)
}

/// The token saved at `path` for `client`, if it is before its refresh point at `now`: the
/// daemon's restore test, with no jitter. Jitter spreads replicas that refresh on their own;
/// `--cached` callers coordinate through the lock instead, so they take the latest point the
/// daemon could pick, which a running daemon has always refreshed by.
fn reusable(agent: &Agent, path: &Path, client: &ClientSpec, now: SystemTime) -> Option<Token> {
    let token = state::load(path, client)?;
    let refresh_at =
        schedule::refresh_deadline(token.issued_at, token.expires_at, agent.refresh_at, 0.0);
    if now < refresh_at {
        tracing::debug!(
            client = %client.name,
            token = %token.access_token.fingerprint(),
            next_refresh = %humantime::format_rfc3339_seconds(refresh_at),
            "reusing the saved token"
        );
        Some(token)
    } else {
        None
    }
}

/// What `bearerd token` prints: the bytes of an output format, or an `ExecCredential`.
enum Printed {
    Output(Format),
    ExecCredential(ApiVersion),
}

impl Printed {
    /// `options.format` for `client`: `env` uses the variable of its first `env` output, so the
    /// bytes match that file; `exec-credential` the version `KUBERNETES_EXEC_INFO` asks for.
    fn choose(options: &TokenOptions, client: &ClientSpec) -> Result<Self, TokenError> {
        Ok(match options.format {
            TokenFormat::Token => Self::Output(Format::Token),
            TokenFormat::Env => {
                let variable = client
                    .outputs
                    .iter()
                    .find_map(|output| match &output.format {
                        Format::Env { variable } => Some(variable.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| client.name.env_variable());
                Self::Output(Format::Env { variable })
            }
            TokenFormat::Header => Self::Output(Format::Header),
            TokenFormat::Json => Self::Output(Format::Json),
            TokenFormat::ExecCredential => {
                let exec_info = match &options.exec_info {
                    Some(value) => Some(value.to_str().ok_or_else(|| {
                        TokenError::Usage(format!(
                            "{} is not valid UTF-8",
                            exec_credential::EXEC_INFO_VARIABLE
                        ))
                    })?),
                    None => None,
                };
                Self::ExecCredential(ApiVersion::requested(exec_info).map_err(TokenError::Usage)?)
            }
        })
    }

    fn render(&self, token: &Token, client: &ClientSpec) -> Secret {
        let bytes = match self {
            Self::Output(format) => output::render(format, token, client.name.as_str()),
            Self::ExecCredential(version) => exec_credential::render(*version, token),
        };
        // Every format here is UTF-8 (a b64token inside ASCII or JSON): nothing is replaced.
        Secret::new(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `bearerd check`: what the configuration would do, one client at a time. Never a secret.
pub fn check(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {} client(s)",
        config.path.display(),
        config.clients.len()
    );
    let agent = &config.agent;
    let _ = writeln!(
        out,
        "agent: refresh_at {}, http_timeout {}, max_concurrent_requests {}, listen {}",
        agent.refresh_at,
        humantime::format_duration(agent.http_timeout),
        agent.max_concurrent_requests,
        agent
            .listen
            .map_or("off".to_owned(), |address| address.to_string()),
    );
    for client in &config.clients {
        let _ = writeln!(out, "\nclient {}", client.name);
        let endpoint = match &client.request.endpoint {
            Endpoint::TokenUrl(url) => format!("token_url {}", config::display_url(url)),
            Endpoint::Issuer(url) => {
                format!("issuer {} (OIDC discovery)", config::display_url(url))
            }
        };
        let _ = writeln!(out, "  endpoint   {endpoint}");
        let _ = writeln!(out, "  client_id  {}", client.request.client_id);
        let credential = match &client.request.auth {
            Auth::Secret {
                secret: SecretSource::Inline(_),
                ..
            } => "client_secret (inline)".to_owned(),
            Auth::Secret {
                secret: SecretSource::File { path, .. },
                ..
            } => format!("client_secret_file {}", path.display()),
            Auth::PrivateKeyJwt {
                key_file, key_id, ..
            } => format!(
                "private_key_file {}{}",
                key_file.display(),
                key_id
                    .as_ref()
                    .map_or(String::new(), |kid| format!(" (kid {kid})"))
            ),
            Auth::TlsClientAuth => "client certificate".to_owned(),
        };
        let method = client.request.auth_method_name().unwrap_or(
            "from discovery (first supported of client_secret_basic, client_secret_post)",
        );
        let _ = writeln!(out, "  auth       {method}, {credential}");
        if let Some(audience) = &client.request.audience {
            let _ = writeln!(out, "  audience   {audience}");
        }
        if let Some(scope) = &client.request.scope {
            let _ = writeln!(out, "  scope      {scope}");
        }
        // Parameter values may carry credentials (an API key): names only.
        for key in client.request.extra_params.keys() {
            let _ = writeln!(out, "  param      {key}");
        }
        for output in &client.outputs {
            let format = match &output.format {
                Format::Env { variable } => format!("env {variable}"),
                other => other.name().to_owned(),
            };
            let _ = writeln!(
                out,
                "  output     {} ({format}, {:04o})",
                output.path.display(),
                output.mode
            );
        }
        let _ = writeln!(
            out,
            "  state      {}",
            state::path(&config.agent, client).display()
        );
    }
    let writable = preflight::writable_directories(config);
    if !writable.is_empty() {
        out.push('\n');
    }
    for (dir, mode) in writable {
        let _ = writeln!(
            out,
            "warning: {} (mode {mode:04o}): {}",
            dir.display(),
            preflight::WRITABLE_DIRECTORY
        );
    }
    out
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
