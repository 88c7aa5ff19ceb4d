//! `bearerd token` for scripts, cron and kubectl: `--cached` reuses the state a daemon keeps, one
//! request for twenty concurrent callers, never a due token; every `--format`, and the
//! `ExecCredential` that the real `kubectl` authenticates with against a loopback HTTPS server.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use bearerd::secret::Secret;
use bearerd::token::Token;
use bearerd_idp::{Fault, IdpSettings};

use crate::harness::pki::Pki;
use crate::harness::{Client, Config, Daemon, Harness, TestIdp, TlsServer, text};

const STATE: &str = "out/.api.bearerd-state.json";
const LOCK: &str = "out/.api.bearerd-state.lock";

fn idp(lifetime: Duration) -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api-bot", "api-secret", lifetime);
    idp
}

/// One client, `api`, with a token output (so its state lives at [`STATE`]) and `more`.
fn config(idp: &TestIdp, more: impl FnOnce(Client) -> Client) -> Config {
    Config::new().backoff("50ms", "200ms").client(more(
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id("api-bot")
            .secret("api-secret")
            .output("out/api.token"),
    ))
}

/// `bearerd token ARGS api`, which must exit 0; its stdout.
fn token(harness: &Harness, args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend(args);
    all.push("api");
    let output = harness.run(&all);
    assert!(
        output.status.success(),
        "bearerd {all:?} exited {:?}: {}",
        output.status.code(),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The token saved in the state file, read the way bearerd reads it.
fn saved(harness: &Harness) -> Option<String> {
    let config = bearerd::config::Config::load(&harness.path("bearerd.toml")).expect("config");
    let client = config.client("api").expect("client api");
    bearerd::state::load(&harness.path(STATE), client)
        .map(|token| token.access_token.expose().to_owned())
}

/// Saves `access_token` as `api`'s state with bearerd's own writer (so it is trusted), issued
/// `age` ago with `lifetime`.
fn save(harness: &Harness, access_token: &str, age: Duration, lifetime: Duration) {
    let config = bearerd::config::Config::load(&harness.path("bearerd.toml")).expect("config");
    let client = config.client("api").expect("client api");
    let issued_at = SystemTime::now() - age;
    let token = Token {
        access_token: Secret::new(access_token),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at,
        expires_at: issued_at + lifetime,
        issued_token_type: None,
    };
    bearerd::state::save(&harness.path(STATE), client, &token).expect("save state");
}

#[test]
fn twenty_concurrent_cached_callers_send_one_request_and_print_one_token() {
    let idp = idp(Duration::from_secs(300));
    // The first caller holds the lock for two seconds, so the others really do wait on it.
    idp.set_fault(Fault::Delay(Duration::from_secs(2)));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            harness
                .command(&["token", "--cached", "api"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn bearerd token --cached")
        })
        .collect();
    let printed: Vec<String> = callers
        .into_iter()
        .map(|caller| {
            let output = caller.wait_with_output().expect("wait");
            assert!(output.status.success(), "{}", text(&output.stderr));
            text(&output.stdout)
        })
        .collect();
    assert_eq!(
        idp.token_request_count(),
        1,
        "one request for twenty callers"
    );
    let token = saved(&harness).expect("the fetched token was saved");
    assert!(
        printed.iter().all(|one| *one == token),
        "every caller printed the saved token: {printed:?}"
    );
    // The lock stays, owner-only; the token files are the daemon's, not written here.
    let mode = std::fs::metadata(harness.path(LOCK))
        .expect("lock file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!harness.path("out/api.token").exists());
}

#[test]
fn cached_shares_the_state_a_daemon_keeps_both_ways() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));

    // A running daemon's token is reused by --cached: no request of its own.
    let daemon = Daemon::start(&harness);
    daemon.wait_for("token refreshed", 1, Duration::from_secs(20));
    assert_eq!(idp.token_request_count(), 1);
    let on_disk = harness.read("out/api.token");
    assert_eq!(token(&harness, &["--cached"]), on_disk);
    assert_eq!(
        idp.token_request_count(),
        1,
        "--cached reused the daemon's token"
    );
    drop(daemon);

    // Without --cached, `token` fetches and saves nothing.
    let fresh = token(&harness, &[]);
    assert_ne!(fresh, on_disk);
    assert_eq!(idp.token_request_count(), 2);
    assert_eq!(saved(&harness).as_deref(), Some(on_disk.as_str()));

    // A token --cached fetched is reused by the daemon (here `run --once`), which writes it.
    std::fs::remove_dir_all(harness.path("out")).expect("remove out");
    let cached = token(&harness, &["--cached"]);
    assert_eq!(idp.token_request_count(), 3);
    assert!(!harness.path("out/api.token").exists(), "no token files");
    let output = harness.run(&["run", "--once"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(idp.token_request_count(), 3, "run --once reused it");
    assert_eq!(harness.read("out/api.token"), cached);
}

#[test]
fn a_due_or_expired_saved_token_is_never_printed() {
    let lifetime = Duration::from_secs(1000);
    let idp = idp(lifetime);
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client).agent("refresh_at = 0.5"));

    // 48 % of its life gone: before the refresh point at 50 %, though within the daemon's
    // 5 % jitter. Reused.
    save(&harness, "still-good", Duration::from_secs(480), lifetime);
    assert_eq!(token(&harness, &["--cached"]), "still-good");
    assert_eq!(idp.token_request_count(), 0);

    let mut requests = 0;
    for (stale, age) in [
        ("due", Duration::from_secs(520)),
        ("expired", Duration::from_secs(1200)),
    ] {
        save(&harness, stale, age, lifetime);
        let printed = token(&harness, &["--cached"]);
        requests += 1;
        assert_ne!(printed, stale);
        assert_eq!(idp.token_request_count(), requests, "{stale}: fetched");
        assert_eq!(saved(&harness), Some(printed), "{stale}: the new one saved");
    }

    // A due token and a failing server: exit 1, nothing printed.
    idp.set_fault(Fault::Status {
        status: 503,
        body: "down".into(),
        content_type: "text/plain".into(),
        retry_after: None,
    });
    save(&harness, "due-again", Duration::from_secs(600), lifetime);
    let output = harness.run(&["token", "--cached", "api"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    assert!(
        text(&output.stderr).contains("client api:"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(idp.token_request_count(), requests + 1);
}

#[test]
fn every_format_prints_the_bytes_of_its_file() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| {
        client
            .output_with(
                "out/api.env",
                &["format = \"env\"", "variable = \"MY_API\""],
            )
            .output_as("out/api.header", "header")
            .output_as("out/api.json", "json")
    }));
    let output = harness.run(&["run", "--once"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for (format, file) in [
        ("token", "out/api.token"),
        ("env", "out/api.env"),
        ("header", "out/api.header"),
        ("json", "out/api.json"),
    ] {
        assert_eq!(
            token(&harness, &["--cached", "--format", format]),
            harness.read(file),
            "{format}"
        );
    }
    assert_eq!(
        token(&harness, &["--cached"]),
        harness.read("out/api.token")
    );
    assert_eq!(idp.token_request_count(), 1, "all from the saved token");

    // Without an env output, the variable is the client's default.
    let plain = Harness::new();
    plain.write_config(&config(&idp, |client| client));
    let env = token(&plain, &["--format", "env"]);
    assert!(env.starts_with("API_TOKEN=") && env.contains("\nAPI_TOKEN_EXPIRES_AT="));
}

/// `bearerd token --cached --format exec-credential api` with `KUBERNETES_EXEC_INFO` as given.
fn exec_credential(harness: &Harness, exec_info: Option<&str>) -> Output {
    let mut command = harness.command(&["token", "--cached", "--format", "exec-credential", "api"]);
    match exec_info {
        Some(info) => command.env("KUBERNETES_EXEC_INFO", info),
        None => command.env_remove("KUBERNETES_EXEC_INFO"),
    };
    command.output().expect("run bearerd")
}

#[test]
fn exec_credential_answers_in_the_api_version_asked_for() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));
    let json = token(&harness, &["--cached", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    let v1beta1 = "client.authentication.k8s.io/v1beta1";
    for (exec_info, api_version) in [
        (
            Some(
                r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#,
            ),
            "client.authentication.k8s.io/v1",
        ),
        (
            Some(
                r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{}}"#,
            ),
            v1beta1,
        ),
        (None, v1beta1),
    ] {
        let output = exec_credential(&harness, exec_info);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let credential: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("an ExecCredential");
        let token = saved(&harness).expect("saved");
        assert_eq!(
            credential,
            serde_json::json!({
                "apiVersion": api_version,
                "kind": "ExecCredential",
                "status": {"token": token, "expirationTimestamp": json["expires_at"]},
            })
        );
    }
    assert_eq!(idp.token_request_count(), 1, "all from the saved token");

    // A version bearerd does not speak: exit 2, nothing printed, nothing fetched.
    std::fs::remove_file(harness.path(STATE)).expect("remove state");
    let output = exec_credential(
        &harness,
        Some(r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    assert!(
        text(&output.stderr).contains(
            "KUBERNETES_EXEC_INFO asks for apiVersion \"client.authentication.k8s.io/v1alpha1\""
        ),
        "{}",
        text(&output.stderr)
    );
    let output = harness
        .command(&["token", "--cached", "--format", "exec-credential", "api"])
        .env("KUBERNETES_EXEC_INFO", OsStr::from_bytes(b"{\xff}"))
        .output()
        .expect("run bearerd");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    assert!(text(&output.stderr).contains("KUBERNETES_EXEC_INFO is not valid UTF-8"));
    assert_eq!(idp.token_request_count(), 1);
}

/// Puts something at the lock path before bearerd runs.
type Plant = fn(&Path);

#[test]
fn a_lock_file_someone_else_could_hold_is_refused() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));
    let lock = harness.path(LOCK);
    std::fs::create_dir_all(harness.path("out")).expect("mkdir");

    let mut cases: Vec<(&str, Plant)> = vec![
        ("group or others can write it: mode 0666", |lock| {
            std::fs::write(lock, "").expect("plant");
            std::fs::set_permissions(lock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }),
        ("a symbolic link", |lock| {
            std::os::unix::fs::symlink("elsewhere", lock).expect("symlink")
        }),
    ];
    if rustix::process::geteuid().is_root() {
        cases.push(("owned by uid 4242", |lock| {
            std::fs::write(lock, "").expect("plant");
            std::os::unix::fs::chown(lock, Some(4242), Some(4242)).expect("chown");
        }));
    } else {
        eprintln!("not root: skipping the lock file owned by another user");
    }
    for (reason, plant) in cases {
        plant(&lock);
        let output = harness.run(&["token", "--cached", "api"]);
        assert_eq!(output.status.code(), Some(1), "{reason}");
        assert_eq!(text(&output.stdout), "");
        let expected = format!("cannot use the lock file {}: {reason}", lock.display());
        assert!(
            text(&output.stderr).contains(&expected),
            "{}",
            text(&output.stderr)
        );
        std::fs::remove_file(&lock).expect("remove the planted lock");
    }
    assert_eq!(idp.token_request_count(), 0, "nothing was fetched");
    assert!(
        !harness.path("out/elsewhere").exists(),
        "the symlink was not followed"
    );
    // Once it is bearerd's own again, the lock works.
    assert!(!token(&harness, &["--cached"]).is_empty());
}

/// `--cached` run as another user than the owner of the state directory (root at a shell
/// beside a daemon running as `bearerd`) is refused before it creates anything there: a lock or
/// state file it left would lock the owner out of `--cached` for good.
#[test]
fn a_state_directory_of_another_user_is_refused_before_anything_is_created() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: skipping the state directory owned by another user");
        return;
    }
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));
    let out = harness.path("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::os::unix::fs::chown(&out, Some(4242), Some(4242)).expect("chown");
    let output = harness.run(&["token", "--cached", "api"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    let expected = format!(
        "the state directory {} belongs to uid 4242, not to this user (uid 0)",
        out.display()
    );
    assert!(
        text(&output.stderr).contains(&expected),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(idp.token_request_count(), 0, "nothing was fetched");
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("read the state directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "nothing was created: {left:?}");
    // Plain `token` (nothing saved) still works for this user.
    assert!(!token(&harness, &[]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// kubectl

/// What a Kubernetes API server answers to `kubectl get --raw /version`.
const VERSION_DOCUMENT: &str =
    r#"{"major":"1","minor":"30","gitVersion":"v1.30.0-bearerd-test","platform":"linux/amd64"}"#;

/// The minor version of the `kubectl` on PATH, or `None` when there is none.
fn kubectl_minor_version() -> Option<u32> {
    let output = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let version: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    eprintln!("kubectl {}", version["clientVersion"]["gitVersion"]);
    let minor = version["clientVersion"]["minor"].as_str().expect("minor");
    Some(
        minor
            .trim_end_matches('+')
            .parse()
            .expect("a numeric minor version"),
    )
}

/// A kubeconfig for `server` whose user runs `bearerd token --cached --format exec-credential
/// api` with `config`, speaking `api_version`.
fn kubeconfig(harness: &Harness, server: &TlsServer, ca: &Path, api_version: &str) -> PathBuf {
    let quoted = |value: &str| serde_json::Value::from(value).to_string();
    let config = harness.path("bearerd.toml");
    let args: Vec<String> = [
        "token",
        "--cached",
        "--format",
        "exec-credential",
        "-c",
        config.to_str().expect("UTF-8"),
        "api",
    ]
    .iter()
    .map(|arg| quoted(arg))
    .collect();
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: loopback
  cluster:
    server: https://{address}
    certificate-authority: {ca}
users:
- name: bearerd
  user:
    exec:
      apiVersion: {api_version}
      command: {bearerd}
      args: [{args}]
      interactiveMode: Never
contexts:
- name: loopback
  context: {{cluster: loopback, user: bearerd}}
current-context: loopback
",
        address = server.address,
        ca = quoted(ca.to_str().expect("UTF-8")),
        bearerd = quoted(crate::harness::BEARERD),
        args = args.join(", "),
    );
    let name = format!(
        "kubeconfig-{}",
        api_version.rsplit('/').next().unwrap_or("x")
    );
    harness.write(&name, &text)
}

/// `kubectl --kubeconfig KUBECONFIG get --raw /version`, which must succeed.
fn kubectl_version(harness: &Harness, kubeconfig: &Path) {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version"])
        .env("HOME", harness.path("home"))
        .env_remove("KUBECONFIG")
        .env_remove("BEARERD_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout).trim(), VERSION_DOCUMENT);
}

#[test]
fn kubectl_authenticates_with_the_cached_token() {
    let Some(minor) = kubectl_minor_version() else {
        eprintln!("skipping: kubectl is not installed (Debian: apt-get install kubernetes-client)");
        return;
    };
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, |client| client));
    let pki_dir = harness.path("pki");
    std::fs::create_dir(&pki_dir).expect("mkdir pki");
    let pki = Pki::create(&pki_dir);
    // A Kubernetes API server as far as `kubectl get --raw /version` can tell.
    let server = TlsServer::start(&pki.server_cert, &pki.server_key, VERSION_DOCUMENT);

    let mut versions = vec!["client.authentication.k8s.io/v1beta1"];
    if minor >= 22 {
        versions.push("client.authentication.k8s.io/v1");
    } else {
        eprintln!(
            "kubectl 1.{minor} predates client.authentication.k8s.io/v1 (1.22): \
             testing v1beta1 only (the v1 shape is unit-tested)"
        );
    }
    for api_version in versions {
        let kubeconfig = kubeconfig(&harness, &server, &pki.ca_cert, api_version);
        // Twice: the second kubectl process runs bearerd again, which reuses the saved token.
        kubectl_version(&harness, &kubeconfig);
        kubectl_version(&harness, &kubeconfig);
    }
    let token = saved(&harness).expect("bearerd saved the token it printed");
    let authorizations = server.authorizations();
    assert!(!authorizations.is_empty());
    for authorization in &authorizations {
        assert_eq!(
            authorization.as_deref(),
            Some(format!("Bearer {token}").as_str())
        );
    }
    assert_eq!(
        idp.token_request_count(),
        1,
        "one token for every kubectl run"
    );
}
