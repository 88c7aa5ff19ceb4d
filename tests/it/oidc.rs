//! A real authorization server for interop tests: panva's `oidc-provider` (a certified OpenID
//! Provider) run by `tests/interop/server.mjs` under Node.js.
//!
//! ```ignore
//! let idp = OidcProvider::start(json!([{"client_id": "bot", "client_secret": "s",
//!     "token_endpoint_auth_method": "client_secret_basic"}]), 300);
//! // idp.issuer / idp.token_endpoint, then jwt_claims(&access_token)["aud"] …
//! ```
//!
//! Needs `node` (20+) on `PATH` (or `$BEARERD_TEST_NODE`) and `npm ci --prefix tests/interop`; a
//! missing one is a test failure, never a silent skip. The server's config format (clients, `ttl`,
//! `default_resource`, `json_body`, `tls`, …) is documented at the top of `server.mjs`.

// A toolbox for the interop tests: not every helper is used by every build of the suite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::Server;

/// How long node may take to print its ready line: a cold start on a busy 2-core machine once
/// took over 20 s (a failure deadline only: a healthy start takes about a second).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running `oidc-provider` on `127.0.0.1:<ephemeral port>`, killed on drop.
pub struct OidcProvider {
    server: Server,
    /// `http://127.0.0.1:PORT` (`https://…` when the config has `tls`); discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    /// `GET`: `{"token_requests","faults_served","issued":{client:n},"errors":{client:n}}`.
    pub stats_url: String,
    /// `POST {"count","status","body","headers","delay_ms"}`: the next token requests fail so.
    pub fail_url: String,
}

impl OidcProvider {
    /// Starts a server with these clients (a JSON array of client metadata, see `server.mjs`) and
    /// this access-token lifetime in seconds.
    pub fn start(clients: Value, ttl_secs: u64) -> OidcProvider {
        Self::start_with(json!({ "clients": clients, "ttl": ttl_secs }))
    }

    /// Starts a server with a complete `server.mjs` config object.
    pub fn start_with(config: Value) -> OidcProvider {
        let dir = interop_dir();
        if !dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            panic!(
                "oidc-provider is not installed in {}: run `npm ci --prefix tests/interop` \
                 (needs Node.js 20+ and npm)",
                dir.display()
            );
        }

        let node = std::env::var_os("BEARERD_TEST_NODE").unwrap_or_else(|| "node".into());
        let mut command = Command::new(&node);
        command.arg(dir.join("server.mjs")).current_dir(&dir);
        let (server, ready) = Server::start(
            "the interop authorization server (node tests/interop/server.mjs)",
            command,
            &config,
            READY_DEADLINE,
            "install Node.js 20+ and run `npm ci --prefix tests/interop`",
        );

        let field = |name: &str| -> String {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
                .to_owned()
        };
        OidcProvider {
            issuer: field("issuer"),
            token_endpoint: field("token_endpoint"),
            jwks_uri: field("jwks_uri"),
            stats_url: field("stats"),
            fail_url: field("fail"),
            server,
        }
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// Everything the server printed so far (its error log names why a token request failed).
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// The server's request counters (see [`OidcProvider::stats_url`]).
    pub async fn stats(&self) -> Value {
        let resp = reqwest::Client::new()
            .get(&self.stats_url)
            .send()
            .await
            .expect("GET /__test/stats");
        serde_json::from_slice(&resp.bytes().await.expect("stats body")).expect("stats JSON")
    }

    /// How many token requests reached the token endpoint (any client, any outcome).
    pub async fn token_requests(&self) -> u64 {
        self.stats().await["token_requests"].as_u64().unwrap_or(0)
    }

