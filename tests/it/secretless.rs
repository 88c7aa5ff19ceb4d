//! Without a long-lived secret, against the in-process endpoint: a client assertion made
//! elsewhere (rotated by the kubelet's `..data` swap, refused once expired), `client_secret_jwt`,
//! a public client, RFC 8693 token exchange and the RFC 7523 JWT-bearer grant, each sending
//! exactly its parameters, and none of their credentials ever in a log or an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bearerd_idp::{Fault, IdpSettings, KeyAlgorithm, RecordedRequest};
use rustix::process::Signal;
use serde_json::{Value, json};

use crate::harness::pki::{ec_key, ec_public_point};
use crate::harness::{Client, Config, Daemon, Harness, TestIdp, http_get, text, wait_until};

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// A JWT-shaped token (its signature is not checked by a federated client) expiring `exp_in`
/// seconds from now (negative: in the past); `tag` makes each one distinct.
fn jwt(tag: &str, exp_in: i64) -> String {
    let now = unix_now();
    let claims = json!({
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:apps:api",
        "aud": "idp",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + exp_in,
        "jti": tag,
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(format!("signature-{tag}"))
    )
}

/// A projected volume as the kubelet lays it out: `dir/..TIMESTAMP/token`, `dir/..data`
/// pointing at the newest, `dir/token -> ..data/token`; each new content is a new timestamped
/// directory and an atomic rename of a new `..data` symlink over the old one.
struct Projected {
    dir: PathBuf,
    generation: u32,
}

impl Projected {
    fn new(dir: PathBuf, content: &str) -> Self {
        std::fs::create_dir_all(&dir).expect("projected dir");
        let mut projected = Self { dir, generation: 0 };
        projected.write(content);
        std::os::unix::fs::symlink("..data/token", projected.path()).expect("token link");
        projected
    }

    /// The path a config names.
    fn path(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn write(&mut self, content: &str) {
        self.generation += 1;
        let timestamped = format!(
            "..2026_12_01_10_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        );
        std::fs::create_dir(self.dir.join(&timestamped)).expect("timestamped dir");
        std::fs::write(self.dir.join(&timestamped).join("token"), content).expect("token");
        let temporary = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&timestamped, &temporary).expect("..data_tmp");
        std::fs::rename(&temporary, self.dir.join("..data")).expect("swap ..data");
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn token_requests(idp: &TestIdp) -> Vec<RecordedRequest> {
    idp.requests()
        .into_iter()
        .filter(|request| request.path.starts_with(bearerd_idp::TOKEN_PATH))
        .collect()
}

fn param_names(request: &RecordedRequest) -> Vec<String> {
    request.params().into_keys().collect()
}

fn assertion_client(idp: &TestIdp, file: &Path) -> Client {
    Client::new("api")
        .token_url(&idp.token_url())
        .client_id("api")
        .auth_method("client_assertion")
        .set("client_assertion_file", path_str(file))
        .output("tokens/api.token")
}

#[test]
fn a_client_assertion_rotated_by_a_kubelet_swap_is_sent_at_the_next_request() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_federated_client("api", Duration::from_secs(600));
    let harness = Harness::new();
    let first = jwt("first", 3600);
    let mut projected = Projected::new(harness.path("projected"), &first);
    harness.write_config(
        &Config::new()
            .backoff("200ms", "1s")
            .client(assertion_client(&idp, &projected.path())),
    );
    let daemon = Daemon::start(&harness);
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
    let requests = token_requests(&idp);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].auth_method, Some("client_assertion"));
    assert_eq!(
        requests[0].params(),
        BTreeMap::from([
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), "api".to_owned()),
            (
                "client_assertion_type".to_owned(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()
            ),
            ("client_assertion".to_owned(), first.clone()),
        ])
    );

    let second = jwt("second", 3600);
    projected.write(&second);
    // The rotation alone refetches nothing: the saved token is still good.
    daemon.signal(Signal::USR1);
    daemon.wait_for("token refreshed", 2, Duration::from_secs(10));
    let requests = token_requests(&idp);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].params()["client_assertion"], second);
    let log = daemon.log();
    for assertion in [&first, &second] {
        assert!(
            !log.contains(assertion.as_str()),
            "an assertion in the log:\n{log}"
        );
    }
}

