//! Secret hygiene: bearerd driven through success and every failure path at `RUST_LOG=trace`,
//! and everything it says — stderr, `check`'s report, `/metrics`, `/readyz`, every error
//! message — scanned for client secrets, the private key, the client assertions and the Basic
//! header it sent, and every token it was issued, and for any 8-character piece of one.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bearerd_idp::{Fault, IdpSettings, KeyAlgorithm};
use rustix::process::Signal;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, http_get, pki, text};

/// Distinctive values: any 8 characters of one in the output is a leak.
const SECRET_BASIC: &str = "Zq8Kp3Lm9Xw2-basic-SECRET";
const SECRET_POST: &str = "Hv4Tn7Rb1Cy5-post-SECRET";
const SECRET_JSON: &str = "Wd6Gs0Jf3Ue8-json-SECRET";
/// Tokens the endpoint hands out in hostile or malformed responses.
const HOSTILE_TOKEN: &str = "HoStIlE7q2w9 with-a-space";
const MALFORMED_TOKEN: &str = "MaLfOrMeD4k8j1n6b3";

fn config(idp: &TestIdp, scope: &str) -> Config {
    let url = idp.token_url();
    let with_secrets = [
        ("basic", SECRET_BASIC, "client_secret_basic"),
        ("post", SECRET_POST, "client_secret_post"),
        ("json", SECRET_JSON, "client_secret_json"),
    ]
    .map(|(name, secret, method)| {
        Client::new(name)
            .token_url(&url)
            .client_id(&format!("{name}-bot"))
            .secret(secret)
            .auth_method(method)
            .scope(scope)
            .output_as(format!("out/{name}.json"), "json")
            .output_as(format!("out/{name}.header"), "header")
    });
    Config::new()
        .backoff("50ms", "200ms")
        .http_timeout("2s")
        .clients(with_secrets)
        .client(
            Client::new("jwt")
                .token_url(&url)
                .client_id("jwt-bot")
                .private_key_jwt("jwt.key.pem", "k1")
                .output_as("out/jwt.json", "json"),
        )
}

const CLIENTS: [&str; 4] = ["basic", "post", "json", "jwt"];

/// Everything that must never be printed, collected as the test goes.
#[derive(Default)]
struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    fn add(&mut self, value: &str) {
        if !value.is_empty() && !self.values.iter().any(|known| known == value) {
            self.values.push(value.to_owned());
        }
    }

    /// The tokens now in the json outputs (written by bearerd, issued by the endpoint).
    fn add_tokens(&mut self, harness: &Harness) {
        for client in CLIENTS {
            let Ok(json) = std::fs::read_to_string(harness.path(&format!("out/{client}.json")))
            else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&json).expect("json output");
            self.add(json["access_token"].as_str().expect("token"));
        }
    }

    /// What the endpoint received that is a credential: the Basic header, client secrets,
    /// client assertions.
    fn add_requests(&mut self, idp: &TestIdp) {
        for request in idp.requests() {
            if let Some(basic) = request
                .header("authorization")
                .and_then(|value| value.strip_prefix("Basic "))
            {
                self.add(basic);
            }
            let params = request.params();
            for key in ["client_secret", "client_assertion"] {
                if let Some(value) = params.get(key) {
                    self.add(value);
                }
            }
        }
    }

    /// The first 8-character piece of a secret found in `haystack` (one pass over it).
    fn leak(&self, haystack: &str) -> Option<String> {
        let mut pieces = std::collections::HashMap::new();
        for secret in &self.values {
            let chars: Vec<char> = secret.chars().collect();
            for window in chars.windows(8.min(chars.len())) {
                pieces.insert(window.iter().collect::<String>(), chars.len());
            }
        }
        let chars: Vec<char> = haystack.chars().collect();
        chars.windows(8).find_map(|window| {
            let piece: String = window.iter().collect();
            pieces
                .get(&piece)
                .map(|len| format!("{piece:?} (of a {len}-character secret)"))
        })
    }
}

