//! A small in-process OAuth 2.0 token endpoint (with an OIDC discovery document) and injectable
//! faults, for the demo, tests and benchmarks.
//! It is not an authorization server to deploy: plain HTTP on loopback, naive secret
//! comparison, every request kept in memory; it reads the wall clock only to stamp tokens.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use bearerd_idp::{Fault, Idp, IdpSettings};
//! let idp = Idp::start(IdpSettings::default()).await?;
//! idp.add_client("tasklist-bot", "s3cret", std::time::Duration::from_secs(300));
//! idp.set_fault_times(Fault::Status {
//!     status: 503,
//!     body: "busy".into(),
//!     content_type: "text/plain".into(),
//!     retry_after: Some("1".into()),
//! }, 2);
//! // POST to idp.token_url() …
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use url::form_urlencoded;

/// Where the token endpoint lives on the server.
pub const TOKEN_PATH: &str = "/oauth/token";

/// Where the discovery document lives on the server.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Request bodies larger than this end the connection.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How the endpoint behaves apart from its faults.
#[derive(Clone, Debug)]
pub struct IdpSettings {
    /// Issue JWT-shaped tokens (`header.payload.signature`, unsigned in substance) whose payload
    /// carries `sub`, `iat` and `exp`; otherwise random base64url strings.
    pub jwt_tokens: bool,
    /// Accept any client id with any secret or assertion (benchmarks), with `default_lifetime`.
    /// Registered clients are still checked.
    pub accept_unknown_clients: bool,
    pub default_lifetime: Duration,
    /// `token_endpoint_auth_methods_supported` in the discovery document.
    pub auth_methods: Vec<String>,
    /// `mtls_endpoint_aliases.token_endpoint` in the discovery document, when set (RFC 8705
    /// §5). Nothing is served there: it is announced only.
    pub mtls_token_endpoint: Option<String>,
}

impl Default for IdpSettings {
    fn default() -> Self {
        Self {
            jwt_tokens: false,
            accept_unknown_clients: false,
            default_lifetime: Duration::from_secs(300),
            auth_methods: vec![
                "client_secret_basic".to_owned(),
                "client_secret_post".to_owned(),
                "private_key_jwt".to_owned(),
            ],
            mtls_token_endpoint: None,
        }
    }
}

/// A misbehaviour of the token endpoint (discovery is never faulty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Answer with this status, body and headers.
    Status {
        status: u16,
        body: String,
        content_type: String,
        retry_after: Option<String>,
    },
    /// Wait, then answer normally.
    Delay(Duration),
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// Close the connection without a response.
    CloseConnection,
    /// Send a 200 with its headers and half of the promised body, then close the connection.
    ResetMidBody,
    /// A complete 200 response whose JSON body is cut short.
    TruncatedJson,
    /// A 200 streaming 1 MiB of JSON without a `Content-Length`.
    Oversized,
    /// A 200 with exactly this body, as `application/json`.
    Body(String),
    /// A 400 `invalid_request` whose `error_description` is the value of this body parameter
    /// (`client_assertion`, `subject_token`, …): a server that quotes a credential it was sent.
    EchoParam(String),
}

/// A server-side request rate, as authorization servers enforce per source address: a token
/// bucket of `burst` requests refilled at `per_second`. A token request that finds it empty is
/// answered `429 Too Many Requests` (with `Retry-After` when set) and takes nothing from it.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
    pub retry_after: Option<String>,
}

/// A [`RateLimit`] and how full its bucket is.
struct Limiter {
    limit: RateLimit,
    level: f64,
    updated: std::time::Instant,
}

impl Limiter {
    /// Whether a request arriving at `now` is within the limit (and if so, counts it).
    fn admit(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.limit.per_second).min(self.limit.burst);
        self.updated = now;
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One request as the endpoint received it. Its `Debug` hides the body and credentials.
#[derive(Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// In arrival order; names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: SystemTime,
    /// For token requests: `client_secret_basic`, `client_secret_post`, `client_secret_json`,
    /// `private_key_jwt`, `client_secret_jwt` (an HS256 assertion), `client_assertion` (for a
    /// client added with [`Idp::add_federated_client`]), `none` (a public client), or `None`
    /// when no client authentication was recognised.
    pub auth_method: Option<&'static str>,
    /// For token requests: the client the request authenticated as (or tried to).
    pub client_id: Option<String>,
    /// Answered 429 by the endpoint's [`RateLimit`].
    pub rate_limited: bool,
}

