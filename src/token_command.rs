//! `bearerd token`: one client's token in the format asked for, fetched now or, with
//! `--cached`, the one in its state file while it is not due (the lock beside it taken while
//! fetching, so concurrent callers send one request). It retries nothing and writes no token
//! file: token files are the daemon's.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::cli::TokenFormat;
use crate::clock::Clock;
use crate::config::{Agent, ClientSpec, Config};
use crate::exec_credential::{self, ApiVersion};
use crate::oauth::{HttpClients, Session};
use crate::output::{self, Format};
use crate::schedule;
use crate::secret::Secret;
use crate::state;
use crate::token::Token;

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

/// What `bearerd token` prints for the client called `name` (the crate's `token` entry point):
/// without `options.cached`, a token fetched now; with it, see [`cached_token`]. Nothing is
/// fetched for a request that cannot be served (an unknown client, an `apiVersion` bearerd
/// does not speak).
pub(crate) async fn token(
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
    // Another user's lock or state file would lock the daemon's user out of `--cached` for
    // good (it can neither take nor replace it): refuse before anything is created there.
    state_directory_is_ours(&path).map_err(failed)?;
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

/// The directory of the state file at `path` must belong to this user (or not exist yet: it is
/// then created, 0700, as ours): `--cached` run as root beside a daemon running as `bearerd`
/// would otherwise leave root-owned lock and state files the daemon's user cannot use.
fn state_directory_is_ours(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let owner = match rustix::fs::stat(dir) {
        Ok(stat) => stat.st_uid,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(error) => {
            return Err(format!(
                "cannot inspect the state directory {}: {error}",
                dir.display()
            ));
        }
    };
    let me = rustix::process::geteuid().as_raw();
    if owner == me {
        Ok(())
    } else {
        Err(format!(
            "the state directory {} belongs to uid {owner}, not to this user (uid {me}): run \
             `bearerd token --cached` as uid {owner} (e.g. `sudo -u bearerd …` under the Debian \
             package), or use `bearerd token` without --cached",
            dir.display()
        ))
    }
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
