//! Faults from outside: every way the token endpoint can misbehave, every way the output
//! filesystem can refuse a write, and every malformed config arriving by live reload. Each must
//! end in one clear log line naming the client and the cause, the previous files byte-for-byte
//! intact, and the retry behaviour SPEC describes (transient: retried; permanent: slowly).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bearerd_idp::{Fault, IdpSettings};
use rustix::process::Signal;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, text, wait_until};

/// The client every fault case uses; distinctive, so a log line naming it is easy to find.
const CLIENT: &str = "billing";

/// The files a previous good run left, in every format, byte for byte.
const PREVIOUS: [(&str, &str); 4] = [
    ("out/billing.token", "previous-good-token"),
    (
        "out/billing.env",
        "BILLING_TOKEN=previous-good-token\nBILLING_TOKEN_EXPIRES_AT=4102444800\n",
    ),
    (
        "out/billing.header",
        "Authorization: Bearer previous-good-token\n",
    ),
    (
        "out/billing.json",
        "{\"access_token\":\"previous-good-token\",\"token_type\":\"Bearer\",\
         \"expires_at\":\"2100-01-01T00:00:00Z\",\"expires_in\":300,\"scope\":null}\n",
    ),
];

/// `NAME` as `NAME-bot` with `NAME-secret`, writing `out/NAME.*` in every format.
fn every_format(name: &str, token_url: &str) -> Client {
    Client::new(name)
        .token_url(token_url)
        .client_id(&format!("{name}-bot"))
        .secret(&format!("{name}-secret"))
        .output(format!("out/{name}.token"))
        .output_as(format!("out/{name}.env"), "env")
        .output_as(format!("out/{name}.header"), "header")
        .output_as(format!("out/{name}.json"), "json")
}

fn config(token_url: &str) -> Config {
    Config::new()
        .http_timeout("400ms")
        .backoff("50ms", "100ms")
        .client(every_format(CLIENT, token_url))
}

fn idp() -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("billing-bot", "billing-secret", Duration::from_secs(300));
    idp
}

fn status(status: u16, content_type: &str, body: &str, retry_after: Option<&str>) -> Fault {
    Fault::Status {
        status,
        body: body.to_owned(),
        content_type: content_type.to_owned(),
        retry_after: retry_after.map(str::to_owned),
    }
}

fn token_body(access_token_json: &str) -> Fault {
    Fault::Body(format!(
        "{{\"access_token\":{access_token_json},\"token_type\":\"Bearer\",\"expires_in\":300}}"
    ))
}

/// How SPEC says a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Connection trouble, timeouts, 5xx, 429, malformed responses: retried with backoff.
    Transient,
    /// `invalid_client` & co., a hostile token: `--once` gives up at once, the daemon waits
    /// `backoff_max`.
    Permanent,
}

/// A misbehaving endpoint, the words the log line must contain, and how it is retried.
struct Case {
    name: &'static str,
    /// `None`: connection refused (the token URL points at a closed port).
    fault: Option<Fault>,
    cause: &'static str,
    retry: Retry,
}

