//! One token request: client authentication, OIDC discovery, and the response turned into a
//! [`Token`] or a [`FetchError`]. It never retries, sleeps, writes files or reads the wall clock:
//! `now` is always an argument, and the retry policy belongs to the caller.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, HeaderValue, RETRY_AFTER};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};
use url::Url;
use url::form_urlencoded;

use crate::config::TlsSettings;
use crate::files;
use crate::secret::Secret;
use crate::token::{Token, is_b64token};

/// Sent as `User-Agent` with every request.
pub const USER_AGENT: &str = concat!("bearerd/", env!("CARGO_PKG_VERSION"));

/// Responses larger than this are not read further (a token response is a few KiB at most).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest lifetime believed; longer `expires_in` or `exp` values are clamped to it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest lifetime a token is given, so that an expiry a moment away is still a future one.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// How long a `private_key_jwt` client assertion is valid.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The longest excerpt of an error body quoted in a message, in characters.
const EXCERPT_CHARS: usize = 120;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// OAuth error codes (RFC 6749 §5.2) that no retry can heal.
const PERMANENT_ERRORS: [&str; 6] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_request",
];

/// OAuth error codes that say the server is temporarily unable, whatever the status.
const TRANSIENT_ERRORS: [&str; 2] = ["server_error", "temporarily_unavailable"];

/// Why a request did not produce a token, classified for the retry loop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// May heal by itself (connection trouble, timeouts, 5xx, 429, a malformed response): retry
    /// with backoff, but not before `retry_after` when the server sent `Retry-After`.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        /// The endpoint could not be reached at all: a discovered endpoint may have moved.
        endpoint_unreachable: bool,
    },
    /// Will not heal without a change of configuration or server (`invalid_client`, 401, 403,
    /// most 4xx, a hostile token): report loudly and retry slowly.
    #[error("{message}")]
    Permanent {
        message: String,
        /// The endpoint answered 404: a discovered endpoint may have moved.
        endpoint_unreachable: bool,
    },
}

impl FetchError {
    /// A transient failure without `Retry-After`.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
            endpoint_unreachable: false,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            endpoint_unreachable: false,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }

    /// The server's `Retry-After`, for a transient failure that carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    /// A connection error or a 404: the caller should fetch the discovery document again.
    pub fn endpoint_unreachable(&self) -> bool {
        match self {
            Self::Transient {
                endpoint_unreachable,
                ..
            }
            | Self::Permanent {
                endpoint_unreachable,
                ..
            } => *endpoint_unreachable,
        }
    }

    /// The one-line description, as `Display` prints it.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. } | Self::Permanent { message, .. } => message,
        }
    }

    fn map_message(self, change: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Transient {
                message,
                retry_after,
                endpoint_unreachable,
            } => Self::Transient {
                message: change(message),
                retry_after,
                endpoint_unreachable,
            },
            Self::Permanent {
                message,
                endpoint_unreachable,
            } => Self::Permanent {
                message: change(message),
                endpoint_unreachable,
            },
        }
    }
}

/// The HTTP client for one set of TLS settings. Build one per distinct [`TlsSettings`] and share
/// it: it holds the connection pool, and loading the system roots costs milliseconds.
///
/// Redirects are off (credentials must not follow a redirect) and so are reqwest's own retries.
pub fn http_client(timeout: Duration, tls: &TlsSettings) -> Result<reqwest::Client, String> {
    http_client_with_roots(timeout, tls, true)
}

/// [`http_client`], optionally without the system's root store. Parsing the system's roots
/// is most of a one-client `run --once` (about 5 ms of 13, BENCHMARKS.md); a client whose
/// token endpoint is plain `http` never does TLS, so it skips them.
pub fn http_client_with_roots(
    timeout: Duration,
    tls: &TlsSettings,
    system_roots: bool,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .user_agent(USER_AGENT)
        .tls_built_in_native_certs(system_roots);
    if let Some(path) = &tls.ca_file {
        let pem = files::read(path, files::Kind::CaFile).map_err(|error| error.to_string())?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| format!("ca_file {}: {}", path.display(), error_chain(&error)))?;
        if certificates.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate (BEGIN CERTIFICATE) found",
                path.display()
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity {
        let cert_path = &identity.cert_file;
        let key_path = &identity.key_file;
        let mut pem =
            files::read(cert_path, files::Kind::TlsCert).map_err(|error| error.to_string())?;
        if CertificateDer::pem_slice_iter(&pem).next().is_none() {
            return Err(format!(
                "tls_cert_file {}: no PEM certificate (BEGIN CERTIFICATE) found",
                cert_path.display()
            ));
        }
        let key = files::read(key_path, files::Kind::TlsKey).map_err(|error| error.to_string())?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(format!(
                "tls_key_file {}: no usable PEM private key found (expected BEGIN PRIVATE KEY, \
                 BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)",
                key_path.display()
            ));
        }
        pem.push(b'\n');
        pem.extend_from_slice(&key);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|error| {
            format!(
                "tls_cert_file {} with tls_key_file {}: {}",
                cert_path.display(),
                key_path.display(),
                error_chain(&error)
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(proxy) = &tls.proxy {
        let proxy_display = display_url(proxy);
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|error| format!("proxy {proxy_display}: {}", error_chain(&error)))?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|error| {
        // The files parsed, but rustls may still refuse them (say, a key that does not match
        // its certificate): name them.
        let mut files = Vec::new();
        if let Some(path) = &tls.ca_file {
            files.push(format!("ca_file {}", path.display()));
        }
        if let Some(identity) = &tls.identity {
            files.push(format!("tls_cert_file {}", identity.cert_file.display()));
            files.push(format!("tls_key_file {}", identity.key_file.display()));
        }
        let context = if files.is_empty() {
            String::new()
        } else {
            format!(" with {}", files.join(", "))
        };
        format!(
            "cannot set up the HTTP client{context}: {}",
            error_chain(&error)
        )
    })
}

/// What an OIDC discovery document says about the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub token_endpoint: Url,
    /// `token_endpoint_auth_methods_supported`; when absent, `["client_secret_basic"]` (OIDC
    /// Discovery §3).
    pub auth_methods: Vec<String>,
    /// `mtls_endpoint_aliases.token_endpoint` (RFC 8705 §5).
    pub mtls_token_endpoint: Option<Url>,
}

/// `{issuer without one trailing slash}/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &Url) -> Result<Url, String> {
    let base = issuer.as_str();
    let base = base.strip_suffix('/').unwrap_or(base);
    let text = format!("{base}/.well-known/openid-configuration");
    Url::parse(&text).map_err(|error| format!("issuer {}: {error}", display_url(issuer)))
}

/// Fetches and checks `issuer`'s OIDC discovery document. An HTTP-date `Retry-After` is taken
/// relative to the response's `Date` (this function is given no `now`).
pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<Discovery, FetchError> {
    let url = discovery_url(issuer).map_err(FetchError::permanent)?;
    let shown = display_url(&url);
    let response = http
        .get(url)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| request_failed(&format!("discovery document {shown}"), error))?;
    let answer = read_answer(response).await;
    let prefix = format!("discovery document {shown} answered ");
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return Err(error.map_message(|message| format!("{prefix}{message}"))),
    };
    let server_now = answer
        .date
        .as_deref()
        .and_then(|date| httpdate::parse_http_date(date).ok());
    parse_discovery(
        issuer,
        answer.status,
        answer.retry_after.as_deref(),
        answer.content_type.as_deref(),
        &answer.body,
        server_now,
    )
    .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))
}

/// The discovery response checked and read. `now` only converts an HTTP-date `Retry-After`
/// (without it, such a header is ignored).
pub fn parse_discovery(
    issuer: &Url,
    status: u16,
    retry_after: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    now: Option<SystemTime>,
) -> Result<Discovery, FetchError> {
    if !(200..300).contains(&status) {
        return Err(error_status(status, retry_after, body, now));
    }
    let document = json_object(status, content_type, body)?;
    let configured = trim_one_slash(issuer.as_str());
    let announced = document
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            FetchError::permanent(format!("{} but has no issuer", status_line(status)))
        })?;
    let announced_normal = Url::parse(announced)
        .map(|url| url.as_str().to_owned())
        .unwrap_or_else(|_| announced.to_owned());
    if trim_one_slash(&announced_normal) != configured {
        return Err(FetchError::permanent(format!(
            "{} but names issuer {:?}, not the configured {:?}",
            status_line(status),
            excerpt(announced.as_bytes()),
            configured
        )));
    }
    let endpoint = |value: Option<&Value>, name: &str| -> Result<Option<Url>, FetchError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = value.as_str().ok_or_else(|| {
            FetchError::permanent(format!(
                "{} but {name} is not a string",
                status_line(status)
            ))
        })?;
        let url = Url::parse(text).map_err(|error| {
            FetchError::permanent(format!(
                "{} but {name} {:?} is not a URL: {error}",
                status_line(status),
                excerpt(text.as_bytes())
            ))
        })?;
        Ok(Some(url))
    };
    let token_endpoint =
        endpoint(document.get("token_endpoint"), "token_endpoint")?.ok_or_else(|| {
            FetchError::permanent(format!("{} but has no token_endpoint", status_line(status)))
        })?;
    let mtls_token_endpoint = endpoint(
        document
            .get("mtls_endpoint_aliases")
            .and_then(|aliases| aliases.get("token_endpoint")),
        "mtls_endpoint_aliases.token_endpoint",
    )?;
    let auth_methods = match document.get("token_endpoint_auth_methods_supported") {
        Some(Value::Array(methods)) => methods
            .iter()
            .filter_map(|method| method.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["client_secret_basic".to_owned()],
    };
    Ok(Discovery {
        token_endpoint,
        auth_methods,
        mtls_token_endpoint,
    })
}

/// How the client authenticates, with the credential itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Credentials {
    /// `client_secret_basic`: HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic(Secret),
    /// `client_secret_post`: id and secret in the form body.
    Post(Secret),
    /// `client_secret_json`: every parameter in a JSON body (Camunda, Auth0).
    Json(Secret),
    /// `private_key_jwt` (RFC 7523): a JWT signed with the client's key.
    PrivateKeyJwt {
        /// PKCS#8, PKCS#1 RSA or SEC1 EC (P-256) PEM.
        key_pem: Secret,
        key_id: Option<String>,
        /// The assertion's `aud`: usually the token endpoint URL.
        assertion_audience: String,
    },
    /// `tls_client_auth` (RFC 8705): the HTTP client's certificate is the credential.
    TlsClientAuth,
}

