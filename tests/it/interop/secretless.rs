//! bearerd without a long-lived secret, against real servers on loopback: oidc-provider for
//! `client_secret_jwt`, for a client assertion read from a kubelet-style projected volume
//! (rotated by a `..data` swap, expired, renewed) and for RFC 8693 token exchange (its
//! `registerGrantType`, see `tests/interop/server.mjs`); Authlib (`jwt_bearer_server.py`) for the
//! RFC 7523 JWT-bearer grant, with an assertion file and with an assertion bearerd signs.
//! The assertions and subject tokens are JWTs this module signs with keys it makes now, as a
//! cluster's service-account issuer would; what the servers saw is read from their counters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::{ODD_SECRET, RESOURCE, bearerd, client, fail_at_runtime, succeed};
use crate::harness::{Config, Daemon, Harness, Server, http_get, pki, text, wait_until};
use crate::oidc::{OidcProvider, jwt_claims};

/// The issuer a Kubernetes cluster puts in its service-account tokens.
const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The service account the tokens are for, as Kubernetes names it in `sub`.
const SERVICE_ACCOUNT: &str = "system:serviceaccount:payments:billing-worker";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Long enough for every HMAC algorithm oidc-provider offers.
const HS_SECRET: &str = "a+b/c%d:e&f=g h-0123456789-0123456789-0123456789-xyz";

/// Generous: two cores shared with other builds.
const DEADLINE: Duration = Duration::from_secs(30);

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit")
}

/// A P-256 signing key of the test's own, the way a cluster's service-account issuer has one.
struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    jwk: Value,
}

impl SigningKey {
    fn create(dir: &Path, name: &str) -> Self {
        let file = pki::ec_key(dir, &format!("{name}.pem"));
        let pem = std::fs::read(&file).expect("read the key");
        let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_slice(&pem).expect("PEM") else {
            panic!("openssl genpkey writes PKCS#8");
        };
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .expect("a P-256 key");
        Self {
            pair,
            kid: name.to_owned(),
            jwk: pki::public_jwk(&file, name),
        }
    }

    /// `{"keys": [this key's public half]}`.
    fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// A compact ES256 JWS of `claims`.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// A service-account-shaped token: `iss`, `sub`, `aud`, `jti`, `iat`, `nbf`, `exp` = now +
    /// `lifetime` seconds (negative: already expired).
    fn token(&self, iss: &str, sub: &str, aud: &str, jti: &str, lifetime: i64) -> String {
        let now = now();
        self.sign(&json!({
            "iss": iss, "sub": sub, "aud": aud, "jti": jti,
            "iat": now.min(now + lifetime), "nbf": now.min(now + lifetime) - 1, "exp": now + lifetime,
        }))
    }
}

/// A directory laid out the way the kubelet's atomic writer lays out a projected volume:
/// `..TIMESTAMP/token`, `..data -> ..TIMESTAMP`, `token -> ..data/token`. Each
/// [`ProjectedVolume::write`] is a new timestamped directory and an atomic `..data` swap (a
/// symlink renamed over the old one), after which the previous directory is removed.
struct ProjectedVolume {
    dir: PathBuf,
    generation: u32,
}

impl ProjectedVolume {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("mkdir the volume");
        Self { dir, generation: 0 }
    }

    /// The path a pod reads, `DIR/token`.
    fn token(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn write(&mut self, token: &str) {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        self.generation += 1;
        let timestamped = format!("..2026_12_01_00_00_{:02}.{:09}", self.generation, 1);
        let data = self.dir.join(&timestamped);
        std::fs::create_dir(&data).expect("mkdir ..TIMESTAMP");
        std::fs::write(data.join("token"), token).expect("write the token");
        std::fs::set_permissions(data.join("token"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod 0600");
        let previous = std::fs::read_link(self.dir.join("..data")).ok();
        symlink(&timestamped, self.dir.join("..data_tmp")).expect("link ..data_tmp");
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap ..data");
        if !self.token().exists() {
            symlink("..data/token", self.token()).expect("link token");
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.dir.join(previous)).expect("remove the old directory");
        }
    }
}

/// What oidc-provider's `/__test/stats` recorded of the client assertions it was sent: each
/// `(jti, accepted)`, in order.
async fn assertions_seen(idp: &OidcProvider) -> Vec<(String, bool)> {
    idp.stats().await["assertions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| {
            (
                entry["jti"].as_str().unwrap_or("-").to_owned(),
                entry["ok"] == true,
            )
        })
        .collect()
}

