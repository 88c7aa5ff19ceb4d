//! The built `bearerd` binary against real authorization servers on loopback: oidc-provider
//! (`tests/interop/server.mjs`) for every auth method bearerd has, Django OAuth Toolkit (`dot`) as
//! a server of another family, a proxy (`proxy`), a client certificate rotated under a running
//! daemon (`rotation`), the example templates (`templates`), and the secretless methods and
//! grants against oidc-provider and Authlib (`secretless`).
//! Each test checks what the server issued (JWT claims, introspection), not just an exit code;
//! a server that cannot start fails the test, never skips it.

mod dot;
mod proxy;
mod rotation;
mod secretless;
mod templates;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Client, Config, Daemon, Harness, pki, text, wait_until};
use crate::oidc::{OidcProvider, jwt_claims};

/// A secret with every character RFC 6749 §2.3.1's form-urlencoding changes, and a space.
pub const ODD_SECRET: &str = "a+b/c%d:e&f=g h";

/// The resource (RFC 8707) the tokens are asked for; oidc-provider makes it the JWT's `aud`.
const RESOURCE: &str = "https://api.example.com";

/// Proxy variables a developer's shell may have set; every test run starts without them.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `bearerd ARGS -c CONFIG` without inherited proxy variables.
pub fn bearerd(harness: &Harness, config: &Path, args: &[&str]) -> Command {
    let mut command = harness.command_with_config(config, args);
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// Runs `command`, asserting exit 0; `server_log` is shown when it did not. Returns stdout.
pub fn succeed(mut command: Command, server_log: impl Fn() -> String) -> String {
    let output = command.output().expect("run bearerd");
    assert!(
        output.status.success(),
        "bearerd exited {:?}\n--- stderr ---\n{}\n--- server ---\n{}",
        output.status.code(),
        text(&output.stderr),
        server_log()
    );
    text(&output.stdout)
}

/// Runs `command`, asserting exit 1 (a runtime failure). Returns the output.
pub fn fail_at_runtime(mut command: Command) -> Output {
    let output = command.output().expect("run bearerd");
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// A client writing one token output, `NAME.token`.
pub fn client(name: &str) -> Client {
    Client::new(name).output(format!("{name}.token"))
}

/// The `extra_params` asking for [`RESOURCE`].
const FOR_RESOURCE: &[(&str, &str)] = &[("resource", RESOURCE)];

/// Asserts the claims oidc-provider put into a token it issued for `resource`.
fn assert_claims(token: &str, idp: &OidcProvider, client_id: &str, scope: &str, aud: &str) {
    let claims = jwt_claims(token);
    assert_eq!(claims["client_id"], client_id, "{claims}");
    assert_eq!(claims["scope"], scope, "{claims}");
    assert_eq!(claims["aud"], aud, "{claims}");
    assert_eq!(claims["iss"], idp.issuer.as_str(), "{claims}");
}

#[test]
fn basic_and_post_through_run_once_and_token_with_scope_and_resource() {
    let idp = OidcProvider::start(
        json!([
            {"client_id": "basic-bot", "client_secret": "basic-secret",
             "token_endpoint_auth_method": "client_secret_basic"},
            {"client_id": "post-bot", "client_secret": "post-secret",
             "token_endpoint_auth_method": "client_secret_post"},
            {"client_id": "odd:id", "client_secret": ODD_SECRET,
             "token_endpoint_auth_method": "client_secret_basic"},
            {"client_id": "odd-post", "client_secret": ODD_SECRET,
             "token_endpoint_auth_method": "client_secret_post"},
        ]),
        300,
    );
    let harness = Harness::new();
    harness.write("odd-post.secret", &format!("{ODD_SECRET}\n"));
    let clients = [
        (
            "basic",
            "basic-bot",
            client("basic")
                .secret("basic-secret")
                .auth_method("client_secret_basic"),
        ),
        (
            "post",
            "post-bot",
            client("post")
                .secret("post-secret")
                .auth_method("client_secret_post"),
        ),
        (
            "odd-basic",
            "odd:id",
            client("odd-basic").secret(ODD_SECRET),
        ),
        (
            "odd-post",
            "odd-post",
            client("odd-post")
                .secret_file("odd-post.secret")
                .auth_method("client_secret_post"),
        ),
    ];
    let config = Config::new().clients(clients.iter().map(|(_, client_id, client)| {
        client
            .clone()
            .client_id(client_id)
            .token_url(&idp.token_endpoint)
            .scope("tasks:read")
            .extra_params(FOR_RESOURCE)
    }));
    let config_path = harness.write_config(&config);

    succeed(bearerd(&harness, &config_path, &["run", "--once"]), || {
        idp.log()
    });
    for (name, client_id, _) in &clients {
        let token = harness.read(&format!("{name}.token"));
        assert_claims(&token, &idp, client_id, "tasks:read", RESOURCE);

        let printed = succeed(bearerd(&harness, &config_path, &["token", name]), || {
            idp.log()
        });
        assert!(!printed.ends_with('\n'), "token prints the bare token");
        assert_ne!(printed, token, "token NAME fetches a new token");
        assert_claims(&printed, &idp, client_id, "tasks:read", RESOURCE);
    }
}

#[test]
fn an_issuer_alone_finds_the_token_endpoint_and_the_auth_method_by_discovery() {
    // oidc-provider lists client_secret_basic first, so that is what bearerd must pick; a client
    // registered for it refuses any other method.
    let idp = OidcProvider::start(
        json!([{"client_id": "discovered", "client_secret": ODD_SECRET,
                "token_endpoint_auth_method": "client_secret_basic"}]),
        300,
    );
    let harness = Harness::new();
    let config = harness.write_config(
        &Config::new().client(
            client("discovered")
                .issuer(&idp.issuer)
                .client_id("discovered")
                .secret(ODD_SECRET)
                .scope("tasks:write")
                .extra_params(FOR_RESOURCE),
        ),
    );
    let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
    assert!(report.contains("from discovery"), "{report}");

    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    let token = harness.read("discovered.token");
    assert_claims(&token, &idp, "discovered", "tasks:write", RESOURCE);
}

#[test]
fn the_daemon_keeps_a_two_second_token_fresh() {
    let idp = OidcProvider::start(
        json!([{"client_id": "short", "client_secret": "short-secret", "ttl": 2,
                "token_endpoint_auth_method": "client_secret_basic"}]),
        300,
    );
    let harness = Harness::new();
    let config = harness.write_config(
        &Config::new().client(
            client("short")
                .token_url(&idp.token_endpoint)
                .client_id("short")
                .secret("short-secret")
                .extra_params(FOR_RESOURCE),
        ),
    );
    let daemon = Daemon::start_with(bearerd(&harness, &config, &["run"]));

    // Every distinct file content seen: the first token and at least two refreshes.
    let mut seen = HashSet::new();
    let refreshed = wait_until(Duration::from_secs(20), || {
        if let Ok(token) = std::fs::read_to_string(harness.path("short.token")) {
            seen.insert(token);
        }
        seen.len() >= 3
    });
    assert!(
        refreshed,
        "saw {} token(s) in 20 s\n--- bearerd ---\n{}\n--- server ---\n{}",
        seen.len(),
        daemon.log(),
        idp.log()
    );
    let mut ids = HashSet::new();
    for token in &seen {
        let claims = jwt_claims(token);
        assert_eq!(claims["client_id"], "short");
        let lifetime = claims["exp"].as_i64().zip(claims["iat"].as_i64());
        assert_eq!(lifetime.map(|(exp, iat)| exp - iat), Some(2), "{claims}");
        ids.insert(claims["jti"].to_string());
    }
    assert_eq!(ids.len(), seen.len(), "every file held a different token");
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn private_key_jwt_with_rs256_and_es256_keys_made_now() {
    let harness = Harness::new();
    let dir = harness.dir.path();
    let rsa = pki::rsa_key(dir, "rsa.pem");
    let ec = pki::ec_key(dir, "ec-pkcs8.pem");
    // The EC key is used in its SEC1 form (`BEGIN EC PRIVATE KEY`), the RSA one as PKCS#8.
    let ec_sec1 = pki::to_sec1(dir, &ec, "ec.pem");
    let idp = OidcProvider::start(
        json!([
            {"client_id": "rs-bot", "token_endpoint_auth_method": "private_key_jwt",
             "jwks": {"keys": [pki::public_jwk(&rsa, "rsa-1")]}},
            {"client_id": "es-bot", "token_endpoint_auth_method": "private_key_jwt",
             "jwks": {"keys": [pki::public_jwk(&ec, "ec-1")]}},
        ]),
        300,
    );
    let signing = |name: &str, client_id: &str, key: &Path, kid: &str| {
        client(name)
            .token_url(&idp.token_endpoint)
            .client_id(client_id)
            .private_key_jwt(key, kid)
            .scope("tasks:read tasks:write")
            .extra_params(FOR_RESOURCE)
    };
    let config = harness.write_config(
        &Config::new()
            .client(signing("rs", "rs-bot", &rsa, "rsa-1"))
            .client(signing("es", "es-bot", &ec_sec1, "ec-1")),
    );
    let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
    assert!(report.contains("private_key_jwt"), "{report}");
    assert!(report.contains("(kid rsa-1)"), "{report}");

    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    for (name, client_id) in [("rs", "rs-bot"), ("es", "es-bot")] {
        let token = harness.read(&format!("{name}.token"));
        assert_claims(&token, &idp, client_id, "tasks:read tasks:write", RESOURCE);
        let printed = succeed(bearerd(&harness, &config, &["token", name]), || idp.log());
        assert_claims(
            &printed,
            &idp,
            client_id,
            "tasks:read tasks:write",
            RESOURCE,
        );
    }

    // The key id is really sent: a kid the client did not register is refused.
    let wrong = harness.write(
        "wrong-kid.toml",
        &Config::new()
            .client(signing("rs", "rs-bot", &rsa, "rsa-2"))
            .to_string(),
    );
    let output = fail_at_runtime(bearerd(&harness, &wrong, &["token", "rs"]));
    assert!(
        text(&output.stderr).contains("invalid_client"),
        "{}",
        text(&output.stderr)
    );

    // The assertion's `aud` is the token endpoint unless `assertion_audience` says otherwise:
    // oidc-provider takes its issuer too, and refuses an audience that is not its own.
    let with_audience = |audience: &str| {
        Config::new()
            .client(signing("rs", "rs-bot", &rsa, "rsa-1").set("assertion_audience", audience))
            .to_string()
    };
    let issuer = harness.write("issuer-aud.toml", &with_audience(&idp.issuer));
    let token = succeed(bearerd(&harness, &issuer, &["token", "rs"]), || idp.log());
    assert_claims(&token, &idp, "rs-bot", "tasks:read tasks:write", RESOURCE);
    let elsewhere = harness.write(
        "elsewhere-aud.toml",
        &with_audience("https://elsewhere.example.com/"),
    );
    let output = fail_at_runtime(bearerd(&harness, &elsewhere, &["token", "rs"]));
    assert!(
        text(&output.stderr).contains("invalid_client"),
        "{}",
        text(&output.stderr)
    );
}

/// oidc-provider over https with a private CA, asking for a client certificate.
fn tls_provider(pki: &pki::Pki, clients: Value) -> OidcProvider {
    OidcProvider::start_with(json!({
        "clients": clients,
        "ttl": 300,
        "tls": tls(pki),
    }))
}

/// `mtls-bot`, registered for `tls_client_auth` with [`pki::CLIENT_SUBJECT`] and given
/// certificate-bound tokens.
fn mtls_bot() -> Value {
    json!({
        "client_id": "mtls-bot",
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_subject_dn": pki::CLIENT_SUBJECT,
        "tls_client_certificate_bound_access_tokens": true,
    })
}

/// The server side of `pki` in a `server.mjs` config: https with its CA, asking for a client
/// certificate.
fn tls(pki: &pki::Pki) -> Value {
    json!({"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert})
}

#[test]
fn tls_client_auth_gets_a_certificate_bound_token_over_a_private_ca() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let idp = tls_provider(&pki, json!([mtls_bot()]));
    assert!(idp.issuer.starts_with("https://"), "{}", idp.issuer);
    let mtls = |name: &str| {
        client(name)
            .client_id("mtls-bot")
            .tls_client_auth(&pki)
            .scope("tasks:read")
            .extra_params(FOR_RESOURCE)
    };
    let clients = [
        mtls("mtls").token_url(&idp.token_endpoint),
        mtls("mtls-discovered").issuer(&idp.issuer),
    ];
    let config = harness.write_config(&Config::new().clients(clients.clone()));
    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    let thumbprint = pki.client_thumbprint();
    for name in ["mtls", "mtls-discovered"] {
        let token = harness.read(&format!("{name}.token"));
        assert_claims(&token, &idp, "mtls-bot", "tasks:read", RESOURCE);
        let claims = jwt_claims(&token);
        assert_eq!(claims["cnf"]["x5t#S256"], thumbprint.as_str(), "{claims}");
    }

    // Without ca_file the server's certificate is not trusted: ca_file is what made it work.
    let untrusted = Config::new().clients(clients.map(|client| client.without("ca_file")));
    let untrusted = harness.write("untrusted.toml", &untrusted.to_string());
    let output = fail_at_runtime(bearerd(&harness, &untrusted, &["token", "mtls"]));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn tls_client_auth_with_an_issuer_posts_to_the_mtls_endpoint_alias() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let idp = OidcProvider::start_with(json!({
        "clients": [mtls_bot()],
        "ttl": 300,
        "tls": tls(&pki),
        "mtls_alias": true,
    }));
    let config = harness.write_config(
        &Config::new().client(
            client("mtls")
                .issuer(&idp.issuer)
                .client_id("mtls-bot")
                .tls_client_auth(&pki)
                .scope("tasks:read")
                .extra_params(FOR_RESOURCE),
        ),
    );
    let token = succeed(bearerd(&harness, &config, &["token", "mtls"]), || idp.log());
    assert_claims(&token, &idp, "mtls-bot", "tasks:read", RESOURCE);
    let claims = jwt_claims(&token);
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        pki.client_thumbprint().as_str(),
        "{claims}"
    );

    // The one token request went to the alias, not to the plain token_endpoint.
    let stats = tls_stats(&idp, &pki).await;
    assert_eq!(stats["token_requests"], 1, "{stats}");
    assert_eq!(stats["mtls_alias_requests"], 1, "{stats}");
}

#[test]
fn client_secret_json_reaches_a_server_that_reads_json_bodies() {
    let clients = json!([{"client_id": "json-bot", "client_secret": ODD_SECRET,
                          "token_endpoint_auth_method": "client_secret_post"}]);
    let idp = OidcProvider::start_with(json!({"clients": clients, "json_body": true}));
    let harness = Harness::new();
    let config_for = |idp: &OidcProvider| {
        Config::new()
            .client(
                client("json")
                    .token_url(&idp.token_endpoint)
                    .client_id("json-bot")
                    .secret(ODD_SECRET)
                    .auth_method("client_secret_json")
                    .audience("tasklist.camunda.io")
                    .scope("tasks:read"),
            )
            .to_string()
    };
    let config = harness.write("bearerd.toml", &config_for(&idp));
    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    let token = harness.read("json.token");
    assert_claims(
        &token,
        &idp,
        "json-bot",
        "tasks:read",
        "tasklist.camunda.io",
    );

    // The same request to oidc-provider as it is (form bodies only) fails: the body was JSON.
    let form_only = OidcProvider::start(clients, 300);
    let config = harness.write("form-only.toml", &config_for(&form_only));
    fail_at_runtime(bearerd(&harness, &config, &["token", "json"]));
}

/// The server's `/__test/stats` over https, trusting the test CA.
async fn tls_stats(idp: &OidcProvider, pki: &pki::Pki) -> Value {
    let ca = std::fs::read(&pki.ca_cert).expect("CA certificate");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("PEM"))
        .build()
        .expect("HTTP client");
    let response = http.get(&idp.stats_url).send().await.expect("stats");
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON")
}

#[tokio::test]
async fn http2_is_used_when_the_server_offers_it_and_http1_otherwise() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let clients = json!([{"client_id": "api-bot", "client_secret": "api-secret",
                          "token_endpoint_auth_method": "client_secret_basic"}]);
    for (http2, version) in [(true, "2.0"), (false, "1.1")] {
        let idp = OidcProvider::start_with(json!({
            "clients": clients,
            "http2": http2,
            "tls": tls(&pki),
        }));
        let config = harness.write_config(
            &Config::new().client(
                client("api")
                    .token_url(&idp.token_endpoint)
                    .client_id("api-bot")
                    .secret("api-secret")
                    .ca_file(&pki.ca_cert)
                    .extra_params(FOR_RESOURCE),
            ),
        );
        let token = succeed(bearerd(&harness, &config, &["token", "api"]), || idp.log());
        assert_eq!(jwt_claims(&token)["client_id"], "api-bot");
        let stats = tls_stats(&idp, &pki).await;
        assert_eq!(stats["http_versions"], json!({ version: 1 }), "{stats}");
    }
}
