//! The configuration file: TOML text → spanned tree → validated, typed [`Config`].
//! It reads the config file and the files it names (through [`crate::files`]), nothing else;
//! no network, no clock.

use std::collections::BTreeMap;
use std::env::VarError;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::files;
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
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            })
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
    /// TLS settings for the token endpoint (and discovery).
    pub tls: TlsSettings,
    /// Plain `http` to a remote host was allowed explicitly.
    pub allow_insecure_http: bool,
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
        /// The assertion's `aud`; `None`: the token endpoint URL.
        assertion_audience: Option<String>,
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
    let mut text =
        files::read_text(path, files::Kind::ClientSecret).map_err(|error| error.to_string())?;
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

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// A PEM bundle added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS (`tls_client_auth`, or mTLS with any method).
    pub identity: Option<TlsIdentity>,
    pub proxy: Option<Url>,
}

impl fmt::Debug for TlsSettings {
    /// The proxy URL may carry credentials (`http://user:password@proxy`): shown without them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_file", &self.ca_file)
            .field("identity", &self.identity)
            .field("proxy", &self.proxy.as_ref().map(display_url))
            .finish()
    }
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
        /// Variables passed on from bearerd's environment, beside the ones it always sets.
        pass_env: Vec<String>,
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

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::output::{self, Format, Template};

/// One problem in a config file, located where the TOML gives a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based; `None` when the problem has no place in the text (e.g. an unreadable file).
    pub location: Option<(usize, usize)>,
    /// The dotted key, e.g. `clients.tasklist.output[1].mode`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

/// How many problems a [`ConfigError`] keeps and shows; the rest are only counted, so that a
/// file with a million mistakes costs neither a million messages nor the time to locate them.
pub const SHOWN_PROBLEMS: usize = 100;

/// The problems found in a config file: the first [`SHOWN_PROBLEMS`], in the order found, and
/// how many more there were. `Display` prints one `file:line:col: key: message` line per
/// problem kept, then `file: and N more problems (…)` if there were more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
    /// Problems found beyond `diagnostics`.
    pub more: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some((line, column)) = diagnostic.location {
                write!(f, ":{line}:{column}")?;
            }
            if diagnostic.key.is_empty() {
                write!(f, ": {}", diagnostic.message)?;
            } else {
                write!(f, ": {}: {}", diagnostic.key, diagnostic.message)?;
            }
        }
        if self.more > 0 {
            let problems = if self.more == 1 {
                "problem"
            } else {
                "problems"
            };
            write!(
                f,
                "\n{}: and {} more {problems} (only the first {} are shown)",
                self.path.display(),
                self.more,
                self.diagnostics.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = files::read_text(path, files::Kind::Config).map_err(|error| ConfigError {
            path: path.to_owned(),
            diagnostics: vec![Diagnostic {
                location: None,
                key: String::new(),
                message: error.without_path(),
            }],
            more: 0,
        })?;
        Self::parse(path, &text, &|name| std::env::var(name))
    }

    /// Validates `text` as the content of `path`. Relative paths in it are taken relative to
    /// the directory of `path`. Files it names (secrets, templates) are read to validate them.
    /// `env` answers as [`std::env::var`] does, so that a variable that is set but not UTF-8
    /// is told apart from one that is not set.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Result<String, VarError>,
    ) -> Result<Config, ConfigError> {
        let mut checker = Checker {
            text,
            line_starts: std::cell::OnceCell::new(),
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            env,
            diagnostics: Problems::default(),
        };
        let config = match DeTable::parse(text) {
            Ok(root) => checker.config(path, root.get_ref()),
            Err(error) => {
                let location = error.span().map(|span| checker.location(span.start));
                checker.diagnostics.push(Diagnostic {
                    location,
                    key: String::new(),
                    message: format!("invalid TOML: {}", error.message().trim_end()),
                });
                None
            }
        };
        match config {
            Some(config) if checker.diagnostics.is_empty() => Ok(config),
            _ => {
                let more = checker.diagnostics.len() - checker.diagnostics.kept.len();
                Err(ConfigError {
                    path: path.to_owned(),
                    diagnostics: checker.diagnostics.kept,
                    more,
                })
            }
        }
    }

    /// The files that hold credentials: the config itself, secret files and private keys.
    pub fn credential_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for client in &self.clients {
            match &client.auth {
                Auth::Secret {
                    secret: SecretSource::File { path, .. },
                    ..
                } => files.push(path.clone()),
                Auth::PrivateKeyJwt { key_file, .. } => files.push(key_file.clone()),
                Auth::Secret { .. } | Auth::TlsClientAuth => {}
            }
            if let Some(identity) = &client.tls.identity {
                files.push(identity.key_file.clone());
            }
        }
        files
    }

    /// Every file whose change should trigger a reload: the config and the files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.credential_files();
        for client in &self.clients {
            if let Some(identity) = &client.tls.identity {
                files.push(identity.cert_file.clone());
            }
            if let Some(ca_file) = &client.tls.ca_file {
                files.push(ca_file.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }

    pub fn client(&self, name: &str) -> Option<&ClientSpec> {
        self.clients
            .iter()
            .find(|client| client.name.as_str() == name)
    }
}

impl ClientSpec {
    /// The method by which this client authenticates, if already known (it may come from
    /// discovery).
    pub fn auth_method_name(&self) -> Option<&'static str> {
        match &self.auth {
            Auth::Secret { method, .. } => method.map(SecretMethod::as_str),
            Auth::PrivateKeyJwt { .. } => Some("private_key_jwt"),
            Auth::TlsClientAuth => Some("tls_client_auth"),
        }
    }
}

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

struct Checker<'a> {
    text: &'a str,
    /// Where each line of `text` starts, computed at the first problem.
    line_starts: std::cell::OnceCell<Vec<usize>>,
    base_dir: PathBuf,
    env: &'a dyn Fn(&str) -> Result<String, VarError>,
    diagnostics: Problems,
}

