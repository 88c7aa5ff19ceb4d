//! The configuration file: TOML text → spanned tree → validated, typed [`Config`].
//! It reads the config file and secret files, nothing else; no network, no clock.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::output::OutputSpec;
use crate::secret::Secret;

/// Where the config lives when neither `-c` nor `$BEARERD_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/bearerd/bearerd.toml";

/// A whole, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub agent: Agent,
    /// Sorted by name; names are unique.
    pub clients: Vec<ClientSpec>,
}

/// `[agent]`: settings shared by every client.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Refresh once this fraction of a token's lifetime has passed (0 < x < 1).
    pub refresh_at: f64,
    pub listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub http_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// Lifetime assumed when a response has neither `expires_in` nor a JWT `exp`.
    pub default_lifetime: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Where per-client state files go; `None`: beside each client's first output.
    pub state_dir: Option<PathBuf>,
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            refresh_at: 0.8,
            listen: None,
            log_format: LogFormat::Text,
            http_timeout: Duration::from_secs(10),
            max_concurrent_requests: 4,
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

/// A client's name: `[A-Za-z0-9_-]+`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientName(String);

impl ClientName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "invalid client name {name:?}: expected one or more of A-Z a-z 0-9 _ -"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default `env` variable: upper-cased, `-` → `_`, then `_TOKEN`.
    pub fn env_variable(&self) -> String {
        let mut variable: String = self
            .0
            .chars()
            .map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() })
            .collect();
        variable.push_str("_TOKEN");
        variable
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `[clients.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSpec {
    pub name: ClientName,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub auth: Auth,
    pub audience: Option<String>,
    pub scope: Option<String>,
    /// Sent as extra token-request parameters, in key order.
    pub extra_params: BTreeMap<String, String>,
    /// Tls settings for the token endpoint (and discovery).
    pub tls: TlsSettings,
    pub outputs: Vec<OutputSpec>,
    pub on_refresh: Option<OnRefresh>,
    pub on_expiry: OnExpiry,
}

/// Where the token endpoint comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TokenUrl(Url),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration`.
    Issuer(Url),
}

/// How the client proves who it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// `method: None` only with an issuer: chosen from the discovery document.
    Secret {
        secret: SecretSource,
        method: Option<SecretMethod>,
    },
    PrivateKeyJwt {
        key_file: PathBuf,
        key_id: Option<String>,
    },
    /// RFC 8705: the client certificate in [`TlsSettings::identity`] is the credential.
    TlsClientAuth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretMethod {
    /// RFC 6749 §2.3.1: HTTP Basic with form-urlencoded id and secret.
    Basic,
    /// RFC 6749 §2.3.1: id and secret in the form body.
    Post,
    /// Camunda/Auth0 style: every parameter in a JSON body.
    Json,
}

impl SecretMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "client_secret_basic",
            Self::Post => "client_secret_post",
            Self::Json => "client_secret_json",
        }
    }
}

/// A client secret as configured; a file's content is read at load (to validate it and to
/// notice changes) and again at every use (so rotation works).
#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    Inline(Secret),
    File { path: PathBuf, loaded: Secret },
}

impl SecretSource {
    /// The secret as it is now: a file is re-read; one trailing newline is trimmed.
    pub fn current(&self) -> Result<Secret, String> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File { path, .. } => read_secret_file(path),
        }
    }
}

/// Reads a secret file, trimming one trailing newline (`\n` or `\r\n`); empty is an error.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read secret file {}: {error}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret::new(text))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// A PEM bundle added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS (`tls_client_auth`, or mTLS with any method).
    pub identity: Option<TlsIdentity>,
    pub proxy: Option<Url>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[clients.NAME.on_refresh]`: tell a consumer that new files are in place.
#[derive(Clone, Debug, PartialEq)]
pub enum OnRefresh {
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    Signal {
        signal: i32,
        signal_name: String,
        pid_file: PathBuf,
    },
}

/// What happens to a client's files once its token has expired and no new one came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExpiry {
    #[default]
    Keep,
    Remove,
}