impl RecordedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body's parameters, from a form or a JSON object (string values only, others as
    /// JSON text); a later duplicate replaces an earlier one.
    pub fn params(&self) -> BTreeMap<String, String> {
        parse_params(self.header("content-type"), &self.body)
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if name == "authorization" {
                    "[redacted]"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .field("received_at", &self.received_at)
            .field("auth_method", &self.auth_method)
            .field("client_id", &self.client_id)
            .field("rate_limited", &self.rate_limited)
            .finish()
    }
}

/// A running endpoint on `127.0.0.1`; it stops when dropped.
pub struct Idp {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    settings: IdpSettings,
    issuer: String,
    token_url: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Registered>,
    fault: Fault,
    /// How many more token requests get `fault`; `None`: all of them.
    fault_left: Option<usize>,
    rate: Option<Limiter>,
    requests: Vec<RecordedRequest>,
}

struct Registered {
    credential: Credential,
    lifetime: Duration,
}

enum Credential {
    Secret(String),
    PublicKey {
        algorithm: KeyAlgorithm,
        key: Vec<u8>,
    },
    /// Any unexpired client assertion made elsewhere (its signature is not checked).
    Federated,
    /// No client authentication: `client_id` only.
    Public,
}

/// The JWS algorithms a registered client key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// `public_key` is a DER `RSAPublicKey` (ring's `RsaKeyPair::public_key()`).
    Rs256,
    /// `public_key` is an uncompressed P-256 point (ring's `EcdsaKeyPair::public_key()`).
    Es256,
}

impl KeyAlgorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    fn verification(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        match self {
            Self::Rs256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Es256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
        }
    }
}

impl Idp {
    /// Binds `127.0.0.1:0` and serves, one task per connection, on the current runtime.
    pub async fn start(settings: IdpSettings) -> io::Result<Idp> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let issuer = format!("http://{address}");
        let shared = Arc::new(Shared {
            settings,
            token_url: format!("{issuer}{TOKEN_PATH}"),
            issuer,
            state: Mutex::new(State::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Idp {
            address,
            shared,
            accept,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT/oauth/token`.
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// `http://127.0.0.1:PORT`, whose `/.well-known/openid-configuration` names the token URL.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Every request received so far (token requests and discovery), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests (token requests and discovery) arrived so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// How many token requests arrived so far.
    pub fn token_request_count(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|request| request.path.split('?').next() == Some(TOKEN_PATH))
            .count()
    }

    /// Applies `fault` to every later token request, until changed.
    pub fn set_fault(&self, fault: Fault) {
        let mut state = self.shared.lock();
        state.fault = fault;
        state.fault_left = None;
    }

    /// Applies `fault` to the next `count` token requests, then answers normally again.
    pub fn set_fault_times(&self, fault: Fault, count: usize) {
        let mut state = self.shared.lock();
        state.fault = fault;
        state.fault_left = Some(count);
    }

    /// Limits token requests to `limit` from now on (its bucket starts full); `None` lifts it.
    /// Requests over it are answered 429 before any fault applies.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.shared.lock().rate = limit.map(|limit| Limiter {
            level: limit.burst,
            limit,
            updated: std::time::Instant::now(),
        });
    }

    /// How many token requests the [`RateLimit`] answered 429 so far.
    pub fn rate_limited_count(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|request| request.rate_limited)
            .count()
    }

    /// Registers (or replaces) a client that authenticates with `secret`.
    pub fn add_client(&self, id: &str, secret: &str, lifetime: Duration) {
        self.shared.lock().clients.insert(
            id.to_owned(),
            Registered {
                credential: Credential::Secret(secret.to_owned()),
                lifetime,
            },
        );
    }

    /// Registers (or replaces) a `private_key_jwt` client with its public key.
    pub fn add_key_client(
        &self,
        id: &str,
        algorithm: KeyAlgorithm,
        public_key: &[u8],
        lifetime: Duration,
    ) {
        self.shared.lock().clients.insert(
            id.to_owned(),
            Registered {
                credential: Credential::PublicKey {
                    algorithm,
                    key: public_key.to_vec(),
                },
                lifetime,
            },
        );
    }
}

