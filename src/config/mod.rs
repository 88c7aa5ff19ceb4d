//! The configuration file: TOML text → spanned tree → validated, typed [`Config`].
//! It reads the config file and the files it names (through `crate::files`), nothing else;
//! no network, no clock.
//!
//! # Layout
//! - `url`: `check_url_scheme` (`https`, or `http` to a loopback host or when allowed) and
//!   `display_url` (a URL fit for messages): a leaf.
//! - `client`: one client's settings, typed: [`ClientName`], [`ClientSpec`] (a name, a
//!   [`RequestSpec`], outputs and hooks), [`Endpoint`], [`Auth`] and its secret, TLS,
//!   [`OnRefresh`], [`OnExpiry`].
//! - `diagnostic`: [`Diagnostic`], [`ConfigError`] (the first [`SHOWN_PROBLEMS`], then a
//!   count), the collector of problems and the line/column index.
//! - `check`: the validator that turns the spanned TOML tree into these types, one file per
//!   section: `mod.rs` ([`Config::load`] / [`Config::parse`], the `Checker`, the whole file,
//!   typed getters, `${VAR}`, paths), `agent`, `client`, `credentials` (auth, secret, key, TLS
//!   identity), `output`, `on_refresh`.
//! - `mod.rs`: [`Config`], [`Agent`] and the files a config names; it imports none of the
//!   files above but declares them (`check` builds its types).

mod check;
mod client;
mod diagnostic;
#[cfg(test)]
mod fixtures;
mod url;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::client::{
    Auth, ClientName, ClientSpec, Endpoint, Grant, JwtAssertion, OnExpiry, OnRefresh, RequestSpec,
    SecretMethod, SecretSource, TlsIdentity, TlsSettings, TypedTokenFile,
};
pub(crate) use self::client::{JWT_BEARER_ASSERTION_TYPE, JWT_TOKEN_TYPE};
pub use self::diagnostic::{ConfigError, Diagnostic, SHOWN_PROBLEMS};
pub(crate) use self::url::{check_url_scheme, display_url};

/// Where the config lives when neither `-c` nor `$BEARERD_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/bearerd/bearerd.toml";

/// A whole, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub agent: Agent,
    /// Sorted by name; names are unique. Shared: the config and each client's worker hold the
    /// one copy (with 10,000 clients a second copy was 7 MB, BENCHMARKS.md).
    pub clients: Vec<Arc<ClientSpec>>,
}