fn cases() -> Vec<Case> {
    use Retry::{Permanent, Transient};
    let case = |name, fault, cause, retry| Case {
        name,
        fault: Some(fault),
        cause,
        retry,
    };
    vec![
        case(
            "500",
            status(500, "text/plain", "internal error", None),
            "500 Internal Server Error",
            Transient,
        ),
        case(
            "502 with an HTML body",
            status(
                502,
                "text/html",
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
                None,
            ),
            "502 Bad Gateway",
            Transient,
        ),
        case(
            "429 with Retry-After",
            status(429, "text/plain", "slow down", Some("1")),
            "429 Too Many Requests",
            Transient,
        ),
        case(
            "slower than http_timeout",
            Fault::Delay(Duration::from_secs(5)),
            "timed out",
            Transient,
        ),
        case("a hang", Fault::Hang, "timed out", Transient),
        case(
            "connection closed without a response",
            Fault::CloseConnection,
            "connection closed before message completed",
            Transient,
        ),
        case(
            "connection reset mid-body",
            Fault::ResetMidBody,
            "reading the body failed",
            Transient,
        ),
        case(
            "truncated JSON",
            Fault::TruncatedJson,
            "invalid JSON",
            Transient,
        ),
        case(
            "a body over the size cap",
            Fault::Oversized,
            "larger than 64 KiB",
            Transient,
        ),
        case(
            "no access_token",
            Fault::Body("{\"token_type\":\"Bearer\",\"expires_in\":300}".to_owned()),
            "no access_token",
            Transient,
        ),
        case(
            "access_token not a string",
            token_body("12345"),
            "no access_token",
            Transient,
        ),
        case(
            "a token with a newline",
            token_body("\"abc\\ndef\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "a token with a quote",
            token_body("\"abc\\\"def\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "a token with a space",
            token_body("\"abc def\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "a token with $(…)",
            token_body("\"$(touch /tmp/pwned)\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "a token with non-ASCII",
            token_body("\"tökén\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "a token with a backtick",
            token_body("\"abc`id`\""),
            "RFC 6750",
            Permanent,
        ),
        case(
            "RFC 6749 invalid_client",
            status(
                401,
                "application/json",
                "{\"error\":\"invalid_client\",\"error_description\":\"Client authentication failed\"}",
                None,
            ),
            "invalid_client",
            Permanent,
        ),
        case(
            "RFC 6749 invalid_scope",
            status(
                400,
                "application/json",
                "{\"error\":\"invalid_scope\"}",
                None,
            ),
            "invalid_scope",
            Permanent,
        ),
        case(
            "RFC 6749 unauthorized_client",
            status(
                400,
                "application/json",
                "{\"error\":\"unauthorized_client\"}",
                None,
            ),
            "unauthorized_client",
            Permanent,
        ),
        case(
            "RFC 6749 temporarily_unavailable",
            status(
                503,
                "application/json",
                "{\"error\":\"temporarily_unavailable\"}",
                None,
            ),
            "temporarily_unavailable",
            Transient,
        ),
        case(
            "an error body with status 200",
            Fault::Body("{\"error\":\"server_error\"}".to_owned()),
            "server_error",
            Transient,
        ),
        Case {
            name: "connection refused",
            fault: None,
            cause: "connection refused",
            retry: Transient,
        },
    ]
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}/oauth/token")
}

fn write_previous(harness: &Harness) {
    for (path, contents) in PREVIOUS {
        harness.write(path, contents);
    }
}

/// `*.bearerd-tmp-*` files in `dir`.
pub fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.to_string_lossy().contains(".bearerd-tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The first log line that names the client and contains `cause`.
fn line_naming<'a>(log: &'a str, cause: &str) -> Option<&'a str> {
    log.lines()
        .find(|line| line.contains(&format!("client={CLIENT}")) && line.contains(cause))
}

/// `run --once` against each fault, all cases at once (each with its own endpoint and
/// directory): exit 1, a log line naming the client and the cause, the old files intact;
/// transient faults retried until the deadline, permanent ones not retried at all.
#[test]
fn run_once_survives_every_server_fault() {
    let failures = in_parallel(cases(), |case| run_once_case(&case).err());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs `check` on every case at once, each on a thread of its own; what went wrong, if anything.
fn in_parallel<T: Send>(
    cases: impl IntoIterator<Item = T>,
    check: impl Fn(T) -> Option<String> + Sync,
) -> Vec<String> {
    let check = &check;
    std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .into_iter()
            .map(|case| scope.spawn(move || check(case)))
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| handle.join().expect("case thread"))
            .collect()
    })
}

fn run_once_case(case: &Case) -> Result<(), String> {
    let idp = idp();
    let harness = Harness::new();
    let url = match &case.fault {
        Some(fault) => {
            idp.set_fault(fault.clone());
            idp.token_url()
        }
        None => closed_port_url(),
    };
    harness.write_config(&config(&url));
    write_previous(&harness);
    let output = harness
        .command(&["run", "--once", "--deadline", "3s"])
        // Repeated failures are logged at debug: count them for the refused connection.
        .env("RUST_LOG", "info,bearerd=debug")
        .output()
        .expect("run bearerd");
    let stderr = text(&output.stderr);
    let name = case.name;
    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
        problems.push(format!("exit {:?}, expected 1", output.status.code()));
    }
    if line_naming(&stderr, case.cause).is_none() {
        problems.push(format!(
            "no line names client={CLIENT} and {:?}",
            case.cause
        ));
    }
    for (path, contents) in PREVIOUS {
        if std::fs::read(harness.path(path)).ok().as_deref() != Some(contents.as_bytes()) {
            problems.push(format!("{path} changed"));
        }
    }
    if !temporary_files(&harness.path("out")).is_empty() {
        problems.push("temporary files left".to_owned());
    }
    let attempts = match case.fault {
        Some(_) => idp.token_request_count(),
        None => 1 + stderr.matches("token request failed again").count(),
    };
    match case.retry {
        Retry::Permanent if attempts != 1 => problems.push(format!(
            "{attempts} attempts; a permanent failure is not retried"
        )),
        Retry::Transient if attempts < 2 => problems.push(format!(
            "{attempts} attempt; a transient failure is retried"
        )),
        _ => {}
    }
    let permanent_logged = stderr.contains("will not heal without a change");
    if permanent_logged != (case.retry == Retry::Permanent) {
        problems.push(format!(
            "logged as permanent: {permanent_logged}, expected {:?}",
            case.retry
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: {}\n{stderr}", problems.join("; ")))
    }
}

/// Odd but harmless `expires_in` values are accepted, each as SPEC and `parse_response` say,
/// with a warning where the value was not usable as sent.
#[test]
fn odd_expires_in_values_are_accepted_with_sane_lifetimes() {
    // (expires_in as JSON, the lifetime written, a warning the log must carry)
    let cases: [(&str, u64, Option<&str>); 7] = [
        ("0", 300, Some("expires_in is not positive")),
        ("-30", 300, Some("expires_in is not positive")),
        ("120.9", 120, None),
        ("\"240\"", 240, None),
        ("\"soon\"", 300, Some("expires_in is not a number")),
        ("1e300", 365 * 24 * 3600, Some("expires_in is over a year")),
        (
            "99999999999999",
            365 * 24 * 3600,
            Some("expires_in is over a year"),
        ),
    ];
    let failures = in_parallel(cases, |(expires_in, lifetime, warning)| {
        let idp = idp();
        idp.set_fault(Fault::Body(format!(
            "{{\"access_token\":\"good-token.{lifetime}\",\"token_type\":\"Bearer\",\
             \"expires_in\":{expires_in}}}"
        )));
        let harness = Harness::new();
        harness.write_config(&config(&idp.token_url()));
        let output = harness.run(&["run", "--once", "--deadline", "3s"]);
        let stderr = text(&output.stderr);
        let json: serde_json::Value =
            serde_json::from_str(&harness.read("out/billing.json")).unwrap_or_default();
        let ok = output.status.success()
            && json["expires_in"] == lifetime
            && warning.is_none_or(|warning| line_naming(&stderr, warning).is_some());
        (!ok).then(|| format!("expires_in {expires_in}: {json}\n{stderr}"))
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The daemon, holding a good token, meets each fault in turn (SIGUSR1 forces the attempt):
/// the log names the client and the cause, and further attempts under the fault leave the
/// files byte-for-byte as they were. Between faults the endpoint heals, so every fault is a
/// change of state and logged.
#[test]
fn the_daemon_keeps_good_files_through_every_server_fault() {
    let idp = idp();
    let harness = Harness::new();
    harness.write_config(&config(&idp.token_url()));
    let daemon = Daemon::start_with({
        let mut command = harness.command(&["run"]);
        // Repeated failures are logged at debug: they mark attempts that have completed.
        command.env("RUST_LOG", "info,bearerd=debug");
        command
    });
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
    for case in cases() {
        let Some(fault) = case.fault else { continue };
        let seen = daemon.count(case.cause);
        idp.set_fault(fault);
        daemon.signal(Signal::USR1);
        daemon.wait_for(case.cause, seen + 1, Duration::from_secs(10));
        let log = daemon.log();
        let line = log
            .lines()
            .rev()
            .find(|line| line.contains(case.cause))
            .unwrap_or_default();
        assert!(line.contains(&format!("client={CLIENT}")), "{line}");
        // A worker makes one attempt at a time, so nothing is in flight now but failures.
        let good: Vec<Vec<u8>> = PREVIOUS
            .iter()
            .map(|(path, _)| std::fs::read(harness.path(path)).expect("a good file"))
            .collect();
        let again = daemon.count("token request failed again");
        daemon.signal(Signal::USR1);
        daemon.wait_for(
            "token request failed again",
            again + 2,
            Duration::from_secs(10),
        );
        for ((path, _), before) in PREVIOUS.iter().zip(&good) {
            assert_eq!(
                &std::fs::read(harness.path(path)).expect("read"),
                before,
                "{}: {path} kept",
                case.name
            );
        }
        let recovered = daemon.count("recovered");
        idp.set_fault(Fault::None);
        daemon.signal(Signal::USR1);
        daemon.wait_for("recovered", recovered + 1, Duration::from_secs(10));
    }
    assert!(temporary_files(&harness.path("out")).is_empty());
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// A permanent failure is retried at `backoff_max`, a transient one from `backoff_min`: in the
/// same window the daemon sends far fewer requests for the first.
#[test]
fn the_daemon_retries_permanent_failures_slowly_and_transient_ones_soon() {
    let attempts = |fault: Fault| {
        let idp = idp();
        idp.set_fault(fault);
        let harness = Harness::new();
        harness.write_config(&config(&idp.token_url()).backoff("100ms", "3s"));
        let daemon = Daemon::start(&harness);
        daemon.wait_for("token request failed", 1, Duration::from_secs(10));
        let first = std::time::Instant::now();
        // A window shorter than backoff_max, measured from the first failure.
        wait_until(Duration::from_secs(5), || {
            first.elapsed() >= Duration::from_millis(2500)
        });
        let count = idp.token_request_count();
        drop(daemon);
        count
    };
    let permanent = attempts(status(
        401,
        "application/json",
        "{\"error\":\"invalid_client\"}",
        None,
    ));
    let transient = attempts(status(500, "text/plain", "oops", None));
    // Permanent: the first request, then nothing until 3 s later.
    assert_eq!(permanent, 1, "permanent failures wait backoff_max");
    // Transient: 100 ms doubling (with jitter) to 3 s: several within 2.5 s.
    assert!(transient >= 3, "{transient} transient attempts in 2.5 s");
}

// ---------------------------------------------------------------------------------------------
// Filesystem faults.

/// Root ignores permission bits, so "without permission" runs bearerd as `nobody` then.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?}: {}", text(&output.stderr)))
    }
}

/// A tmpfs mounted for one test, unmounted (lazily, so a busy one goes too) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when this process may not mount (no CAP_SYS_ADMIN).
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let target = path.to_str().expect("UTF-8 path");
        match run_tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                target,
            ],
        ) {
            Ok(()) => Some(Self {
                path: path.to_owned(),
            }),
            Err(error) => {
                eprintln!("cannot mount a tmpfs here ({error})");
                None
            }
        }
    }

    fn remount(&self, option: &str) {
        let target = self.path.to_str().expect("UTF-8 path");
        run_tool("mount", &["-o", &format!("remount,{option}"), target]).expect("remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(target) = self.path.to_str() {
            let _ = run_tool("umount", &["-l", target]);
        }
    }
}

