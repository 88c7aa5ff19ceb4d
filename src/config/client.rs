//! One client's settings as the validator leaves them: its name, where and how it asks for a
//! token, where the token goes and whom to tell. Plain data; only a secret file is read here
//! (at use, so that rotation works), and nothing is checked (`check` does that).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::url::display_url;
use crate::files;
use crate::output::OutputSpec;
use crate::secret::Secret;

/// A client's name: `[A-Za-z0-9_-]{1,128}`. Shared, not copied: the supervisor's maps, the
/// status and every report name the client (one copy each was ~100 bytes a client,
/// BENCHMARKS.md).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientName(Arc<str>);

/// The longest client name: it is part of file names (`.NAME.bearerd-state.json`, and that
/// file's temporary name, 30 bytes longer), which may be at most 255 bytes.
const NAME_MAX_LEN: usize = 128;

impl ClientName {
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "invalid client name {name:?}: expected one or more of A-Z a-z 0-9 _ -"
            ));
        }
        if name.len() > NAME_MAX_LEN {
            return Err(format!(
                "invalid client name: {} characters long; at most {NAME_MAX_LEN}, since it is part of the state file's name",
                name.len()
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name in an allocation of its own (a clone shares it).
    pub(crate) fn copied(&self) -> Self {
        Self(Arc::from(self.as_str()))
    }

    /// The default `env` variable: upper-cased, `-` → `_`, then `_TOKEN`.
    pub(crate) fn env_variable(&self) -> String {
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
    pub request: RequestSpec,
    pub outputs: Vec<OutputSpec>,
    /// Boxed: most clients have none.
    pub(crate) on_refresh: Option<Box<OnRefresh>>,
    pub(crate) on_expiry: OnExpiry,
}

/// Every setting that makes a client's token request, in one place: a reload refetches when
/// it changes, a state file's fingerprint digests `RequestSpec::canonical_settings`, and the
/// request is built from it. A new request setting is a field here.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    pub(crate) endpoint: Endpoint,
    pub(crate) client_id: String,
    pub auth: Auth,
    /// What the client trades for a token (`grant_type`).
    pub(crate) grant: Grant,
    pub(crate) audience: Option<String>,
    pub(crate) scope: Option<String>,
    /// Sent as extra token-request parameters, in key order.
    pub(crate) extra_params: BTreeMap<String, String>,
    /// TLS settings for the token endpoint (and discovery).
    pub(crate) tls: TlsSettings,
    /// Plain `http` to a remote host was allowed explicitly.
    pub(crate) allow_insecure_http: bool,
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
    /// `client_assertion`: a JWT made by someone else (a projected Kubernetes service-account
    /// token, a SPIFFE JWT-SVID), read from `file` at every request.
    ClientAssertion {
        file: PathBuf,
        /// `client_assertion_type`; RFC 7523's jwt-bearer type unless configured.
        assertion_type: String,
    },
    /// `client_secret_jwt` (OIDC Core §9): an HS256 assertion signed with the client secret.
    ClientSecretJwt {
        secret: SecretSource,
        /// The assertion's `aud`; `None`: the token endpoint URL.
        assertion_audience: Option<String>,
    },
    /// `auth_method = "none"`: a public client, only `client_id` in the body.
    Public,
}

/// What the client trades for a token: `grant_type`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    ClientCredentials,
    /// RFC 8693 token exchange.
    TokenExchange {
        subject: TypedTokenFile,
        actor: Option<TypedTokenFile>,
        requested_token_type: Option<String>,
    },
    /// RFC 7523 §2.1: a JWT as the authorization grant.
    JwtBearer(JwtAssertion),
}

/// A token file and the RFC 8693 token type it is sent as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypedTokenFile {
    pub path: PathBuf,
    pub token_type: String,
}

/// Where a `jwt_bearer` grant's assertion comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JwtAssertion {
    /// `assertion_file`: made elsewhere, read at every request.
    File(PathBuf),
    /// Signed by bearerd with `private_key_file` (RS256 or ES256) at every request.
    Signed {
        key_file: PathBuf,
        key_id: Option<String>,
        /// `iss`; `None`: the client id.
        issuer: Option<String>,
        /// `sub`; `None`: the client id.
        subject: Option<String>,
        /// `aud`; `None`: the token endpoint URL.
        audience: Option<String>,
    },
}

