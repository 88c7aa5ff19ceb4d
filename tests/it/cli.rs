//! The command line end to end: `run --once`, `check`, `token`, exit codes, and the wire
//! format of every secret-based auth method, against the in-process token endpoint.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use bearerd_idp::{Fault, IdpSettings};

use crate::harness::{Client, Config, Harness, TestIdp, text};

const LIFETIME: Duration = Duration::from_secs(300);

fn idp() -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("tasklist-bot", "tasklist-secret", LIFETIME);
    idp.add_client("reports-bot", "reports-secret", LIFETIME);
    idp
}

fn two_clients(idp: &TestIdp) -> Config {
    let url = idp.token_url();
    Config::new()
        .backoff("50ms", "200ms")
        .client(
            Client::new("tasklist")
                .token_url(&url)
                .client_id("tasklist-bot")
                .secret("${TASKLIST_SECRET}")
                .auth_method("client_secret_json")
                .audience("tasklist.camunda.io")
                .output("out/tasklist.token")
                .output_with("out/tasklist.env", &["format = \"env\"", "mode = \"0640\""]),
        )
        .client(
            Client::new("reports")
                .token_url(&url)
                .client_id("reports-bot")
                .secret("reports-secret")
                .output_as("out/reports.header", "header")
                .output_as("out/reports.json", "json"),
        )
}

/// [`two_clients`] with tasklist's secret written in instead of `${TASKLIST_SECRET}`.
fn two_clients_with(idp: &TestIdp, tasklist_secret: &str) -> Config {
    two_clients(idp).edit("tasklist", |tasklist| tasklist.secret(tasklist_secret))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn run_once_writes_every_output_of_every_client() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&two_clients(&idp));
    let output = harness
        .command(&["run", "--once"])
        .env("TASKLIST_SECRET", "tasklist-secret")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty(), "run prints nothing on stdout");

    let token = harness.read("out/tasklist.token");
    assert!(!token.is_empty() && !token.ends_with('\n'));
    let env = harness.read("out/tasklist.env");
    let mut lines = env.lines();
    assert_eq!(
        lines.next(),
        Some(format!("TASKLIST_TOKEN={token}").as_str())
    );
    let expires_line = lines.next().expect("expiry line");
    let expires_at: u64 = expires_line
        .strip_prefix("TASKLIST_TOKEN_EXPIRES_AT=")
        .expect("variable")
        .parse()
        .expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs();
    assert!(
        expires_at > now + 250 && expires_at <= now + 301,
        "{expires_at} vs {now}"
    );
    assert!(env.ends_with('\n') && lines.next().is_none());

    let header = harness.read("out/reports.header");
    let reports_token = header
        .strip_prefix("Authorization: Bearer ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .expect("header line");
    let json: serde_json::Value =
        serde_json::from_str(&harness.read("out/reports.json")).expect("json output");
    assert_eq!(json["access_token"], reports_token);
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 300);
    assert_ne!(token, reports_token);

    assert_eq!(mode(&harness.path("out/tasklist.token")), 0o600);
    assert_eq!(mode(&harness.path("out/tasklist.env")), 0o640);
    assert_eq!(
        mode(&harness.path("out")),
        0o700,
        "missing parents are created 0700"
    );

    let methods: Vec<_> = idp
        .requests()
        .iter()
        .filter_map(|r| r.auth_method)
        .collect();
    assert_eq!(methods.len(), 2);
    assert!(methods.contains(&"client_secret_json") && methods.contains(&"client_secret_basic"));
}

#[test]
fn run_once_again_reuses_still_valid_tokens_without_a_request() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&two_clients_with(&idp, "tasklist-secret"));
    assert!(harness.run(&["run", "--once"]).status.success());
    let first = harness.read("out/tasklist.token");
    assert_eq!(idp.token_request_count(), 2);
    let again = harness.run(&["run", "--once"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        idp.token_request_count(),
        2,
        "no new request for valid tokens"
    );
    assert_eq!(harness.read("out/tasklist.token"), first);
}

/// Characters that form-urlencoding and JSON must carry intact.
const HARD_ID: &str = "id with+/%:&=";
const HARD_SECRET: &str = "s3cr3t +/%:&= x";