/// `[agent]`: settings shared by every client.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Refresh once this fraction of a token's lifetime has passed (0 < x < 1).
    pub(crate) refresh_at: f64,
    pub listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub(crate) http_timeout: Duration,
    pub(crate) max_concurrent_requests: usize,
    /// Token requests per second to each token endpoint host (0.001 to 10,000); `None`: no limit.
    pub(crate) max_requests_per_second: Option<f64>,
    /// Lifetime assumed when a response has neither `expires_in` nor a JWT `exp`.
    pub(crate) default_lifetime: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Where per-client state files go; `None`: beside each client's first output.
    pub(crate) state_dir: Option<PathBuf>,
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            refresh_at: 0.8,
            listen: None,
            log_format: LogFormat::Text,
            http_timeout: Duration::from_secs(10),
            max_concurrent_requests: 4,
            max_requests_per_second: None,
            default_lifetime: Duration::from_secs(300),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            state_dir: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The files that hold credentials: the config itself, secret files and private keys.
    pub(crate) fn credential_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for client in &self.clients {
            match &client.request.auth {
                Auth::Secret {
                    secret: SecretSource::File { path, .. },
                    ..
                } => files.push(path.clone()),
                Auth::ClientSecretJwt {
                    secret: SecretSource::File { path, .. },
                    ..
                } => files.push(path.clone()),
                Auth::PrivateKeyJwt { key_file, .. } => files.push(key_file.clone()),
                Auth::Secret { .. }
                | Auth::ClientSecretJwt { .. }
                | Auth::TlsClientAuth
                | Auth::ClientAssertion { .. }
                | Auth::Public => {}
            }
            if let Grant::JwtBearer(JwtAssertion::Signed { key_file, .. }) = &client.request.grant {
                files.push(key_file.clone());
            }
            if let Some(identity) = &client.request.tls.identity {
                files.push(identity.key_file.clone());
            }
        }
        files
    }

    /// The token files clients read at every request (assertions, subject and actor tokens):
    /// watched, but a change retries the clients waiting on them instead of reloading.
    /// Not in [`Config::credential_files`]: short-lived and audience-bound, they are often
    /// readable by others by design (a projected volume), so no permission warning.
    pub(crate) fn token_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .clients
            .iter()
            .flat_map(|client| client.request.token_files())
            .map(|(_, path)| path.to_path_buf())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Every file whose change should trigger a reload, or (token files) a retry: the config
    /// and the files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.credential_files();
        files.extend(self.token_files());
        for client in &self.clients {
            if let Some(identity) = &client.request.tls.identity {
                files.push(identity.cert_file.clone());
            }
            if let Some(ca_file) = &client.request.tls.ca_file {
                files.push(ca_file.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// A binary search (the clients are sorted by name): the supervisor looks up every client
    /// at start and at each reload, so a scan made 100,000 clients quadratic.
    pub fn client(&self, name: &str) -> Option<&Arc<ClientSpec>> {
        self.clients
            .binary_search_by(|client| client.name.as_str().cmp(name))
            .ok()
            .and_then(|index| self.clients.get(index))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::fixtures::{TASKLIST, errors, parse};
    use super::*;
    use crate::output::Format;
    use crate::secret::Secret;

    #[test]
    fn the_request_rate_is_off_unless_set_and_takes_whole_numbers_and_fractions() {
        let base = TASKLIST.replace("max_concurrent_requests = 2", "");
        let rate = |line: &str| {
            parse(&base.replace("[agent]", &format!("[agent]\n{line}")))
                .expect("valid")
                .agent
                .max_requests_per_second
        };
        assert_eq!(rate(""), None);
        assert_eq!(rate("max_requests_per_second = 2"), Some(2.0));
        assert_eq!(rate("max_requests_per_second = 0.5"), Some(0.5));
        for bad in ["0", "-1", "0.0001", "20000", "nan", "inf"] {
            let lines = errors(&base.replace(
                "[agent]",
                &format!("[agent]\nmax_requests_per_second = {bad}"),
            ));
            assert!(
                lines.len() == 1 && lines[0].contains("agent.max_requests_per_second: expected"),
                "{bad}: {lines:?}"
            );
        }
    }

    #[test]
    fn a_full_config_parses_into_typed_settings() {
        let config = parse(TASKLIST).expect("valid");
        assert_eq!(config.agent.refresh_at, 0.75);
        assert_eq!(config.agent.log_format, LogFormat::Json);
        assert_eq!(config.agent.http_timeout, Duration::from_secs(5));
        assert_eq!(config.agent.max_concurrent_requests, 2);
        assert_eq!(
            config.agent.listen,
            Some("127.0.0.1:9161".parse().expect("address"))
        );
        let client = config.client("tasklist").expect("client");
        assert_eq!(client.request.client_id, "tasklist-bot");
        assert_eq!(
            client.request.auth,
            Auth::Secret {
                secret: SecretSource::Inline(Secret::new("s3cr3t +/%:&= x")),
                method: Some(SecretMethod::Json),
            }
        );
        assert_eq!(
            client.request.audience.as_deref(),
            Some("tasklist.camunda.io")
        );
        assert_eq!(
            client.request.extra_params["resource"],
            "https://api.example.com"
        );
        assert_eq!(client.outputs.len(), 3);
        assert_eq!(client.outputs[0].mode, 0o600);
        assert_eq!(client.outputs[1].mode, 0o640);
        assert_eq!(
            client.outputs[1].path,
            PathBuf::from("/etc/bearerd/tasklist.env"),
            "relative paths are taken from the config file's directory"
        );
        assert_eq!(
            client.outputs[1].format,
            Format::Env {
                variable: "TASKLIST_TOKEN".to_owned()
            }
        );
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let config = parse(
            r#"
[clients.my-api]
token_url = "http://127.0.0.1:8080/token"
client_id = "id"
client_secret = "secret"
[[clients.my-api.output]]
path = "/tmp/x"
format = "env"
"#,
        )
        .expect("valid");
        assert_eq!(config.agent, Agent::default());
        let client = &config.clients[0];
        assert!(matches!(
            client.request.auth,
            Auth::Secret {
                method: Some(SecretMethod::Basic),
                ..
            }
        ));
        assert_eq!(
            client.outputs[0].format,
            Format::Env {
                variable: "MY_API_TOKEN".to_owned()
            }
        );
        assert_eq!(client.on_expiry, OnExpiry::Keep);
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let lines = errors(
            r#"
[agent]
refresh_at = 2.0
bogus = 1

[clients.api]
token_url = "http://idp.example.com/token"
client_id = "id"
client_secret = "secret"
[[clients.api.output]]
path = "/tmp/x"
mode = "0999"
"#,
        );
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("/etc/bearerd/bearerd.toml:4:1: agent.bogus: unknown key"));
        assert!(
            lines[1].starts_with(
                "/etc/bearerd/bearerd.toml:3:14: agent.refresh_at: expected a fraction"
            )
        );
        assert!(lines[2].starts_with(
            "/etc/bearerd/bearerd.toml:7:13: clients.api.token_url: expected an https URL"
        ));
        assert!(lines[3].starts_with(
            "/etc/bearerd/bearerd.toml:12:8: clients.api.output[0].mode: expected an octal"
        ));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = parse(TASKLIST).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }
}