/// RFC 8693's type of a JWT, the default `subject_token_type` and `actor_token_type`.
pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 7523's client assertion type, the default `client_assertion_type`.
pub(crate) const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Grant {
    /// The name used in the config's `grant_type = "…"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange { .. } => "token_exchange",
            Self::JwtBearer(_) => "jwt_bearer",
        }
    }

    /// The token files this grant reads at every request, with the config key naming each.
    pub(crate) fn token_files(&self) -> Vec<(&'static str, &Path)> {
        match self {
            Self::ClientCredentials | Self::JwtBearer(JwtAssertion::Signed { .. }) => Vec::new(),
            Self::TokenExchange { subject, actor, .. } => {
                let mut files = vec![("subject_token_file", subject.path.as_path())];
                if let Some(actor) = actor {
                    files.push(("actor_token_file", actor.path.as_path()));
                }
                files
            }
            Self::JwtBearer(JwtAssertion::File(path)) => vec![("assertion_file", path.as_path())],
        }
    }
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
    fn as_str(self) -> &'static str {
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
    pub(crate) fn current(&self) -> Result<Secret, String> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File { path, .. } => read_secret_file(path),
        }
    }
}

/// Reads a secret file, trimming one trailing newline (`\n` or `\r\n`); empty is an error.
pub(super) fn read_secret_file(path: &Path) -> Result<Secret, String> {
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
    /// Boxed: most clients have none, and every client's settings are in memory.
    pub proxy: Option<Box<Url>>,
}

impl fmt::Debug for TlsSettings {
    /// The proxy URL may carry credentials (`http://user:password@proxy`): shown without them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_file", &self.ca_file)
            .field("identity", &self.identity)
            .field("proxy", &self.proxy.as_deref().map(display_url))
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

impl RequestSpec {
    /// The method by which this client authenticates, if already known (it may come from
    /// discovery).
    pub(crate) fn auth_method_name(&self) -> Option<&'static str> {
        match &self.auth {
            Auth::Secret { method, .. } => method.map(SecretMethod::as_str),
            Auth::PrivateKeyJwt { .. } => Some("private_key_jwt"),
            Auth::TlsClientAuth => Some("tls_client_auth"),
            Auth::ClientAssertion { .. } => Some("client_assertion"),
            Auth::ClientSecretJwt { .. } => Some("client_secret_jwt"),
            Auth::Public => Some("none"),
        }
    }