fn wire_config(idp: &TestIdp, method: &str) -> Config {
    Config::new().client(
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id(HARD_ID)
            .secret(HARD_SECRET)
            .auth_method(method)
            .audience("api.example.com")
            .scope("tasks:read tasks:write")
            .extra_params(&[("resource", "https://api.example.com/v1")])
            .output("api.token"),
    )
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[test]
fn client_secret_basic_encodes_id_and_secret_before_base64() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client(HARD_ID, HARD_SECRET, LIFETIME);
    let harness = Harness::new();
    harness.write_config(&wire_config(&idp, "client_secret_basic"));
    let output = harness.run(&["token", "api"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let requests = idp.requests();
    let request = requests.last().expect("a request");
    assert_eq!(request.method, "POST");
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(HARD_ID),
        form_encode(HARD_SECRET)
    ));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    let params = request.params();
    assert_eq!(params["grant_type"], "client_credentials");
    assert_eq!(params["audience"], "api.example.com");
    assert_eq!(params["scope"], "tasks:read tasks:write");
    assert_eq!(params["resource"], "https://api.example.com/v1");
    assert!(
        !params.contains_key("client_secret"),
        "basic keeps the secret out of the body"
    );
    assert_eq!(request.auth_method, Some("client_secret_basic"));
}

#[test]
fn client_secret_post_sends_id_and_secret_in_the_form() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client(HARD_ID, HARD_SECRET, LIFETIME);
    let harness = Harness::new();
    harness.write_config(&wire_config(&idp, "client_secret_post"));
    let output = harness.run(&["token", "api"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let request = idp.requests().pop().expect("a request");
    assert_eq!(request.header("authorization"), None);
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let body = String::from_utf8(request.body.clone()).expect("utf-8 body");
    assert!(
        body.contains(&format!("client_secret={}", form_encode(HARD_SECRET))),
        "the secret is form-encoded in the body"
    );
    let params = request.params();
    assert_eq!(params["client_id"], HARD_ID);
    assert_eq!(params["client_secret"], HARD_SECRET);
    assert_eq!(params["grant_type"], "client_credentials");
    assert_eq!(params["audience"], "api.example.com");
}

#[test]
fn client_secret_json_sends_one_json_object() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client(HARD_ID, HARD_SECRET, LIFETIME);
    let harness = Harness::new();
    harness.write_config(&wire_config(&idp, "client_secret_json"));
    let output = harness.run(&["token", "api"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let request = idp.requests().pop().expect("a request");
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("a JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": HARD_ID,
            "client_secret": HARD_SECRET,
            "audience": "api.example.com",
            "scope": "tasks:read tasks:write",
            "resource": "https://api.example.com/v1",
        })
    );
}

#[test]
fn token_prints_the_bare_token_and_nothing_else() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&two_clients_with(&idp, "x"));
    let output = harness.run(&["token", "reports"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout);
    assert!(bearerd::token::is_b64token(&token), "{token:?}");
    assert!(
        !text(&output.stderr).contains(&token),
        "the token never reaches the log"
    );
    assert!(
        !harness.path("out/reports.header").exists(),
        "token writes no files"
    );

    let unknown = harness.run(&["token", "nope"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown name is a usage error"
    );
    assert!(text(&unknown.stderr).contains("no client named \"nope\""));
}

#[test]
fn check_describes_each_client_without_secrets() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&two_clients(&idp));
    let output = harness
        .command(&["check"])
        .env("TASKLIST_SECRET", "tasklist-secret")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    for expected in [
        "valid, 2 client(s)",
        "client tasklist",
        "client reports",
        "client_secret_json",
        "client_secret_basic",
        "env TASKLIST_TOKEN, 0640",
        "reports.json (json, 0600)",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
    assert!(!report.contains("tasklist-secret") && !report.contains("reports-secret"));
    assert_eq!(idp.request_count(), 0, "check does not touch the network");

    let missing = harness.run(&["check"]);
    assert_eq!(missing.status.code(), Some(2), "unset ${{TASKLIST_SECRET}}");
    assert!(text(&missing.stderr).contains("environment variable TASKLIST_SECRET is not set"));
}