impl Credentials {
    /// The `token_endpoint_auth_method` name.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Basic(_) => "client_secret_basic",
            Self::Post(_) => "client_secret_post",
            Self::Json(_) => "client_secret_json",
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
        }
    }
}

/// One token request, described.
#[derive(Clone, Debug)]
pub struct TokenRequest<'a> {
    pub token_url: &'a Url,
    pub client_id: &'a str,
    pub credentials: Credentials,
    pub audience: Option<&'a str>,
    pub scope: Option<&'a str>,
    /// Sent after the standard parameters, in key order.
    pub extra_params: &'a BTreeMap<String, String>,
}

/// Makes one client-credentials request. `now` stamps the token and the client assertion and
/// converts an HTTP-date `Retry-After`; `default_lifetime` applies when the response says
/// nothing about expiry.
pub async fn request_token(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    now: SystemTime,
    default_lifetime: Duration,
) -> Result<Token, FetchError> {
    let shown = display_url(request.token_url);
    let result = async {
        let wire = build_request(http, request, now)?;
        let response = http
            .execute(wire)
            .await
            .map_err(|error| request_failed(&format!("token endpoint {shown}"), error))?;
        let prefix = format!("token endpoint {shown} answered ");
        let mut answer = read_answer(response)
            .await
            .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))?;
        // An error body is quoted (and perhaps cut short, which would defeat redacting the
        // message afterwards): redact it first. A 2xx body is left alone: it holds the token.
        if !(200..300).contains(&answer.status) {
            answer.body = redact_bytes(&answer.body, &echoable_forms(request));
        }
        parse_response(
            answer.status,
            answer.retry_after.as_deref(),
            answer.content_type.as_deref(),
            &answer.body,
            now,
            default_lifetime,
        )
        .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))
    }
    .await;
    let forms = echoable_forms(request);
    result.map_err(|error| {
        error.map_message(|message| {
            forms
                .iter()
                .fold(message, |message, form| message.replace(form, "[redacted]"))
        })
    })
}

/// The forms in which a server may echo the client secret it was sent: as is, form-encoded,
/// JSON-escaped, and inside the Basic credentials; longest first. None for a secret under 4
/// bytes (redacting it would garble messages and hide nothing).
fn echoable_forms(request: &TokenRequest<'_>) -> Vec<String> {
    let secret = match &request.credentials {
        Credentials::Basic(secret) | Credentials::Post(secret) | Credentials::Json(secret) => {
            secret.expose()
        }
        _ => return Vec::new(),
    };
    if secret.len() < 4 {
        return Vec::new();
    }
    let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let id: String = form_urlencoded::byte_serialize(request.client_id.as_bytes()).collect();
    let json = Value::from(secret).to_string();
    let json = json
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(&json)
        .to_owned();
    let mut forms = vec![
        STANDARD.encode(format!("{id}:{encoded}")),
        secret.to_owned(),
        encoded,
        json,
    ];
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    forms
}

/// `bytes` with every occurrence of each of `forms` replaced by `[redacted]`.
fn redact_bytes(bytes: &[u8], forms: &[String]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for form in forms.iter().map(String::as_bytes) {
        if form.is_empty() || !out.windows(form.len()).any(|window| window == form) {
            continue;
        }
        let mut replaced = Vec::with_capacity(out.len());
        let mut rest = out.as_slice();
        while !rest.is_empty() {
            if rest.starts_with(form) {
                replaced.extend_from_slice(b"[redacted]");
                rest = &rest[form.len()..];
            } else {
                replaced.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out = replaced;
    }
    out
}

/// The HTTP request for `request`, without sending it.
fn build_request(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    now: SystemTime,
) -> Result<reqwest::Request, FetchError> {
    let assertion;
    let mut authorization = None;
    let mut params: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    match &request.credentials {
        Credentials::Basic(secret) => {
            authorization = Some(basic_authorization(request.client_id, secret)?);
        }
        Credentials::Post(secret) | Credentials::Json(secret) => {
            params.push(("client_id", request.client_id));
            params.push(("client_secret", secret.expose()));
        }
        Credentials::PrivateKeyJwt {
            key_pem,
            key_id,
            assertion_audience,
        } => {
            assertion = client_assertion(
                key_pem,
                key_id.as_deref(),
                request.client_id,
                assertion_audience,
                now,
            )
            .map_err(|message| FetchError::permanent(format!("private_key_jwt: {message}")))?;
            params.push(("client_id", request.client_id));
            params.push(("client_assertion_type", ASSERTION_TYPE));
            params.push(("client_assertion", assertion.expose()));
        }
        Credentials::TlsClientAuth => params.push(("client_id", request.client_id)),
    }
    if let Some(audience) = request.audience {
        params.push(("audience", audience));
    }
    if let Some(scope) = request.scope {
        params.push(("scope", scope));
    }
    for (name, value) in request.extra_params {
        params.push((name, value));
    }
    let (content_type, body) = if matches!(request.credentials, Credentials::Json(_)) {
        let object: Map<String, Value> = params
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Value::from(*value)))
            .collect();
        ("application/json", Value::Object(object).to_string())
    } else {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(params.iter());
        ("application/x-www-form-urlencoded", form.finish())
    };
    let mut builder = http
        .post(request.token_url.clone())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, content_type)
        .body(body);
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization);
    }
    builder.build().map_err(|error| {
        FetchError::permanent(format!(
            "cannot build the request to {}: {}",
            display_url(request.token_url),
            cause(error)
        ))
    })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, form-urlencoded first (RFC 6749 §2.3.1).
fn basic_authorization(client_id: &str, secret: &Secret) -> Result<HeaderValue, FetchError> {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
    let credentials = STANDARD.encode(format!("{id}:{secret}"));
    let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
        .map_err(|_| FetchError::permanent("cannot encode the Basic authorization header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A signing key for `private_key_jwt`.
enum SigningKey {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl SigningKey {
    fn from_pem(key_pem: &Secret) -> Result<Self, String> {
        // pem::Error's Display may quote a line of the file: never show it.
        let der =
            PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(
                |error| match error {
                    rustls_pki_types::pem::Error::NoItemsFound => {
                        "no PEM private key found (expected \
                    BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)"
                            .to_owned()
                    }
                    _ => "the private key is not valid PEM".to_owned(),
                },
            )?;
        let rng = SystemRandom::new();
        let p256 = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        match der {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(key) = RsaKeyPair::from_pkcs8(der) {
                    return Ok(Self::Rs256(key));
                }
                match EcdsaKeyPair::from_pkcs8(p256, der, &rng) {
                    Ok(key) => Ok(Self::Es256(key)),
                    Err(error) => Err(format!(
                        "the PKCS#8 private key is neither an RSA key (of at least 2048 bits) \
                         nor an EC P-256 key ({error})"
                    )),
                }
            }
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(Self::Rs256)
                .map_err(|error| format!("the RSA private key was rejected: {error}")),
            PrivateKeyDer::Sec1(der) => {
                EcdsaKeyPair::from_pkcs8(p256, &sec1_to_pkcs8(der.secret_sec1_der()), &rng)
                    .map(Self::Es256)
                    .map_err(|error| {
                        format!("the EC private key is not a P-256 key ring accepts: {error}")
                    })
            }
            _ => Err("unsupported private key type: expected RSA or EC P-256".to_owned()),
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            Self::Rs256(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(signature)
            }
            Self::Es256(key) => key
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_owned()),
        }
    }
}

/// Wraps a SEC1 `ECPrivateKey` (`BEGIN EC PRIVATE KEY`) for P-256 into PKCS#8 v1, the only EC
/// form ring reads.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALGORITHM: [u8; 21] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut content = vec![0x02, 0x01, 0x00];
    content.extend_from_slice(&ALGORITHM);
    content.push(0x04);
    der_length(&mut content, sec1.len());
    content.extend_from_slice(sec1);
    let mut out = vec![0x30];
    der_length(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

fn der_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|byte| **byte == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The JWS algorithm `private_key_jwt` would use with this key (`RS256` or `ES256`), or why the
/// key is unusable. For `bearerd check`.
pub fn private_key_algorithm(key_pem: &Secret) -> Result<&'static str, String> {
    SigningKey::from_pem(key_pem).map(|key| key.algorithm())
}

/// An RFC 7523 client assertion: `iss` = `sub` = client id, a unique `jti`, valid for
/// [`ASSERTION_LIFETIME`] from `now`.
fn client_assertion(
    key_pem: &Secret,
    key_id: Option<&str>,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let key = SigningKey::from_pem(key_pem)?;
    let mut header = Map::new();
    header.insert("alg".to_owned(), key.algorithm().into());
    header.insert("typ".to_owned(), "JWT".into());
    if let Some(key_id) = key_id {
        header.insert("kid".to_owned(), key_id.into());
    }
    let mut jti = [0_u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| "no randomness for the assertion's jti".to_owned())?;
    let issued_at = unix_seconds(now);
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": issued_at,
        "exp": issued_at + ASSERTION_LIFETIME.as_secs(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// What of a response is looked at.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    date: Option<String>,
    body: Vec<u8>,
}

/// The response with at most [`MAX_BODY_BYTES`] of its body. A 2xx body over the cap is an
/// error; an error status's body is cut at the cap (only an excerpt of it is used).
async fn read_answer(mut response: reqwest::Response) -> Result<Answer, FetchError> {
    let status = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(RETRY_AFTER);
    let content_type = header(CONTENT_TYPE);
    let date = header(DATE);
    let success = (200..300).contains(&status);
    let mut body = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                return Err(FetchError::transient(format!(
                    "{} but reading the body failed: {}",
                    status_line(status),
                    cause(error)
                )));
            }
        };
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            if success {
                return Err(FetchError::transient(format!(
                    "{} but the body is larger than {} KiB",
                    status_line(status),
                    MAX_BODY_BYTES / 1024
                )));
            }
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        content_type,
        date,
        body,
    })
}

