//! Crash safety: bearerd SIGKILLed at random moments, again and again, while a reader reads
//! every output as fast as it can. Every read must be a complete, valid file; after a clean
//! start no temporary file is left. Nothing here depends on timing: the kills are random,
//! and what is checked is every single read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bearerd::token::is_b64token;
use bearerd_idp::IdpSettings;
use rand::{Rng, SeedableRng};

use crate::faults::temporary_files;
use crate::harness::{Client, Config, Daemon, Harness, TestIdp, wait_until};

const OUTPUTS: [&str; 4] = [
    "out/api.token",
    "out/api.env",
    "out/api.header",
    "out/api.json",
];

fn config(idp: &TestIdp) -> Config {
    Config::new().backoff("50ms", "200ms").client(
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id("api")
            .secret("api-secret")
            .output("out/api.token")
            .output_as("out/api.env", "env")
            .output_as("out/api.header", "header")
            .output_as("out/api.json", "json"),
    )
}

/// Why `contents` is not a complete file of the output at `path`, if it is not.
fn invalid(path: &str, contents: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(contents) else {
        return Some(format!("{path}: not UTF-8: {contents:?}"));
    };
    let valid = match path.rsplit('.').next() {
        Some("token") => is_b64token(text),
        Some("env") => {
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            text.ends_with('\n')
                && lines.len() == 2
                && lines[0].strip_prefix("API_TOKEN=").is_some_and(is_b64token)
                && lines[1]
                    .strip_prefix("API_TOKEN_EXPIRES_AT=")
                    .is_some_and(|at| !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()))
        }
        Some("header") => text
            .strip_prefix("Authorization: Bearer ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .is_some_and(is_b64token),
        _ => serde_json::from_str::<serde_json::Value>(text).is_ok_and(|json| {
            json["access_token"].as_str().is_some_and(is_b64token) && json["expires_at"].is_string()
        }),
    };
    (!valid).then(|| format!("{path}: {text:?}"))
}

/// 1-second tokens, so a refresh (four file writes) happens every ~0.8 s and at most starts;
/// 50 SIGKILLs at random moments (0–700 ms after each start) (seeded, so a failure can be replayed); a reader thread
/// validates every read of every output. Files may not exist before the first write, but once
/// one exists it never disappears, and every read is complete and valid.
#[test]
fn sigkill_at_random_moments_never_leaves_a_partial_file() {
    const KILLS: usize = 50;
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api", "api-secret", Duration::from_secs(1));
    let harness = Harness::new();
    harness.write_config(&config(&idp));
    let paths: Vec<_> = OUTPUTS.iter().map(|path| harness.path(path)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let paths = paths.clone();
        std::thread::spawn(move || {
            let mut reads = [0_usize; 4];
            let mut seen = [false; 4];
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (index, path) in paths.iter().enumerate() {
                    match std::fs::read(path) {
                        Ok(contents) => {
                            seen[index] = true;
                            reads[index] += 1;
                            problems.extend(invalid(OUTPUTS[index], &contents));
                        }
                        Err(error) if seen[index] => {
                            problems.push(format!("{}: vanished: {error}", OUTPUTS[index]));
                        }
                        Err(_) => {}
                    }
                }
            }
            (reads, problems)
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0062_6561_7265_7264);
    let mut litter_seen = 0;
    for _ in 0..KILLS {
        let daemon = Daemon::start(&harness);
        // Anywhere from before the first write to past a refresh.
        // The random moment itself is the point here, not a wait for something to happen.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=700)));
        daemon.kill();
        litter_seen += temporary_files(&harness.path("out")).len();
    }
    eprintln!("{litter_seen} temporary files found after kills (swept on the next start)");

    // One clean start: it sweeps whatever the kills left (plus one planted, so the sweep is
    // proven even when no kill landed mid-write), refreshes, and stops cleanly.
    std::fs::write(
        harness.path("out/.api.json.bearerd-tmp-0123456789abcdef"),
        "{\"access_token\":",
    )
    .expect("plant a stale temporary file");
    let litter = temporary_files(&harness.path("out"));
    let before = std::fs::read(&paths[0]).unwrap_or_default();
    let daemon = Daemon::start(&harness);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read(&paths[0])
            .is_ok_and(|now| now != before)),
        "no refresh after the last restart; log:\n{}",
        daemon.log()
    );
    // (A write in progress may have a temporary file of its own at this moment.)
    let left: Vec<_> = litter.iter().filter(|path| path.exists()).collect();
    assert!(left.is_empty(), "not swept: {left:?}");
    let (status, _) = daemon.terminate();
    assert!(status.success());

    stop.store(true, Ordering::Relaxed);
    let (reads, problems) = reader.join().expect("reader");
    eprintln!(
        "reads per output: {reads:?}; token requests: {}",
        idp.token_request_count()
    );
    assert!(
        problems.is_empty(),
        "{} bad reads: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    for (path, count) in OUTPUTS.iter().zip(reads) {
        assert!(count >= 1000, "{path} was read only {count} times");
    }
    assert_eq!(
        temporary_files(&harness.path("out")),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        idp.token_request_count() >= 10,
        "bearerd must have written many times: {} requests",
        idp.token_request_count()
    );
}

/// A clean stop in the middle of a batch (300 clients writing into one directory, SIGTERM as
/// soon as the first temporary file appears) waits for the writes already begun: it leaves no
/// temporary file, and every token file there is complete. Five fresh starts, since where in
/// the batch the signal lands varies.
#[test]
fn sigterm_in_the_middle_of_a_batch_leaves_no_temporary_file() {
    const CLIENTS: usize = 300;
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        ..IdpSettings::default()
    });
    for _ in 0..5 {
        let harness = Harness::new();
        harness.write_config(&Config::new().clients((0..CLIENTS).map(|index| {
            Client::new(&format!("c{index}"))
                .token_url(&idp.token_url())
                .client_id(&format!("c{index}"))
                .secret("s")
                .output(format!("out/c{index}.token"))
        })));
        let out = harness.path("out");
        let daemon = Daemon::start(&harness);
        // Polled closely (not `wait_until`'s 20 ms): the moment a temporary file exists, a
        // write is on its way.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while temporary_files(&out).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no write began; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (status, _) = daemon.terminate();
        assert!(status.success());
        assert_eq!(temporary_files(&out), Vec::<std::path::PathBuf>::new());
        let written: Vec<_> = std::fs::read_dir(&out)
            .expect("out")
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "token")
            })
            .collect();
        assert!(!written.is_empty());
        for path in written {
            let token = std::fs::read_to_string(&path).expect("read token");
            assert!(is_b64token(&token), "{}: {token:?}", path.display());
        }
    }
}