#[test]
fn usage_errors_exit_2_and_version_prints() {
    let harness = Harness::new();
    assert_eq!(harness.run(&["frobnicate"]).status.code(), Some(2));
    let version = std::process::Command::new(crate::harness::BEARERD)
        .arg("--version")
        .output()
        .expect("run");
    assert!(version.status.success());
    assert_eq!(
        text(&version.stdout).trim(),
        format!("bearerd {}", env!("CARGO_PKG_VERSION"))
    );
    let missing = harness.run(&["check"]);
    assert_eq!(missing.status.code(), Some(2), "no config file");
    assert!(text(&missing.stderr).contains("cannot read config file"));
}

fn one_client(idp: &TestIdp) -> Config {
    Config::new().backoff("50ms", "100ms").client(
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id("tasklist-bot")
            .secret("tasklist-secret")
            .output("api.token"),
    )
}

#[test]
fn bad_responses_fail_clearly_and_keep_the_previous_file() {
    let cases: Vec<(&str, Fault, &str)> = vec![
        (
            "500",
            Fault::Status {
                status: 500,
                body: "{\"error\":\"server_error\"}".to_owned(),
                content_type: "application/json".to_owned(),
                retry_after: None,
            },
            "500",
        ),
        (
            "HTML 502",
            Fault::Status {
                status: 502,
                body: "<html><body><h1>502 Bad Gateway</h1></body></html>".to_owned(),
                content_type: "text/html".to_owned(),
                retry_after: None,
            },
            "502 Bad Gateway",
        ),
        (
            "invalid JSON",
            Fault::Body("{\"access_token\": ".to_owned()),
            "JSON",
        ),
        (
            "missing access_token",
            Fault::Body("{\"token_type\":\"Bearer\",\"expires_in\":300}".to_owned()),
            "access_token",
        ),
        (
            "token with a newline",
            Fault::Body(
                "{\"access_token\":\"abc\\ndef\",\"token_type\":\"Bearer\",\"expires_in\":300}"
                    .to_owned(),
            ),
            "RFC 6750",
        ),
    ];
    for (name, fault, cause) in cases {
        let idp = idp();
        idp.set_fault(fault);
        let harness = Harness::new();
        harness.write_config(&one_client(&idp));
        let previous = harness.write("api.token", "previous-good-token");
        let output = harness.run(&["run", "--once", "--deadline", "1s"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("api"),
            "{name}: the client is named: {stderr}"
        );
        assert!(
            stderr.contains(cause),
            "{name}: the cause {cause:?} is given: {stderr}"
        );
        assert_eq!(
            std::fs::read(&previous).expect("read"),
            b"previous-good-token",
            "{name}: the previous file is untouched"
        );
        let litter: Vec<_> = std::fs::read_dir(harness.dir.path())
            .expect("dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().contains("bearerd-tmp"))
            .collect();
        assert!(litter.is_empty(), "{name}: no temporary files left");
    }
}

#[test]
fn permanent_errors_fail_at_once_and_transient_ones_are_ridden_out() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&one_client(&idp).edit("api", |api| api.secret("wrong-secret")));
    let output = harness.run(&["run", "--once", "--deadline", "30s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("invalid_client"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        idp.token_request_count(),
        1,
        "a permanent error is not retried"
    );

    let idp = crate::cli::idp();
    idp.set_fault_times(
        Fault::Status {
            status: 503,
            body: String::new(),
            content_type: "text/plain".to_owned(),
            retry_after: None,
        },
        2,
    );
    let harness = Harness::new();
    harness.write_config(&one_client(&idp));
    let output = harness.run(&["run", "--once", "--deadline", "20s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(idp.token_request_count(), 3, "two failures, then success");
    assert!(bearerd::token::is_b64token(&harness.read("api.token")));
}

#[test]
fn run_once_names_every_failed_client() {
    let idp = idp();
    let harness = Harness::new();
    let config =
        two_clients_with(&idp, "bad").edit("reports", |reports| reports.secret("also-bad"));
    harness.write_config(&config);
    let output = harness.run(&["run", "--once"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("2 client(s) failed: reports, tasklist"),
        "{stderr}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_name_the_client() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&one_client(&idp).log_format("json"));
    let output = harness.run(&["run", "--once"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    let mut refreshed = false;
    for line in stderr.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if object["fields"]["message"] == "token refreshed" {
            refreshed = true;
            assert_eq!(object["span"]["client"], "api", "{line}");
            assert_eq!(object["span"]["name"], "client", "{line}");
            assert_eq!(object["fields"]["token"].as_str().map(str::len), Some(8));
        }
    }
    assert!(refreshed, "{stderr}");
}

#[test]
fn a_config_or_secret_file_readable_by_everyone_is_warned_about() {
    let idp = idp();
    let harness = Harness::new();
    let secret = harness.write("api.secret", "tasklist-secret\n");
    let config = harness.write_config(&one_client(&idp).edit("api", |api| {
        api.without("client_secret").secret_file("api.secret")
    }));
    let set_mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    set_mode(&config, 0o600);
    set_mode(&secret, 0o644);
    let output = harness.run(&["check"]);
    assert!(output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("readable by every user") && stderr.contains("api.secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("bearerd.toml"), "{stderr}");

    set_mode(&secret, 0o600);
    let output = harness.run(&["check"]);
    assert!(!text(&output.stderr).contains("readable by every user"));
}

#[test]
fn the_config_path_comes_from_bearerd_config_when_c_is_absent() {
    let idp = idp();
    let harness = Harness::new();
    let path = harness.write("elsewhere.toml", &one_client(&idp).to_string());
    let output = std::process::Command::new(crate::harness::BEARERD)
        .arg("check")
        .env("BEARERD_CONFIG", &path)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("elsewhere.toml: valid"));

    // Neither -c nor $BEARERD_CONFIG: the packaged default path.
    let output = std::process::Command::new(crate::harness::BEARERD)
        .arg("check")
        .env_remove("BEARERD_CONFIG")
        .output()
        .expect("run");
    let stderr = text(&output.stderr);
    if !std::path::Path::new(bearerd::config::DEFAULT_PATH).exists() {
        assert_eq!(output.status.code(), Some(2));
    }
    assert!(
        stderr.contains(bearerd::config::DEFAULT_PATH)
            || text(&output.stdout).contains(bearerd::config::DEFAULT_PATH),
        "{stderr}"
    );
}

/// `RUST_LOG` is a level, `target=level` pairs, or both; one bearerd cannot read means the
/// default, `info` (docs/operating.md "Troubleshooting").
#[test]
fn rust_log_sets_levels_per_target_and_an_unreadable_one_means_info() {
    let idp = idp();
    // A fresh directory each time, so every run fetches (and logs what a fetch logs).
    let log_with = |rust_log: Option<&str>| {
        let harness = Harness::new();
        harness.write_config(&one_client(&idp));
        let mut command = harness.command(&["run", "--once"]);
        if let Some(rust_log) = rust_log {
            command.env("RUST_LOG", rust_log);
        }
        let output = command.output().expect("run bearerd");
        let stderr = text(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let debug_lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains(" DEBUG "))
            .map(str::to_owned)
            .collect()
    };

    for default in [None, Some("bearerd=loud"), Some("")] {
        let log = log_with(default);
        assert!(log.contains(" INFO "), "{default:?}: {log}");
        assert_eq!(debug_lines(&log), Vec::<String>::new(), "{default:?}");
    }
    let log = log_with(Some("warn"));
    assert!(!log.contains(" INFO "), "{log}");

    // Per target: what is off for everything else is on for one module.
    let log = log_with(Some("warn,bearerd::worker=info"));
    let info: Vec<&str> = log.lines().filter(|line| line.contains(" INFO ")).collect();
    assert!(!info.is_empty(), "{log}");
    assert!(
        info.iter().all(|line| line.contains(" bearerd::worker: ")),
        "{info:#?}"
    );
    assert!(log.contains(" WARN bearerd::preflight: "), "{log}");

    // The libraries' own lines are there to be had.
    let debug = debug_lines(&log_with(Some("debug")));
    assert!(
        debug.iter().any(|line| !line.contains(" bearerd::")),
        "{debug:#?}"
    );
}
