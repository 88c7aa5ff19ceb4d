//! bearerd keeps OAuth 2.0 client-credentials access tokens fresh on disk.
//!
//! # Layout
//! - [`cli`]: the clap definition (the binary, the man page and completions use it).
//! - [`config`]: the TOML file → a validated [`config::Config`] (every error located).
//! - [`files`]: reading the config and the files it names: regular files within a size cap.
//! - [`secret`]: [`secret::Secret`], whose value only `expose()` reveals; fingerprints.
//! - [`token`](mod@token): [`token::Token`] and the RFC 6750 `b64token` check (a leaf).
//! - [`oauth`]: one token request (auth methods, discovery, response parsing).
//! - [`schedule`]: pure timing: refresh deadlines and backoff.
//! - [`clock`]: the only place that reads the wall clock or sleeps.
//! - [`output`]: rendering formats (pure) and atomic, durable file writes.
//! - [`state`]: the per-client state file that lets a restart reuse a valid token.
//! - [`worker`]: one client's loop; the only place that retries.
//! - [`supervisor`]: the event loop; owns the workers, plans reloads, publishes status.
//! - [`events`]: signals, file changes and clock steps → `Event`s (the only OS-event code).
//! - [`systemd`]: sd_notify (reads status only).
//! - [`metrics`], [`http`]: Prometheus metrics and `/healthz`, `/readyz`, `/metrics`.
//! - [`hooks`]: `on_refresh` commands and signals.
//!
//! The entry points below are what the binary calls; tests and examples call them too.

pub mod cli;
pub mod clock;
pub mod config;
pub mod events;
pub mod files;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod output;
pub mod schedule;
pub mod secret;
pub mod state;
pub mod supervisor;
pub mod systemd;
pub mod token;
pub mod worker;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::{Auth, Config, Endpoint, SecretSource};
use crate::oauth::{HttpClients, Session};
use crate::output::Format;
use crate::secret::Secret;
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

/// The directories bearerd writes token and state files into.
fn file_directories(config: &Config) -> BTreeSet<&Path> {
    let mut dirs: BTreeSet<&Path> = config
        .clients
        .iter()
        .flat_map(|client| client.outputs.iter())
        .filter_map(|output| output.path.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .collect();
    if let Some(state_dir) = &config.agent.state_dir {
        dirs.insert(state_dir);
    }
    dirs
}

/// Removes temporary files that a crash left in the output directories of `config`.
pub fn sweep_stale_temps(config: &Config) {
    for dir in file_directories(config) {
        match output::sweep_stale_temps(dir) {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed a temporary file left by a crash");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot clean up temporary files"),
        }
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
    sweep_stale_temps(config);
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

/// Why `bearerd token NAME` printed no token: a usage error (exit 2) or a failed fetch (1).
#[derive(Debug)]
pub enum TokenError {
    UnknownClient(String),
    Failed(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownClient(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// `bearerd token NAME`: one fresh token, fetched now (no retries, no files written).
pub async fn token(config: &Config, name: &str) -> Result<Secret, TokenError> {
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
    let http_clients = HttpClients::new(config.agent.http_timeout);
    let mut session = Session::new(Arc::new(client.clone()));
    session
        .fetch(
            &http_clients,
            &Clock::system(),
            config.agent.default_lifetime,
        )
        .await
        .map(|token| token.access_token)
        .map_err(|error| TokenError::Failed(format!("client {name}: {error}")))
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
        let endpoint = match &client.endpoint {
            Endpoint::TokenUrl(url) => format!("token_url {}", config::display_url(url)),
            Endpoint::Issuer(url) => {
                format!("issuer {} (OIDC discovery)", config::display_url(url))
            }
        };
        let _ = writeln!(out, "  endpoint   {endpoint}");
        let _ = writeln!(out, "  client_id  {}", client.client_id);
        let credential = match &client.auth {
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
        let method = client.auth_method_name().unwrap_or(
            "from discovery (first supported of client_secret_basic, client_secret_post)",
        );
        let _ = writeln!(out, "  auth       {method}, {credential}");
        if let Some(audience) = &client.audience {
            let _ = writeln!(out, "  audience   {audience}");
        }
        if let Some(scope) = &client.scope {
            let _ = writeln!(out, "  scope      {scope}");
        }
        // Parameter values may carry credentials (an API key): names only.
        for key in client.extra_params.keys() {
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
    let writable = writable_directories(config);
    if !writable.is_empty() {
        out.push('\n');
    }
    for (dir, mode) in writable {
        let _ = writeln!(
            out,
            "warning: {} (mode {mode:04o}): {WRITABLE_DIRECTORY}",
            dir.display()
        );
    }
    out
}

/// What is wrong with a directory that [`writable_directories`] returns.
const WRITABLE_DIRECTORY: &str = "directory of token or state files is writable by other users, \
    who could plant or replace files in it; chmod go-w it";

/// The output and state directories that other users can write to (a group or others write
/// bit, sticky or not), with their modes: they could plant a state file there, and without the
/// sticky bit swap a token file under its readers.
pub fn writable_directories(config: &Config) -> Vec<(&Path, u32)> {
    use std::os::unix::fs::PermissionsExt;
    file_directories(config)
        .into_iter()
        .filter_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
            (mode & 0o022 != 0).then_some((dir, mode))
        })
        .collect()
}

/// Warns when the config file, a secret file or a private key can be read by other users, and
/// when an output or state directory can be written by them.
pub fn warn_about_permissions(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    for file in config.credential_files() {
        if let Ok(metadata) = std::fs::metadata(&file)
            && metadata.permissions().mode() & 0o004 != 0
        {
            tracing::warn!(
                path = %file.display(),
                mode = %format!("{:04o}", metadata.permissions().mode() & 0o7777),
                "file with credentials is readable by every user; chmod o-r it"
            );
        }
    }
    for (dir, mode) in writable_directories(config) {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:04o}"),
            "{WRITABLE_DIRECTORY}"
        );
    }
}

/// Raises the soft limit on open files to the hard limit, as systemd advises programs that need
/// more than its default soft limit of 1,024 (kept low for `select()`; bearerd uses epoll).
/// Under the packaged unit both are `LimitNOFILE=`, so this changes nothing there.
pub fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = current, to = maximum, "raised the open-file limit"),
            Err(error) => {
                tracing::warn!(%error, limit = current, "cannot raise the open-file limit")
            }
        }
    }
}

