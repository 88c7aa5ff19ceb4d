//! Hardening: state files and the directories they live in.
//! A state file bearerd did not write is never served: planted, swapped, shared, or keyed with
//! another credential, it costs one fetch; one bearerd wrote itself is still reused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use bearerd_idp::IdpSettings;

use super::api_client;
use crate::harness::{Config, Harness, TestIdp, text, wait_until};

const STATE: &str = "tokens/.api.bearerd-state.json";

fn idp(secret: &str) -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api", secret, Duration::from_secs(300));
    idp
}

fn config(idp: &TestIdp, secret: &str) -> Config {
    Config::new().client(api_client(idp, secret))
}

/// `bearerd run --once`, which must succeed.
fn run_once(harness: &Harness) -> Output {
    let output = harness.run(&["run", "--once", "--deadline", "20s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    output
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// What someone who can write the output directory and has read the config (but not the
/// secret) could plant before the fix: the settings digest was unkeyed.
fn planted_state(idp: &TestIdp, token: &str) -> String {
    let canonical = serde_json::json!({
        "endpoint": format!("token_url={}", idp.token_url()),
        "client_id": "api",
        "auth": "secret:client_secret_basic",
        "audience": null,
        "scope": null,
        "extra_params": {},
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
    serde_json::json!({
        "version": 1,
        "settings": bearerd::secret::hex(digest.as_ref()),
        "access_token": token,
        "token_type": "Bearer",
        "scope": null,
        "issued_at": unix_now(),
        "expires_at": unix_now() + 3600,
    })
    .to_string()
}

#[test]
fn a_planted_state_file_is_not_served() {
    let idp = idp("api-secret");
    let harness = Harness::new();
    harness.write_config(&config(&idp, "api-secret"));
    let state = harness.write(STATE, &planted_state(&idp, "planted-by-mallory"));
    set_mode(&state, 0o600);

    run_once(&harness);
    assert_eq!(idp.token_request_count(), 1, "a fresh token was requested");
    assert_ne!(harness.read("tokens/api.token"), "planted-by-mallory");
}

#[test]
fn a_state_file_others_could_have_written_is_refused_and_one_bearerd_wrote_is_reused() {
    let idp = idp("api-secret");
    let harness = Harness::new();
    harness.write_config(&config(&idp, "api-secret"));
    run_once(&harness);
    let state = harness.path(STATE);
    let saved = std::fs::read(&state).expect("bearerd saved its state");

    // bearerd's own file, untouched: reused across restarts, no request.
    let output = run_once(&harness);
    assert!(text(&output.stderr).contains("reusing the saved token"));
    assert_eq!(idp.token_request_count(), 1);

    // The same bytes, but group or others could have written them.
    set_mode(&state, 0o666);
    let output = run_once(&harness);
    let log = text(&output.stderr);
    assert!(
        log.contains("ignoring the state file") && log.contains("mode 0666"),
        "{log}"
    );
    assert_eq!(idp.token_request_count(), 2, "{log}");
    assert_eq!(
        std::fs::metadata(&state)
            .expect("state")
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the refused file was replaced by one bearerd wrote"
    );

    // A copy of a valid state file that a symlink points to (another user's, say).
    let elsewhere = harness.write("elsewhere.json", &text(&saved));
    set_mode(&elsewhere, 0o600);
    std::fs::remove_file(&state).expect("remove");
    std::os::unix::fs::symlink(&elsewhere, &state).expect("symlink");
    let log = text(&run_once(&harness).stderr);
    assert!(log.contains("a symbolic link"), "{log}");
    assert_eq!(idp.token_request_count(), 3, "{log}");

    // Padded past the size cap (JSON allows the trailing spaces).
    let mut padded = std::fs::read(&state).expect("state");
    padded.extend(std::iter::repeat_n(b' ', 100 * 1024));
    std::fs::write(&state, padded).expect("pad");
    set_mode(&state, 0o600);
    let log = text(&run_once(&harness).stderr);
    assert!(log.contains("larger than 64 KiB"), "{log}");
    assert_eq!(idp.token_request_count(), 4, "{log}");

    if rustix::process::geteuid().is_root() {
        // Owned by another user (only root can give a file away).
        std::os::unix::fs::chown(&state, Some(4242), Some(4242)).expect("chown");
        let log = text(&run_once(&harness).stderr);
        assert!(log.contains("owned by uid 4242"), "{log}");
        assert_eq!(idp.token_request_count(), 5, "{log}");
    }
}

#[test]
fn a_fifo_at_the_state_path_does_not_block_the_start() {
    let idp = idp("api-secret");
    let harness = Harness::new();
    harness.write_config(&config(&idp, "api-secret"));
    std::fs::create_dir_all(harness.path("tokens")).expect("mkdir");
    let made = std::process::Command::new("mkfifo")
        .arg(harness.path(STATE))
        .status()
        .expect("mkfifo");
    assert!(made.success());

    let mut child = harness
        .command(&["run", "--once", "--deadline", "20s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(exited, "run --once blocked on a FIFO at the state path");
    assert!(status.is_some_and(|status| status.success()));
    assert_eq!(idp.token_request_count(), 1);
}

#[test]
fn a_rotated_secret_refetches_once_after_a_restart() {
    let idp = idp("old-secret");
    let harness = Harness::new();
    harness.write_config(&config(&idp, "old-secret"));
    run_once(&harness);
    let first = harness.read("tokens/api.token");

    idp.add_client("api", "new-secret", Duration::from_secs(300));
    harness.write_config(&config(&idp, "new-secret"));
    run_once(&harness);
    assert_eq!(
        idp.token_request_count(),
        2,
        "the saved token was keyed by the old secret"
    );
    assert_ne!(harness.read("tokens/api.token"), first);

    let output = run_once(&harness);
    assert!(text(&output.stderr).contains("reusing the saved token"));
    assert_eq!(idp.token_request_count(), 2);
}

#[test]
fn output_and_state_directories_writable_by_others_are_warned_about() {
    let idp = idp("api-secret");
    let harness = Harness::new();
    harness.write_config(&config(&idp, "api-secret").agent("state_dir = \"state\""));
    let tokens = harness.path("tokens");
    let state = harness.path("state");
    for dir in [&tokens, &state] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    set_mode(&tokens, 0o777);
    set_mode(&state, 0o1777);
    let warned = |output: &str, dir: &Path, mode: &str| {
        output.lines().any(|line| {
            line.contains(&*dir.to_string_lossy())
                && line.contains(mode)
                && line.contains("writable by other users")
        })
    };

    let check = harness.run(&["check"]);
    assert!(check.status.success());
    let (stdout, stderr) = (text(&check.stdout), text(&check.stderr));
    for (dir, mode) in [(&tokens, "0777"), (&state, "1777")] {
        assert!(warned(&stdout, dir, mode), "check output:\n{stdout}");
        assert!(warned(&stderr, dir, mode), "check log:\n{stderr}");
    }
    let log = text(&run_once(&harness).stderr);
    assert!(
        warned(&log, &tokens, "0777") && warned(&log, &state, "1777"),
        "{log}"
    );

    set_mode(&tokens, 0o755);
    set_mode(&state, 0o700);
    let check = harness.run(&["check"]);
    assert!(!text(&check.stdout).contains("writable by other users"));
    assert!(!text(&check.stderr).contains("writable by other users"));
}