impl Idp {
    /// Registers (or replaces) a client that authenticates with a client assertion made
    /// elsewhere (a Kubernetes service-account token): any JWT assertion whose `exp` has not
    /// passed (and `nbf` has) is accepted; its signature is not checked.
    pub fn add_federated_client(&self, id: &str, lifetime: Duration) {
        self.register(id, Credential::Federated, lifetime);
    }

    /// Registers (or replaces) a public client: `client_id` only, for `token_exchange` and
    /// `jwt_bearer` (a public client is refused `client_credentials`).
    pub fn add_public_client(&self, id: &str, lifetime: Duration) {
        self.register(id, Credential::Public, lifetime);
    }

    fn register(&self, id: &str, credential: Credential, lifetime: Duration) {
        self.shared.lock().clients.insert(
            id.to_owned(),
            Registered {
                credential,
                lifetime,
            },
        );
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.accept.abort();
    }
}

impl fmt::Debug for Idp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idp")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, say: let connections finish, then go on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    // A connection error is a client going away or a fault: nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> io::Result<Response<Reply>> {
    let received_at = SystemTime::now();
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    let record = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_owned(),
            |path| path.as_str().to_owned(),
        ),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: body.to_vec(),
        received_at,
        auth_method: None,
        client_id: None,
        rate_limited: false,
    };
    match (parts.uri.path(), &parts.method) {
        (TOKEN_PATH, &Method::POST) => token(&shared, record).await,
        (DISCOVERY_PATH, &Method::GET) => {
            shared.lock().requests.push(record);
            Ok(json_reply(StatusCode::OK, &discovery_document(&shared)))
        }
        (TOKEN_PATH | DISCOVERY_PATH, _) => {
            shared.lock().requests.push(record);
            Ok(text_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ))
        }
        _ => {
            shared.lock().requests.push(record);
            Ok(text_reply(StatusCode::NOT_FOUND, "not found"))
        }
    }
}

fn discovery_document(shared: &Shared) -> Value {
    let mut document = json!({
        "issuer": shared.issuer,
        "token_endpoint": shared.token_url,
        "token_endpoint_auth_methods_supported": shared.settings.auth_methods,
        "grant_types_supported": [
            "client_credentials",
            TOKEN_EXCHANGE_GRANT,
            JWT_BEARER_GRANT,
        ],
    });
    if let Some(alias) = &shared.settings.mtls_token_endpoint {
        document["mtls_endpoint_aliases"] = json!({ "token_endpoint": alias });
    }
    document
}

/// What a normal answer to a token request would be.
enum Outcome {
    Issue {
        client_id: String,
        lifetime: Duration,
        scope: Option<String>,
        /// RFC 8693 `issued_token_type`, for a token exchange.
        issued_token_type: Option<String>,
    },
    Refuse(Response<Reply>),
}

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

async fn token(shared: &Shared, mut record: RecordedRequest) -> io::Result<Response<Reply>> {
    let arrived = std::time::Instant::now();
    let outcome = authenticate(shared, &mut record);
    let echoable = record.params();
    let fault = {
        let mut state = shared.lock();
        if let Some(limiter) = &mut state.rate
            && !limiter.admit(arrived)
        {
            let retry_after = limiter.limit.retry_after.clone();
            record.rate_limited = true;
            state.requests.push(record);
            let mut response = text_reply(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Ok(response);
        }
        state.requests.push(record);
        let fault = state.fault.clone();
        match &mut state.fault_left {
            Some(0) => Fault::None,
            Some(left) => {
                *left -= 1;
                fault
            }
            None => fault,
        }
    };
    match fault {
        Fault::None => Ok(answer(shared, outcome)),
        Fault::Status {
            status,
            body,
            content_type,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = reply(status, &content_type, Reply::full(body.into_bytes()));
            if let Some(retry_after) = retry_after
                && let Ok(value) = HeaderValue::from_str(&retry_after)
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Ok(response)
        }
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            Ok(answer(shared, outcome))
        }
        Fault::Hang => std::future::pending().await,
        Fault::CloseConnection => Err(io::Error::other("fault: close the connection")),
        Fault::ResetMidBody => {
            let body = token_body(shared, "reset-mid-body", Duration::from_secs(300), None);
            let half = body.len() / 2;
            let mut response = reply(
                StatusCode::OK,
                "application/json",
                Reply {
                    chunks: VecDeque::from([Bytes::copy_from_slice(&body[..half])]),
                    fail_at_end: true,
                    pause: None,
                    length: None,
                },
            );
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            Ok(response)
        }
        Fault::TruncatedJson => {
            let body = token_body(shared, "truncated", Duration::from_secs(300), None);
            let half = body.len() / 2;
            Ok(reply(
                StatusCode::OK,
                "application/json",
                Reply::full(body[..half].to_vec()),
            ))
        }
        Fault::Oversized => {
            let mut chunks = VecDeque::new();
            chunks.push_back(Bytes::from_static(b"{\"padding\":\""));
            let filler = Bytes::from(vec![b'a'; 64 * 1024]);
            for _ in 0..16 {
                chunks.push_back(filler.clone());
            }
            chunks.push_back(Bytes::from_static(b"\",\"access_token\":\"x\"}"));
            Ok(reply(
                StatusCode::OK,
                "application/json",
                Reply {
                    chunks,
                    fail_at_end: false,
                    pause: None,
                    length: None,
                },
            ))
        }
        Fault::Body(body) => Ok(reply(
            StatusCode::OK,
            "application/json",
            Reply::full(body.into_bytes()),
        )),
        Fault::EchoParam(name) => Ok(refuse_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            echoable.get(&name).map_or("", String::as_str),
        )),
    }
}