#[test]
fn an_expired_assertion_is_never_sent_and_a_fresh_one_is_used_as_soon_as_it_is_written() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_federated_client("api", Duration::from_secs(600));
    let harness = Harness::new();
    let expired = jwt("expired", -60);
    let mut projected = Projected::new(harness.path("projected"), &expired);
    // Backoff far beyond the test's deadlines: only the file watch can bring the retry.
    harness.write_config(
        &Config::new()
            .backoff("10m", "1h")
            .listen("127.0.0.1:0")
            .client(assertion_client(&idp, &projected.path())),
    );
    let daemon = Daemon::start(&harness);
    let admin = daemon.admin_address();
    let file = projected.path();
    let mut readyz = http_get(&admin, "/readyz");
    assert!(
        wait_until(Duration::from_secs(10), || {
            readyz = http_get(&admin, "/readyz");
            readyz.body.contains("expired at")
        }),
        "readyz: {} {}; log:\n{}",
        readyz.status,
        readyz.body,
        daemon.log()
    );
    assert_eq!(readyz.status, 503);
    assert!(
        readyz.body.contains(&format!(
            "api: client_assertion_file {}: expired at ",
            file.display()
        )),
        "{}",
        readyz.body
    );
    assert!(readyz.body.contains(", not sent"), "{}", readyz.body);
    let metrics = http_get(&admin, "/metrics").body;
    assert!(
        metrics.contains("bearerd_token_file_unusable{client=\"api\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        idp.token_request_count(),
        0,
        "an expired assertion was sent"
    );
    assert!(!daemon.log().contains(&expired), "the assertion in the log");

    let fresh = jwt("fresh", 3600);
    projected.write(&fresh);
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(harness.path("tokens/api.token"))
                .is_ok_and(|token| !token.is_empty())
        }),
        "no token after a fresh assertion; log:\n{}",
        daemon.log()
    );
    let requests = token_requests(&idp);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].params()["client_assertion"], fresh);
    assert!(wait_until(Duration::from_secs(10), || {
        http_get(&admin, "/readyz").status == 200
    }));
    let metrics = http_get(&admin, "/metrics").body;
    assert!(
        metrics.contains("bearerd_token_file_unusable{client=\"api\"} 0"),
        "{metrics}"
    );
}

#[test]
fn client_secret_jwt_and_a_public_token_exchange_send_exactly_their_parameters() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client(
        "hs",
        "a secret of thirty-two bytes....",
        Duration::from_secs(600),
    );
    idp.add_public_client("sts", Duration::from_secs(600));
    let harness = Harness::new();
    let subject = jwt("subject", 3600);
    let subject_file = harness.write("subject.jwt", &format!("{subject}\n"));
    harness.write_config(
        &Config::new()
            .client(
                Client::new("hs")
                    .token_url(&idp.token_url())
                    .client_id("hs")
                    .auth_method("client_secret_jwt")
                    .secret("a secret of thirty-two bytes....")
                    .output("tokens/hs.token"),
            )
            .client(
                Client::new("sts")
                    .token_url(&idp.token_url())
                    .client_id("sts")
                    .auth_method("none")
                    .set("grant_type", "token_exchange")
                    .set("subject_token_file", path_str(&subject_file))
                    .set("requested_token_type", ACCESS_TOKEN_TYPE)
                    .audience("//iam.googleapis.com/projects/1/pools/p/providers/k8s")
                    .scope("https://www.googleapis.com/auth/cloud-platform")
                    .output_as("tokens/sts.json", "json"),
            ),
    );
    let hs = harness.run(&["token", "hs"]);
    assert!(hs.status.success(), "{}", text(&hs.stderr));
    let sts = harness.run(&["token", "--format", "json", "sts"]);
    assert!(sts.status.success(), "{}", text(&sts.stderr));
    let document: Value = serde_json::from_slice(&sts.stdout).expect("json");
    assert_eq!(document["issued_token_type"], ACCESS_TOKEN_TYPE);

    let requests = token_requests(&idp);
    assert_eq!(requests.len(), 2);
    // The endpoint verified the HS256 signature with the secret, iss = sub = client_id and
    // aud = the token endpoint, or it would have refused.
    assert_eq!(requests[0].auth_method, Some("client_secret_jwt"));
    assert_eq!(
        param_names(&requests[0]),
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type"
        ]
    );
    assert_eq!(requests[1].auth_method, Some("none"));
    assert_eq!(
        requests[1].params(),
        BTreeMap::from([
            (
                "grant_type".to_owned(),
                "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()
            ),
            ("subject_token".to_owned(), subject.clone()),
            ("subject_token_type".to_owned(), JWT_TYPE.to_owned()),
            (
                "requested_token_type".to_owned(),
                ACCESS_TOKEN_TYPE.to_owned()
            ),
            ("client_id".to_owned(), "sts".to_owned()),
            (
                "audience".to_owned(),
                "//iam.googleapis.com/projects/1/pools/p/providers/k8s".to_owned()
            ),
            (
                "scope".to_owned(),
                "https://www.googleapis.com/auth/cloud-platform".to_owned()
            ),
        ])
    );
    assert!(requests[1].header("authorization").is_none());

    // run --once writes the json output with the issued type too.
    let once = harness.run(&["run", "--once"]);
    assert!(once.status.success(), "{}", text(&once.stderr));
    let written: Value =
        serde_json::from_str(&harness.read("tokens/sts.json")).expect("json output");
    assert_eq!(written["issued_token_type"], ACCESS_TOKEN_TYPE);
    let hs_written = harness.read("tokens/hs.token");
    assert!(!hs_written.is_empty());
}