fn assert_clean(secrets: &Secrets, what: &str, output: &str) {
    if let Some(leak) = secrets.leak(output) {
        panic!("{what} leaks {leak}:\n{output}");
    }
}

#[test]
fn no_secret_key_or_token_appears_in_any_output_at_trace_level() {
    let idp = TestIdp::start(IdpSettings::default());
    let lifetime = Duration::from_secs(300);
    idp.add_client("basic-bot", SECRET_BASIC, lifetime);
    idp.add_client("post-bot", SECRET_POST, lifetime);
    idp.add_client("json-bot", SECRET_JSON, lifetime);
    let harness = Harness::new();
    let key = pki::ec_key(harness.dir.path(), "jwt.key.pem");
    let pem = std::fs::read_to_string(&key).expect("read the key");
    idp.add_key_client(
        "jwt-bot",
        KeyAlgorithm::Es256,
        &pki::ec_public_point(&key),
        lifetime,
    );
    harness.write_config(&config(&idp, "read"));

    let mut secrets = Secrets::default();
    for value in [
        SECRET_BASIC,
        SECRET_POST,
        SECRET_JSON,
        HOSTILE_TOKEN,
        MALFORMED_TOKEN,
    ] {
        secrets.add(value);
    }
    // The key's base64 body (its armour lines are public words).
    for line in pem.lines().filter(|line| !line.starts_with("-----")) {
        secrets.add(line);
    }
    let mut said = Vec::new();
    let trace = |args: &[&str]| {
        let output = harness
            .command(args)
            .env("RUST_LOG", "trace")
            .output()
            .expect("run bearerd");
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };

    // check: the report and the log.
    let (code, stdout, stderr) = trace(&["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    said.push(("check stdout", stdout));
    said.push(("check stderr", stderr));

    // run --once, successful.
    let (code, _, stderr) = trace(&["run", "--once"]);
    assert_eq!(code, Some(0), "{stderr}");
    said.push(("run --once stderr", stderr));
    secrets.add_tokens(&harness);

    // token: stdout is the token (that is its job); stderr must not be.
    for client in CLIENTS {
        let (code, stdout, stderr) = trace(&["token", client]);
        assert_eq!(code, Some(0), "{stderr}");
        secrets.add(&stdout);
        said.push(("token stderr", stderr));
    }

    // A server that echoes what it was sent, in an error's description or a debug page: the
    // secret plain, form-encoded, as the Basic header, and cut by the excerpt's length limit.
    for (client, secret) in [
        ("basic", SECRET_BASIC),
        ("post", SECRET_POST),
        ("json", SECRET_JSON),
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let basic = STANDARD.encode(format!("{client}-bot:{encoded}"));
        let echoes = [
            (
                401,
                "application/json",
                format!(
                    "{{\"error\":\"invalid_client\",\"error_description\":\"bad secret {secret} \
                     ({encoded}) in Basic {basic}\"}}"
                ),
            ),
            (
                500,
                "text/html",
                format!("<html>request dump: Authorization: Basic {basic}</html>"),
            ),
            (
                502,
                "text/plain",
                // The secret straddles the point where the excerpt is cut.
                format!("{}{secret}", "x".repeat(110)),
            ),
        ];
        for (status, content_type, body) in echoes {
            idp.set_fault(Fault::Status {
                status,
                body,
                content_type: content_type.to_owned(),
                retry_after: None,
            });
            let (code, _, stderr) = trace(&["token", client]);
            assert_eq!(code, Some(1), "{stderr}");
            said.push(("echoing token stderr", stderr));
        }
    }

    // Failure paths, each through `token` and `run --once` (with no saved state to reuse).
    let failures = [
        Fault::Status {
            status: 500,
            body: "<html>debug dump</html>".to_owned(),
            content_type: "text/html".to_owned(),
            retry_after: None,
        },
        Fault::Body(format!(
            "{{\"access_token\":\"{HOSTILE_TOKEN}\",\"expires_in\":300}}"
        )),
        Fault::Body(format!(
            "{{\"access_token\":\"{MALFORMED_TOKEN}\",\"expires_in\":}}"
        )),
        Fault::Body(format!("{{\"token\":\"{MALFORMED_TOKEN}\"}}")),
        Fault::TruncatedJson,
        Fault::ResetMidBody,
        Fault::Oversized,
        Fault::CloseConnection,
    ];
    for fault in failures {
        idp.set_fault(fault);
        for client in CLIENTS {
            let (code, _, stderr) = trace(&["token", client]);
            assert_eq!(code, Some(1), "{stderr}");
            said.push(("failing token stderr", stderr));
        }
        for client in CLIENTS {
            let _ =
                std::fs::remove_file(harness.path(&format!("out/.{client}.bearerd-state.json")));
        }
        let (code, _, stderr) = trace(&["run", "--once", "--deadline", "1s"]);
        assert_eq!(code, Some(1), "{stderr}");
        said.push(("failing run --once stderr", stderr));
    }
    idp.set_fault(Fault::None);

    // The daemon: refresh, SIGUSR1, a failure, a reload, an invalid reload whose broken line
    // holds a secret, /metrics and /readyz.
    harness.write_config(&config(&idp, "read").listen("127.0.0.1:0"));
    let daemon = Daemon::start_with({
        let mut command = harness.command(&["run"]);
        command.env("RUST_LOG", "trace");
        command
    });
    let address = daemon.admin_address();
    daemon.wait_for("token refreshed", CLIENTS.len(), Duration::from_secs(15));
    secrets.add_tokens(&harness);
    daemon.signal(Signal::USR1);
    daemon.wait_for(
        "token refreshed",
        2 * CLIENTS.len(),
        Duration::from_secs(15),
    );
    secrets.add_tokens(&harness);
    idp.set_fault(Fault::Status {
        status: 503,
        body: "overloaded".to_owned(),
        content_type: "text/plain".to_owned(),
        retry_after: None,
    });
    daemon.signal(Signal::USR1);
    daemon.wait_for(
        "token request failed",
        CLIENTS.len(),
        Duration::from_secs(15),
    );
    let metrics = http_get(&address, "/metrics").text;
    assert!(metrics.contains("200 OK"), "{metrics}");
    said.push(("/metrics while failing", metrics));
    idp.set_fault(Fault::None);
    harness.write_config(&config(&idp, "read write").listen("127.0.0.1:0"));
    daemon.wait_for("configuration reloaded", 1, Duration::from_secs(10));
    daemon.wait_for(
        "token refreshed",
        3 * CLIENTS.len(),
        Duration::from_secs(15),
    );
    secrets.add_tokens(&harness);
    let broken = config(&idp, "read write")
        .listen("127.0.0.1:0")
        .to_string()
        .replace(&format!("\"{SECRET_POST}\""), &format!("\"{SECRET_POST}"));
    harness.write("bearerd.toml", &broken);
    daemon.wait_for("invalid configuration", 1, Duration::from_secs(10));
    said.push(("/metrics", http_get(&address, "/metrics").text));
    said.push(("/readyz", http_get(&address, "/readyz").text));
    said.push(("/healthz", http_get(&address, "/healthz").text));
    let mut daemon = daemon;
    daemon.signal(Signal::TERM);
    let status = daemon.child.wait().expect("wait");
    assert!(status.success());
    // The reader thread has seen the pipe close once the process is gone.
    daemon.wait_for("stopping", 1, Duration::from_secs(5));
    said.push(("daemon stderr", daemon.log()));

    secrets.add_requests(&idp);
    assert!(
        secrets.values.len() >= 20,
        "collected only {} secrets",
        secrets.values.len()
    );
    let total: usize = said.iter().map(|(_, output)| output.len()).sum();
    assert!(total > 10_000, "trace logging produced only {total} bytes");
    for (what, output) in &said {
        assert_clean(&secrets, what, output);
    }
}