const AGENT_KEYS: &[&str] = &[
    "refresh_at",
    "listen",
    "log_format",
    "http_timeout",
    "max_concurrent_requests",
    "default_lifetime",
    "backoff_min",
    "backoff_max",
    "state_dir",
];

const CLIENT_KEYS: &[&str] = &[
    "token_url",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_file",
    "audience",
    "scope",
    "auth_method",
    "private_key_file",
    "key_id",
    "assertion_audience",
    "tls_cert_file",
    "tls_key_file",
    "ca_file",
    "proxy",
    "extra_params",
    "allow_insecure_http",
    "output",
    "on_refresh",
    "on_expiry",
];

const OUTPUT_KEYS: &[&str] = &[
    "path",
    "format",
    "variable",
    "mode",
    "template",
    "template_file",
];

const ON_REFRESH_KEYS: &[&str] = &["command", "signal", "pid_file", "timeout", "pass_env"];

/// Parameters bearerd sets itself; `extra_params` may not override them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "audience",
];

const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", signal_hook::consts::SIGHUP),
    ("SIGINT", signal_hook::consts::SIGINT),
    ("SIGQUIT", signal_hook::consts::SIGQUIT),
    ("SIGTERM", signal_hook::consts::SIGTERM),
    ("SIGUSR1", signal_hook::consts::SIGUSR1),
    ("SIGUSR2", signal_hook::consts::SIGUSR2),
    ("SIGWINCH", signal_hook::consts::SIGWINCH),
];

/// Every problem counted, the first [`SHOWN_PROBLEMS`] kept. `len` counts them all, so a
/// section can tell whether it found any.
#[derive(Default)]
struct Problems {
    kept: Vec<Diagnostic>,
    found: usize,
}

impl Problems {
    fn len(&self) -> usize {
        self.found
    }

    fn is_empty(&self) -> bool {
        self.found == 0
    }

    fn keeps_next(&self) -> bool {
        self.kept.len() < SHOWN_PROBLEMS
    }

    fn push(&mut self, diagnostic: Diagnostic) {
        if self.keeps_next() {
            self.kept.push(diagnostic);
        }
        self.found += 1;
    }

    /// The last problem pushed, if it was kept.
    fn last_mut(&mut self) -> Option<&mut Diagnostic> {
        if self.found == self.kept.len() {
            self.kept.last_mut()
        } else {
            None
        }
    }
}