    /// Every token file this client reads at each request (its client assertion, its grant's
    /// subject, actor or assertion), with the config key naming each: watched, so that a
    /// client waiting on a bad one retries as soon as it is rewritten.
    pub(crate) fn token_files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        if let Auth::ClientAssertion { file, .. } = &self.auth {
            files.push(("client_assertion_file", file.as_path()));
        }
        files.extend(self.grant.token_files());
        files
    }

    /// The settings that decide which token the server issues, as one canonical string with no
    /// secret in it: what a state file's fingerprint digests, keyed by the credential. Every
    /// field is named, so that a new one is either described or left out here on purpose.
    /// Saved state files were fingerprinted with these bytes: a change refetches every saved
    /// token once.
    pub(crate) fn canonical_settings(&self) -> String {
        let RequestSpec {
            endpoint,
            client_id,
            auth,
            grant,
            audience,
            scope,
            extra_params,
            // How the request travels, not what it asks for; a TLS client key is part of the
            // credential that keys the fingerprint.
            tls: _,
            allow_insecure_http: _,
        } = self;
        let endpoint = match endpoint {
            Endpoint::TokenUrl(url) => format!("token_url={url}"),
            Endpoint::Issuer(url) => format!("issuer={url}"),
        };
        let auth = match auth {
            // The secret keys the fingerprint; it is never part of the text.
            Auth::Secret { secret: _, method } => {
                format!("secret:{}", method.map_or("discovered", |m| m.as_str()))
            }
            Auth::PrivateKeyJwt {
                key_file,
                key_id,
                assertion_audience: _,
            } => {
                format!("private_key_jwt:{}:{key_id:?}", key_file.display())
            }
            Auth::TlsClientAuth => "tls_client_auth".to_owned(),
            // A token file is named by its path and type, never by its content: the kubelet
            // rotates it hourly, and a rotation must not throw away a still-valid saved token.
            Auth::ClientAssertion {
                file,
                assertion_type,
            } => format!("client_assertion:{}:{assertion_type}", file.display()),
            Auth::ClientSecretJwt {
                secret: _,
                assertion_audience: _,
            } => "client_secret_jwt".to_owned(),
            Auth::Public => "none".to_owned(),
        };
        let mut settings = serde_json::json!({
            "endpoint": endpoint,
            "client_id": client_id,
            "auth": auth,
            "audience": audience,
            "scope": scope,
            "extra_params": extra_params,
        });
        // Absent for client_credentials, so that the files saved before grants existed match.
        let grant = match grant {
            Grant::ClientCredentials => None,
            Grant::TokenExchange {
                subject,
                actor,
                requested_token_type,
            } => Some(serde_json::json!({
                "token_exchange": {
                    "subject": [subject.path.display().to_string(), &subject.token_type],
                    "actor": actor
                        .as_ref()
                        .map(|actor| [actor.path.display().to_string(), actor.token_type.clone()]),
                    "requested_token_type": requested_token_type,
                }
            })),
            Grant::JwtBearer(JwtAssertion::File(path)) => {
                Some(serde_json::json!({ "jwt_bearer_file": path.display().to_string() }))
            }
            Grant::JwtBearer(JwtAssertion::Signed {
                key_file,
                key_id,
                issuer,
                subject,
                // Like private_key_jwt's: where the assertion is presented, not what is asked.
                audience: _,
            }) => Some(serde_json::json!({
                "jwt_bearer_signed": {
                    "key_file": key_file.display().to_string(),
                    "key_id": key_id,
                    "iss": issuer,
                    "sub": subject,
                }
            })),
        };
        if let (Some(grant), Some(object)) = (grant, settings.as_object_mut()) {
            object.insert("grant".to_owned(), grant);
        }
        settings.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::fixtures::{env, parse};

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
        let Auth::Secret { secret: source, .. } = &config.clients[0].request.auth else {
            panic!("secret auth");
        };
        std::fs::write(&secret, "rotated\n").expect("write");
        assert_eq!(source.current().expect("read").expose(), "rotated");
    }

    #[test]
    fn client_names_are_checked() {
        assert!(ClientName::parse("tasklist_2-b").is_ok());
        assert!(ClientName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            ClientName::parse(&"a".repeat(129)).expect_err("too long"),
            "invalid client name: 129 characters long; at most 128, since it is part of the state file's name"
        );
        for bad in ["", "a b", "a.b", "é", "a/b"] {
            assert!(ClientName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_canonical_settings_are_what_saved_state_files_were_keyed_with() {
        // Saved fingerprints digest these bytes: a change refetches every saved token once.
        let secret = parse(
            "[clients.api]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"api\"\n\
             client_secret = \"secret-one\"\n[[clients.api.output]]\npath = \"/run/x/api.token\"\n",
        )
        .expect("valid config");
        assert_eq!(
            secret.clients[0].request.canonical_settings(),
            r#"{"audience":null,"auth":"secret:client_secret_basic","client_id":"api","endpoint":"token_url=https://idp.example/token","extra_params":{},"scope":null}"#
        );
        let dir = tempfile::tempdir().expect("dir");
        for name in ["key.pem", "tls.crt", "tls.key"] {
            std::fs::write(dir.path().join(name), "not checked at load").expect("write");
        }
        let text = r#"
[clients.jwt]
issuer = "https://idp.example/realms/main"
client_id = "jwt-bot"
auth_method = "private_key_jwt"
private_key_file = "key.pem"
key_id = "k1"
assertion_audience = "https://idp.example"
audience = "api.example"
scope = "b a"
extra_params = { resource = "https://api.example/v1", b = "2" }
ca_file = "tls.crt"
proxy = "http://proxy.example:3128"
allow_insecure_http = true
[[clients.jwt.output]]
path = "jwt.token"

[clients.mtls]
token_url = "https://idp.example/token"
client_id = "mtls-bot"
auth_method = "tls_client_auth"
tls_cert_file = "tls.crt"
tls_key_file = "tls.key"
[[clients.mtls.output]]
path = "mtls.token"
"#;
        let config =
            Config::parse(&dir.path().join("bearerd.toml"), text, &env).expect("valid config");
        let key = dir.path().join("key.pem");
        assert_eq!(
            config.clients[0].request.canonical_settings(),
            format!(
                r#"{{"audience":"api.example","auth":"private_key_jwt:{}:Some(\"k1\")","client_id":"jwt-bot","endpoint":"issuer=https://idp.example/realms/main","extra_params":{{"b":"2","resource":"https://api.example/v1"}},"scope":"b a"}}"#,
                key.display()
            )
        );
        assert_eq!(
            config.clients[1].request.canonical_settings(),
            r#"{"audience":null,"auth":"tls_client_auth","client_id":"mtls-bot","endpoint":"token_url=https://idp.example/token","extra_params":{},"scope":null}"#
        );
    }
}