/// A token endpoint's response turned into a [`Token`] or a classified [`FetchError`] whose
/// message starts with the status (the caller prefixes the endpoint). Pure: `now` stamps the
/// token and converts an HTTP-date `Retry-After`.
///
/// Lifetime: `expires_in` (a number or numeric string, fractions truncated) and a JWT token's
/// `exp` claim (read, not verified); the earlier expiry wins; with neither, `default_lifetime`.
/// A non-positive `expires_in` is ignored as if absent (some servers send 0 for "unspecified");
/// an `exp` not after `now` is ignored (a skewed clock, ours or theirs, must not make every
/// token look dead); anything beyond [`MAX_LIFETIME`] is clamped to it; the result is at least
/// [`MIN_LIFETIME`]. Each of these is logged as a warning.
///
/// `token_type` is kept as sent (`Bearer` when absent). Another type (e.g. `DPoP`) is accepted
/// with a warning, since bearerd writes the token wherever it is told to, but it must match the
/// RFC 6749 type-name syntax, and `scope` must match RFC 6749 §3.3: either would otherwise reach
/// templated files unchecked.
pub fn parse_response(
    status: u16,
    retry_after: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    now: SystemTime,
    default_lifetime: Duration,
) -> Result<Token, FetchError> {
    if !(200..300).contains(&status) {
        return Err(error_status(status, retry_after, body, Some(now)));
    }
    let object = json_object(status, content_type, body)?;
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        _ => {
            let explanation = oauth_error(&object).map(|(code, text)| (classify_code(&code), text));
            return Err(match explanation {
                Some((Some(true), text)) => FetchError::permanent(format!(
                    "{} but no access_token: {text}",
                    status_line(status)
                )),
                Some((_, text)) => FetchError::transient(format!(
                    "{} but no access_token: {text}",
                    status_line(status)
                )),
                None => {
                    FetchError::transient(format!("{} but no access_token", status_line(status)))
                }
            });
        }
    };
    if !is_b64token(access_token) {
        return Err(FetchError::permanent(format!(
            "{} but the access_token ({} bytes) has characters an RFC 6750 bearer token may not \
             have; a hostile token, refused",
            status_line(status),
            access_token.len()
        )));
    }
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => {
            tracing::debug!("no token_type in the response; assuming Bearer");
            "Bearer".to_owned()
        }
        Some(Value::String(kind)) if is_type_name(kind) => {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(token_type = %kind, "the token is not a bearer token; using it anyway");
            }
            kind.clone()
        }
        Some(_) => {
            return Err(FetchError::permanent(format!(
                "{} but token_type is not an RFC 6749 type name; a hostile response, refused",
                status_line(status)
            )));
        }
    };
    let scope = match object.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(scope)) if scope.is_empty() => None,
        Some(Value::String(scope)) if is_scope(scope) => Some(scope.clone()),
        // Some servers send a list; the standard form is space-separated.
        Some(Value::Array(items))
            if items.iter().all(|item| item.as_str().is_some_and(is_scope)) =>
        {
            let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!joined.is_empty()).then(|| joined.join(" "))
        }
        Some(_) => {
            return Err(FetchError::permanent(format!(
                "{} but scope is not an RFC 6749 scope; a hostile response, refused",
                status_line(status)
            )));
        }
    };
    let expires_in = match object.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let seconds = match value {
                Value::Number(number) => number.as_f64(),
                Value::String(text) => text.trim().parse::<f64>().ok(),
                _ => None,
            };
            let seconds = seconds.filter(|seconds| seconds.is_finite());
            if seconds.is_none() {
                tracing::warn!("expires_in is not a number; ignoring it");
            }
            seconds
        }
    };
    let expires_at = expiry(expires_in, jwt_expiry(access_token), now, default_lifetime);
    Ok(Token {
        access_token: Secret::new(access_token.clone()),
        token_type,
        scope,
        issued_at: now,
        expires_at,
    })
}

/// When a token issued at `now` expires; see [`parse_response`] for the rules.
fn expiry(
    expires_in: Option<f64>,
    jwt_exp: Option<f64>,
    now: SystemTime,
    default_lifetime: Duration,
) -> SystemTime {
    let max_seconds = MAX_LIFETIME.as_secs_f64();
    let from_expires_in = expires_in.and_then(|seconds| {
        let seconds = seconds.trunc();
        if seconds <= 0.0 {
            tracing::warn!(
                expires_in = seconds,
                "expires_in is not positive; ignoring it"
            );
            None
        } else if seconds > max_seconds {
            tracing::warn!(
                expires_in = seconds,
                "expires_in is over a year; assuming a year"
            );
            Some(MAX_LIFETIME)
        } else {
            Some(Duration::from_secs_f64(seconds))
        }
    });
    let from_exp = jwt_exp.and_then(|exp| {
        let now_seconds = now
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        let remaining = exp - now_seconds;
        if remaining <= 0.0 {
            tracing::warn!(
                exp,
                "the token's JWT exp is not in the future (clock skew?); ignoring it"
            );
            None
        } else if remaining > max_seconds {
            tracing::warn!(
                exp,
                "the token's JWT exp is over a year away; assuming a year"
            );
            Some(MAX_LIFETIME)
        } else {
            Some(Duration::from_secs_f64(remaining))
        }
    });
    if let (Some(by_expires_in), Some(by_exp)) = (from_expires_in, from_exp)
        && by_exp + Duration::from_secs(1) < by_expires_in
    {
        tracing::debug!(
            expires_in = by_expires_in.as_secs(),
            exp_in = by_exp.as_secs(),
            "the JWT exp is earlier than expires_in says; using exp"
        );
    }
    let lifetime = match (from_expires_in, from_exp) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => default_lifetime.min(MAX_LIFETIME),
    };
    now.checked_add(lifetime.max(MIN_LIFETIME)).unwrap_or(now)
}

/// The `exp` claim of a JWS-shaped token (`header.payload.signature`), unverified.
fn jwt_expiry(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims.get("exp")?.as_f64().filter(|exp| exp.is_finite())
}

/// RFC 6749 §11.1 `type-name = 1*name-char`, `name-char = "-" / "." / "_" / DIGIT / ALPHA`.
fn is_type_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// RFC 6749 §3.3: `scope-token *( SP scope-token )`, `scope-token = 1*NQCHAR`.
fn is_scope(text: &str) -> bool {
    text.split(' ').all(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    })
}

/// The body as a JSON object, or a transient error that quotes nothing of it (it is a 2xx body
/// and may hold a token).
fn json_object(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, FetchError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(FetchError::transient(format!(
            "{} but the JSON body is not an object",
            status_line(status)
        ))),
        Err(error) => {
            let media_type = content_type
                .map(|value| value.split(';').next().unwrap_or(value).trim())
                .filter(|media| !media.is_empty());
            let message = match media_type {
                Some(media) if !media.to_ascii_lowercase().contains("json") => format!(
                    "{} but the body is not JSON ({})",
                    status_line(status),
                    excerpt(media.as_bytes())
                ),
                _ if body.iter().all(u8::is_ascii_whitespace) => {
                    format!("{} but the body is empty", status_line(status))
                }
                _ => format!("{} but invalid JSON: {error}", status_line(status)),
            };
            Err(FetchError::transient(message))
        }
    }
}

/// A non-2xx answer, classified. RFC 6749 error codes decide first (permanent ones, and
/// `server_error`/`temporarily_unavailable` as transient), then the status: 408, 429 and 5xx
/// are transient; 3xx (redirects are not followed) and the other 4xx are permanent.
fn error_status(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: Option<SystemTime>,
) -> FetchError {
    let line = status_line(status);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let oauth = parsed
        .as_ref()
        .and_then(Value::as_object)
        .and_then(oauth_error);
    let (by_code, detail) = match &oauth {
        Some((code, text)) => (classify_code(code), text.clone()),
        None if body.iter().all(u8::is_ascii_whitespace) => (None, "(empty body)".to_owned()),
        None => (None, excerpt(body)),
    };
    let by_status = matches!(status, 408 | 429 | 500..=599);
    let permanent = by_code.unwrap_or(!by_status);
    let message = if (300..400).contains(&status) {
        format!("{line} (redirects are not followed): {detail}")
    } else {
        format!("{line}: {detail}")
    };
    let endpoint_unreachable = status == 404;
    if permanent {
        FetchError::Permanent {
            message,
            endpoint_unreachable,
        }
    } else {
        FetchError::Transient {
            message,
            retry_after: retry_after.and_then(|value| match now {
                Some(now) => parse_retry_after(value, now),
                None => parse_retry_after_seconds(value),
            }),
            endpoint_unreachable,
        }
    }
}

/// `Some(true)` for a code no retry heals, `Some(false)` for a temporary one, else `None`.
fn classify_code(code: &str) -> Option<bool> {
    if PERMANENT_ERRORS.contains(&code) {
        Some(true)
    } else if TRANSIENT_ERRORS.contains(&code) {
        Some(false)
    } else {
        None
    }
}

/// An RFC 6749 §5.2 error: the code and `code: description`, both sanitised.
fn oauth_error(object: &Map<String, Value>) -> Option<(String, String)> {
    let code = object.get("error")?.as_str()?;
    let code = excerpt(code.as_bytes());
    let text = match object.get("error_description").and_then(Value::as_str) {
        Some(description) if !description.trim().is_empty() => {
            format!("{code}: {}", excerpt(description.as_bytes()))
        }
        _ => code.clone(),
    };
    Some((code, text))
}

