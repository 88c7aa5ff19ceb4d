//! The built `bearerd` binary against real authorization servers on loopback: oidc-provider
//! (`tests/interop/server.mjs`) for every auth method bearerd has, Django OAuth Toolkit (`dot`) as
//! a server of another family, a proxy (`proxy`), a client certificate rotated under a running
//! daemon (`rotation`), and the example templates (`templates`).
//! Each test checks what the server issued (JWT claims, introspection), not just an exit code;
//! a server that cannot start fails the test, never skips it.

mod dot;
pub mod pki;
mod proxy;
mod rotation;
mod templates;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Daemon, Harness, text, wait_until};
use crate::oidc::{OidcProvider, jwt_claims};

/// A secret with every character RFC 6749 §2.3.1's form-urlencoding changes, and a space.
pub const ODD_SECRET: &str = "a+b/c%d:e&f=g h";

/// The resource (RFC 8707) the tokens are asked for; oidc-provider makes it the JWT's `aud`.
const RESOURCE: &str = "https://api.example.com";

/// Proxy variables a developer's shell may have set; every test run starts without them.
pub const PROXY_VARIABLES: [&str; 8] = [
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

/// A TOML basic string holding `value` (JSON string escapes are valid TOML ones).
pub fn quoted(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// `[clients.NAME]` with `settings` (TOML lines) and one token output at `NAME.token`.
pub fn client_toml(name: &str, settings: &str) -> String {
    format!(
        "[clients.{name}]\n{settings}\n\n[[clients.{name}.output]]\npath = \"{name}.token\"\n\n"
    )
}

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
    let common = format!(
        "token_url = {}\nscope = \"tasks:read\"\nextra_params = {{ resource = {} }}",
        quoted(&idp.token_endpoint),
        quoted(RESOURCE)
    );
    let clients = [
        (
            "basic",
            "basic-bot",
            "client_secret = \"basic-secret\"\nauth_method = \"client_secret_basic\"".to_owned(),
        ),
        (
            "post",
            "post-bot",
            "client_secret = \"post-secret\"\nauth_method = \"client_secret_post\"".to_owned(),
        ),
        (
            "odd-basic",
            "odd:id",
            format!("client_secret = {}", quoted(ODD_SECRET)),
        ),
        (
            "odd-post",
            "odd-post",
            "client_secret_file = \"odd-post.secret\"\nauth_method = \"client_secret_post\""
                .to_owned(),
        ),
    ];
    let mut config = String::new();
    for (name, client_id, secret) in &clients {
        config.push_str(&client_toml(
            name,
            &format!("client_id = {}\n{secret}\n{common}", quoted(client_id)),
        ));
    }
    let config_path = harness.write("bearerd.toml", &config);

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
    let config = harness.write(
        "bearerd.toml",
        &client_toml(
            "discovered",
            &format!(
                "issuer = {}\nclient_id = \"discovered\"\nclient_secret = {}\nscope = \"tasks:write\"\n\
                 extra_params = {{ resource = {} }}",
                quoted(&idp.issuer),
                quoted(ODD_SECRET),
                quoted(RESOURCE)
            ),
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
    harness.write(
        "bearerd.toml",
        &client_toml(
            "short",
            &format!(
                "token_url = {}\nclient_id = \"short\"\nclient_secret = \"short-secret\"\n\
                 extra_params = {{ resource = {} }}",
                quoted(&idp.token_endpoint),
                quoted(RESOURCE)
            ),
        ),
    );
    let mut command = harness.command(&["run"]);
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    let daemon = Daemon::start_with(command);

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
    let settings = |client_id: &str, key: &Path, kid: &str| {
        format!(
            "token_url = {}\nclient_id = {}\nauth_method = \"private_key_jwt\"\n\
             private_key_file = {}\nkey_id = {}\nscope = \"tasks:read tasks:write\"\n\
             extra_params = {{ resource = {} }}",
            quoted(&idp.token_endpoint),
            quoted(client_id),
            quoted(key.to_str().expect("UTF-8 path")),
            quoted(kid),
            quoted(RESOURCE)
        )
    };
    let config = harness.write(
        "bearerd.toml",
        &(client_toml("rs", &settings("rs-bot", &rsa, "rsa-1"))
            + &client_toml("es", &settings("es-bot", &ec_sec1, "ec-1"))),
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
        &client_toml("rs", &settings("rs-bot", &rsa, "rsa-2")),
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
        client_toml(
            "rs",
            &format!(
                "{}\nassertion_audience = {}",
                settings("rs-bot", &rsa, "rsa-1"),
                quoted(audience)
            ),
        )
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
        "tls": {
            "cert": pki.server_cert,
            "key": pki.server_key,
            "ca": pki.ca_cert,
        },
    }))
}

#[test]
fn tls_client_auth_gets_a_certificate_bound_token_over_a_private_ca() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let idp = tls_provider(
        &pki,
        json!([{
            "client_id": "mtls-bot",
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": pki::CLIENT_SUBJECT,
            "tls_client_certificate_bound_access_tokens": true,
        }]),
    );
    assert!(idp.issuer.starts_with("https://"), "{}", idp.issuer);
    let path = |path: &Path| quoted(path.to_str().expect("UTF-8 path"));
    let tls = format!(
        "client_id = \"mtls-bot\"\nauth_method = \"tls_client_auth\"\nca_file = {}\n\
         tls_cert_file = {}\ntls_key_file = {}\nscope = \"tasks:read\"\n\
         extra_params = {{ resource = {} }}",
        path(&pki.ca_cert),
        path(&pki.client_cert),
        path(&pki.client_key),
        quoted(RESOURCE)
    );
    let config = harness.write(
        "bearerd.toml",
        &(client_toml(
            "mtls",
            &format!("token_url = {}\n{tls}", quoted(&idp.token_endpoint)),
        ) + &client_toml(
            "mtls-discovered",
            &format!("issuer = {}\n{tls}", quoted(&idp.issuer)),
        )),
    );
    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    let thumbprint = pki.client_thumbprint();
    for name in ["mtls", "mtls-discovered"] {
        let token = harness.read(&format!("{name}.token"));
        assert_claims(&token, &idp, "mtls-bot", "tasks:read", RESOURCE);
        let claims = jwt_claims(&token);
        assert_eq!(claims["cnf"]["x5t#S256"], thumbprint.as_str(), "{claims}");
    }

    // Without ca_file the server's certificate is not trusted: ca_file is what made it work.
    let untrusted = std::fs::read_to_string(&config)
        .expect("config")
        .lines()
        .filter(|line| !line.starts_with("ca_file"))
        .collect::<Vec<_>>()
        .join("\n");
    let untrusted = harness.write("untrusted.toml", &untrusted);
    let output = fail_at_runtime(bearerd(&harness, &untrusted, &["token", "mtls"]));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn tls_client_auth_with_an_issuer_posts_to_the_mtls_endpoint_alias() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let idp = OidcProvider::start_with(json!({
        "clients": [{
            "client_id": "mtls-bot",
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": pki::CLIENT_SUBJECT,
            "tls_client_certificate_bound_access_tokens": true,
        }],
        "ttl": 300,
        "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert},
        "mtls_alias": true,
    }));
    let path = |path: &Path| quoted(path.to_str().expect("UTF-8 path"));
    let config = harness.write(
        "bearerd.toml",
        &client_toml(
            "mtls",
            &format!(
                "issuer = {}\nclient_id = \"mtls-bot\"\nauth_method = \"tls_client_auth\"\n\
                 ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\nscope = \"tasks:read\"\n\
                 extra_params = {{ resource = {} }}",
                quoted(&idp.issuer),
                path(&pki.ca_cert),
                path(&pki.client_cert),
                path(&pki.client_key),
                quoted(RESOURCE)
            ),
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
        client_toml(
            "json",
            &format!(
                "token_url = {}\nclient_id = \"json-bot\"\nclient_secret = {}\n\
                 auth_method = \"client_secret_json\"\naudience = \"tasklist.camunda.io\"\n\
                 scope = \"tasks:read\"",
                quoted(&idp.token_endpoint),
                quoted(ODD_SECRET)
            ),
        )
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
            "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert},
        }));
        let config = harness.write(
            "bearerd.toml",
            &client_toml(
                "api",
                &format!(
                    "token_url = {}\nclient_id = \"api-bot\"\nclient_secret = \"api-secret\"\n\
                     ca_file = {}\nextra_params = {{ resource = {} }}",
                    quoted(&idp.token_endpoint),
                    quoted(pki.ca_cert.to_str().expect("UTF-8 path")),
                    quoted(RESOURCE)
                ),
            ),
        );
        let token = succeed(bearerd(&harness, &config, &["token", "api"]), || idp.log());
        assert_eq!(jwt_claims(&token)["client_id"], "api-bot");
        let stats = tls_stats(&idp, &pki).await;
        assert_eq!(stats["http_versions"], json!({ version: 1 }), "{stats}");
    }
}