/// One victim client per filesystem fault, plus `steady`, which no fault touches.
fn filesystem_config(idp: &TestIdp, victims: &[&str]) -> Config {
    let url = idp.token_url();
    Config::new()
        .http_timeout("5s")
        .backoff("100ms", "500ms")
        .client(every_format("steady", &url))
        .clients(victims.iter().map(|victim| {
            Client::new(victim)
                .token_url(&url)
                .client_id(victim)
                .secret(&format!("{victim}-secret"))
                .output(format!("{victim}/sub/{victim}.token"))
                .output_as(format!("{victim}/sub/{victim}.env"), "env")
        }))
}

/// Output directory read-only (a read-only tmpfs remount, when this process may mount),
/// without permission (bearerd as `nobody` when the test runs as root, since root ignores
/// mode bits), on a full filesystem (a 64 KiB tmpfs filled up), the target path a directory,
/// and the parent path a regular file: each victim logs a clear error naming itself and the
/// cause while keeping its old files; the steady client keeps refreshing; once each fault is
/// fixed, each victim recovers.
#[test]
fn filesystem_faults_fail_clearly_spare_other_clients_and_recover() {
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        default_lifetime: Duration::from_secs(300),
        ..IdpSettings::default()
    });
    idp.add_client("steady-bot", "steady-secret", Duration::from_secs(2));
    let harness = Harness::new();
    let root = harness.dir.path();
    let mounts = [
        Tmpfs::mount(&root.join("readonly"), "1m"),
        Tmpfs::mount(&root.join("full"), "64k"),
    ];
    let mountable = mounts.iter().all(Option::is_some);
    let mut victims = vec!["denied", "occupied", "blocked"];
    if mountable {
        victims.extend(["readonly", "full"]);
    } else {
        eprintln!("skipping the read-only and full filesystem cases: cannot mount a tmpfs");
    }
    harness.write_config(&filesystem_config(&idp, &victims));
    for victim in &victims {
        std::fs::create_dir_all(root.join(victim)).expect("victim dir");
    }
    let mut command = harness.command(&["run"]);
    if is_root() {
        // bearerd runs as nobody: it must be able to read the config and own its outputs.
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(
            harness.path("bearerd.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        for dir in victims
            .iter()
            .map(|v| root.join(v))
            .chain([root.join("out")])
        {
            std::fs::create_dir_all(&dir).expect("dir");
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        command.uid(NOBODY).gid(NOBODY);
    }
    let daemon = Daemon::start_with(command);
    daemon.wait_for(
        "token refreshed",
        1 + victims.len(),
        Duration::from_secs(15),
    );

    let file = |victim: &str, ext: &str| root.join(format!("{victim}/sub/{victim}.{ext}"));
    let snapshot = |victim: &str| {
        ["token", "env"].map(|ext| std::fs::read(file(victim, ext)).expect("a good file"))
    };
    let before: Vec<_> = victims.iter().map(|victim| snapshot(victim)).collect();

    // The faults.
    let chmod = |path: PathBuf, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    chmod(root.join("denied/sub"), 0o500);
    std::fs::remove_file(file("occupied", "env")).expect("rm");
    std::fs::create_dir(file("occupied", "env")).expect("a directory in the way");
    std::fs::remove_dir_all(root.join("blocked/sub")).expect("rm");
    std::fs::write(
        root.join("blocked/sub"),
        "a file where a directory should be",
    )
    .expect("block");
    if mountable {
        mounts[0].as_ref().expect("mounted").remount("ro");
        let mut filler = std::fs::File::create(root.join("full/filler")).expect("filler");
        let chunk = vec![0_u8; 4096];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        drop(filler);
    }
    let causes = [
        ("denied", "Permission denied"),
        ("occupied", "Is a directory"),
        ("blocked", "cannot create directory"),
        ("readonly", "Read-only file system"),
        ("full", "No space left on device"),
    ];
    let steady_before = std::fs::read(harness.path("out/steady.token")).expect("steady");
    daemon.signal(Signal::USR1);
    for (victim, cause) in causes.iter().filter(|(v, _)| victims.contains(v)) {
        let needle = format!("client={victim}");
        assert!(
            wait_until(Duration::from_secs(10), || daemon
                .log()
                .lines()
                .any(|line| line.contains(&needle) && line.contains(cause))),
            "{victim}: no line names {needle} and {cause:?}; log:\n{}",
            daemon.log()
        );
    }
    // The steady client is unaffected: its 2 s token keeps being replaced.
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read(
            harness.path("out/steady.token")
        )
        .is_ok_and(|now| now != steady_before)),
        "steady stopped refreshing; log:\n{}",
        daemon.log()
    );
    // The victims whose files could survive kept them byte for byte.
    for (victim, files) in victims.iter().zip(&before) {
        match *victim {
            "denied" | "readonly" | "full" => assert_eq!(&snapshot(victim), files, "{victim}"),
            // Outputs are written one by one: the token file may already hold the new token.
            "occupied" => assert!(bearerd::token::is_b64token(
                &std::fs::read_to_string(file(victim, "token")).expect("token")
            )),
            _ => {}
        }
    }

    // The fixes.
    chmod(root.join("denied/sub"), 0o700);
    std::fs::remove_dir(file("occupied", "env")).expect("rmdir");
    std::fs::remove_file(root.join("blocked/sub")).expect("rm");
    if mountable {
        mounts[0].as_ref().expect("mounted").remount("rw");
        std::fs::remove_file(root.join("full/filler")).expect("rm filler");
    }
    let recovered_before = daemon.count("recovered");
    daemon.signal(Signal::USR1);
    assert!(
        wait_until(Duration::from_secs(15), || {
            victims.iter().all(|victim| {
                let token = std::fs::read_to_string(file(victim, "token")).unwrap_or_default();
                let env = std::fs::read_to_string(file(victim, "env")).unwrap_or_default();
                bearerd::token::is_b64token(&token)
                    && env.starts_with(&format!("{}_TOKEN={token}\n", victim.to_uppercase()))
            })
        }),
        "not every victim recovered; log:\n{}",
        daemon.log()
    );
    daemon.wait_for(
        "recovered",
        recovered_before + victims.len(),
        Duration::from_secs(10),
    );
    for victim in &victims {
        let dir = root.join(format!("{victim}/sub"));
        assert!(
            temporary_files(&dir).is_empty(),
            "{victim}: temporary files"
        );
    }
    drop(daemon);
    drop(mounts);
}