#[test]
fn jwt_bearer_signs_its_own_assertion_or_sends_the_one_in_its_file() {
    let idp = TestIdp::start(IdpSettings::default());
    let harness = Harness::new();
    let key = ec_key(&harness.path(""), "grant.pem");
    // The endpoint checks the signature against the key registered for the assertion's iss.
    idp.add_key_client(
        "robot@project.iam.gserviceaccount.com",
        KeyAlgorithm::Es256,
        &ec_public_point(&key),
        Duration::from_secs(600),
    );
    idp.add_public_client("robot", Duration::from_secs(600));
    idp.add_public_client("filed", Duration::from_secs(600));
    let assertion = jwt("grant", 3600);
    let assertion_file = harness.write("grant.jwt", &assertion);
    harness.write_config(
        &Config::new()
            .client(
                Client::new("robot")
                    .token_url(&idp.token_url())
                    .client_id("robot")
                    .set("grant_type", "jwt_bearer")
                    .private_key_file(&key)
                    .set("assertion_issuer", "robot@project.iam.gserviceaccount.com")
                    .set("assertion_subject", "user@example.com")
                    .scope("email")
                    .output("tokens/robot.token"),
            )
            .client(
                Client::new("filed")
                    .token_url(&idp.token_url())
                    .client_id("filed")
                    .set("grant_type", "jwt_bearer")
                    .set("assertion_file", path_str(&assertion_file))
                    .output("tokens/filed.token"),
            ),
    );
    let check = harness.run(&["check"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let report = text(&check.stdout);
    assert!(
        report.contains(&format!(
            "grant      jwt_bearer, assertion signed with private_key_file {} (iss \
             robot@project.iam.gserviceaccount.com, sub user@example.com, aud = the token \
             endpoint)",
            key.display()
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "grant      jwt_bearer, assertion_file {}",
            assertion_file.display()
        )),
        "{report}"
    );
    let once = harness.run(&["run", "--once"]);
    assert!(once.status.success(), "{}", text(&once.stderr));
    let requests = token_requests(&idp);
    assert_eq!(requests.len(), 2);
    let by_client = |id: &str| {
        requests
            .iter()
            .find(|request| request.client_id.as_deref() == Some(id))
            .expect("a request")
            .params()
    };
    let robot = by_client("robot");
    assert_eq!(
        robot.keys().collect::<Vec<_>>(),
        ["assertion", "client_id", "grant_type", "scope"]
    );
    assert_eq!(
        robot["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(robot["assertion"].split('.').nth(1).expect("claims"))
            .expect("base64url"),
    )
    .expect("claims json");
    assert_eq!(claims["iss"], "robot@project.iam.gserviceaccount.com");
    assert_eq!(claims["sub"], "user@example.com");
    assert_eq!(claims["aud"], idp.token_url());
    let filed = by_client("filed");
    assert_eq!(filed["assertion"], assertion);
    assert_eq!(
        filed.keys().collect::<Vec<_>>(),
        ["assertion", "client_id", "grant_type"]
    );
}

/// The part of a credential that would give it away: a JWT's claims (its header is the same
/// for many), or the whole of anything else.
fn distinctive(value: &str) -> &str {
    match value.split('.').nth(1) {
        Some(claims) if claims.len() >= 24 => &claims[..24],
        _ => value,
    }
}

#[test]
fn a_server_that_echoes_a_credential_gets_none_of_them_into_an_error_or_the_log() {
    let idp = TestIdp::start(IdpSettings::default());
    let harness = Harness::new();
    let key = ec_key(&harness.path(""), "client.pem");
    let subject_file = harness.write("subject.jwt", &jwt("echoed-subject", 3600));
    let actor_file = harness.write("actor.jwt", &jwt("echoed-actor", 3600));
    let assertion_file = harness.write("assertion.jwt", &jwt("echoed-assertion", 3600));
    let base = |name: &str| {
        Client::new(name)
            .token_url(&idp.token_url())
            .client_id(name)
            .output(format!("tokens/{name}.token"))
    };
    harness.write_config(
        &Config::new().clients([
            base("exchange")
                .auth_method("client_secret_jwt")
                .secret("echoed-client-secret")
                .set("grant_type", "token_exchange")
                .set("subject_token_file", path_str(&subject_file))
                .set("actor_token_file", path_str(&actor_file)),
            base("keyed").private_key_jwt(&key, "k1"),
            base("federated")
                .auth_method("client_assertion")
                .set("client_assertion_file", path_str(&assertion_file)),
            base("signed")
                .set("grant_type", "jwt_bearer")
                .private_key_file(&key),
            base("filed")
                .set("grant_type", "jwt_bearer")
                .set("assertion_file", path_str(&assertion_file)),
        ]),
    );
    for (client, param) in [
        ("exchange", "client_assertion"),
        ("exchange", "subject_token"),
        ("exchange", "actor_token"),
        ("keyed", "client_assertion"),
        ("federated", "client_assertion"),
        ("signed", "assertion"),
        ("filed", "assertion"),
    ] {
        idp.set_fault(Fault::EchoParam(param.to_owned()));
        let output = harness.run(&["token", client]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{client}: {stderr}");
        let sent = token_requests(&idp)
            .pop()
            .and_then(|request| request.params().get(param).cloned())
            .unwrap_or_else(|| panic!("{client} sent no {param}"));
        assert!(
            stderr.contains("invalid_request: [redacted]"),
            "{client} {param}: {stderr}"
        );
        assert!(
            !stderr.contains(distinctive(&sent)),
            "{client}'s {param} in the error:\n{stderr}"
        );
    }
}

/// A token file's change retries a failed client at once, but never against the server's
/// `Retry-After`: a SPIFFE agent rotating every few minutes must not override it.
#[test]
fn a_token_file_change_does_not_override_the_servers_retry_after() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_federated_client("api", Duration::from_secs(600));
    idp.set_fault(Fault::Status {
        status: 503,
        body: "busy".into(),
        content_type: "text/plain".into(),
        retry_after: Some("3600".into()),
    });
    let harness = Harness::new();
    let mut projected = Projected::new(harness.path("projected"), &jwt("first", 3600));
    harness.write_config(
        &Config::new()
            .backoff("200ms", "1s")
            .client(assertion_client(&idp, &projected.path())),
    );
    let daemon = Daemon::start(&harness);
    daemon.wait_for("token request failed", 1, Duration::from_secs(10));
    projected.write(&jwt("second", 3600));
    daemon.wait_for("the server asked to wait", 1, Duration::from_secs(10));
    assert_eq!(idp.token_request_count(), 1, "log:\n{}", daemon.log());
    assert_eq!(daemon.count("a token file changed; retrying"), 0);
}