/// The first `Some` that `probe` gives within `deadline`.
fn poll_for<T>(deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let mut found = None;
    wait_until(deadline, || {
        found = probe();
        found.is_some()
    });
    found
}

/// Runs `future` to completion on a small runtime of its own: the polling loops are sync.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

#[test]
fn client_secret_jwt_signs_a_fresh_assertion_with_the_secret_every_time() {
    let idp = OidcProvider::start_with(json!({
        "extra_auth_methods": ["client_secret_jwt"],
        "clients": [{"client_id": "hs-bot", "client_secret": HS_SECRET,
                     "token_endpoint_auth_method": "client_secret_jwt"}],
    }));
    let harness = Harness::new();
    harness.write("hs.secret", &format!("{HS_SECRET}\n"));
    let hs = |audience: Option<&str>| {
        let client = client("hs")
            .token_url(&idp.token_endpoint)
            .client_id("hs-bot")
            .secret_file(harness.path("hs.secret"))
            .auth_method("client_secret_jwt")
            .scope("tasks:read")
            .extra_params(&[("resource", RESOURCE)]);
        match audience {
            Some(audience) => client.set("assertion_audience", audience),
            None => client,
        }
    };
    let config = harness.write_config(&Config::new().client(hs(None)));
    let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
    assert!(report.contains("client_secret_jwt"), "{report}");

    // Three requests: oidc-provider refuses a `jti` it has seen, so each carried a new one.
    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());
    let token = harness.read("hs.token");
    for _ in 0..2 {
        let printed = succeed(bearerd(&harness, &config, &["token", "hs"]), || idp.log());
        assert_ne!(printed, token);
    }
    let claims = jwt_claims(&token);
    assert_eq!(claims["client_id"], "hs-bot", "{claims}");
    assert_eq!(claims["aud"], RESOURCE, "{claims}");
    let seen = block_on(assertions_seen(&idp));
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|(_, ok)| *ok), "{seen:?}\n{}", idp.log());
    let mut ids: Vec<&str> = seen.iter().map(|(jti, _)| jti.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "a fresh jti every time: {seen:?}");

    // `assertion_audience` is the `aud`: the issuer is accepted, another audience is not.
    let issuer = harness.write(
        "issuer.toml",
        &Config::new().client(hs(Some(&idp.issuer))).to_string(),
    );
    succeed(bearerd(&harness, &issuer, &["token", "hs"]), || idp.log());
    let elsewhere = harness.write(
        "elsewhere.toml",
        &Config::new()
            .client(hs(Some("https://elsewhere.example.com/")))
            .to_string(),
    );
    let output = fail_at_runtime(bearerd(&harness, &elsewhere, &["token", "hs"]));
    assert!(
        text(&output.stderr).contains("invalid_client"),
        "{}",
        text(&output.stderr)
    );

    // The wrong secret signs an assertion the server refuses.
    harness.write(
        "hs.secret",
        "not-the-secret-0123456789-0123456789-0123456789\n",
    );
    let output = fail_at_runtime(bearerd(&harness, &config, &["token", "hs"]));
    assert!(text(&output.stderr).contains("invalid_client"));
    assert!(
        !text(&output.stderr).contains("not-the-secret"),
        "{}",
        text(&output.stderr)
    );
}

/// oidc-provider with `k8s-bot`, a `private_key_jwt` client whose registered key is `key`: the
/// key a cluster signs its service-account tokens with.
fn assertion_provider(key: &SigningKey) -> OidcProvider {
    OidcProvider::start(
        json!([{"client_id": "k8s-bot", "token_endpoint_auth_method": "private_key_jwt",
                "jwks": key.jwks()}]),
        300,
    )
}

/// `k8s-bot` authenticating with the assertion in `volume`.
fn assertion_client(idp: &OidcProvider, volume: &ProjectedVolume) -> crate::harness::Client {
    client("k8s")
        .token_url(&idp.token_endpoint)
        .client_id("k8s-bot")
        .auth_method("client_assertion")
        .set(
            "client_assertion_file",
            volume.token().to_str().expect("UTF-8"),
        )
        .scope("tasks:read")
        .extra_params(&[("resource", RESOURCE)])
}

