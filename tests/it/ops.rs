//! Operating bearerd: the sd_notify protocol on a real datagram socket, the HTTP endpoint over
//! real HTTP, and `on_refresh` commands and signals with real processes.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bearerd_idp::{Fault, IdpSettings};
use rustix::process::Signal;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, http_get, wait_until};

fn api(idp: &TestIdp) -> Client {
    Client::new("api")
        .token_url(&idp.token_url())
        .client_id("api")
        .secret("api-secret")
        .output("api.token")
}

fn config(api: Client) -> Config {
    Config::new().backoff("100ms", "500ms").client(api)
}

fn idp(lifetime: Duration) -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api", "api-secret", lifetime);
    idp
}

/// Receives sd_notify datagrams until `until` holds for the collected messages.
fn collect(socket: &UnixDatagram, messages: &mut Vec<String>, until: impl Fn(&[String]) -> bool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let ok = wait_until(Duration::from_secs(10), || {
        let mut buffer = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        until(messages)
    });
    assert!(ok, "sd_notify messages so far: {messages:#?}");
}

fn has(messages: &[String], prefix: &str) -> bool {
    messages.iter().any(|message| message.starts_with(prefix))
}

#[test]
fn sd_notify_ready_reload_status_watchdog_and_stopping() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(api(&idp)));
    let socket_path = harness.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    let mut command = harness.command(&["run"]);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let daemon = Daemon::start_with(command);
    let mut messages = Vec::new();

    collect(&socket, &mut messages, |m| has(m, "READY=1"));
    assert!(
        harness.path("api.token").exists(),
        "READY=1 comes after every client was tried"
    );
    collect(&socket, &mut messages, |m| {
        m.iter()
            .any(|s| s.starts_with("STATUS=1 clients, 1 fresh, next refresh in"))
    });
    collect(&socket, &mut messages, |m| {
        m.iter().filter(|s| *s == "WATCHDOG=1").count() >= 3
    });

    daemon.signal(Signal::HUP);
    collect(&socket, &mut messages, |m| has(m, "RELOADING=1"));
    let reloading = messages
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .expect("reloading");
    let usec: u64 = reloading
        .lines()
        .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .expect("a number");
    assert!(usec > 0);
    let after_reload = messages.len();
    collect(&socket, &mut messages, |m| {
        m[after_reload..].iter().any(|s| s == "READY=1")
    });

    let (status, _) = daemon.terminate();
    assert!(status.success());
    collect(&socket, &mut messages, |m| has(m, "STOPPING=1"));
}

#[test]
fn healthz_readyz_and_metrics_over_http() {
    let idp = idp(Duration::from_secs(300));
    idp.set_fault(Fault::Status {
        status: 503,
        body: String::new(),
        content_type: "text/plain".to_owned(),
        retry_after: None,
    });
    let harness = Harness::new();
    harness.write_config(&config(api(&idp)).listen("127.0.0.1:0"));
    let daemon = Daemon::start(&harness);
    let address = daemon.admin_address();

    let healthz = http_get(&address, "/healthz");
    assert_eq!((healthz.status, healthz.body), (200, "ok\n".to_owned()));
    let readyz = http_get(&address, "/readyz");
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.body, "no valid token on disk for: api\n");

    // The first attempt must have failed before the fault is lifted, or no failure is counted.
    daemon.wait_for("token request failed", 1, Duration::from_secs(10));
    idp.set_fault(Fault::None);
    assert!(wait_until(Duration::from_secs(5), || http_get(
        &address, "/readyz"
    )
    .status
        == 200));

    let metrics = http_get(&address, "/metrics");
    assert_eq!(metrics.status, 200);
    let metrics = metrics.body;
    for needle in [
        "bearerd_token_expiry_timestamp_seconds{client=\"api\"} ",
        "bearerd_refreshes_total{client=\"api\",result=\"success\"} 1",
        "bearerd_refreshes_total{client=\"api\",result=\"failure\"} ",
        "bearerd_last_error_timestamp_seconds{client=\"api\"} ",
        "bearerd_request_duration_seconds_bucket{",
        "bearerd_build_info{version=",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    let token = harness.read("api.token");
    assert!(!metrics.contains(&token), "no token in metrics");
    assert!(!metrics.contains("api-secret"), "no secret in metrics");
    assert_eq!(http_get(&address, "/nope").status, 404);
}

#[test]
fn on_refresh_commands_run_and_failing_or_slow_ones_never_block() {
    let idp = idp(Duration::from_secs(2));
    let harness = Harness::new();
    let hook = harness.path("hook.log");
    let append = format!("echo refreshed >> '{}'; exit 3", hook.display());
    harness.write_config(&config(
        api(&idp).on_refresh_command(&["sh", "-c", &append], "5s"),
    ));
    let daemon = Daemon::start(&harness);
    assert!(wait_until(Duration::from_secs(8), || {
        std::fs::read_to_string(&hook).is_ok_and(|text| text.lines().count() >= 2)
    }));
    daemon.wait_for("on_refresh command failed", 1, Duration::from_secs(5));
    assert!(daemon.log().contains("exit status: 3"), "{}", daemon.log());
    drop(daemon);

    // A command still running never holds up the next refresh: with 2 s tokens, three refreshes
    // happen while the first hook still has 30 s to run.
    let harness = Harness::new();
    harness.write_config(&config(
        api(&idp).on_refresh_command(&["sleep", "30"], "30s"),
    ));
    let daemon = Daemon::start(&harness);
    daemon.wait_for("token refreshed", 3, Duration::from_secs(8));
    assert_eq!(daemon.count("on_refresh command"), 0, "{}", daemon.log());
    drop(daemon);

    // A command that outlives its timeout is killed and logged.
    let harness = Harness::new();
    harness.write_config(&config(
        api(&idp).on_refresh_command(&["sleep", "30"], "500ms"),
    ));
    let daemon = Daemon::start(&harness);
    daemon.wait_for("timed out and was killed", 1, Duration::from_secs(5));
}

#[test]
fn on_refresh_signals_the_process_in_the_pid_file() {
    let idp = idp(Duration::from_secs(300));
    let harness = Harness::new();
    let pid_file = harness.path("app.pid");
    let got = harness.path("got-hup");
    // A consumer that records SIGHUP, as nginx would reload.
    let mut app = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> \"{}\"' HUP; echo $$ > \"{}\"; while :; do sleep 0.05; done",
            got.display(),
            pid_file.display()
        ))
        .spawn()
        .expect("consumer");
    assert!(wait_until(Duration::from_secs(5), || pid_file.exists()));
    harness.write_config(&config(api(&idp).on_refresh_signal("SIGHUP", &pid_file)));
    let daemon = Daemon::start(&harness);
    assert!(
        wait_until(Duration::from_secs(5), || got.exists()),
        "the consumer got SIGHUP; log:\n{}",
        daemon.log()
    );
    daemon.signal(Signal::USR1);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&got).is_ok_and(|text| text.lines().count() >= 2)
    }));
    let _ = app.kill();
    let _ = app.wait();
}