    /// Makes the next `spec.count` (default 1) token requests fail with `spec.status` (default
    /// 503), `spec.body` (JSON or text), `spec.headers` (e.g. `{"retry-after": "1"}`), after
    /// `spec.delay_ms`.
    pub async fn fail_next(&self, spec: Value) {
        let resp = reqwest::Client::new()
            .post(&self.fail_url)
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await
            .expect("POST /__test/fail");
        assert!(
            resp.status().is_success(),
            "POST /__test/fail: {}",
            resp.status()
        );
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The claims (middle part) of a JWT, undecoded-signature and all: for assertions only.
pub fn jwt_claims(token: &str) -> Value {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("not a JWS compact serialization (three dot-separated parts): {token:?}");
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// RFC 6749 §2.3.1: client_id and client_secret are form-urlencoded before they are joined with
/// ':' and base64-encoded into `Authorization: Basic`.
pub fn basic_auth_header(client_id: &str, client_secret: &str) -> String {
    let pair = format!(
        "{}:{}",
        form_urlencode(client_id),
        form_urlencode(client_secret)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn form_urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// POSTs a form to the token endpoint, with `Authorization` when given; returns status and body.
pub async fn token_request(
    endpoint: &str,
    authorization: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(endpoint).form(form);
    if let Some(authorization) = authorization {
        req = req.header("authorization", authorization);
    }
    let resp = req.send().await.expect("token request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("token response body");
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, body)
}

#[tokio::test]
async fn oidc_provider_issues_a_token_with_basic_auth() {
    let idp = OidcProvider::start(
        json!([{
            "client_id": "tasklist-bot",
            "client_secret": "s3cret",
            "token_endpoint_auth_method": "client_secret_basic",
        }]),
        300,
    );
    assert!(
        idp.issuer.starts_with("http://127.0.0.1:"),
        "{}",
        idp.issuer
    );
    assert_eq!(idp.token_endpoint, format!("{}/token", idp.issuer));

    let resp = reqwest::Client::new()
        .post(&idp.token_endpoint)
        .basic_auth("tasklist-bot", Some("s3cret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "tasks:read"),
            ("resource", "https://api.example.com"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200, "{}", idp.log());
    let body: Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON token response");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "tasks:read");

    let claims = jwt_claims(body["access_token"].as_str().expect("access_token"));
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(claims["scope"], "tasks:read");
    assert_eq!(claims["client_id"], "tasklist-bot");
    assert_eq!(claims["iss"], idp.issuer.as_str());
    let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
    assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(300), "{claims}");

    // Discovery lists the token endpoint and every method bearerd may pick from it.
    let discovery: Value = serde_json::from_slice(
        &reqwest::get(idp.discovery_url())
            .await
            .expect("discovery")
            .bytes()
            .await
            .expect("discovery body"),
    )
    .expect("discovery JSON");
    assert_eq!(discovery["token_endpoint"], idp.token_endpoint.as_str());
    assert_eq!(
        discovery["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(idp.token_requests().await, 1);
}

/// What bearerd relies on from this server: RFC 6749 §2.3.1 form-urlencoding inside Basic (and a
/// raw, unencoded secret refused), a post body decoded as a form, and the fault injection.
#[tokio::test]
async fn oidc_provider_decodes_rfc6749_encoded_credentials() {
    const SECRET: &str = "a+b/c%d:e&f=g h";
    let idp = OidcProvider::start(
        json!([
            {"client_id": "odd:id", "client_secret": SECRET,
             "token_endpoint_auth_method": "client_secret_basic"},
            {"client_id": "odd-post", "client_secret": SECRET,
             "token_endpoint_auth_method": "client_secret_post", "ttl": 2},
        ]),
        300,
    );
    let grant = ("grant_type", "client_credentials");

    let basic = basic_auth_header("odd:id", SECRET);
    let (status, body) = token_request(&idp.token_endpoint, Some(&basic), &[grant]).await;
    assert_eq!(status, 200, "{body}\n{}", idp.log());
    let claims = jwt_claims(body["access_token"].as_str().expect("access_token"));
    assert_eq!(claims["client_id"], "odd:id");
    // No resource requested: the configured default resource becomes the audience.
    assert_eq!(claims["aud"], "https://default.example.com");

    let raw = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("odd:id:{SECRET}"))
    );
    let (status, body) = token_request(&idp.token_endpoint, Some(&raw), &[grant]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");

    let form = [
        grant,
        ("client_id", "odd-post"),
        ("client_secret", SECRET),
        ("audience", "tasklist.camunda.io"),
    ];
    let (status, body) = token_request(&idp.token_endpoint, None, &form).await;
    assert_eq!(status, 200, "{body}\n{}", idp.log());
    assert_eq!(body["expires_in"], 2);
    let claims = jwt_claims(body["access_token"].as_str().expect("access_token"));
    assert_eq!(claims["aud"], "tasklist.camunda.io");

    idp.fail_next(json!({"status": 503, "headers": {"retry-after": "1"}}))
        .await;
    let (status, body) = token_request(&idp.token_endpoint, None, &form).await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = token_request(&idp.token_endpoint, None, &form).await;
    assert_eq!(status, 200);

    let stats = idp.stats().await;
    assert_eq!(stats["token_requests"], 5, "{stats}");
    assert_eq!(stats["faults_served"], 1, "{stats}");
    assert_eq!(
        stats["issued"],
        json!({"odd:id": 1, "odd-post": 2}),
        "{stats}"
    );
}