fn answer(shared: &Shared, outcome: Outcome) -> Response<Reply> {
    match outcome {
        Outcome::Issue {
            client_id,
            lifetime,
            scope,
            issued_token_type,
        } => {
            let mut body = token_body(shared, &client_id, lifetime, scope.as_deref());
            if let Some(kind) = issued_token_type
                && let Ok(mut document) = serde_json::from_slice::<Value>(&body)
            {
                document["issued_token_type"] = Value::from(kind);
                body = document.to_string().into_bytes();
            }
            let mut response = reply(StatusCode::OK, "application/json", Reply::full(body));
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Outcome::Refuse(response) => response,
    }
}

/// Decides, as a real server would, whether the request earns a token; notes on `record` how
/// the client authenticated.
fn authenticate(shared: &Shared, record: &mut RecordedRequest) -> Outcome {
    let content_type = record.header("content-type").map(str::to_owned);
    let Ok(params) = parse_params(content_type.as_deref(), &record.body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let is_json = content_type
        .as_deref()
        .is_some_and(|value| value.starts_with("application/json"));
    let basic = record
        .header("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
        .map(str::to_owned);
    let client_secret = param("client_secret");
    let assertion = param("client_assertion");
    // (method, client id, proof)
    let (method, client_id, proof) = match (basic, client_secret, assertion) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            );
        }
        (Some(encoded), None, None) => {
            record.auth_method = Some("client_secret_basic");
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((id, secret)) = decoded.as_deref().and_then(|text| text.split_once(':'))
            else {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "malformed Basic",
                );
            };
            (
                "client_secret_basic",
                form_decode(id),
                Proof::Secret(form_decode(secret)),
            )
        }
        (None, Some(secret), None) => {
            let method = if is_json {
                "client_secret_json"
            } else {
                "client_secret_post"
            };
            record.auth_method = Some(method);
            let Some(id) = param("client_id") else {
                return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "no client_id");
            };
            (method, id, Proof::Secret(secret))
        }
        (None, None, Some(assertion)) => {
            let hs256 = unverified_header(&assertion)
                .is_some_and(|header| header.get("alg").and_then(Value::as_str) == Some("HS256"));
            let method = if hs256 {
                "client_secret_jwt"
            } else {
                "private_key_jwt"
            };
            record.auth_method = Some(method);
            if param("client_assertion_type").as_deref()
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "unsupported client_assertion_type",
                );
            }
            let subject = unverified_claims(&assertion)
                .and_then(|claims| claims.get("sub").and_then(Value::as_str).map(str::to_owned));
            let Some(id) = param("client_id").or(subject) else {
                return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "no client_id");
            };
            (method, id, Proof::Assertion(assertion))
        }
        (None, None, None) => {
            let Some(id) = param("client_id") else {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "no client authentication",
                );
            };
            record.auth_method = Some("none");
            ("none", id, Proof::None)
        }
    };
    record.client_id = Some(client_id.clone());
    let lifetime = {
        let state = shared.lock();
        match (state.clients.get(&client_id), &proof) {
            (Some(registered), Proof::Secret(secret)) => match &registered.credential {
                Credential::Secret(expected) if expected == secret => Ok(registered.lifetime),
                _ => Err("client authentication failed"),
            },
            (Some(registered), Proof::Assertion(assertion)) => match &registered.credential {
                Credential::PublicKey { algorithm, key } => {
                    verify_assertion(assertion, *algorithm, key, &client_id, &shared.token_url)
                        .map(|()| registered.lifetime)
                }
                Credential::Secret(secret) => {
                    verify_secret_assertion(assertion, secret, &client_id, &shared.token_url)
                        .map(|()| registered.lifetime)
                }
                Credential::Federated => {
                    record.auth_method = Some("client_assertion");
                    check_times(assertion).map(|()| registered.lifetime)
                }
                Credential::Public => Err("client has no credential registered"),
            },
            (Some(registered), Proof::None) => match &registered.credential {
                Credential::Public => Ok(registered.lifetime),
                _ => Err("client authentication required"),
            },
            (None, _) if shared.settings.accept_unknown_clients => {
                Ok(shared.settings.default_lifetime)
            }
            (None, _) => Err("unknown client"),
        }
    };
    let lifetime = match lifetime {
        Ok(lifetime) => lifetime,
        Err(reason) => {
            let mut response = refuse_response(StatusCode::UNAUTHORIZED, "invalid_client", reason);
            if method == "client_secret_basic" {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"idp\""),
                );
            }
            return Outcome::Refuse(response);
        }
    };
    let issued_token_type = match param("grant_type").as_deref() {
        Some("client_credentials") if method == "none" => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "client_credentials needs client authentication",
            );
        }
        Some("client_credentials") => None,
        Some(TOKEN_EXCHANGE_GRANT) => {
            let (Some(subject), Some(_)) = (param("subject_token"), param("subject_token_type"))
            else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "subject_token and subject_token_type are required",
                );
            };
            if param("actor_token").is_some() != param("actor_token_type").is_some() {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "actor_token and actor_token_type go together",
                );
            }
            let tokens = [Some(subject), param("actor_token")];
            if let Some(reason) = tokens
                .iter()
                .flatten()
                .find_map(|token| unverified_claims(token).and_then(|_| check_times(token).err()))
            {
                return refuse(StatusCode::BAD_REQUEST, "invalid_grant", reason);
            }
            Some(
                param("requested_token_type")
                    .unwrap_or_else(|| "urn:ietf:params:oauth:token-type:access_token".to_owned()),
            )
        }
        Some(JWT_BEARER_GRANT) => {
            let Some(assertion) = param("assertion") else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "assertion is required",
                );
            };
            if let Err(reason) = verify_grant_assertion(shared, &assertion) {
                return refuse(StatusCode::BAD_REQUEST, "invalid_grant", reason);
            }
            None
        }
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials, token-exchange and jwt-bearer",
            );
        }
    };
    Outcome::Issue {
        client_id,
        lifetime,
        scope: param("scope"),
        issued_token_type,
    }
}