/// `bearerd run`: the daemon. Returns after SIGTERM/SIGINT, with no task left running.
pub async fn run(config: Config, clock: Clock) -> Result<(), String> {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    run_with_events(config, clock, events_tx, events_rx).await
}

/// The daemon with its event channel exposed, so tests can inject events (a clock jump)
/// beside the real signals, file watches and clock watch.
pub async fn run_with_events(
    config: Config,
    clock: Clock,
    events_tx: mpsc::UnboundedSender<events::Event>,
    events_rx: mpsc::UnboundedReceiver<events::Event>,
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    events::spawn_signals(&mut tasks, events_tx.clone())
        .map_err(|error| format!("cannot install signal handlers: {error}"))?;
    if let Err(error) = events::spawn_clock_watch(&mut tasks, events_tx.clone()) {
        tracing::warn!(%error, "cannot watch for clock changes; a resume may be noticed late");
    }
    let listener = match config.agent.listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| format!("cannot listen on {address}: {error}"))?,
        ),
        None => None,
    };
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    let supervisor = supervisor::Supervisor::new(config, clock.clone(), notices_tx);
    if let Some(listener) = listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving /healthz, /readyz and /metrics");
        }
        let observed = http::Observed {
            status: supervisor.status(),
            metrics: supervisor.metrics(),
            clock: clock.clone(),
        };
        tasks.spawn(http::serve(listener, observed));
    }
    let mut watched = supervisor.watched_files.subscribe();
    let initial: Vec<_> = watched.borrow_and_update().clone();
    match events::FileWatch::start(&mut tasks, &initial, events_tx) {
        Ok(mut watch) => {
            tasks.spawn(async move {
                while watched.changed().await.is_ok() {
                    let files = watched.borrow_and_update().clone();
                    watch.set_files(&files);
                }
            });
        }
        Err(error) => tracing::warn!(%error, "config changes need SIGHUP"),
    }
    let notifier = systemd::spawn(notices_rx, supervisor.status(), clock);
    supervisor.run(events_rx).await;
    let _ = notifier.await;
    tasks.shutdown().await;
    Ok(())
}