#[test]
fn a_client_assertion_rotated_by_a_data_swap_is_the_one_the_next_request_carries() {
    let harness = Harness::new();
    let key = SigningKey::create(harness.dir.path(), "cluster-1");
    let idp = assertion_provider(&key);
    // oidc-provider wants iss = sub = client_id, the audience its own, and refuses a replayed
    // jti: a request that succeeds after a swap carried the new file.
    let assertion = |jti: &str| key.token("k8s-bot", "k8s-bot", &idp.token_endpoint, jti, 600);
    let mut volume = ProjectedVolume::new(harness.path("tokens"));
    volume.write(&assertion("first"));
    let config = harness.write_config(&Config::new().client(assertion_client(&idp, &volume)));
    let daemon = Daemon::start_with(bearerd(&harness, &config, &["run"]));

    let read_token = || std::fs::read_to_string(harness.path("k8s.token")).ok();
    let first = poll_for(DEADLINE, read_token).unwrap_or_else(|| {
        panic!(
            "no token\n--- bearerd ---\n{}\n--- server ---\n{}",
            daemon.log(),
            idp.log()
        )
    });
    assert_eq!(jwt_claims(&first)["client_id"], "k8s-bot");
    assert_eq!(
        block_on(assertions_seen(&idp)),
        [("first".to_owned(), true)]
    );

    let mut previous = first;
    for (round, jti) in ["second", "third"].into_iter().enumerate() {
        volume.write(&assertion(jti));
        daemon.signal(rustix::process::Signal::USR1);
        let fresh =
            poll_for(DEADLINE, || read_token().filter(|t| *t != previous)).unwrap_or_else(|| {
                panic!(
                    "no new token after swap {}\n--- bearerd ---\n{}\n--- server ---\n{}",
                    round + 1,
                    daemon.log(),
                    idp.log()
                )
            });
        let seen = block_on(assertions_seen(&idp));
        // Every request after the swap carried the new assertion, and the first succeeded.
        let after: Vec<&(String, bool)> = seen.iter().skip(round + 1).collect();
        assert_eq!(after.first(), Some(&&(jti.to_owned(), true)), "{seen:?}");
        assert!(after.iter().all(|(id, _)| id == jti), "{seen:?}");
        assert_eq!(jwt_claims(&fresh)["client_id"], "k8s-bot");
        previous = fresh;
    }
    let log = daemon.log();
    for jti in ["first", "second", "third"] {
        assert!(!log.contains(&assertion(jti)), "an assertion in the log");
    }
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_expired_client_assertion_is_never_sent_and_a_fresh_one_is_taken_at_once() {
    let harness = Harness::new();
    let key = SigningKey::create(harness.dir.path(), "cluster-1");
    let idp = assertion_provider(&key);
    let mut volume = ProjectedVolume::new(harness.path("tokens"));
    volume.write(&key.token("k8s-bot", "k8s-bot", &idp.token_endpoint, "stale", -60));
    // A backoff far longer than the deadline: only the file watch can bring the retry in time.
    let config = harness.write_config(
        &Config::new()
            .listen("127.0.0.1:0")
            .backoff("60s", "120s")
            .client(assertion_client(&idp, &volume)),
    );
    let daemon = Daemon::start_with(bearerd(&harness, &config, &["run"]));
    let address = daemon.admin_address();
    daemon.wait_for("expired", 1, DEADLINE);
    let log = daemon.log();
    assert!(
        log.contains(volume.token().to_str().expect("UTF-8")),
        "the failure names the file: {log}"
    );
    let ready = http_get(&address, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("k8s"), "{}", ready.body);
    let unusable = "bearerd_token_file_unusable{client=\"k8s\"} 1";
    assert!(
        wait_until(DEADLINE, || http_get(&address, "/metrics")
            .body
            .contains(unusable)),
        "{}",
        http_get(&address, "/metrics").body
    );
    assert_eq!(
        block_on(idp.token_requests()),
        0,
        "the expired assertion reached the server"
    );

    volume.write(&key.token("k8s-bot", "k8s-bot", &idp.token_endpoint, "fresh", 600));
    let token = poll_for(DEADLINE, || {
        std::fs::read_to_string(harness.path("k8s.token")).ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "the fresh assertion was not picked up\n--- bearerd ---\n{}\n--- server ---\n{}",
            daemon.log(),
            idp.log()
        )
    });
    assert_eq!(jwt_claims(&token)["client_id"], "k8s-bot");
    let seen = block_on(assertions_seen(&idp));
    assert_eq!(seen, [("fresh".to_owned(), true)], "{seen:?}");
    assert!(
        wait_until(DEADLINE, || http_get(&address, "/readyz").status == 200),
        "{}",
        daemon.log()
    );
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

/// oidc-provider with the token exchange grant, trusting `key` as the cluster's token issuer
/// (audience `sts.example.com`), for a public client and a client with a secret.
fn exchange_provider(key: &SigningKey) -> OidcProvider {
    OidcProvider::start_with(json!({
        "extra_auth_methods": ["none"],
        "token_exchange": {"issuer": CLUSTER_ISSUER, "audience": "sts.example.com",
                           "jwks": key.jwks()},
        "clients": [
            {"client_id": "public-sts", "token_endpoint_auth_method": "none",
             "grant_types": [TOKEN_EXCHANGE]},
            {"client_id": "confidential-sts", "client_secret": ODD_SECRET,
             "token_endpoint_auth_method": "client_secret_basic",
             "grant_types": [TOKEN_EXCHANGE, "client_credentials"]},
        ],
    }))
}

#[tokio::test]
async fn token_exchange_trades_a_subject_token_file_as_a_public_and_a_confidential_client() {
    let harness = Harness::new();
    let key = SigningKey::create(harness.dir.path(), "cluster-1");
    let idp = exchange_provider(&key);
    let mut volume = ProjectedVolume::new(harness.path("tokens"));
    volume.write(&key.token(
        CLUSTER_ISSUER,
        SERVICE_ACCOUNT,
        "sts.example.com",
        "sa-1",
        600,
    ));
    harness.write(
        "actor.jwt",
        &key.token(
            CLUSTER_ISSUER,
            "system:serviceaccount:payments:gateway",
            "sts.example.com",
            "actor-1",
            600,
        ),
    );
    let subject = volume.token();
    let exchange = |name: &str, client_id: &str| {
        client(name)
            .token_url(&idp.token_endpoint)
            .client_id(client_id)
            .set("grant_type", "token_exchange")
            .set("subject_token_file", subject.to_str().expect("UTF-8"))
            .set("requested_token_type", ACCESS_TOKEN_TYPE)
            .audience("https://api.example.com")
            .scope("tasks:read")
    };
    let clients = [
        exchange("public", "public-sts")
            .auth_method("none")
            .output_as(harness.path("public.json"), "json"),
        exchange("confidential", "confidential-sts").secret(ODD_SECRET),
        exchange("delegated", "confidential-sts")
            .secret(ODD_SECRET)
            .set(
                "actor_token_file",
                harness.path("actor.jwt").to_str().expect("UTF-8"),
            )
            .set("actor_token_type", JWT_TYPE),
    ];
    let config = harness.write_config(&Config::new().clients(clients.clone()));
    let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
    assert!(report.contains("token_exchange"), "{report}");
    succeed(bearerd(&harness, &config, &["run", "--once"]), || idp.log());

    for (name, client_id) in [
        ("public", "public-sts"),
        ("confidential", "confidential-sts"),
        ("delegated", "confidential-sts"),
    ] {
        let claims = jwt_claims(&harness.read(&format!("{name}.token")));
        assert_eq!(claims["sub"], SERVICE_ACCOUNT, "{name}: {claims}");
        assert_eq!(claims["client_id"], client_id, "{name}: {claims}");
        assert_eq!(claims["aud"], "https://api.example.com", "{name}: {claims}");
        assert_eq!(claims["scope"], "tasks:read", "{name}: {claims}");
        let actor = if name == "delegated" {
            json!({"sub": "system:serviceaccount:payments:gateway"})
        } else {
            Value::Null
        };
        assert_eq!(claims["act"], actor, "{name}: {claims}");
    }
    // RFC 8693's issued_token_type is kept: the json output shows it.
    let document: Value = serde_json::from_str(&harness.read("public.json")).expect("JSON");
    assert_eq!(
        document["issued_token_type"], ACCESS_TOKEN_TYPE,
        "{document}"
    );
    let stats = idp.stats().await;
    assert_eq!(
        stats["subject_tokens"].as_array().map(Vec::len),
        Some(3),
        "{stats}"
    );
    assert!(
        stats["assertions"].as_array().is_some_and(Vec::is_empty),
        "{stats}"
    );

    // The type is sent as configured: one the server does not take is its invalid_request.
    let wrong_type = harness.write(
        "wrong-type.toml",
        &Config::new()
            .client(clients[0].clone().set(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ))
            .to_string(),
    );
    let output = fail_at_runtime(bearerd(&harness, &wrong_type, &["token", "public"]));
    assert!(
        text(&output.stderr).contains("invalid_request"),
        "{}",
        text(&output.stderr)
    );

    // A subject token from another issuer's key is the server's invalid_grant, and its text is
    // not echoed.
    let stranger = SigningKey::create(harness.dir.path(), "cluster-2");
    let forged = stranger.token(
        CLUSTER_ISSUER,
        SERVICE_ACCOUNT,
        "sts.example.com",
        "forged",
        600,
    );
    volume.write(&forged);
    let output = fail_at_runtime(bearerd(&harness, &config, &["token", "public"]));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(!stderr.contains(&forged), "{stderr}");
}

/// A running Authlib JWT-bearer server on `127.0.0.1:<ephemeral port>`, killed on drop.
struct Authlib {
    server: Server,
    issuer: String,
    token_endpoint: String,
    stats_url: String,
    introspect_url: String,
}

impl Authlib {
    fn start(config: Value) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/jwt_bearer_server.py");
        let mut command = Command::new(super::dot::python());
        command.arg(&script);
        let (server, ready) = Server::start(
            "Authlib (tests/interop/jwt_bearer_server.py)",
            command,
            &config,
            Duration::from_secs(60), // a failure deadline: a healthy start takes about a second
            "is `pip install -r tests/interop/requirements.txt` done?",
        );
        let field = |name: &str| {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
                .to_owned()
        };
        Self {
            issuer: field("issuer"),
            token_endpoint: field("token_endpoint"),
            stats_url: field("stats"),
            introspect_url: field("introspect"),
            server,
        }
    }

    fn log(&self) -> String {
        self.server.log()
    }

    async fn stats(&self) -> Value {
        let response = reqwest::get(&self.stats_url).await.expect("stats");
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON")
    }

    async fn introspect(&self, token: &str) -> Value {
        let response = reqwest::Client::new()
            .post(&self.introspect_url)
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspect");
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON")
    }
}