/// A `jwt_bearer` grant's assertion: unexpired, and, when a key is registered for its `iss`
/// (with [`Idp::add_key_client`]), signed by it for the token endpoint.
fn verify_grant_assertion(shared: &Shared, assertion: &str) -> Result<(), &'static str> {
    let claims = unverified_claims(assertion).ok_or("the assertion is not a JWT")?;
    check_times(assertion)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let state = shared.lock();
    match state
        .clients
        .get(issuer)
        .map(|registered| &registered.credential)
    {
        Some(Credential::PublicKey { algorithm, key }) => {
            verify_signature(assertion, *algorithm, key)?;
            audience_is(&claims, &shared.token_url)
        }
        _ => Ok(()),
    }
}

enum Proof {
    Secret(String),
    Assertion(String),
    None,
}

fn refuse(status: StatusCode, error: &str, description: &str) -> Outcome {
    Outcome::Refuse(refuse_response(status, error, description))
}

fn refuse_response(status: StatusCode, error: &str, description: &str) -> Response<Reply> {
    json_reply(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

/// Checks an RFC 7523 client assertion: signature, `iss` = `sub` = client, `aud`, `exp`.
fn verify_assertion(
    assertion: &str,
    algorithm: KeyAlgorithm,
    key: &[u8],
    client_id: &str,
    audience: &str,
) -> Result<(), &'static str> {
    verify_signature(assertion, algorithm, key)?;
    verify_client_claims(assertion, client_id, audience)
}

/// Checks a `client_secret_jwt` assertion: HS256 with the client secret, then the claims.
fn verify_secret_assertion(
    assertion: &str,
    secret: &str,
    client_id: &str,
    audience: &str,
) -> Result<(), &'static str> {
    let (signing_input, signature) = split_jws(assertion)?;
    let header = unverified_header(assertion).ok_or("bad header")?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("unexpected alg");
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, signing_input.as_bytes(), &signature).map_err(|_| "bad signature")?;
    verify_client_claims(assertion, client_id, audience)
}