// ---------------------------------------------------------------------------------------------
// Malformed configs through a live reload.

/// Every file of the malformed-config corpus, copied in turn over a running daemon's config:
/// each error is logged with its location, no reload happens, and the old config keeps
/// running — its 2-second token keeps being refreshed and SIGUSR1 still refreshes it.
#[test]
fn every_bad_config_arriving_by_reload_keeps_the_old_one_running() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("billing-bot", "billing-secret", Duration::from_secs(2));
    let harness = Harness::new();
    // Files the corpus names relative to the config's directory.
    std::fs::copy(corpus.join("empty.secret"), harness.path("empty.secret")).expect("copy");
    harness.write_config(&config(&idp.token_url()));
    let daemon = Daemon::start(&harness);
    daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
    let first = harness.read("out/billing.token");

    let mut configs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 25, "{} configs", configs.len());
    let config_path = harness.path("bearerd.toml");
    let staging = harness.path("bearerd.toml.new");
    for bad in &configs {
        let expected = std::fs::read_to_string(bad.with_extension("err"))
            .expect(".err file")
            .replace("{file}", &config_path.display().to_string())
            .replace("{dir}", &harness.dir.path().display().to_string());
        let before: Vec<usize> = expected
            .lines()
            .map(|line| daemon.count(&format!("keeping the running one: {line}")))
            .collect();
        // Rename-replace, as an editor would: never a half-written config.
        std::fs::copy(bad, &staging).expect("stage");
        std::fs::rename(&staging, &config_path).expect("replace");
        for (line, seen) in expected.lines().zip(before) {
            daemon.wait_for(
                &format!("keeping the running one: {line}"),
                seen + 1,
                Duration::from_secs(10),
            );
        }
    }
    assert_eq!(
        daemon.count("configuration reloaded"),
        0,
        "{}",
        daemon.log()
    );
    // The old config still runs: its 2 s token keeps being replaced, and SIGUSR1 works.
    assert!(
        wait_until(Duration::from_secs(10), || harness
            .read("out/billing.token")
            != first),
        "no refresh under the old config; log:\n{}",
        daemon.log()
    );
    let refreshes = daemon.count("token refreshed");
    daemon.signal(Signal::USR1);
    daemon.wait_for("refresh requested", 1, Duration::from_secs(5));
    daemon.wait_for("token refreshed", refreshes + 1, Duration::from_secs(5));
    let (status, _) = daemon.terminate();
    assert!(status.success());
}