impl Checker<'_> {
    /// 1-based line and column (in characters) of a byte offset: a binary search in the line
    /// starts, then a count within the line, so that many problems cost linear time in all.
    fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(index, _)| index + 1))
                .collect()
        });
        let line = starts.partition_point(|&start| start <= offset);
        let line_start = starts[line.saturating_sub(1)];
        // Characters are the bytes that do not continue a UTF-8 sequence.
        let column = self.text.as_bytes()[line_start..offset]
            .iter()
            .filter(|&&byte| byte & 0xC0 != 0x80)
            .count();
        (line, column + 1)
    }

    fn error(&mut self, span: &Span, key: &str, message: impl Into<String>) {
        if !self.diagnostics.keeps_next() {
            self.diagnostics.found += 1;
            return;
        }
        let location = Some(self.location(span.start));
        self.diagnostics.push(Diagnostic {
            location,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn config(&mut self, path: &Path, root: &DeTable<'_>) -> Option<Config> {
        self.unknown_keys(root, "", &["agent", "clients"]);
        let agent = match root.get("agent") {
            Some(value) => match self.as_table(value, "agent") {
                Some(table) => self.agent(table, value.span()),
                None => None,
            },
            None => Some(Agent::default()),
        };
        let mut clients = Vec::new();
        if let Some(value) = root.get("clients")
            && let Some(table) = self.as_table(value, "clients")
        {
            for (name, value) in table {
                let key = format!("clients.{}", name.get_ref());
                let client_name = match ClientName::parse(name.get_ref()) {
                    Ok(client_name) => client_name,
                    Err(message) => {
                        self.error(&name.span(), &key, message);
                        continue;
                    }
                };
                if let Some(table) = self.as_table(value, &key)
                    && let Some(client) = self.client(client_name, table, value.span(), &key)
                {
                    clients.push(client);
                }
            }
        }
        self.duplicate_paths(&clients, root);
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        // The config lives as long as the daemon: give back the growth slack (with 10,000
        // clients it was 11 MB of a 66 MB heap, BENCHMARKS.md).
        clients.shrink_to_fit();
        Some(Config {
            path: path.to_owned(),
            agent: agent?,
            clients,
        })
    }

    fn agent(&mut self, table: &DeTable<'_>, span: Span) -> Option<Agent> {
        self.unknown_keys(table, "agent", AGENT_KEYS);
        let errors_before = self.diagnostics.len();
        let mut agent = Agent::default();
        if let Some((value, span)) = self.float(table, "agent", "refresh_at") {
            if value > 0.0 && value < 1.0 {
                agent.refresh_at = value;
            } else {
                self.error(
                    &span,
                    "agent.refresh_at",
                    format!("expected a fraction between 0 and 1 (exclusive), found {value}"),
                );
            }
        }
        if let Some((text, span)) = self.string(table, "agent", "listen") {
            match text.parse::<SocketAddr>() {
                Ok(address) => agent.listen = Some(address),
                Err(_) => self.error(
                    &span,
                    "agent.listen",
                    format!(
                        "expected an address and port such as \"127.0.0.1:9161\", found {text:?}"
                    ),
                ),
            }
        }
        if let Some((text, span)) = self.string(table, "agent", "log_format") {
            match text.as_str() {
                "text" => agent.log_format = LogFormat::Text,
                "json" => agent.log_format = LogFormat::Json,
                _ => self.error(
                    &span,
                    "agent.log_format",
                    format!("expected \"text\" or \"json\", found {text:?}"),
                ),
            }
        }
        if let Some(value) = self.duration(table, "agent", "http_timeout", true) {
            agent.http_timeout = value;
        }
        if let Some((value, span)) = self.integer(table, "agent", "max_concurrent_requests") {
            match usize::try_from(value) {
                Ok(count) if (1..=10_000).contains(&count) => agent.max_concurrent_requests = count,
                _ => self.error(
                    &span,
                    "agent.max_concurrent_requests",
                    format!("expected a whole number from 1 to 10000, found {value}"),
                ),
            }
        }
        if let Some(value) = self.duration(table, "agent", "default_lifetime", true) {
            agent.default_lifetime = value;
        }
        if let Some(value) = self.duration(table, "agent", "backoff_min", true) {
            agent.backoff_min = value;
        }
        if let Some(value) = self.duration(table, "agent", "backoff_max", true) {
            agent.backoff_max = value;
        }
        if agent.backoff_min > agent.backoff_max {
            self.error(
                &span,
                "agent.backoff_max",
                "expected backoff_max to be at least backoff_min",
            );
        }
        if let Some((text, _)) = self.string(table, "agent", "state_dir") {
            agent.state_dir = Some(self.resolve(&text));
        }
        (self.diagnostics.len() == errors_before).then_some(agent)
    }

    fn client(
        &mut self,
        name: ClientName,
        table: &DeTable<'_>,
        span: Span,
        prefix: &str,
    ) -> Option<ClientSpec> {
        self.unknown_keys(table, prefix, CLIENT_KEYS);
        let errors_before = self.diagnostics.len();
        let allow_insecure_http = self
            .boolean(table, prefix, "allow_insecure_http")
            .unwrap_or(false);

        let token_url = self.url(table, prefix, "token_url", allow_insecure_http);
        let issuer = self.url(table, prefix, "issuer", allow_insecure_http);
        let endpoint = match (token_url, issuer) {
            (Some(url), None) => Some(Endpoint::TokenUrl(url)),
            (None, Some(url)) => Some(Endpoint::Issuer(url)),
            (Some(_), Some(_)) => {
                let span = key_span(table, "issuer").unwrap_or(span.clone());
                self.error(
                    &span,
                    prefix,
                    "expected either token_url or issuer, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("token_url") && !table.contains_key("issuer") {
                    self.error(
                        &span,
                        prefix,
                        "missing token_url (or issuer, for OIDC discovery)",
                    );
                }
                None
            }
        };

        let client_id = self.required_string(table, &span, prefix, "client_id");
        let audience = self.non_empty_string(table, prefix, "audience");
        let scope = self.non_empty_string(table, prefix, "scope");
        let extra_params = self.extra_params(table, prefix);
        let auth = self.auth(
            table,
            &span,
            prefix,
            matches!(endpoint, Some(Endpoint::Issuer(_))),
        );

        let ca_file = self.existing_file(table, prefix, "ca_file", files::Kind::CaFile);
        let tls_cert = self.existing_file(table, prefix, "tls_cert_file", files::Kind::TlsCert);
        let tls_key = self.existing_file(table, prefix, "tls_key_file", files::Kind::TlsKey);
        let identity = match (tls_cert, tls_key) {
            (Some(cert_file), Some(key_file)) => Some(TlsIdentity {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let present = if table.contains_key("tls_cert_file") {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                };
                if table.contains_key("tls_cert_file") != table.contains_key("tls_key_file") {
                    let span = key_span(table, present).unwrap_or(span.clone());
                    self.error(
                        &span,
                        &format!("{prefix}.{present}"),
                        "expected tls_cert_file and tls_key_file together",
                    );
                }
                None
            }
        };
        if matches!(auth, Some(Auth::TlsClientAuth))
            && identity.is_none()
            && self.diagnostics.len() == errors_before
        {
            let span = key_span(table, "auth_method").unwrap_or(span.clone());
            self.error(
                &span,
                &format!("{prefix}.auth_method"),
                "tls_client_auth needs tls_cert_file and tls_key_file",
            );
        }
        let proxy = self.url(table, prefix, "proxy", true);

        let outputs = self.outputs(table, &span, prefix, &name);
        let on_refresh = match table.get("on_refresh") {
            Some(value) => {
                let key = format!("{prefix}.on_refresh");
                self.as_table(value, &key)
                    .and_then(|t| self.on_refresh(t, value.span(), &key))
            }
            None => None,
        };
        let on_expiry = match self.string(table, prefix, "on_expiry") {
            None => OnExpiry::Keep,
            Some((text, span)) => match text.as_str() {
                "keep" => OnExpiry::Keep,
                "remove" => OnExpiry::Remove,
                _ => {
                    self.error(
                        &span,
                        &format!("{prefix}.on_expiry"),
                        format!("expected \"keep\" or \"remove\", found {text:?}"),
                    );
                    OnExpiry::Keep
                }
            },
        };

        if self.diagnostics.len() != errors_before {
            return None;
        }
        Some(ClientSpec {
            name,
            endpoint: endpoint?,
            client_id: client_id?,
            auth: auth?,
            audience,
            scope,
            extra_params,
            tls: TlsSettings {
                ca_file,
                identity,
                proxy,
            },
            allow_insecure_http,
            outputs: outputs?,
            on_refresh,
            on_expiry,
        })
    }

    fn auth(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
        with_issuer: bool,
    ) -> Option<Auth> {
        let method = self.string(table, prefix, "auth_method");
        let secret = self.string(table, prefix, "client_secret");
        let secret_file = self.string(table, prefix, "client_secret_file");
        let key_file =
            self.existing_file(table, prefix, "private_key_file", files::Kind::PrivateKey);
        let key_id = self.non_empty_string(table, prefix, "key_id");
        let assertion_audience = self.non_empty_string(table, prefix, "assertion_audience");
        let method_key = format!("{prefix}.auth_method");
        let method_span = method.as_ref().map_or(span.clone(), |(_, s)| s.clone());

        let wanted = match &method {
            None => None,
            Some((text, span)) => match text.as_str() {
                "client_secret_basic" => Some("basic"),
                "client_secret_post" => Some("post"),
                "client_secret_json" => Some("json"),
                "private_key_jwt" => Some("private_key_jwt"),
                "tls_client_auth" => Some("tls_client_auth"),
                _ => {
                    self.error(
                        span,
                        &method_key,
                        format!(
                            "expected one of client_secret_basic, client_secret_post, \
                             client_secret_json, private_key_jwt, tls_client_auth; found {text:?}"
                        ),
                    );
                    return None;
                }
            },
        };
        let uses_secret = match wanted {
            Some("private_key_jwt") | Some("tls_client_auth") => false,
            Some(_) => true,
            None => key_file.is_none() && !table.contains_key("private_key_file"),
        };
        if !uses_secret {
            for unused in ["client_secret", "client_secret_file"] {
                if let Some(span) = key_span(table, unused) {
                    self.error(
                        &span,
                        &format!("{prefix}.{unused}"),
                        format!(
                            "not used with auth_method = \"{}\"; remove it",
                            wanted.unwrap_or("private_key_jwt")
                        ),
                    );
                }
            }
        } else if let Some(span) = key_span(table, "private_key_file") {
            self.error(
                &span,
                &format!("{prefix}.private_key_file"),
                "only used with auth_method = \"private_key_jwt\"",
            );
        }
        if wanted != Some("private_key_jwt")
            && (wanted.is_some() || uses_secret)
            && let Some(span) = key_span(table, "assertion_audience")
        {
            self.error(
                &span,
                &format!("{prefix}.assertion_audience"),
                "only used with auth_method = \"private_key_jwt\"",
            );
        }
        if wanted == Some("tls_client_auth") {
            return Some(Auth::TlsClientAuth);
        }
        if !uses_secret {
            return match key_file {
                Some(key_file) => Some(Auth::PrivateKeyJwt {
                    key_file,
                    key_id,
                    assertion_audience,
                }),
                None => {
                    if !table.contains_key("private_key_file") {
                        self.error(
                            &method_span,
                            &method_key,
                            "private_key_jwt needs private_key_file",
                        );
                    }
                    None
                }
            };
        }
        let source = match (secret, secret_file) {
            (Some((value, span)), None) => {
                if value.is_empty() {
                    self.error(&span, &format!("{prefix}.client_secret"), "is empty");
                    None
                } else {
                    Some(SecretSource::Inline(Secret::new(value)))
                }
            }
            (None, Some((path, span))) => {
                let path = self.resolve(&path);
                match read_secret_file(&path) {
                    Ok(loaded) => Some(SecretSource::File { path, loaded }),
                    Err(message) => {
                        self.error(&span, &format!("{prefix}.client_secret_file"), message);
                        None
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.client_secret_file"),
                    "expected either client_secret or client_secret_file, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("client_secret") && !table.contains_key("client_secret_file")
                {
                    self.error(
                        span,
                        prefix,
                        "missing client_secret (or client_secret_file, or private_key_file \
                         with auth_method = \"private_key_jwt\")",
                    );
                }
                None
            }
        };
        let method = match wanted {
            Some("post") => Some(SecretMethod::Post),
            Some("json") => Some(SecretMethod::Json),
            Some(_) => Some(SecretMethod::Basic),
            None if with_issuer => None,
            None => Some(SecretMethod::Basic),
        };
        Some(Auth::Secret {
            secret: source?,
            method,
        })
    }

    fn outputs(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
        client: &ClientName,
    ) -> Option<Vec<OutputSpec>> {
        let key = format!("{prefix}.output");
        let Some(value) = table.get("output") else {
            self.error(
                span,
                prefix,
                "missing output: add at least one [[clients.NAME.output]] with a path",
            );
            return None;
        };
        let items: Vec<&Value<'_>> = match value.get_ref() {
            DeValue::Array(array) => array.iter().collect(),
            DeValue::Table(_) => vec![value],
            other => {
                self.error(
                    &value.span(),
                    &key,
                    format!(
                        "expected an array of tables ([[{key}]]), found {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        if items.is_empty() {
            self.error(&value.span(), &key, "expected at least one output");
            return None;
        }
        let mut outputs = Vec::new();
        let mut failed = false;
        for (index, item) in items.into_iter().enumerate() {
            let key = format!("{key}[{index}]");
            match self.as_table(item, &key) {
                Some(table) => match self.output(table, item.span(), &key, client) {
                    Some(output) => outputs.push(output),
                    None => failed = true,
                },
                None => failed = true,
            }
        }
        outputs.shrink_to_fit();
        (!failed).then_some(outputs)
    }

    fn output(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        prefix: &str,
        client: &ClientName,
    ) -> Option<OutputSpec> {
        self.unknown_keys(table, prefix, OUTPUT_KEYS);
        let errors_before = self.diagnostics.len();
        let path = match self.required_string(table, &span, prefix, "path") {
            Some(text) => {
                let resolved = self.resolve(&text);
                match check_output_path(&text, &resolved) {
                    Ok(()) => Some(resolved),
                    Err(message) => {
                        let path_span = table.get("path").map_or(span.clone(), Spanned::span);
                        self.error(&path_span, &format!("{prefix}.path"), message);
                        None
                    }
                }
            }
            None => None,
        };
        let format_name = self
            .string(table, prefix, "format")
            .unwrap_or(("token".to_owned(), span.clone()));
        let mode = match self.string(table, prefix, "mode") {
            None => 0o600,
            Some((text, span)) => match parse_mode(&text) {
                Some(mode) if mode & 0o022 != 0 => {
                    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                        (true, true) => "the group and others",
                        (true, false) => "the group",
                        _ => "others",
                    };
                    self.error(
                        &span,
                        &format!("{prefix}.mode"),
                        format!(
                            "expected a mode that lets only the owner write, such as \"0600\" \
                             or \"0640\"; {text:?} lets {who} write the file"
                        ),
                    );
                    0o600
                }
                Some(mode) => mode,
                None => {
                    self.error(
                        &span,
                        &format!("{prefix}.mode"),
                        format!("expected an octal file mode such as \"0640\", found {text:?}"),
                    );
                    0o600
                }
            },
        };
        if let Some(value) = table.get("mode")
            && !matches!(value.get_ref(), DeValue::String(_))
        {
            // `string` already reported the type; add the hint that matters for modes.
            if let Some(last) = self.diagnostics.last_mut() {
                last.message
                    .push_str(" (write the mode as an octal string such as \"0640\")");
            }
        }
        let variable = self.string(table, prefix, "variable");
        let template = self.string(table, prefix, "template");
        let template_file = self.string(table, prefix, "template_file");
        let (format_name, format_span) = format_name;
        let format_key = format!("{prefix}.format");
        let only_for = |checker: &mut Self, key: &str, format: &str| {
            if let Some(span) = key_span(table, key) {
                checker.error(
                    &span,
                    &format!("{prefix}.{key}"),
                    format!("only used with format = \"{format}\""),
                );
            }
        };
        let format = match format_name.as_str() {
            "token" | "header" | "json" | "env" | "template" => {
                if format_name != "env" {
                    only_for(self, "variable", "env");
                }
                if format_name != "template" {
                    only_for(self, "template", "template");
                    only_for(self, "template_file", "template");
                }
                match format_name.as_str() {
                    "token" => Some(Format::Token),
                    "header" => Some(Format::Header),
                    "json" => Some(Format::Json),
                    "env" => match variable {
                        None => Some(Format::Env {
                            variable: client.env_variable(),
                        }),
                        Some((variable, span)) if output::is_env_variable(&variable) => {
                            let _ = span;
                            Some(Format::Env { variable })
                        }
                        Some((variable, span)) => {
                            self.error(
                                &span,
                                &format!("{prefix}.variable"),
                                format!(
                                    "expected a shell variable name ([A-Za-z_][A-Za-z0-9_]*), \
                                     found {variable:?}"
                                ),
                            );
                            None
                        }
                    },
                    _ => self.template(template, template_file, &span, prefix),
                }
            }
            _ => {
                self.error(
                    &format_span,
                    &format_key,
                    format!(
                        "expected one of token, env, header, json, template; found {format_name:?}"
                    ),
                );
                None
            }
        };
        if self.diagnostics.len() != errors_before {
            return None;
        }
        Some(OutputSpec {
            path: path?,
            format: format?,
            mode,
        })
    }

    fn template(
        &mut self,
        inline: Option<(String, Span)>,
        file: Option<(String, Span)>,
        span: &Span,
        prefix: &str,
    ) -> Option<Format> {
        let (text, span, key) = match (inline, file) {
            (Some((text, span)), None) => (text, span, format!("{prefix}.template")),
            (None, Some((path, span))) => {
                let key = format!("{prefix}.template_file");
                let path = self.resolve(&path);
                match files::read_text(&path, files::Kind::Template) {
                    Ok(text) => (text, span, key),
                    Err(error) => {
                        self.error(&span, &key, error.to_string());
                        return None;
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.template_file"),
                    "expected either template or template_file, not both",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    span,
                    prefix,
                    "format = \"template\" needs template or template_file",
                );
                return None;
            }
        };
        match Template::parse(&text) {
            Ok(template) => Some(Format::Template(template)),
            Err(message) => {
                self.error(&span, &key, message);
                None
            }
        }
    }

    fn on_refresh(&mut self, table: &DeTable<'_>, span: Span, prefix: &str) -> Option<OnRefresh> {
        self.unknown_keys(table, prefix, ON_REFRESH_KEYS);
        let errors_before = self.diagnostics.len();
        let timeout = self
            .duration(table, prefix, "timeout", true)
            .unwrap_or(Duration::from_secs(30));
        let command = self.string_array(table, prefix, "command");
        let signal = self.string(table, prefix, "signal");
        let pid_file = self.string(table, prefix, "pid_file");
        let pass_env = self.pass_env(table, prefix);
        let action = match (command, signal) {
            (Some((argv, span)), None) => {
                if argv.is_empty() || argv[0].is_empty() {
                    self.error(
                        &span,
                        &format!("{prefix}.command"),
                        "expected a non-empty argv array such as [\"systemctl\", \"reload\", \"nginx\"]",
                    );
                    None
                } else {
                    if let Some(span) = key_span(table, "pid_file") {
                        self.error(
                            &span,
                            &format!("{prefix}.pid_file"),
                            "only used with signal",
                        );
                    }
                    Some(OnRefresh::Command {
                        argv,
                        timeout,
                        pass_env,
                    })
                }
            }
            (None, Some((name, span))) => {
                if let Some(span) = key_span(table, "pass_env") {
                    self.error(
                        &span,
                        &format!("{prefix}.pass_env"),
                        "only used with command",
                    );
                }
                let upper = name.to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                let signal = SIGNALS.iter().find(|(known, _)| *known == full);
                match (signal, pid_file) {
                    (Some((signal_name, signal)), Some((pid_file, _))) => Some(OnRefresh::Signal {
                        signal: *signal,
                        signal_name: (*signal_name).to_owned(),
                        pid_file: self.resolve(&pid_file),
                    }),
                    (None, _) => {
                        let names: Vec<&str> = SIGNALS.iter().map(|(name, _)| *name).collect();
                        self.error(
                            &span,
                            &format!("{prefix}.signal"),
                            format!("expected one of {}; found {name:?}", names.join(", ")),
                        );
                        None
                    }
                    (Some(_), None) => {
                        self.error(
                            &span,
                            &format!("{prefix}.pid_file"),
                            "missing pid_file: signal needs the file holding the process id",
                        );
                        None
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.signal"),
                    "expected either command or signal, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("command") && !table.contains_key("signal") {
                    self.error(&span, prefix, "expected command or signal");
                }
                None
            }
        };
        (self.diagnostics.len() == errors_before)
            .then_some(action)
            .flatten()
    }

    /// `pass_env`: names of variables a command may see; `BEARERD_*` are bearerd's own.
    fn pass_env(&mut self, table: &DeTable<'_>, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let Some(value) = table.get("pass_env") else {
            return names;
        };
        let key = format!("{prefix}.pass_env");
        let DeValue::Array(array) = value.get_ref() else {
            self.error(
                &value.span(),
                &key,
                format!(
                    "expected an array of variable names such as [\"HOME\"], found {}",
                    value.get_ref().type_str()
                ),
            );
            return names;
        };
        for (index, item) in array.iter().enumerate() {
            let item_key = format!("{key}[{index}]");
            let Some(name) = self.expect_string(item, &item_key) else {
                continue;
            };
            if !output::is_env_variable(&name) {
                self.error(
                    &item.span(),
                    &item_key,
                    format!("expected a variable name ([A-Za-z_][A-Za-z0-9_]*), found {name:?}"),
                );
            } else if name.starts_with("BEARERD_") {
                self.error(
                    &item.span(),
                    &item_key,
                    format!("{name:?} is reserved: bearerd sets the BEARERD_* variables itself"),
                );
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    fn extra_params(&mut self, table: &DeTable<'_>, prefix: &str) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        let key = format!("{prefix}.extra_params");
        let Some(value) = table.get("extra_params") else {
            return params;
        };
        let Some(params_table) = self.as_table(value, &key) else {
            return params;
        };
        for (name, value) in params_table {
            let name_text = name.get_ref().to_string();
            let item_key = format!("{key}.{name_text}");
            if RESERVED_PARAMS.contains(&name_text.as_str()) {
                self.error(
                    &name.span(),
                    &item_key,
                    format!("{name_text} is set by bearerd; use the client key of that name"),
                );
                continue;
            }
            if let Some(text) = self.expect_string(value, &item_key) {
                params.insert(name_text, text);
            }
        }
        params
    }

    fn duplicate_paths(&mut self, clients: &[ClientSpec], root: &DeTable<'_>) {
        let mut seen: HashMap<&Path, String> = HashMap::new();
        for client in clients {
            for (index, output) in client.outputs.iter().enumerate() {
                let key = format!("clients.{}.output[{index}].path", client.name);
                if let Some(first) = seen.get(output.path.as_path()) {
                    let span = output_path_span(root, &client.name, index).unwrap_or(0..0);
                    self.error(
                        &span,
                        &key,
                        format!(
                            "{} is already written by {first}; two outputs cannot share a path",
                            output.path.display()
                        ),
                    );
                } else {
                    seen.insert(&output.path, key);
                }
            }
        }
    }

    // --- typed getters: each reports its own type error and returns None ---

    fn unknown_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
        for key in table.keys() {
            let name = key.get_ref();
            if !allowed.contains(&name.as_ref()) {
                let full = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                self.error(
                    &key.span(),
                    &full,
                    format!("unknown key; expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn as_table<'t, 'i>(&mut self, value: &'t Value<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.error(
                    &value.span(),
                    key,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn expect_string(&mut self, value: &Value<'_>, key: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(text) => self.expand(text, &value.span(), key),
            other => {
                self.error(
                    &value.span(),
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(String, Span)> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        self.expect_string(value, &full)
            .map(|text| (text, value.span()))
    }

    fn non_empty_string(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<String> {
        let (text, span) = self.string(table, prefix, key)?;
        if text.is_empty() {
            self.error(
                &span,
                &format!("{prefix}.{key}"),
                "is empty; remove the key or give it a value",
            );
            return None;
        }
        Some(text)
    }

    fn required_string(
        &mut self,
        table: &DeTable<'_>,
        table_span: &Span,
        prefix: &str,
        key: &str,
    ) -> Option<String> {
        if !table.contains_key(key) {
            self.error(table_span, prefix, format!("missing {key}"));
            return None;
        }
        self.non_empty_string(table, prefix, key)
    }

    fn string_array(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
    ) -> Option<(Vec<String>, Span)> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        let DeValue::Array(array) = value.get_ref() else {
            self.error(
                &value.span(),
                &full,
                format!(
                    "expected an array of strings, found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut items = Vec::new();
        for (index, item) in array.iter().enumerate() {
            items.push(self.expect_string(item, &format!("{full}[{index}]"))?);
        }
        Some((items, value.span()))
    }

    fn boolean(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<bool> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            other => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(i64, Span)> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(number) => Some((number, value.span())),
                    Err(_) => {
                        self.error(
                            &value.span(),
                            &format!("{prefix}.{key}"),
                            "integer out of range",
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn float(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(f64, Span)> {
        let value = table.get(key)?;
        let number = match value.get_ref() {
            DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match number {
            Some(number) => Some((number, value.span())),
            None => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected a number, found {}", value.get_ref().type_str()),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
        positive: bool,
    ) -> Option<Duration> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        let DeValue::String(text) = value.get_ref() else {
            self.error(
                &value.span(),
                &full,
                format!(
                    "expected a duration string such as \"10s\" or \"5m\", found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let text = self.expand(text, &value.span(), &full)?;
        match humantime::parse_duration(&text) {
            Ok(duration) if positive && duration.is_zero() => {
                self.error(
                    &value.span(),
                    &full,
                    "expected a duration greater than zero",
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(
                    &value.span(),
                    &full,
                    format!(
                        "expected a duration such as \"10s\" or \"5m\", found {text:?} ({error})"
                    ),
                );
                None
            }
        }
    }

    fn url(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
        allow_insecure_http: bool,
    ) -> Option<Url> {
        let (text, span) = self.string(table, prefix, key)?;
        let full = format!("{prefix}.{key}");
        let url = match Url::parse(&text) {
            Ok(url) => url,
            Err(error) => {
                self.error(
                    &span,
                    &full,
                    format!("expected a URL, found {text:?} ({error})"),
                );
                return None;
            }
        };
        if let Err(message) = check_url_scheme(&url, allow_insecure_http) {
            self.error(&span, &full, message);
            return None;
        }
        Some(url)
    }

    /// A file that is read at use (a key or a certificate): read now too, so that `check`
    /// catches a missing, unreadable or oversized one.
    fn existing_file(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
        kind: files::Kind,
    ) -> Option<PathBuf> {
        let (text, span) = self.string(table, prefix, key)?;
        let path = self.resolve(&text);
        if let Err(error) = files::read(&path, kind) {
            self.error(&span, &format!("{prefix}.{key}"), error.to_string());
            return None;
        }
        Some(path)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Expands `${VAR}`; `$${` is a literal `${`.
    fn expand(&mut self, text: &str, span: &Span, key: &str) -> Option<String> {
        match expand_env(text, self.env) {
            Ok(expanded) => Some(expanded),
            Err(message) => {
                self.error(span, key, message);
                None
            }
        }
    }
}

/// `${VAR}` expansion from `env`; an unset variable is an error, `$${` a literal `${`.
pub fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('$') {
        out.push_str(&rest[..index]);
        let after = &rest[index + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("unclosed ${ in string (write $${ for a literal ${)".to_owned());
            };
            let name = &body[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name in ${{{name}}}"));
            }
            match env(name) {
                Ok(value) => out.push_str(&value),
                Err(VarError::NotPresent) => {
                    return Err(format!("environment variable {name} is not set"));
                }
                // The value may be a secret: never shown, not even in part.
                Err(VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "environment variable {name} is set but is not valid UTF-8"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `https` always; `http` only to a loopback host or with `allow_insecure_http`.
pub fn check_url_scheme(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "expected an https URL (plain http is allowed only for loopback hosts, or with \
             allow_insecure_http = true), found {url}"
        )),
        other => Err(format!("expected an https URL, found scheme {other:?}")),
    }
}

/// A URL fit for messages: no user info, query or fragment.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Longest name of a file in a directory (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest path a system call takes, its terminating NUL included (Linux `PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Why an output at `path` (as written: `text`) could never be written, if so. bearerd writes
/// `DIR/.NAME.bearerd-tmp-XXXXXXXXXXXXXXXX` and renames it to `path`, so that temporary name
/// must fit the system's limits too.
fn check_output_path(text: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if text.contains('\0') {
        return Err("contains a NUL byte, which no path can hold".to_owned());
    }
    if text.ends_with('/') {
        return Err(format!(
            "expected the path of a file, found {text:?}, which ends with /"
        ));
    }
    let last = text.rsplit('/').next().unwrap_or(text);
    if last == "." || last == ".." {
        return Err(format!(
            "expected the path of a file, found {text:?}, which ends with {last:?}"
        ));
    }
    let bytes = path.as_os_str().as_bytes();
    if let Some(long) = bytes
        .split(|&byte| byte == b'/')
        .find(|component| component.len() > NAME_MAX)
    {
        return Err(format!(
            "a name in the path is {} bytes long; the system allows at most {NAME_MAX} \
             (NAME_MAX)",
            long.len()
        ));
    }
    let name_len = bytes
        .rsplit(|&byte| byte == b'/')
        .next()
        .map_or(0, <[u8]>::len);
    let name_max = NAME_MAX - output::TEMP_NAME_EXTRA;
    if name_len > name_max {
        return Err(format!(
            "the file name is {name_len} bytes long; at most {name_max}, so that the name of \
             its temporary file ({extra} bytes longer) fits in {NAME_MAX} (NAME_MAX)",
            extra = output::TEMP_NAME_EXTRA
        ));
    }
    let path_max = PATH_MAX - 1 - output::TEMP_NAME_EXTRA;
    if bytes.len() > path_max {
        return Err(format!(
            "the path is {} bytes long; at most {path_max}, so that the path of its temporary \
             file ({extra} bytes longer) fits in {PATH_MAX} bytes with a NUL (PATH_MAX)",
            bytes.len(),
            extra = output::TEMP_NAME_EXTRA
        ));
    }
    Ok(())
}

/// `"0640"`, `"640"` or `"0o640"` → 0o640; at most 0o777.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

fn key_span(table: &DeTable<'_>, key: &str) -> Option<Span> {
    table.get_key_value(key).map(|(key, _)| key.span())
}

fn output_path_span(root: &DeTable<'_>, client: &ClientName, index: usize) -> Option<Span> {
    let clients = root.get("clients")?.get_ref().as_table()?;
    let outputs = clients
        .get(client.as_str())?
        .get_ref()
        .as_table()?
        .get("output")?;
    let item = match outputs.get_ref() {
        DeValue::Array(array) => array.get(index)?,
        DeValue::Table(_) => outputs,
        _ => return None,
    };
    item.get_ref().as_table()?.get("path").map(Spanned::span)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;

    fn env(name: &str) -> Result<String, VarError> {
        match name {
            "TASKLIST_SECRET" => Ok("s3cr3t +/%:&= x".to_owned()),
            "EMPTY" => Ok(String::new()),
            "NOT_UTF8" => Err(VarError::NotUnicode(std::ffi::OsString::from("x"))),
            _ => Err(VarError::NotPresent),
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/bearerd/bearerd.toml"), text, &env)
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors"),
            Err(error) => error.to_string().lines().map(str::to_owned).collect(),
        }
    }

    const TASKLIST: &str = r#"
[agent]
refresh_at = 0.75
listen = "127.0.0.1:9161"
log_format = "json"
http_timeout = "5s"
max_concurrent_requests = 2

[clients.tasklist]
token_url = "https://login.cloud.camunda.io/oauth/token"
client_id = "tasklist-bot"
client_secret = "${TASKLIST_SECRET}"
audience = "tasklist.camunda.io"
scope = "tasks:read tasks:write"
auth_method = "client_secret_json"
extra_params = { resource = "https://api.example.com" }

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.token"

[[clients.tasklist.output]]
path = "tasklist.env"
format = "env"
mode = "0640"

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.header"
format = "header"
"#;

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
        assert_eq!(client.client_id, "tasklist-bot");
        assert_eq!(
            client.auth,
            Auth::Secret {
                secret: SecretSource::Inline(Secret::new("s3cr3t +/%:&= x")),
                method: Some(SecretMethod::Json),
            }
        );
        assert_eq!(client.audience.as_deref(), Some("tasklist.camunda.io"));
        assert_eq!(client.extra_params["resource"], "https://api.example.com");
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
            client.auth,
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
    fn with_an_issuer_and_no_auth_method_the_method_is_left_to_discovery() {
        let config = parse(
            r#"
[clients.api]
issuer = "https://idp.example.com/realms/main"
client_id = "id"
client_secret = "secret"
[[clients.api.output]]
path = "/tmp/x"
"#,
        )
        .expect("valid");
        assert!(matches!(
            config.clients[0].auth,
            Auth::Secret { method: None, .. }
        ));
    }

    #[test]
    fn variables_expand_everywhere_and_unset_ones_are_errors() {
        let expand = |text: &str| expand_env(text, &env);
        assert_eq!(
            expand("a${TASKLIST_SECRET}b").as_deref(),
            Ok("as3cr3t +/%:&= xb")
        );
        assert_eq!(expand("${EMPTY}").as_deref(), Ok(""));
        assert_eq!(expand("$${LITERAL} $5").as_deref(), Ok("${LITERAL} $5"));
        assert_eq!(
            expand("${NOPE}"),
            Err("environment variable NOPE is not set".to_owned())
        );
        assert_eq!(
            expand("${NOT_UTF8}"),
            Err("environment variable NOT_UTF8 is set but is not valid UTF-8".to_owned())
        );
        assert!(expand("${OPEN").is_err());
        assert!(expand("${1BAD}").is_err());
    }

    #[test]
    fn an_unset_variable_is_located() {
        let lines = errors(&TASKLIST.replace("TASKLIST_SECRET", "MISSING_SECRET"));
        assert_eq!(
            lines,
            vec![
                "/etc/bearerd/bearerd.toml:12:17: clients.tasklist.client_secret: environment \
                 variable MISSING_SECRET is not set"
            ]
        );
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
    fn columns_count_characters_and_problems_past_the_hundredth_are_only_counted() {
        let lines = errors("[agent]\n\"é€\" = 1\n");
        assert_eq!(
            lines,
            [
                "/etc/bearerd/bearerd.toml:2:1: agent.é€: unknown key; expected one of: \
              refresh_at, listen, log_format, http_timeout, max_concurrent_requests, \
              default_lifetime, backoff_min, backoff_max, state_dir"
            ]
        );
        let lines = errors("\nagent = { \"é\" = 1, refresh_at = 2.0 }\n");
        assert!(
            lines[1].starts_with("/etc/bearerd/bearerd.toml:2:33: agent.refresh_at:"),
            "{lines:?}"
        );

        let mut text = String::from("[agent]\n");
        for number in 0..SHOWN_PROBLEMS + 1 {
            text.push_str(&format!("\"é{number:03}\" = 1\n"));
        }
        let Err(error) = parse(&text) else {
            panic!("expected errors")
        };
        assert_eq!((error.diagnostics.len(), error.more), (SHOWN_PROBLEMS, 1));
        assert_eq!(error.diagnostics[99].location, Some((101, 1)));
        assert_eq!(
            error.to_string().lines().last(),
            Some("/etc/bearerd/bearerd.toml: and 1 more problem (only the first 100 are shown)")
        );
    }

    #[test]
    fn plain_http_is_allowed_for_loopback_or_when_asked() {
        for url in [
            "http://127.0.0.1:1/t",
            "http://localhost/t",
            "http://[::1]:8/t",
        ] {
            assert!(
                check_url_scheme(&Url::parse(url).expect("url"), false).is_ok(),
                "{url}"
            );
        }
        let remote = Url::parse("http://idp.example.com/t").expect("url");
        assert!(check_url_scheme(&remote, false).is_err());
        assert!(check_url_scheme(&remote, true).is_ok());
        let ftp = Url::parse("ftp://idp.example.com/t").expect("url");
        assert!(check_url_scheme(&ftp, true).is_err());
    }

    #[test]
    fn secret_files_lose_one_trailing_newline_and_are_re_read_at_use() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "line\n\n").expect("write");
        assert_eq!(read_secret_file(&secret).expect("read").expose(), "line\n");
        std::fs::write(&secret, "crlf\r\n").expect("write");
        assert_eq!(read_secret_file(&secret).expect("read").expose(), "crlf");
        std::fs::write(&secret, "\n").expect("write");
        assert!(read_secret_file(&secret).is_err(), "empty after trimming");

        let config_path = dir.path().join("bearerd.toml");
        std::fs::write(&secret, "first\n").expect("write");
        let text = r#"
[clients.api]
token_url = "https://idp.example.com/token"
client_id = "id"
client_secret_file = "secret"
[[clients.api.output]]
path = "api.token"
"#;
        let config = Config::parse(&config_path, text, &env).expect("valid");
        let Auth::Secret { secret: source, .. } = &config.clients[0].auth else {
            panic!("secret auth");
        };
        std::fs::write(&secret, "rotated\n").expect("write");
        assert_eq!(source.current().expect("read").expose(), "rotated");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = parse(TASKLIST).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn client_names_are_checked() {
        assert!(ClientName::parse("tasklist_2-b").is_ok());
        for bad in ["", "a b", "a.b", "é", "a/b"] {
            assert!(ClientName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_in_messages_lose_credentials_and_queries() {
        let url = Url::parse("https://u:p@idp.example.com/token?key=abc#x").expect("url");
        assert_eq!(display_url(&url), "https://idp.example.com/token");
    }

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("7777"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(parse_mode("rw-r-----"), None);
    }
}