/// The signing input and the decoded signature of a compact JWS.
fn split_jws(jws: &str) -> Result<(&str, Vec<u8>), &'static str> {
    let Some((signing_input, signature)) = jws.rsplit_once('.') else {
        return Err("the assertion is not a JWS");
    };
    if signing_input.split('.').count() != 2 {
        return Err("the assertion is not a JWS");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "bad base64url")?;
    Ok((signing_input, signature))
}

fn verify_signature(
    assertion: &str,
    algorithm: KeyAlgorithm,
    key: &[u8],
) -> Result<(), &'static str> {
    let (signing_input, signature) = split_jws(assertion)?;
    let header = unverified_header(assertion).ok_or("bad header")?;
    if header.get("alg").and_then(Value::as_str) != Some(algorithm.name()) {
        return Err("unexpected alg");
    }
    ring::signature::UnparsedPublicKey::new(algorithm.verification(), key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| "bad signature")
}

/// `iss` = `sub` = client, `aud` the token endpoint, `exp` not passed.
fn verify_client_claims(
    assertion: &str,
    client_id: &str,
    audience: &str,
) -> Result<(), &'static str> {
    let claims = unverified_claims(assertion).ok_or("bad claims")?;
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    if claim("iss") != Some(client_id) || claim("sub") != Some(client_id) {
        return Err("iss and sub must be the client id");
    }
    audience_is(&claims, audience)?;
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > unix_now() => Ok(()),
        _ => Err("the assertion has expired"),
    }
}

fn audience_is(claims: &Value, audience: &str) -> Result<(), &'static str> {
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
        _ => false,
    };
    if audience_ok {
        Ok(())
    } else {
        Err("aud must be the token endpoint")
    }
}

/// A JWT's `exp` (required) has not passed and its `nbf` (if any) has.
fn check_times(jwt: &str) -> Result<(), &'static str> {
    let claims = unverified_claims(jwt).ok_or("the token is not a JWT")?;
    let now = unix_now();
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => {}
        _ => return Err("the token has expired"),
    }
    match claims.get("nbf").and_then(Value::as_u64) {
        Some(nbf) if nbf > now => Err("the token is not valid yet"),
        _ => Ok(()),
    }
}

fn unverified_header(jwt: &str) -> Option<Value> {
    let header = jwt.split('.').next()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// A token response body for `client_id`.
fn token_body(
    shared: &Shared,
    client_id: &str,
    lifetime: Duration,
    scope: Option<&str>,
) -> Vec<u8> {
    let access_token = if shared.settings.jwt_tokens {
        let now = unix_now();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iss": shared.issuer,
            "sub": client_id,
            "iat": now,
            "exp": now + lifetime.as_secs(),
            "jti": random_b64url::<16>(),
        });
        format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            random_b64url::<32>()
        )
    } else {
        random_b64url::<32>()
    };
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    });
    if let Some(scope) = scope {
        body["scope"] = Value::from(scope);
    }
    body.to_string().into_bytes()
}