#[tokio::test]
async fn jwt_bearer_with_an_assertion_file_and_with_an_assertion_bearerd_signs() {
    let harness = Harness::new();
    let cluster = SigningKey::create(harness.dir.path(), "cluster-1");
    let own = pki::ec_key(harness.dir.path(), "service-account.pem");
    let server = Authlib::start(json!({
        "clients": [
            // Chosen by the assertion's iss, the cluster; sub is the service account.
            {"client_id": "billing", "issuer": CLUSTER_ISSUER, "subjects": [SERVICE_ACCOUNT],
             "jwks": cluster.jwks()},
            // A Google-style service account: iss = sub = its id, signed by its own key.
            {"client_id": "sa-bot", "jwks": {"keys": [pki::public_jwk(&own, "sa-1")]}},
        ],
        "scopes": ["tasks:read", "tasks:write"],
        "ttl": 300,
        "leeway": 5,
    }));
    let mut volume = ProjectedVolume::new(harness.path("tokens"));
    volume.write(&cluster.token(
        CLUSTER_ISSUER,
        SERVICE_ACCOUNT,
        &server.token_endpoint,
        "sa-1",
        600,
    ));
    let from_file = client("file")
        .token_url(&server.token_endpoint)
        .client_id("billing")
        .set("grant_type", "jwt_bearer")
        .set("assertion_file", volume.token().to_str().expect("UTF-8"))
        .scope("tasks:read");
    let signed = |audience: Option<&str>| {
        let client = client("signed")
            .token_url(&server.token_endpoint)
            .client_id("sa-bot")
            .set("grant_type", "jwt_bearer")
            .private_key_file(&own)
            .scope("tasks:read tasks:write");
        match audience {
            Some(audience) => client.set("assertion_audience", audience),
            None => client,
        }
    };
    let config =
        harness.write_config(&Config::new().client(from_file.clone()).client(signed(None)));
    let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
    assert!(report.contains("jwt_bearer"), "{report}");
    succeed(bearerd(&harness, &config, &["run", "--once"]), || {
        server.log()
    });

    for (name, client_id, sub, scope) in [
        ("file", "billing", SERVICE_ACCOUNT, "tasks:read"),
        ("signed", "sa-bot", "sa-bot", "tasks:read tasks:write"),
    ] {
        let token = harness.read(&format!("{name}.token"));
        let info = server.introspect(&token).await;
        assert_eq!(info["active"], true, "{name}: {info}");
        assert_eq!(info["client_id"], client_id, "{name}: {info}");
        assert_eq!(info["sub"], sub, "{name}: {info}");
        assert_eq!(info["scope"], scope, "{name}: {info}");
    }
    // The signed one: iss = sub = client_id, a fresh jti each time.
    let printed = succeed(bearerd(&harness, &config, &["token", "signed"]), || {
        server.log()
    });
    assert_eq!(server.introspect(&printed).await["sub"], "sa-bot");
    let stats = server.stats().await;
    let signed_jtis: Vec<&Value> = stats["assertions"]
        .as_array()
        .expect("assertions")
        .iter()
        .filter(|a| a["iss"] == "sa-bot")
        .map(|a| &a["jti"])
        .collect();
    assert_eq!(signed_jtis.len(), 2, "{stats}");
    assert_ne!(signed_jtis[0], signed_jtis[1], "{stats}");

    // `assertion_audience` is the `aud`: the issuer is accepted, another audience is not.
    let issuer = harness.write(
        "issuer.toml",
        &Config::new()
            .client(signed(Some(&server.issuer)))
            .to_string(),
    );
    succeed(bearerd(&harness, &issuer, &["token", "signed"]), || {
        server.log()
    });
    let elsewhere = harness.write(
        "elsewhere.toml",
        &Config::new()
            .client(signed(Some("https://oauth2.googleapis.com/token")))
            .to_string(),
    );
    let output = fail_at_runtime(bearerd(&harness, &elsewhere, &["token", "signed"]));
    assert!(
        text(&output.stderr).contains("invalid_grant"),
        "{}",
        text(&output.stderr)
    );

    // The assertion file is read at use: a rotated one is sent, an expired one is not.
    volume.write(&cluster.token(
        CLUSTER_ISSUER,
        SERVICE_ACCOUNT,
        &server.token_endpoint,
        "sa-2",
        600,
    ));
    succeed(bearerd(&harness, &config, &["token", "file"]), || {
        server.log()
    });
    let before = server.stats().await["token_requests"].clone();
    volume.write(&cluster.token(
        CLUSTER_ISSUER,
        SERVICE_ACCOUNT,
        &server.token_endpoint,
        "sa-3",
        -60,
    ));
    let output = fail_at_runtime(bearerd(&harness, &config, &["token", "file"]));
    assert!(
        text(&output.stderr).contains("expired"),
        "{}",
        text(&output.stderr)
    );
    let stats = server.stats().await;
    assert_eq!(
        stats["token_requests"], before,
        "the expired assertion was sent: {stats}"
    );
    let file_jtis: Vec<&Value> = stats["assertions"]
        .as_array()
        .expect("assertions")
        .iter()
        .filter(|a| a["iss"] == CLUSTER_ISSUER)
        .map(|a| &a["jti"])
        .collect();
    assert_eq!(file_jtis, [&json!("sa-1"), &json!("sa-2")], "{stats}");
}