/// `Retry-After` as delta-seconds or an HTTP-date (relative to `now`; a past date is zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Some(delay) = parse_retry_after_seconds(value) {
        return Some(delay);
    }
    let date = httpdate::parse_http_date(value.trim()).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Retry-After` as delta-seconds only.
fn parse_retry_after_seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for a u64 is still "a very long time".
    Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)))
}

/// At most [`EXCERPT_CHARS`] characters of untrusted text, fit for a one-line message: control
/// characters and runs of whitespace become one space, bidirectional overrides are dropped.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            space = count > 0;
            continue;
        }
        if matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            continue;
        }
        let needed = usize::from(space) + 1;
        if count + needed > EXCERPT_CHARS - 1 {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        count += needed;
    }
    out
}

/// `503 Service Unavailable`, or the bare number for an unknown status.
fn status_line(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

fn trim_one_slash(text: &str) -> &str {
    text.strip_suffix('/').unwrap_or(text)
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

/// A failed send: connection trouble is transient and marks the endpoint unreachable; a
/// server certificate that cannot be trusted is permanent, since retrying cannot change it.
fn request_failed(what: &str, error: reqwest::Error) -> FetchError {
    let endpoint_unreachable = error.is_connect();
    let host = error
        .url()
        .and_then(Url::host_str)
        .unwrap_or("the server")
        .to_owned();
    if let Some(problem) = tls_error(&error).and_then(|tls| certificate_problem(&host, tls)) {
        return FetchError::Permanent {
            message: format!("{what}: {problem}"),
            endpoint_unreachable,
        };
    }
    let message = format!("{what}: {}", cause(error));
    FetchError::Transient {
        message,
        retry_after: None,
        endpoint_unreachable,
    }
}

/// The rustls error somewhere in `error`'s sources. An `io::Error` reports the source of the
/// error it wraps, not that error (here an io::Error wrapping an io::Error wrapping rustls's),
/// so each one is unwrapped by hand.
fn tls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next = error.source();
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => current.source(),
        };
    }
    None
}

/// What is wrong with the certificate `host` presented, in words a person can act on; `None`
/// when `error` is not about the server's certificate.
fn certificate_problem(host: &str, error: &rustls::Error) -> Option<String> {
    use rustls::CertificateError as E;
    let rustls::Error::InvalidCertificate(error) = error else {
        return None;
    };
    let subject = format!("the server certificate for {host}");
    Some(match error {
        E::UnknownIssuer => format!(
            "{subject} is not signed by a trusted CA; set ca_file to the PEM file of the CA \
             that signed it (ca_file is trusted besides the system's CAs)"
        ),
        E::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            format!(
                "{subject} is a CA certificate, not a server certificate (a self-signed one \
                 from `openssl req -x509` is a CA by default); have the server present a \
                 certificate its CA signed, and give ca_file the CA that signed the server's \
                 own certificate"
            )
        }
        E::NotValidForNameContext { presented, .. } if !presented.is_empty() => format!(
            "{subject} is for other names ({}); use one of them in the URL, or have the \
             server present a certificate for {host}",
            presented_names(presented)
        ),
        E::NotValidForNameContext { .. } => format!(
            "{subject} names no host in its subjectAltName (its common name alone does not \
             count); have the server present a certificate whose subjectAltName has {host}"
        ),
        E::NotValidForName => format!(
            "{subject} is for other names; use one of them in the URL, or have the server \
             present a certificate for {host}"
        ),
        E::ExpiredContext { time, not_after } => format!(
            "{subject} expired on {} (this machine's clock reads {}); the server must renew it",
            unix_time(*not_after),
            unix_time(*time)
        ),
        E::Expired => format!("{subject} has expired; the server must renew it"),
        E::NotValidYetContext { time, not_before } => format!(
            "{subject} is not valid until {} (this machine's clock reads {}); check this \
             machine's clock, or have the server present a certificate valid now",
            unix_time(*not_before),
            unix_time(*time)
        ),
        E::NotValidYet => format!(
            "{subject} is not valid yet; check this machine's clock, or have the server \
             present a certificate valid now"
        ),
        E::Revoked => format!("{subject} has been revoked; the server must replace it"),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => format!(
            "{subject} is not for TLS servers (its extended key usage lacks serverAuth); the \
             server must present a server certificate"
        ),
        E::BadSignature => format!(
            "{subject} does not carry a valid signature of its issuer; the server's chain is \
             broken, or ca_file holds another CA with the same name"
        ),
        E::BadEncoding => format!("{subject} is malformed (it is not valid DER)"),
        other => format!(
            "{subject} was refused: {}",
            excerpt(other.to_string().as_bytes())
        ),
    })
}

/// Subject names from a certificate (webpki writes them as `DnsName("a.example")` and
/// `IpAddress(10.0.0.1)`), plain, few and printable: the server chose them.
fn presented_names(presented: &[String]) -> String {
    const SHOWN: usize = 5;
    const CHARS: usize = 64;
    let mut names: Vec<String> = presented
        .iter()
        .take(SHOWN)
        .map(|name| {
            let plain = name
                .strip_prefix("DnsName(\"")
                .and_then(|rest| rest.strip_suffix("\")"))
                .or_else(|| {
                    name.strip_prefix("IpAddress(")
                        .and_then(|rest| rest.strip_suffix(')'))
                })
                .unwrap_or(name);
            let mut shown: String = plain
                .chars()
                .take(CHARS)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            if plain.chars().nth(CHARS).is_some() {
                shown.push('…');
            }
            shown
        })
        .collect();
    if presented.len() > SHOWN {
        names.push(format!("and {} more", presented.len() - SHOWN));
    }
    names.join(", ")
}

/// RFC 3339 in UTC, as far as humantime can print it (up to the year 9999).
fn unix_time(time: rustls_pki_types::UnixTime) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    let seconds = time.as_secs();
    if seconds >= YEAR_10000 {
        return format!("unix time {seconds}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

/// The useful part of a reqwest error: the innermost cause, with common I/O errors named
/// plainly. reqwest's own top line names the URL with its query; it is not used.
fn cause(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut innermost = None;
    let mut source = error.source();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let plain = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset"),
                ErrorKind::ConnectionAborted => Some("connection aborted"),
                ErrorKind::TimedOut => Some("timed out"),
                ErrorKind::UnexpectedEof => Some("connection closed unexpectedly"),
                _ => None,
            };
            if let Some(plain) = plain {
                return plain.to_owned();
            }
        }
        innermost = Some(current.to_string());
        source = current.source();
    }
    innermost.unwrap_or_else(|| error.without_url().to_string())
}

/// An error and its sources, joined with ": " (for setup errors, which carry no secrets).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;
    use bearerd_idp::{Fault, Idp, IdpSettings, KeyAlgorithm};
    use ring::signature::KeyPair as _;

    const RSA_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCsTTvDE+FiYtQS\n\
bVQA3ZtAK1YNDzE4Cp03DKgHGP6NdW4GStRFuym/TAP2Dhk7bY4qiSRgawpbQKcJ\n\
b2IIyV7Kk4MicjcJGxmxoQ/Bz+65y+qJfzOPYA7/t5hOiFvUtPVYq5LnenCyOvCg\n\
GJN4gTCJyL0rRMtGz7Ae5MgPMHvBWZYor1fWMTZ2z8/a+piDbOkbYOBQ7uzky9k1\n\
ziN4oBZKu7RZY8O3XcTrAMvH79sRb4p80FBcxEPgDUDdlGa50TCA4Jj1y32jZjsG\n\
/jH+bnVnsNVHnKGcrf+e/Gz1I8/kI4MHPCrz00c9+exlttBpAXXvPPxqP+PNX8X5\n\
/PBa6zXvAgMBAAECggEABF5C5Ru0a5eg08TEy+7SWEqg+FzJvSd7u+EMw31NOs3e\n\
17b+8bOgh9KICS1rU1fgMlDexLkB/rVBZtpVjG56gj1CJlXp8kenG5s/OIUqgrha\n\
Plkkt/5R8wa3DEqltVtPGwvigg7XG5Wl8xEccAIqdlvJ+/ZXBvkN+IKJVeU/RfQS\n\
UZCZFdy/y9U2eOlvo+JZurl1+EWbDvg74BAJShv2BFWRxj17xrPV3b5TPXAne71i\n\
ymro5ZIuZWVHrfnAoOHQG2G8kxKQPLcUqYA1R5OYguRUgiCHIRTV4H/Bv82tpFni\n\
zS44br3iym35b8qCpHKNEhrg498YGP7RlIuINM5QPQKBgQDeE3brepzzpxQhauFA\n\
UKlASsvcH95EhweMzNKF5S/1qwar7RHsnf7ouf4ka0Mc9NBwUF4dMY85pUKy+SSA\n\
PAbQRvbxq9sxoVE3qFiPNvqTOcXNCYaqLYKbm44UDbJr3Q7+NTRs01DkFWcayb3J\n\
9xmHfsGpA8noZSFuDyfv88n+cwKBgQDGn0ls+uvAriSPriEeD8pEa/CpopvQ4Iie\n\
Bop34au8bYqlEoecXer7sCwGsgzSd2SzvgTBndQ1DSg4zVX/0QBhvKvzvaE1Fa2R\n\
pdnTMVK+R/tNgcwftW8w9lBXRue7E7XQihKWdTP08cIQbprk3M5aCd+1Ry9/DYEz\n\
k3Pk2REvlQKBgA6ciT6FGr6NR63LMnbg18H7Kd6Z2i34FG8XKuLUaYtobU/ykTNY\n\
UeVOF4Kd7BSDpxM8tnSFRj8suG6+JcCqMmiRwr2z6QAi9Q0Mboc9vs7hBjqvXcTk\n\
qatDWN3I6Oxf5xSiu4hNfw0Cu33vuCUJtQxNMsDEFwzLWp+7L42CJNAxAoGBAJsF\n\
0dpEUeMWSCT4ZJLBAj66/KB58SFrTlYAhuygb1jnKnJCbyPFTdVZoFMtfsJ6O1fq\n\
tG2l0O4DMeR7p2a96o1eI9teo0b6f3kROF0Uvx8SsXrCFt6czocpiHVGOzGRZbO5\n\
QF68ZWwFkVEf8rcz+77cvAUR5WlF0hS+PpNcNIStAoGAA/qa6KLEBbKg1WTaWzhQ\n\
8QbbNSXper05wPgg2DQJgXQKWx5VmUDiarqga0GU37msJhXxNrM1aroI+lGhbfeq\n\
o2gSdBYYMMa4t3urrLGuAtO281qZceyT+DAUQeQIG4zLez3WZZ+Jhn9qvO3IhtH3\n\
S7ci7Xm71h7ZLN8TBGFMH14=\n\
-----END PRIVATE KEY-----\n\
";
    const RSA_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEArE07wxPhYmLUEm1UAN2bQCtWDQ8xOAqdNwyoBxj+jXVuBkrU\n\
Rbspv0wD9g4ZO22OKokkYGsKW0CnCW9iCMleypODInI3CRsZsaEPwc/uucvqiX8z\n\
j2AO/7eYTohb1LT1WKuS53pwsjrwoBiTeIEwici9K0TLRs+wHuTIDzB7wVmWKK9X\n\
1jE2ds/P2vqYg2zpG2DgUO7s5MvZNc4jeKAWSru0WWPDt13E6wDLx+/bEW+KfNBQ\n\
XMRD4A1A3ZRmudEwgOCY9ct9o2Y7Bv4x/m51Z7DVR5yhnK3/nvxs9SPP5CODBzwq\n\
89NHPfnsZbbQaQF17zz8aj/jzV/F+fzwWus17wIDAQABAoIBAAReQuUbtGuXoNPE\n\
xMvu0lhKoPhcyb0ne7vhDMN9TTrN3te2/vGzoIfSiAkta1NX4DJQ3sS5Af61QWba\n\
VYxueoI9QiZV6fJHpxubPziFKoK4Wj5ZJLf+UfMGtwxKpbVbTxsL4oIO1xuVpfMR\n\
HHACKnZbyfv2Vwb5DfiCiVXlP0X0ElGQmRXcv8vVNnjpb6PiWbq5dfhFmw74O+AQ\n\
CUob9gRVkcY9e8az1d2+Uz1wJ3u9Yspq6OWSLmVlR635wKDh0BthvJMSkDy3FKmA\n\
NUeTmILkVIIghyEU1eB/wb/NraRZ4s0uOG694spt+W/KgqRyjRIa4OPfGBj+0ZSL\n\
iDTOUD0CgYEA3hN263qc86cUIWrhQFCpQErL3B/eRIcHjMzSheUv9asGq+0R7J3+\n\
6Ln+JGtDHPTQcFBeHTGPOaVCsvkkgDwG0Eb28avbMaFRN6hYjzb6kznFzQmGqi2C\n\
m5uOFA2ya90O/jU0bNNQ5BVnGsm9yfcZh37BqQPJ6GUhbg8n7/PJ/nMCgYEAxp9J\n\
bPrrwK4kj64hHg/KRGvwqaKb0OCIngaKd+GrvG2KpRKHnF3q+7AsBrIM0ndks74E\n\
wZ3UNQ0oOM1V/9EAYbyr872hNRWtkaXZ0zFSvkf7TYHMH7VvMPZQV0bnuxO10IoS\n\
lnUz9PHCEG6a5NzOWgnftUcvfw2BM5Nz5NkRL5UCgYAOnIk+hRq+jUetyzJ24NfB\n\
+ynemdot+BRvFyri1GmLaG1P8pEzWFHlTheCnewUg6cTPLZ0hUY/LLhuviXAqjJo\n\
kcK9s+kAIvUNDG6HPb7O4QY6r13E5KmrQ1jdyOjsX+cUoruITX8NArt977glCbUM\n\
TTLAxBcMy1qfuy+NgiTQMQKBgQCbBdHaRFHjFkgk+GSSwQI+uvygefEha05WAIbs\n\
oG9Y5ypyQm8jxU3VWaBTLX7CejtX6rRtpdDuAzHke6dmveqNXiPbXqNG+n95EThd\n\
FL8fErF6whbenM6HKYh1RjsxkWWzuUBevGVsBZFRH/K3M/u+3LwFEeVpRdIUvj6T\n\
XDSErQKBgAP6muiixAWyoNVk2ls4UPEG2zUl6Xq9OcD4INg0CYF0ClseVZlA4mq6\n\
oGtBlN+5rCYV8TazNWq6CPpRoW33qqNoEnQWGDDGuLd7q6yxrgLTtvNamXHsk/gw\n\
FEHkCBuMy3s91mWfiYZ/arztyIbR90u3Iu15u9Ye2SzfEwRhTB9e\n\
-----END RSA PRIVATE KEY-----\n\
";
    const EC_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEII6TjBhQFsB1wcgPbTAZjh8cFYPt0N19YCjuZvb4PV+RoAoGCCqGSM49\n\
AwEHoUQDQgAE+3cGPEBmqXpEh9pSgtori9D2rwUx7xBXJKxwkC+XOJsui3KYIJye\n\
ivM61j4lBQ7Lpiwk67xjYSOpKGzHzT6SIA==\n\
-----END EC PRIVATE KEY-----\n\
";
    const EC_P384_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD7bYRs87yipFNiaThK\n\
koZcVsAMh9qBq7M/qPlNYqnOK7LTkpTa/PVMbyQSCuxUWUmhZANiAAQ9/TNZA2Af\n\
muPA2lmLa1rUeoaOsq8sGiMwYmZ72+aYJbx/j+4GaVvJs0hfzGMO7HiqvdgGHcFB\n\
ANfgOOG2UJgZCBQLjOjCTD5h1/9RfbOKDPsRTqX2PS2CSOfYiQlh6HQ=\n\
-----END PRIVATE KEY-----\n\
";
    const EC_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBgzCCASugAwIBAgIUEYphHEf1yGZPOtpScWqAnM9XtiIwCgYIKoZIzj0EAwIw\n\
FzEVMBMGA1UEAwwMYmVhcmVyZC10ZXN0MCAXDTI2MTEyOTAzMjEzN1oYDzIxMjYx\n\
MTA1MDMyMTM3WjAXMRUwEwYDVQQDDAxiZWFyZXJkLXRlc3QwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAT7dwY8QGapekSH2lKC2iuL0PavBTHvEFckrHCQL5c4my6L\n\
cpggnJ6K8zrWPiUFDsumLCTrvGNhI6kobMfNPpIgo1MwUTAdBgNVHQ4EFgQUFw8g\n\
229FWhutS/05TUZerkm/V2IwHwYDVR0jBBgwFoAUFw8g229FWhutS/05TUZerkm/\n\
V2IwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNGADBDAiA0q7soP/sA9f0U\n\
K/Jxz2mUTY60WCnisg5T1MYvPlEcCgIfTbnKQfhyekb2vhWl9hLr6UgI/FDe1UEd\n\
Gq7fTDwMLg==\n\
-----END CERTIFICATE-----\n\
";

    const DEFAULT: Duration = Duration::from_secs(300);

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ok(body: &str) -> Result<Token, FetchError> {
        parse_response(
            200,
            None,
            Some("application/json"),
            body.as_bytes(),
            now(),
            DEFAULT,
        )
    }

    fn lifetime(body: &str) -> Duration {
        let token = ok(body).expect("a token");
        token
            .expires_at
            .duration_since(token.issued_at)
            .expect("expires after issue")
    }

    /// A JWT-shaped token whose payload is `claims` (header and signature are filler).
    fn jwt(claims: &Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn refused(status: u16, content_type: &str, body: &str) -> FetchError {
        parse_response(
            status,
            None,
            Some(content_type),
            body.as_bytes(),
            now(),
            DEFAULT,
        )
        .expect_err("an error")
    }

    // ---- parse_response: success and lifetime ----

    #[test]
    fn a_complete_response_becomes_a_token() {
        let token = ok(r#"{"access_token":"abc.DEF-_~+/9==","token_type":"Bearer",
                           "expires_in":3600,"scope":"tasks:read tasks:write"}"#)
        .expect("a token");
        assert_eq!(token.access_token.expose(), "abc.DEF-_~+/9==");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.scope.as_deref(), Some("tasks:read tasks:write"));
        assert_eq!(token.issued_at, now());
        assert_eq!(token.expires_at, now() + Duration::from_secs(3600));
    }

    #[test]
    fn expires_in_may_be_a_string_or_a_float() {
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"3600"}"#).as_secs(),
            3600
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":" 120 "}"#).as_secs(),
            120
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":3600.9}"#),
            Duration::from_secs(3600)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"59.5"}"#),
            Duration::from_secs(59)
        );
    }

    #[test]
    fn absent_or_unusable_expires_in_falls_back_to_the_default() {
        for body in [
            r#"{"access_token":"t"}"#,
            r#"{"access_token":"t","expires_in":null}"#,
            r#"{"access_token":"t","expires_in":0}"#,
            r#"{"access_token":"t","expires_in":-5}"#,
            r#"{"access_token":"t","expires_in":"-5"}"#,
            r#"{"access_token":"t","expires_in":0.4}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":true}"#,
        ] {
            assert_eq!(lifetime(body), DEFAULT, "{body}");
        }
    }

    #[test]
    fn a_huge_expires_in_is_clamped_to_a_year() {
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":1e30}"#),
            MAX_LIFETIME
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"99999999999"}"#),
            MAX_LIFETIME
        );
    }

    #[test]
    fn a_jwt_exp_is_used_without_expires_in() {
        let token = jwt(&serde_json::json!({"sub": "x", "exp": 1_700_000_120}));
        let body = serde_json::json!({"access_token": token}).to_string();
        assert_eq!(lifetime(&body), Duration::from_secs(120));
    }

    #[test]
    fn the_earlier_of_expires_in_and_exp_wins() {
        let token = jwt(&serde_json::json!({"exp": 1_700_000_100}));
        let cached = serde_json::json!({"access_token": token, "expires_in": 3600}).to_string();
        assert_eq!(lifetime(&cached), Duration::from_secs(100));
        let token = jwt(&serde_json::json!({"exp": 1_700_003_600}));
        let short = serde_json::json!({"access_token": token, "expires_in": 60}).to_string();
        assert_eq!(lifetime(&short), Duration::from_secs(60));
    }

    #[test]
    fn a_past_or_absurd_exp_is_not_believed() {
        let past = jwt(&serde_json::json!({"exp": 1_699_999_000}));
        let body = serde_json::json!({"access_token": past, "expires_in": 300}).to_string();
        assert_eq!(lifetime(&body), Duration::from_secs(300));
        let body = serde_json::json!({"access_token": past}).to_string();
        assert_eq!(lifetime(&body), DEFAULT);
        let far = jwt(&serde_json::json!({"exp": 9_999_999_999_u64}));
        let body = serde_json::json!({"access_token": far}).to_string();
        assert_eq!(lifetime(&body), MAX_LIFETIME);
        let text = jwt(&serde_json::json!({"exp": "tomorrow"}));
        let body = serde_json::json!({"access_token": text}).to_string();
        assert_eq!(lifetime(&body), DEFAULT);
    }

    #[test]
    fn an_expiry_a_moment_away_still_lies_in_the_future() {
        let token = jwt(&serde_json::json!({"exp": 1_700_000_000.2}));
        let body = serde_json::json!({"access_token": token}).to_string();
        assert_eq!(lifetime(&body), MIN_LIFETIME);
    }

    #[test]
    fn non_jwt_tokens_with_dots_are_not_jwts() {
        for token in ["a.b", "a.b.c.d.e", "a.!!!.c", "a.bm90IGpzb24.c"] {
            let body = serde_json::json!({"access_token": token}).to_string();
            if is_b64token(token) {
                assert_eq!(lifetime(&body), DEFAULT, "{token}");
            }
        }
    }

    #[test]
    fn token_type_is_kept_as_sent() {
        let token = ok(r#"{"access_token":"t","token_type":"bearer"}"#).expect("token");
        assert_eq!(token.token_type, "bearer");
        let token = ok(r#"{"access_token":"t","token_type":"DPoP"}"#).expect("token");
        assert_eq!(token.token_type, "DPoP");
        let token = ok(r#"{"access_token":"t"}"#).expect("token");
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn a_token_type_that_could_break_a_file_is_refused() {
        for kind in [r#""Bearer\nX: y""#, r#""Bear er""#, "42", r#""""#] {
            let body = format!(r#"{{"access_token":"t","token_type":{kind}}}"#);
            assert!(ok(&body).expect_err("refused").is_permanent(), "{body}");
        }
    }

    #[test]
    fn scope_is_optional_and_checked() {
        assert_eq!(
            ok(r#"{"access_token":"t","scope":""}"#).expect("t").scope,
            None
        );
        assert_eq!(
            ok(r#"{"access_token":"t","scope":["a","b:c"]}"#)
                .expect("t")
                .scope
                .as_deref(),
            Some("a b:c")
        );
        for scope in [r#""a\"b""#, r#""a\nb""#, r#""a  b""#, r#""ü""#] {
            let body = format!(r#"{{"access_token":"t","scope":{scope}}}"#);
            assert!(ok(&body).expect_err("refused").is_permanent(), "{body}");
        }
    }

    // ---- parse_response: bad tokens and bodies ----

    #[test]
    fn a_missing_access_token_is_transient() {
        for body in [
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":42}"#,
            r#"{"access_token":null}"#,
        ] {
            let error = ok(body).expect_err("no token");
            assert!(!error.is_permanent(), "{body}");
            assert_eq!(error.message(), "200 OK but no access_token");
        }
    }

    #[test]
    fn a_200_carrying_an_oauth_error_is_classified_by_its_code() {
        let error =
            ok(r#"{"error":"invalid_client","error_description":"nope"}"#).expect_err("no token");
        assert!(error.is_permanent());
        assert_eq!(
            error.message(),
            "200 OK but no access_token: invalid_client: nope"
        );
    }

    #[test]
    fn hostile_tokens_are_permanent_and_never_quoted() {
        for token in [
            "evil token",
            "evil\ntoken",
            "evil\"token",
            "$(evil)",
            "évil",
            "evil=x",
        ] {
            let body = serde_json::json!({"access_token": token, "expires_in": 60}).to_string();
            let error = ok(&body).expect_err("hostile");
            assert!(error.is_permanent(), "{token:?}");
            assert!(error.message().contains("hostile"), "{}", error.message());
            assert!(!error.message().contains("evil"), "{}", error.message());
        }
    }

    #[test]
    fn a_2xx_body_that_is_not_json_is_never_quoted() {
        let error = refused(200, "text/html", "<html>SECRET-TOKEN-abc</html>");
        assert!(!error.is_permanent());
        assert_eq!(
            error.message(),
            "200 OK but the body is not JSON (text/html)"
        );
        let error = error_of(
            200,
            Some("application/json"),
            r#"{"access_token":"SECRET-TOKEN"#,
        );
        assert!(!error.is_permanent());
        assert!(
            error
                .message()
                .starts_with("200 OK but invalid JSON: EOF while parsing"),
            "{}",
            error.message()
        );
        assert!(!error.message().contains("SECRET"));
        let error = error_of(200, None, "access_token=SECRET");
        assert!(
            error.message().starts_with("200 OK but invalid JSON: "),
            "{}",
            error.message()
        );
        assert!(!error.message().contains("SECRET"));
        let error = error_of(201, Some("application/json; charset=utf-8"), "");
        assert_eq!(error.message(), "201 Created but the body is empty");
        let error = error_of(200, Some("application/json"), r#"["SECRET"]"#);
        assert_eq!(error.message(), "200 OK but the JSON body is not an object");
    }

    fn error_of(status: u16, content_type: Option<&str>, body: &str) -> FetchError {
        parse_response(status, None, content_type, body.as_bytes(), now(), DEFAULT)
            .expect_err("an error")
    }

    // ---- parse_response: error statuses ----

    #[test]
    fn oauth_errors_are_reported_with_their_description() {
        let error = refused(
            401,
            "application/json",
            r#"{"error":"invalid_client","error_description":"Invalid client\ncredentials"}"#,
        );
        assert_eq!(
            error,
            FetchError::Permanent {
                message: "401 Unauthorized: invalid_client: Invalid client credentials".into(),
                endpoint_unreachable: false,
            }
        );
        let error = refused(400, "application/json", r#"{"error":"invalid_scope"}"#);
        assert_eq!(error.message(), "400 Bad Request: invalid_scope");
        assert!(error.is_permanent());
    }

    #[test]
    fn classification_by_code_and_status() {
        let cases: [(u16, &str, bool); 14] = [
            (400, r#"{"error":"invalid_request"}"#, true),
            (400, r#"{"error":"invalid_grant"}"#, true),
            (400, r#"{"error":"unauthorized_client"}"#, true),
            (400, r#"{"error":"unsupported_grant_type"}"#, true),
            (400, r#"{"error":"something_new"}"#, true),
            (400, r#"{"error":"temporarily_unavailable"}"#, false),
            (500, r#"{"error":"server_error"}"#, false),
            (500, r#"{"error":"invalid_client"}"#, true),
            (401, "", true),
            (403, "forbidden", true),
            (408, "", false),
            (429, r#"{"error":"slow_down"}"#, false),
            (503, r#"{"message":"maintenance"}"#, false),
            (302, "", true),
        ];
        for (status, body, permanent) in cases {
            let error = refused(status, "application/json", body);
            assert_eq!(error.is_permanent(), permanent, "{status} {body}: {error}");
            assert!(!error.endpoint_unreachable(), "{status}");
        }
        let redirect = refused(302, "text/html", "");
        assert_eq!(
            redirect.message(),
            "302 Found (redirects are not followed): (empty body)"
        );
    }

    #[test]
    fn a_404_marks_the_endpoint_unreachable() {
        let error = refused(404, "text/plain", "no such path");
        assert_eq!(
            error,
            FetchError::Permanent {
                message: "404 Not Found: no such path".into(),
                endpoint_unreachable: true,
            }
        );
    }

    #[test]
    fn an_html_error_page_is_quoted_short_and_on_one_line() {
        let page = format!(
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\n\t<body>\u{1b}[31m{}</body></html>",
            "x".repeat(500)
        );
        let error = refused(502, "text/html", &page);
        assert!(!error.is_permanent());
        let message = error.message();
        let quoted = message
            .strip_prefix("502 Bad Gateway: ")
            .expect("status first");
        assert!(quoted.starts_with("<html> <head><title>502 Bad Gateway</title></head> <body>"));
        assert!(quoted.chars().count() <= 120, "{}", quoted.chars().count());
        assert!(quoted.ends_with('…'));
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(!message.contains("  "));
    }

    #[test]
    fn retry_after_is_honoured_on_transient_errors_only() {
        let later = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        for (value, expected) in [("7", Some(7)), (later.as_str(), Some(30)), ("soon", None)] {
            let error =
                parse_response(429, Some(value), None, b"", now(), DEFAULT).expect_err("error");
            assert_eq!(
                error.retry_after(),
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
        let error = parse_response(401, Some("7"), None, b"", now(), DEFAULT).expect_err("error");
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn retry_after_forms() {
        let at = |seconds: u64| httpdate::fmt_http_date(now() + Duration::from_secs(seconds));
        let secs = |value: &str| parse_retry_after(value, now()).map(|d| d.as_secs());
        assert_eq!(secs("0"), Some(0));
        assert_eq!(secs("120"), Some(120));
        assert_eq!(secs(" 5 "), Some(5));
        assert_eq!(secs("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(secs(&at(90)), Some(90));
        assert_eq!(
            secs(&httpdate::fmt_http_date(now() - Duration::from_secs(90))),
            Some(0)
        );
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(0));
        for bad in ["", "-1", "1.5", "soon", "12 s"] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    // ---- discovery ----

    fn issuer() -> Url {
        Url::parse("https://idp.example.com/realms/main").expect("url")
    }

    fn discovery(body: &Value) -> Result<Discovery, FetchError> {
        parse_discovery(
            &issuer(),
            200,
            None,
            Some("application/json"),
            body.to_string().as_bytes(),
            Some(now()),
        )
    }

    #[test]
    fn discovery_reads_the_token_endpoint_and_methods() {
        let found = discovery(&serde_json::json!({
            "issuer": "https://idp.example.com/realms/main/",
            "token_endpoint": "https://idp.example.com/realms/main/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post"],
            "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.example.com/token"},
        }))
        .expect("discovery");
        assert_eq!(
            found,
            Discovery {
                token_endpoint: Url::parse("https://idp.example.com/realms/main/token")
                    .expect("url"),
                auth_methods: vec!["private_key_jwt".into(), "client_secret_post".into()],
                mtls_token_endpoint: Some(
                    Url::parse("https://mtls.example.com/token").expect("url")
                ),
            }
        );
        let plain = discovery(&serde_json::json!({
            "issuer": "https://idp.example.com/realms/main",
            "token_endpoint": "https://idp.example.com/t",
        }))
        .expect("discovery");
        assert_eq!(plain.auth_methods, ["client_secret_basic"]);
        assert_eq!(plain.mtls_token_endpoint, None);
        assert_eq!(
            discovery_url(&Url::parse("https://a.example/r/").expect("url"))
                .expect("url")
                .as_str(),
            "https://a.example/r/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url(&issuer()).expect("url").as_str(),
            "https://idp.example.com/realms/main/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_refuses_a_foreign_issuer_or_a_missing_endpoint() {
        let foreign = discovery(&serde_json::json!({
            "issuer": "https://evil.example.com/realms/main",
            "token_endpoint": "https://evil.example.com/token",
        }))
        .expect_err("mismatch");
        assert!(foreign.is_permanent());
        assert!(foreign.message().contains("evil.example.com"), "{foreign}");
        let missing =
            discovery(&serde_json::json!({"issuer": issuer().as_str()})).expect_err("no endpoint");
        assert!(missing.message().contains("no token_endpoint"), "{missing}");
        let bad = discovery(&serde_json::json!({
            "issuer": issuer().as_str(), "token_endpoint": "not a url"
        }))
        .expect_err("bad url");
        assert!(bad.is_permanent());
        let error =
            parse_discovery(&issuer(), 503, Some("4"), None, b"down", None).expect_err("503");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(error.message(), "503 Service Unavailable: down");
    }

    // ---- the wire ----

    /// A client for building requests only (the system roots are slow to load).
    fn bare() -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .expect("client")
    }

    fn http() -> reqwest::Client {
        http_client(Duration::from_secs(5), &TlsSettings::default()).expect("http client")
    }

    fn wire(credentials: Credentials) -> reqwest::Request {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::from([("resource".to_owned(), "https://api/x".to_owned())]);
        let request = TokenRequest {
            token_url: &url,
            client_id: "my client:1",
            credentials,
            audience: Some("tasklist.camunda.io"),
            scope: Some("a b"),
            extra_params: &extra,
        };
        build_request(&bare(), &request, now()).expect("request")
    }

    fn body_text(request: &reqwest::Request) -> String {
        let bytes = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn form(request: &reqwest::Request) -> BTreeMap<String, String> {
        form_urlencoded::parse(body_text(request).as_bytes())
            .into_owned()
            .collect()
    }

    fn header<'a>(request: &'a reqwest::Request, name: &str) -> Option<&'a str> {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn basic_form_urlencodes_id_and_secret_first() {
        let request = wire(Credentials::Basic(Secret::new("p+a/s%s:w&o=rd x")));
        let expected = format!(
            "Basic {}",
            STANDARD.encode("my+client%3A1:p%2Ba%2Fs%25s%3Aw%26o%3Drd+x")
        );
        assert_eq!(header(&request, "authorization"), Some(expected.as_str()));
        assert!(request.headers()["authorization"].is_sensitive());
        assert_eq!(header(&request, "accept"), Some("application/json"));
        assert_eq!(
            header(&request, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(request.method(), reqwest::Method::POST);
        assert_eq!(
            body_text(&request),
            "grant_type=client_credentials&audience=tasklist.camunda.io&scope=a+b\
             &resource=https%3A%2F%2Fapi%2Fx"
        );
        assert!(
            !format!("{request:?}").contains("cDJ"),
            "Debug shows no credentials"
        );
    }

    #[test]
    fn post_puts_id_and_secret_in_the_form() {
        let request = wire(Credentials::Post(Secret::new("s&=+ %")));
        assert_eq!(header(&request, "authorization"), None);
        let form = form(&request);
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "my client:1");
        assert_eq!(form["client_secret"], "s&=+ %");
        assert_eq!(form["audience"], "tasklist.camunda.io");
        assert_eq!(form["scope"], "a b");
        assert_eq!(form["resource"], "https://api/x");
        assert_eq!(form.len(), 6);
    }

    #[test]
    fn json_puts_everything_in_a_json_body() {
        let request = wire(Credentials::Json(Secret::new("s\"ecret")));
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(header(&request, "accept"), Some("application/json"));
        let body: Value = serde_json::from_str(&body_text(&request)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": "my client:1",
                "client_secret": "s\"ecret",
                "audience": "tasklist.camunda.io",
                "scope": "a b",
                "resource": "https://api/x",
            })
        );
    }

    #[test]
    fn tls_client_auth_sends_only_the_client_id() {
        let form = form(&wire(Credentials::TlsClientAuth));
        assert_eq!(form["client_id"], "my client:1");
        assert!(!form.contains_key("client_secret"));
        assert!(!form.contains_key("client_assertion"));
    }

    /// The assertion a request carries: header, claims, and whether `public_key` verifies it.
    fn assertion_of(
        request: &reqwest::Request,
        verify: impl Fn(&[u8], &[u8]) -> bool,
    ) -> (Value, Value) {
        let form = form(request);
        assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
        assert_eq!(form["client_id"], "my client:1");
        assert_eq!(form["audience"], "tasklist.camunda.io");
        let assertion = &form["client_assertion"];
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).expect("base64url");
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        assert!(
            verify(signing_input.as_bytes(), &decode(parts[2])),
            "the signature verifies"
        );
        let header = serde_json::from_slice(&decode(parts[0])).expect("header");
        let claims = serde_json::from_slice(&decode(parts[1])).expect("claims");
        (header, claims)
    }

    fn jwt_credentials(key_pem: &str, key_id: Option<&str>) -> Credentials {
        Credentials::PrivateKeyJwt {
            key_pem: Secret::new(key_pem),
            key_id: key_id.map(str::to_owned),
            assertion_audience: "https://idp.example.com/token".into(),
        }
    }

    fn rsa_public_key() -> Vec<u8> {
        let der = PrivateKeyDer::from_pem_slice(RSA_PKCS8.as_bytes()).expect("pem");
        RsaKeyPair::from_pkcs8(der.secret_der())
            .expect("rsa")
            .public_key()
            .as_ref()
            .to_vec()
    }

    fn ec_public_key(pkcs8: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .expect("ec")
            .public_key()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn private_key_jwt_with_rsa_signs_rs256() {
        let public_key = rsa_public_key();
        let verify = |message: &[u8], signature: &[u8]| {
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &public_key)
                .verify(message, signature)
                .is_ok()
        };
        for pem in [RSA_PKCS8, RSA_PKCS1] {
            let request = wire(jwt_credentials(pem, Some("rsa-1")));
            let (header, claims) = assertion_of(&request, verify);
            assert_eq!(
                header,
                serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"})
            );
            assert_eq!(claims["iss"], "my client:1");
            assert_eq!(claims["sub"], "my client:1");
            assert_eq!(claims["aud"], "https://idp.example.com/token");
            assert_eq!(claims["iat"], 1_700_000_000);
            assert_eq!(claims["exp"], 1_700_000_060);
            assert_eq!(claims.as_object().map(Map::len), Some(6));
        }
        assert_eq!(private_key_algorithm(&Secret::new(RSA_PKCS1)), Ok("RS256"));
    }

    #[test]
    fn private_key_jwt_with_ec_signs_es256_and_a_fresh_jti() {
        let rng = SystemRandom::new();
        let generated =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("generate");
        let generated_pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(generated.as_ref())
        );
        let sec1_public = {
            let der = PrivateKeyDer::from_pem_slice(EC_SEC1.as_bytes()).expect("pem");
            ec_public_key(&sec1_to_pkcs8(der.secret_der()))
        };
        for (pem, public_key) in [
            (generated_pem.as_str(), ec_public_key(generated.as_ref())),
            (EC_SEC1, sec1_public),
        ] {
            let verify = |message: &[u8], signature: &[u8]| {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public_key)
                    .verify(message, signature)
                    .is_ok()
            };
            let (header, first) = assertion_of(&wire(jwt_credentials(pem, None)), verify);
            assert_eq!(header, serde_json::json!({"alg": "ES256", "typ": "JWT"}));
            let (_, second) = assertion_of(&wire(jwt_credentials(pem, None)), verify);
            assert_ne!(first["jti"], second["jti"]);
            assert!(first["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
        }
        assert_eq!(private_key_algorithm(&Secret::new(EC_SEC1)), Ok("ES256"));
    }

    #[test]
    fn unusable_keys_are_permanent_errors_that_quote_nothing() {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::new();
        let garbled = EC_SEC1.replace("MHcCAQEEII6TjBhQ", "MHcCAQEE!!6TjBhQ");
        for (pem, expected) in [
            (EC_P384_PKCS8, "P-256"),
            ("not a key", "no PEM private key found"),
            (EC_CERT, "no PEM private key found"),
            (garbled.as_str(), "not valid PEM"),
        ] {
            let request = TokenRequest {
                token_url: &url,
                client_id: "c",
                credentials: jwt_credentials(pem, None),
                audience: None,
                scope: None,
                extra_params: &extra,
            };
            let error = build_request(&bare(), &request, now()).expect_err("unusable key");
            assert!(error.is_permanent());
            assert!(error.message().starts_with("private_key_jwt: "), "{error}");
            assert!(error.message().contains(expected), "{error}");
            assert!(!error.message().contains("MHc"), "{error}");
        }
    }

    // ---- the HTTP client ----

    #[test]
    fn http_client_loads_a_ca_bundle_and_an_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let bundle = write("ca.pem", &format!("{EC_CERT}{EC_CERT}"));
        let cert = write("cert.pem", EC_CERT);
        let key = write("key.pem", EC_SEC1);
        let junk = write("junk.pem", "nothing here");
        let missing = dir.path().join("missing.pem");
        let timeout = Duration::from_secs(1);
        let tls = |ca_file: Option<&std::path::Path>,
                   identity: Option<(&std::path::Path, &std::path::Path)>| {
            TlsSettings {
                ca_file: ca_file.map(ToOwned::to_owned),
                identity: identity.map(|(cert, key)| crate::config::TlsIdentity {
                    cert_file: cert.to_owned(),
                    key_file: key.to_owned(),
                }),
                proxy: None,
            }
        };
        http_client(timeout, &tls(Some(&bundle), Some((&cert, &key)))).expect("client");
        for (settings, path) in [
            (tls(Some(&missing), None), &missing),
            (tls(Some(&junk), None), &junk),
            (tls(None, Some((&junk, &key))), &junk),
            (tls(None, Some((&cert, &junk))), &junk),
            (tls(None, Some((&cert, &missing))), &missing),
        ] {
            let message = http_client(timeout, &settings).expect_err("refused");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        let proxied = TlsSettings {
            proxy: Some(Url::parse("http://user:pw@proxy.example:3128").expect("url")),
            ..TlsSettings::default()
        };
        http_client(timeout, &proxied).expect("client with proxy");
    }

    #[test]
    fn certificate_errors_are_explained_and_other_tls_errors_are_not() {
        use rustls::CertificateError as E;
        use rustls_pki_types::{ServerName, UnixTime};
        let at = |seconds: u64| UnixTime::since_unix_epoch(Duration::from_secs(seconds));
        let explain = |error: E| {
            certificate_problem("idp.example", &rustls::Error::InvalidCertificate(error))
                .expect("a certificate problem")
        };
        let subject = "the server certificate for idp.example";
        assert_eq!(
            explain(E::ExpiredContext {
                time: at(1_700_000_000),
                not_after: at(1_600_000_000),
            }),
            format!(
                "{subject} expired on 2020-09-13T12:26:40Z (this machine's clock reads \
                 2023-11-14T22:13:20Z); the server must renew it"
            )
        );
        assert!(explain(E::Expired).ends_with("has expired; the server must renew it"));
        assert!(
            explain(E::NotValidYetContext {
                time: at(1_600_000_000),
                not_before: at(u64::MAX),
            })
            .starts_with(&format!(
                "{subject} is not valid until unix time {} (this machine's clock reads \
                 2020-09-13T12:26:40Z)",
                u64::MAX
            ))
        );
        assert!(explain(E::NotValidYet).contains("is not valid yet; check this machine's clock"));
        assert!(explain(E::Revoked).ends_with("has been revoked; the server must replace it"));
        assert!(explain(E::UnknownIssuer).contains("is not signed by a trusted CA; set ca_file"));
        let ca = E::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        assert!(explain(ca).contains("is a CA certificate, not a server certificate"));
        let odd = E::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::EndEntityUsedAsCa,
        )));
        assert!(explain(odd).starts_with(&format!("{subject} was refused: ")));

        // The names come from the server: plain, printable, few and short.
        let expected = ServerName::try_from("idp.example").expect("name");
        let mut presented = vec![
            "DnsName(\"a.example\")".to_owned(),
            "IpAddress(10.0.0.1)".to_owned(),
            "DnsName(\"evil\nline\u{202e}\")".to_owned(),
            format!("DnsName(\"{}\")", "x".repeat(300)),
        ];
        presented.extend((0..4).map(|n| format!("DnsName(\"{n}.example\")")));
        let message = explain(E::NotValidForNameContext {
            expected: expected.clone(),
            presented,
        });
        let long = format!("{}…", "x".repeat(64));
        assert_eq!(
            message,
            format!(
                "{subject} is for other names (a.example, 10.0.0.1, evil?line?, {long}, \
                 0.example, and 3 more); use one of them in the URL, or have the server \
                 present a certificate for idp.example"
            )
        );
        assert!(
            explain(E::NotValidForNameContext {
                expected,
                presented: Vec::new(),
            })
            .contains("names no host in its subjectAltName")
        );

        for other in [
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
            rustls::Error::General("x".into()),
        ] {
            assert_eq!(certificate_problem("idp.example", &other), None);
        }
    }

    #[test]
    fn urls_in_messages_lose_credentials_and_queries() {
        let url = Url::parse("https://u:p@idp.example.com/token?key=abc#x").expect("url");
        assert_eq!(display_url(&url), "https://idp.example.com/token");
    }

    // ---- against the in-process endpoint ----

    async fn request(
        http: &reqwest::Client,
        url: &str,
        client_id: &str,
        credentials: Credentials,
    ) -> Result<Token, FetchError> {
        let url = Url::parse(url).expect("url");
        let extra = BTreeMap::new();
        let request = TokenRequest {
            token_url: &url,
            client_id,
            credentials,
            audience: Some("api"),
            scope: Some("read write"),
            extra_params: &extra,
        };
        request_token(http, &request, SystemTime::now(), DEFAULT).await
    }

    #[tokio::test]
    async fn every_secret_method_gets_a_token() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let secret = "p+a/s%s:w&o=rd x";
        idp.add_client("my client:1", secret, Duration::from_secs(120));
        let http = http();
        for credentials in [
            Credentials::Basic(Secret::new(secret)),
            Credentials::Post(Secret::new(secret)),
            Credentials::Json(Secret::new(secret)),
        ] {
            let method = credentials.method_name();
            let token = request(&http, &idp.token_url(), "my client:1", credentials)
                .await
                .expect(method);
            assert_eq!(token.token_type, "Bearer");
            assert_eq!(token.scope.as_deref(), Some("read write"));
            let lifetime = token
                .expires_at
                .duration_since(token.issued_at)
                .expect("life");
            assert_eq!(lifetime, Duration::from_secs(120));
            let recorded = idp.requests().pop().expect("recorded");
            assert_eq!(recorded.auth_method, Some(method));
            assert_eq!(recorded.client_id.as_deref(), Some("my client:1"));
            assert_eq!(recorded.header("user-agent"), Some(USER_AGENT));
            assert_eq!(recorded.params()["audience"], "api");
        }
    }

    #[tokio::test]
    async fn private_key_jwt_gets_a_token() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_key_client("bot", KeyAlgorithm::Rs256, &rsa_public_key(), DEFAULT);
        let credentials = Credentials::PrivateKeyJwt {
            key_pem: Secret::new(RSA_PKCS8),
            key_id: None,
            assertion_audience: idp.token_url(),
        };
        request(&http(), &idp.token_url(), "bot", credentials)
            .await
            .expect("token");
        assert_eq!(idp.requests()[0].auth_method, Some("private_key_jwt"));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_permanent_and_not_echoed() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("bot", "right", DEFAULT);
        let error = request(
            &http(),
            &idp.token_url(),
            "bot",
            Credentials::Basic(Secret::new("wrong-secret")),
        )
        .await
        .expect_err("refused");
        assert!(error.is_permanent());
        assert_eq!(
            error.message(),
            format!(
                "token endpoint {} answered 401 Unauthorized: invalid_client: client authentication failed",
                idp.token_url()
            )
        );
        idp.set_fault(Fault::Status {
            status: 500,
            body: "oops: client_secret=wrong-secret&x=wrong%2Dsecret wrong-secret".into(),
            content_type: "text/plain".into(),
            retry_after: None,
        });
        let error = request(
            &http(),
            &idp.token_url(),
            "bot",
            Credentials::Post(Secret::new("wrong-secret")),
        )
        .await
        .expect_err("500");
        assert!(!error.message().contains("wrong-secret"), "{error}");
        assert!(error.message().contains("[redacted]"), "{error}");
    }

    #[tokio::test]
    async fn faults_become_transient_errors() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let http = http_client(Duration::from_millis(500), &TlsSettings::default()).expect("http");
        let cases = [
            (
                Fault::Status {
                    status: 503,
                    body: "<h1>down</h1>".into(),
                    content_type: "text/html".into(),
                    retry_after: Some("3".into()),
                },
                "answered 503 Service Unavailable: <h1>down</h1>",
            ),
            (Fault::CloseConnection, ": "),
            (
                Fault::ResetMidBody,
                "answered 200 OK but reading the body failed",
            ),
            (
                Fault::TruncatedJson,
                "answered 200 OK but invalid JSON: EOF while parsing",
            ),
            (
                Fault::Oversized,
                "answered 200 OK but the body is larger than 64 KiB",
            ),
            (
                Fault::Body("{}".into()),
                "answered 200 OK but no access_token",
            ),
            (Fault::Hang, ": timed out"),
        ];
        for (fault, expected) in cases {
            idp.set_fault(fault.clone());
            let error = request(
                &http,
                &idp.token_url(),
                "c",
                Credentials::Basic(Secret::new("s")),
            )
            .await
            .expect_err("a fault");
            assert!(!error.is_permanent(), "{fault:?}: {error}");
            assert!(error.message().contains(expected), "{fault:?}: {error}");
            assert!(
                error
                    .message()
                    .starts_with(&format!("token endpoint {}", idp.token_url())),
                "{error}"
            );
            if matches!(fault, Fault::Status { .. }) {
                assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
            }
        }
        idp.set_fault(Fault::None);
        request(
            &http,
            &idp.token_url(),
            "c",
            Credentials::Basic(Secret::new("s")),
        )
        .await
        .expect("healed");
    }

    #[tokio::test]
    async fn a_hostile_token_from_the_server_is_permanent() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        idp.set_fault(Fault::Body(r#"{"access_token":"x\"; rm -rf ~"}"#.into()));
        let error = request(
            &http(),
            &idp.token_url(),
            "c",
            Credentials::Basic(Secret::new("s")),
        )
        .await
        .expect_err("hostile");
        assert!(error.is_permanent());
        assert!(!error.message().contains("rm -rf"));
    }

    #[tokio::test]
    async fn jwt_tokens_expire_at_their_exp() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            jwt_tokens: true,
            default_lifetime: Duration::from_secs(90),
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let token = request(
            &http(),
            &idp.token_url(),
            "c",
            Credentials::Post(Secret::new("s")),
        )
        .await
        .expect("token");
        assert!(jwt_expiry(token.access_token.expose()).is_some());
        let lifetime = token
            .expires_at
            .duration_since(token.issued_at)
            .expect("life");
        assert!(lifetime <= Duration::from_secs(90) && lifetime >= Duration::from_secs(85));
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_flagged() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let missing = format!("{}/nowhere?secret=1", idp.issuer());
        let error = request(&http(), &missing, "c", Credentials::Basic(Secret::new("s")))
            .await
            .expect_err("404");
        assert!(
            error.is_permanent() && error.endpoint_unreachable(),
            "{error}"
        );
        assert!(!error.message().contains("secret=1"), "{error}");

        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let url = format!("http://{closed}/token");
        let error = request(&http(), &url, "c", Credentials::Basic(Secret::new("s")))
            .await
            .expect_err("refused");
        assert_eq!(
            error,
            FetchError::Transient {
                message: format!("token endpoint {url}: connection refused"),
                retry_after: None,
                endpoint_unreachable: true,
            }
        );
    }

    #[tokio::test]
    async fn discover_finds_the_endpoint() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let issuer = Url::parse(&idp.issuer()).expect("url");
        let found = discover(&http(), &issuer).await.expect("discovery");
        assert_eq!(found.token_endpoint.as_str(), idp.token_url());
        assert_eq!(
            found.auth_methods,
            [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ]
        );
        let wrong = Url::parse(&format!("{}/realms/x", idp.issuer())).expect("url");
        let error = discover(&http(), &wrong).await.expect_err("404");
        assert!(error.endpoint_unreachable(), "{error}");
        assert!(
            error.message().starts_with(&format!(
                "discovery document {}/realms/x/.well-known/openid-configuration answered 404",
                idp.issuer()
            )),
            "{error}"
        );
    }
}