fn random_b64url<const N: usize>() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; N]>())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// Parameters of a form or JSON body, in order.
fn parse_params(content_type: Option<&str>, body: &[u8]) -> Result<Vec<(String, String)>, ()> {
    if content_type.is_some_and(|value| value.starts_with("application/json")) {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
            return Err(());
        };
        Ok(object
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect())
    } else {
        Ok(form_urlencoded::parse(body).into_owned().collect())
    }
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = match (byte, bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
            _ => None,
        };
        match (byte, escaped) {
            (_, Some((high, low))) => {
                out.push(high << 4 | low);
                index += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (byte, None) => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

fn json_reply(status: StatusCode, body: &Value) -> Response<Reply> {
    reply(
        status,
        "application/json",
        Reply::full(body.to_string().into_bytes()),
    )
}

fn text_reply(status: StatusCode, text: &str) -> Response<Reply> {
    reply(status, "text/plain", Reply::full(text.as_bytes().to_vec()))
}

fn reply(status: StatusCode, content_type: &str, body: Reply) -> Response<Reply> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A response body: some chunks, then the end or (for [`Fault::ResetMidBody`]) a pause, so that
/// what was sent reaches the client, and an error that makes hyper drop the connection.
struct Reply {
    chunks: VecDeque<Bytes>,
    fail_at_end: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Exact length, announced as `Content-Length`; `None`: chunked (or a manual header).
    length: Option<u64>,
}

impl Reply {
    fn full(body: Vec<u8>) -> Self {
        let length = Some(body.len() as u64);
        let chunks = if body.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([Bytes::from(body)])
        };
        Self {
            chunks,
            fail_at_end: false,
            pause: None,
            length,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.fail_at_end {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if pause.as_mut().poll(context).is_pending() {
                return Poll::Pending;
            }
            this.fail_at_end = false;
            return Poll::Ready(Some(Err(io::Error::other("fault: reset mid-body"))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.fail_at_end
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client without the system roots (loading them is slow, and these tests are plain HTTP).
    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .expect("client")
    }

    async fn post(
        http: &reqwest::Client,
        url: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = http.post(url).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, json, headers)
    }

    const GRANT: (&str, &str) = ("grant_type", "client_credentials");

    #[test]
    fn the_rate_limit_admits_its_burst_then_its_rate() {
        let start = std::time::Instant::now();
        let mut limiter = Limiter {
            limit: RateLimit {
                per_second: 2.0,
                burst: 2.0,
                retry_after: None,
            },
            level: 2.0,
            updated: start,
        };
        assert!(limiter.admit(start) && limiter.admit(start));
        assert!(!limiter.admit(start));
        assert!(!limiter.admit(start + Duration::from_millis(400)));
        assert!(limiter.admit(start + Duration::from_millis(500)));
        // Idle time refills the bucket up to its burst, no further.
        let later = start + Duration::from_secs(60);
        assert!(limiter.admit(later) && limiter.admit(later));
        assert!(!limiter.admit(later));
    }

    #[tokio::test]
    async fn requests_over_the_rate_limit_are_answered_429() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("a", "s", Duration::from_secs(60));
        idp.set_rate_limit(Some(RateLimit {
            per_second: 0.001,
            burst: 1.0,
            retry_after: Some("7".into()),
        }));
        let (status, _, _) = post(&http, &idp.token_url(), Some(("a", "s")), &[GRANT]).await;
        assert_eq!(status, 200);
        let (status, _, headers) = post(&http, &idp.token_url(), Some(("a", "s")), &[GRANT]).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(idp.rate_limited_count(), 1);
        idp.set_rate_limit(None);
        let (status, _, _) = post(&http, &idp.token_url(), Some(("a", "s")), &[GRANT]).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn issues_tokens_and_records_how_clients_authenticated() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("a", "s", Duration::from_secs(60));
        let url = idp.token_url();
        assert_eq!(url, format!("http://{}/oauth/token", idp.address()));

        let (status, body, headers) =
            post(&http, &url, Some(("a", "s")), &[GRANT, ("scope", "x y")]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 60);
        assert_eq!(body["scope"], "x y");
        assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 40));
        assert_eq!(headers["cache-control"], "no-store");

        let (status, _, _) = post(
            &http,
            &url,
            None,
            &[GRANT, ("client_id", "a"), ("client_secret", "s")],
        )
        .await;
        assert_eq!(status, 200);
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(
                json!({"grant_type": "client_credentials", "client_id": "a", "client_secret": "s"})
                    .to_string(),
            )
            .send()
            .await
            .expect("json");
        assert_eq!(response.status(), 200);

        let requests = idp.requests();
        let methods: Vec<_> = requests.iter().map(|r| r.auth_method).collect();
        assert_eq!(
            methods,
            [
                Some("client_secret_basic"),
                Some("client_secret_post"),
                Some("client_secret_json")
            ]
        );
        assert_eq!(requests[1].params()["client_secret"], "s");
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/oauth/token");
        assert!(requests[0].header("Authorization").is_some());
        let debug = format!("{:?}", requests[0]);
        assert!(
            debug.contains("[redacted]") && !debug.contains("Basic"),
            "{debug}"
        );
        assert_eq!(idp.request_count(), 3);
        assert_eq!(idp.token_request_count(), 3);
    }

    #[tokio::test]
    async fn refuses_wrong_or_unknown_credentials() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("a", "s", Duration::from_secs(60));
        let url = idp.token_url();
        let (status, body, headers) = post(&http, &url, Some(("a", "wrong")), &[GRANT]).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "invalid_client");
        assert!(headers.contains_key("www-authenticate"));
        let (status, _, _) = post(&http, &url, Some(("stranger", "s")), &[GRANT]).await;
        assert_eq!(status, 401);
        let (status, _, _) = post(&http, &url, None, &[GRANT]).await;
        assert_eq!(status, 401);
        let (status, body, _) =
            post(&http, &url, Some(("a", "s")), &[("grant_type", "password")]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("unsupported_grant_type"))
        );
        let (status, body, _) = post(
            &http,
            &url,
            Some(("a", "s")),
            &[GRANT, ("client_secret", "s")],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request"))
        );
    }

    #[tokio::test]
    async fn basic_credentials_are_form_urldecoded() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("id:1", "a b+c%", Duration::from_secs(60));
        let (status, _, _) = post(
            &http,
            &idp.token_url(),
            Some(("id%3A1", "a+b%2Bc%25")),
            &[GRANT],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(form_decode("a+b%2Bc%25%zz%4"), "a b+c%%zz%4");
    }

    #[tokio::test]
    async fn serves_a_discovery_document() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let response = http
            .get(format!("{}{DISCOVERY_PATH}", idp.issuer()))
            .send()
            .await
            .expect("get");
        let document: Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        assert_eq!(document["issuer"], idp.issuer());
        assert_eq!(document["token_endpoint"], idp.token_url());
        let missing = http
            .get(format!("{}/nope", idp.issuer()))
            .send()
            .await
            .expect("get");
        assert_eq!(missing.status(), 404);
        assert_eq!(idp.request_count(), 2);
        assert_eq!(idp.token_request_count(), 0);
    }

    #[tokio::test]
    async fn faults_apply_the_given_number_of_times() {
        let http = http();
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        idp.set_fault_times(
            Fault::Status {
                status: 429,
                body: "slow down".into(),
                content_type: "text/plain".into(),
                retry_after: Some("2".into()),
            },
            2,
        );
        let url = idp.token_url();
        for _ in 0..2 {
            let (status, _, headers) = post(&http, &url, Some(("any", "thing")), &[GRANT]).await;
            assert_eq!(status, 429);
            assert_eq!(headers["retry-after"], "2");
        }
        let (status, _, _) = post(&http, &url, Some(("any", "thing")), &[GRANT]).await;
        assert_eq!(status, 200);
        idp.set_fault(Fault::Body("not json".into()));
        let text = http
            .post(&url)
            .basic_auth("any", Some("thing"))
            .send()
            .await
            .expect("response")
            .text()
            .await
            .expect("text");
        assert_eq!(text, "not json");
    }

    #[tokio::test]
    async fn serves_many_clients_at_once() {
        let http = http();
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            jwt_tokens: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let mut tasks = JoinSet::new();
        for index in 0..1000 {
            let (http, url) = (http.clone(), idp.token_url());
            tasks.spawn(async move {
                let id = format!("client-{index}");
                let response = http
                    .post(url)
                    .form(&[GRANT, ("client_id", &id), ("client_secret", "s")])
                    .send()
                    .await
                    .expect("response");
                let body: Value =
                    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
                let token = body["access_token"].as_str().expect("token").to_owned();
                let claims = unverified_claims(&token).expect("jwt");
                assert_eq!(claims["sub"], id.as_str());
                token
            });
        }
        let mut tokens = std::collections::HashSet::new();
        while let Some(token) = tasks.join_next().await {
            tokens.insert(token.expect("task"));
        }
        assert_eq!(tokens.len(), 1000);
        assert_eq!(idp.token_request_count(), 1000);
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let http = http();
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.set_fault(Fault::Hang);
        let address = idp.address();
        let hanging = tokio::spawn(
            http.post(idp.token_url())
                .timeout(Duration::from_secs(5))
                .send(),
        );
        while idp.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(idp);
        let outcome = hanging.await.expect("join");
        assert!(outcome.is_err(), "the hanging connection was closed");
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(address).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "the listener is closed");
    }
}