/// The ```toml snippets of docs/compatibility.md's "Without a long-lived secret" section, each
/// given an output, pass `bearerd check` with the method or grant they are there to show.
#[test]
fn the_secretless_snippets_of_the_compatibility_guide_pass_check() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md"),
    )
    .expect("read docs/compatibility.md");
    let start = guide
        .find("## Without a long-lived secret")
        .expect("the section");
    let section = &guide[start..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let snippets: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(snippet, _)| snippet))
        .collect();
    assert!(snippets.len() >= 4, "{} snippets", snippets.len());
    let harness = Harness::new();
    for (i, snippet) in snippets.iter().enumerate() {
        let name = snippet
            .lines()
            .find_map(|line| line.strip_prefix("[clients.")?.strip_suffix(']'))
            .unwrap_or_else(|| panic!("a client table in:\n{snippet}"));
        let text = format!(
            "{snippet}\n[[clients.{name}.output]]\npath = \"{}\"\n",
            harness.path(&format!("{name}.token")).display()
        );
        let config = harness.write(&format!("snippet-{i}.toml"), &text);
        let report = succeed(bearerd(&harness, &config, &["check"]), String::new);
        let shown = ["client_assertion", "token_exchange", "jwt_bearer"];
        assert!(
            shown.iter().any(|what| report.contains(what)),
            "{report}\n{text}"
        );
    }
}
