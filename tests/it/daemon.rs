//! `bearerd run` as a process: refresh on schedule, back off, honour Retry-After, reuse
//! saved tokens across restarts, reload live (edit, rename, kubelet swap), and signals.

use std::time::{Duration, Instant};

use bearerd_idp::{Fault, IdpSettings};
use rustix::process::Signal;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, http_get, wait_until};

/// A client whose id is its name and whose secret is `NAME-secret`, writing `path`.
fn client_writing(idp: &TestIdp, name: &str, path: &str) -> Client {
    Client::new(name)
        .token_url(&idp.token_url())
        .client_id(name)
        .secret(&format!("{name}-secret"))
        .output(path)
}

/// [`client_writing`] `tokens/NAME.token`.
fn client(idp: &TestIdp, name: &str) -> Client {
    client_writing(idp, name, &format!("tokens/{name}.token"))
}

fn config(idp: &TestIdp, clients: &[&str]) -> Config {
    with_backoff(clients.iter().map(|name| client(idp, name)))
}

fn with_backoff(clients: impl IntoIterator<Item = Client>) -> Config {
    Config::new().backoff("200ms", "1s").clients(clients)
}

fn idp_with(clients: &[&str], lifetime: Duration) -> TestIdp {
    let idp = TestIdp::start(IdpSettings::default());
    for name in clients {
        idp.add_client(name, &format!("{name}-secret"), lifetime);
    }
    idp
}

fn requests_for(idp: &TestIdp, client: &str) -> usize {
    idp.requests()
        .iter()
        .filter(|request| request.client_id.as_deref() == Some(client))
        .count()
}

fn read(harness: &Harness, client: &str) -> String {
    std::fs::read_to_string(harness.path(&format!("tokens/{client}.token"))).unwrap_or_default()
}

/// Waits until the client's token file holds something other than `old`; returns it.
fn wait_for_change(harness: &Harness, client: &str, old: &str, deadline: Duration) -> String {
    let mut new = String::new();
    assert!(
        wait_until(deadline, || {
            new = read(harness, client);
            !new.is_empty() && new != old
        }),
        "{client}'s token did not change within {deadline:?}"
    );
    new
}

#[test]
fn each_client_refreshes_on_schedule_and_no_more_often() {
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(2));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &clients));
    let daemon = Daemon::start(&harness);
    let started = Instant::now();
    for client in clients {
        let mut token = wait_for_change(&harness, client, "", Duration::from_secs(5));
        for _ in 0..3 {
            token = wait_for_change(&harness, client, &token, Duration::from_secs(4));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for client in clients {
        let requests = requests_for(&idp, client);
        // One fetch at start, then one per 2 s × (0.75..0.8) of lifetime at most.
        let most = 2.0 + elapsed / 1.5;
        assert!(
            requests >= 4 && requests as f64 <= most,
            "{client}: {requests} requests in {elapsed:.1}s; log:\n{}",
            daemon.log()
        );
    }
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

#[test]
fn a_failing_endpoint_keeps_the_old_file_backs_off_and_recovers() {
    let idp = idp_with(&["api"], Duration::from_secs(2));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &["api"]));
    let daemon = Daemon::start(&harness);
    let good = wait_for_change(&harness, "api", "", Duration::from_secs(5));
    idp.set_fault(Fault::Status {
        status: 503,
        body: "down for maintenance".to_owned(),
        content_type: "text/plain".to_owned(),
        retry_after: None,
    });
    let failing_since = Instant::now();
    let before = idp.token_request_count();
    // Fail for longer than a whole lifetime.
    daemon.wait_for("token request failed", 1, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(10), || failing_since
        .elapsed()
        > Duration::from_secs(4)));
    assert_eq!(
        read(&harness, "api"),
        good,
        "a failure never replaces the good file"
    );
    let attempts = idp.token_request_count() - before;
    // Backoff from 200 ms doubling to 1 s: about 6 attempts in 4 s, never a hammering.
    assert!((2..=12).contains(&attempts), "{attempts} attempts in 4 s");
    assert_eq!(
        daemon.count("token request failed;") + daemon.count("token request failed "),
        1,
        "warned once per state change, not per attempt:\n{}",
        daemon.log()
    );

    idp.set_fault(Fault::None);
    let healed = Instant::now();
    wait_for_change(&harness, "api", &good, Duration::from_secs(3));
    assert!(
        healed.elapsed() <= Duration::from_millis(1500),
        "recovered within one backoff step (≤ 1 s)"
    );
    daemon.wait_for("recovered", 1, Duration::from_secs(2));
}

#[test]
fn retry_after_delays_the_next_request() {
    let idp = idp_with(&["api"], Duration::from_secs(300));
    idp.set_fault_times(
        Fault::Status {
            status: 429,
            body: "{\"error\":\"slow_down\"}".to_owned(),
            content_type: "application/json".to_owned(),
            retry_after: Some("2".to_owned()),
        },
        1,
    );
    let harness = Harness::new();
    harness.write_config(&config(&idp, &["api"]));
    let _daemon = Daemon::start(&harness);
    wait_for_change(&harness, "api", "", Duration::from_secs(8));
    let times: Vec<_> = idp.requests().iter().map(|r| r.received_at).collect();
    assert_eq!(times.len(), 2);
    let gap = times[1].duration_since(times[0]).expect("ordered");
    assert!(
        gap >= Duration::from_secs(2),
        "waited {gap:?} after Retry-After: 2"
    );
}

#[test]
fn a_restart_reuses_valid_tokens_and_refetches_only_changed_clients() {
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &clients));
    let daemon = Daemon::start(&harness);
    let alpha = wait_for_change(&harness, "alpha", "", Duration::from_secs(5));
    let beta = wait_for_change(&harness, "beta", "", Duration::from_secs(5));
    // The state a restart reuses is saved after the files are written, and logged after that.
    daemon.wait_for("token refreshed", 2, Duration::from_secs(5));
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert_eq!(idp.token_request_count(), 2);

    // Same config: zero requests.
    let daemon = Daemon::start(&harness);
    daemon.wait_for("reusing the saved token", 2, Duration::from_secs(5));
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert_eq!(idp.token_request_count(), 2, "a restart sends no request");
    assert_eq!(read(&harness, "alpha"), alpha);

    // beta's scope changes: only beta is fetched again.
    harness.write_config(&config(&idp, &clients).edit("beta", |beta| beta.scope("reports:read")));
    let daemon = Daemon::start(&harness);
    wait_for_change(&harness, "beta", &beta, Duration::from_secs(5));
    daemon.wait_for("reusing the saved token", 1, Duration::from_secs(5));
    let _ = daemon.terminate();
    assert_eq!(requests_for(&idp, "alpha"), 1);
    assert_eq!(requests_for(&idp, "beta"), 2);
    assert_eq!(read(&harness, "alpha"), alpha);
}

/// Starts a daemon with alpha and beta and waits for both tokens.
fn reload_setup() -> (TestIdp, Harness, Daemon, Config) {
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(300));
    let harness = Harness::new();
    let config = config(&idp, &clients);
    harness.write_config(&config);
    let daemon = Daemon::start(&harness);
    wait_for_change(&harness, "alpha", "", Duration::from_secs(5));
    wait_for_change(&harness, "beta", "", Duration::from_secs(5));
    (idp, harness, daemon, config)
}

fn with_beta_scope(config: Config) -> String {
    config.edit("beta", |beta| beta.scope("x")).to_string()
}

/// After a reload that changed only beta: exactly one reload, one new request for beta, none
/// for alpha.
fn assert_one_reload_of_beta(idp: &TestIdp, daemon: &Daemon) {
    daemon.wait_for("configuration reloaded", 1, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || requests_for(
        idp, "beta"
    ) == 2));
    // Let any spurious second reload show itself.
    assert!(!wait_until(Duration::from_millis(600), || daemon
        .count("configuration reloaded")
        > 1));
    assert_eq!(
        daemon.count("configuration reloaded"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(
        requests_for(idp, "alpha"),
        1,
        "unchanged clients get no request"
    );
}

#[test]
fn an_edit_in_place_reloads_once() {
    let (idp, harness, daemon, config) = reload_setup();
    std::fs::write(harness.path("bearerd.toml"), with_beta_scope(config)).expect("edit");
    assert_one_reload_of_beta(&idp, &daemon);
}

#[test]
fn a_rename_replace_reloads_once() {
    let (idp, harness, daemon, config) = reload_setup();
    let temp = harness.write(".bearerd.toml.swp", &with_beta_scope(config));
    std::fs::rename(temp, harness.path("bearerd.toml")).expect("rename");
    assert_one_reload_of_beta(&idp, &daemon);
}

#[test]
fn a_kubelet_configmap_swap_reloads_once() {
    // The layout kubelet's atomic writer makes: a timestamped directory, `..data` pointing at
    // it, and the visible file a symlink through `..data`.
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(300));
    let harness = Harness::new();
    let config = with_backoff(
        clients.map(|name| client_writing(&idp, name, &format!("../tokens/{name}.token"))),
    );
    let volume = harness.path("config");
    let first = volume.join("..2026_11_29_03_00_00.000000001");
    std::fs::create_dir_all(&first).expect("mkdir");
    std::fs::write(first.join("bearerd.toml"), config.to_string()).expect("write");
    std::os::unix::fs::symlink("..2026_11_29_03_00_00.000000001", volume.join("..data"))
        .expect("symlink");
    std::os::unix::fs::symlink("..data/bearerd.toml", volume.join("bearerd.toml")).expect("link");
    let daemon =
        Daemon::start_with(harness.command_with_config(&volume.join("bearerd.toml"), &["run"]));
    wait_for_change(&harness, "alpha", "", Duration::from_secs(5));
    wait_for_change(&harness, "beta", "", Duration::from_secs(5));

    let second = volume.join("..2026_11_29_03_05_00.000000002");
    std::fs::create_dir_all(&second).expect("mkdir");
    std::fs::write(second.join("bearerd.toml"), with_beta_scope(config)).expect("write");
    std::os::unix::fs::symlink("..2026_11_29_03_05_00.000000002", volume.join("..data_tmp"))
        .expect("symlink");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    std::fs::remove_dir_all(&first).expect("cleanup");
    assert_one_reload_of_beta(&idp, &daemon);
}

#[test]
fn an_invalid_edit_keeps_the_old_config_running() {
    let (idp, harness, daemon, config) = reload_setup();
    std::fs::write(
        harness.path("bearerd.toml"),
        config
            .edit("beta", |beta| beta.line("bogus = 1"))
            .to_string(),
    )
    .expect("edit");
    daemon.wait_for(
        "invalid configuration, keeping the running one",
        1,
        Duration::from_secs(5),
    );
    assert!(
        daemon.log().contains("clients.beta.bogus: unknown key"),
        "located: {}",
        daemon.log()
    );
    // Still running: SIGUSR1 refreshes both clients under the old config.
    let alpha = read(&harness, "alpha");
    daemon.signal(Signal::USR1);
    wait_for_change(&harness, "alpha", &alpha, Duration::from_secs(5));
    assert_eq!(daemon.count("configuration reloaded"), 0);
    let _ = idp;
}

#[test]
fn sighup_reloads_and_a_changed_secret_file_refetches_its_client() {
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(300));
    let harness = Harness::new();
    harness.write("beta.secret", "beta-secret\n");
    harness.write_config(&config(&idp, &clients).edit("beta", |beta| {
        beta.without("client_secret").secret_file("beta.secret")
    }));
    let daemon = Daemon::start(&harness);
    wait_for_change(&harness, "alpha", "", Duration::from_secs(5));
    let beta = wait_for_change(&harness, "beta", "", Duration::from_secs(5));

    daemon.signal(Signal::HUP);
    daemon.wait_for("configuration reloaded", 1, Duration::from_secs(5));
    assert!(
        !wait_until(Duration::from_millis(800), || idp.token_request_count() > 2),
        "an unchanged reload refetches nothing"
    );

    idp.add_client("beta", "rotated-secret", Duration::from_secs(300));
    harness.write("beta.secret", "rotated-secret\n");
    wait_for_change(&harness, "beta", &beta, Duration::from_secs(5));
    assert_eq!(requests_for(&idp, "alpha"), 1);
}

#[test]
fn sigterm_during_a_slow_request_exits_at_once_and_keeps_the_file() {
    let idp = idp_with(&["api"], Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &["api"]));
    let previous = harness.write("tokens/api.token", "previous-good-token");
    idp.set_fault(Fault::Delay(Duration::from_secs(5)));
    let daemon = Daemon::start(&harness);
    assert!(wait_until(Duration::from_secs(5), || idp
        .token_request_count()
        == 1));
    let (status, took) = daemon.terminate();
    assert!(status.success(), "exit 0 on SIGTERM");
    assert!(took < Duration::from_secs(1), "stopped in {took:?}");
    assert_eq!(
        std::fs::read(previous).expect("read"),
        b"previous-good-token"
    );
}

#[test]
fn sigusr1_refreshes_every_client_now() {
    let idp = idp_with(&["api"], Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &["api"]));
    let daemon = Daemon::start(&harness);
    let first = wait_for_change(&harness, "api", "", Duration::from_secs(5));
    daemon.signal(Signal::USR1);
    wait_for_change(&harness, "api", &first, Duration::from_secs(5));
    assert_eq!(idp.token_request_count(), 2);
}

/// A suspend/resume or clock step, through the injected clock: a token with an hour to go
/// is refreshed at once when the clock jumps past its refresh time, not an hour later.
#[test]
fn a_clock_jump_makes_a_due_refresh_happen_at_once() {
    let idp = idp_with(&["api"], Duration::from_secs(3600));
    let harness = Harness::new();
    let path = harness.write_config(&config(&idp, &["api"]));
    let config = bearerd::config::Config::load(&path).expect("config");
    let clock = bearerd::clock::Clock::system();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events = bearerd::events::Events::channel();
    let events_tx = events.sender();
    let inputs = bearerd::Inputs {
        admin: None,
        events,
    };
    let daemon = std::thread::spawn({
        let clock = clock.clone();
        move || runtime.block_on(bearerd::run(config, clock, inputs))
    });
    let first = wait_for_change(&harness, "api", "", Duration::from_secs(5));
    assert_eq!(idp.token_request_count(), 1);

    clock.jump(Duration::from_secs(3000)); // past 80 % of the hour
    events_tx
        .send(bearerd::events::Event::ClockChanged)
        .expect("send");
    wait_for_change(&harness, "api", &first, Duration::from_secs(3));
    assert_eq!(idp.token_request_count(), 2);

    events_tx
        .send(bearerd::events::Event::Shutdown)
        .expect("send");
    daemon.join().expect("join");
}

/// The daemon in-process, given a listener the test bound itself: the test knows the admin
/// endpoint's address before the daemon starts, without reading the log.
#[test]
fn an_in_process_daemon_serves_readyz_on_the_listener_it_is_given() {
    let idp = idp_with(&["api"], Duration::from_secs(3600));
    let harness = Harness::new();
    let path = harness.write_config(&config(&idp, &["api"]));
    let config = bearerd::config::Config::load(&path).expect("config");
    assert_eq!(config.agent.listen, None, "the config binds nothing itself");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let events = bearerd::events::Events::channel();
    let events_tx = events.sender();
    let inputs = bearerd::Inputs {
        admin: Some(listener),
        events,
    };
    let daemon = std::thread::spawn(move || {
        runtime.block_on(bearerd::run(
            config,
            bearerd::clock::Clock::system(),
            inputs,
        ))
    });

    let mut readyz = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let response = http_get(&address, "/readyz");
            let ready = response.status == 200;
            readyz = Some(response);
            ready
        }),
        "/readyz on {address} never said ready: {:?}",
        readyz.map(|response| response.text)
    );
    assert_eq!(
        readyz.map(|response| response.body).as_deref(),
        Some("ready\n")
    );
    assert!(
        !read(&harness, "api").is_empty(),
        "ready means a token on disk"
    );

    events_tx
        .send(bearerd::events::Event::Shutdown)
        .expect("send");
    daemon.join().expect("join");
}

#[test]
fn on_expiry_remove_deletes_the_files_of_an_expired_token() {
    let idp = idp_with(&["api"], Duration::from_secs(2));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &["api"]).edit("api", |api| api.set("on_expiry", "remove")));
    let daemon = Daemon::start(&harness);
    wait_for_change(&harness, "api", "", Duration::from_secs(5));
    idp.set_fault(Fault::Status {
        status: 503,
        body: String::new(),
        content_type: "text/plain".to_owned(),
        retry_after: None,
    });
    let token = harness.path("tokens/api.token");
    assert!(
        wait_until(Duration::from_secs(6), || !token.exists()),
        "the expired token's file is removed; log:\n{}",
        daemon.log()
    );
    daemon.wait_for(
        "removed the expired token's files",
        1,
        Duration::from_secs(2),
    );

    // Once the endpoint heals, the file comes back.
    idp.set_fault(Fault::None);
    wait_for_change(&harness, "api", "", Duration::from_secs(5));
}

#[test]
fn a_removed_client_stops_being_refreshed() {
    let clients = ["alpha", "beta"];
    let idp = idp_with(&clients, Duration::from_secs(2));
    let harness = Harness::new();
    harness.write_config(&config(&idp, &clients));
    let daemon = Daemon::start(&harness);
    wait_for_change(&harness, "beta", "", Duration::from_secs(5));
    harness.write_config(&config(&idp, &["alpha"]));
    daemon.wait_for("configuration reloaded", 1, Duration::from_secs(5));
    let beta_requests = requests_for(&idp, "beta");
    // alpha goes on refreshing (three more tokens, over two lifetimes) while beta gets none.
    let mut alpha = read(&harness, "alpha");
    for _ in 0..3 {
        alpha = wait_for_change(&harness, "alpha", &alpha, Duration::from_secs(4));
    }
    assert_eq!(
        requests_for(&idp, "beta"),
        beta_requests,
        "{}",
        daemon.log()
    );
}

#[test]
fn a_token_endpoint_that_goes_missing_is_discovered_again() {
    let idp = idp_with(&["api"], Duration::from_secs(300));
    let harness = Harness::new();
    harness.write_config(
        &config(&idp, &["api"]).edit("api", |api| api.without("token_url").issuer(&idp.issuer())),
    );
    idp.set_fault_times(
        Fault::Status {
            status: 404,
            body: "not here".to_owned(),
            content_type: "text/plain".to_owned(),
            retry_after: None,
        },
        1,
    );
    let _daemon = Daemon::start(&harness);
    wait_for_change(&harness, "api", "", Duration::from_secs(8));
    let discoveries = idp
        .requests()
        .iter()
        .filter(|request| request.path == bearerd_idp::DISCOVERY_PATH)
        .count();
    assert_eq!(
        discoveries, 2,
        "a 404 from the token endpoint drops the cached discovery"
    );
}

/// The one path from a fetched token to its files, `worker::write_outputs`: every output in
/// its format with exactly its mode, the client's name in a template, and a second write of
/// the same token leaves the files alone (same inode) and reports no change, so no
/// `on_refresh` hook runs for it.
#[test]
fn write_outputs_writes_each_format_and_leaves_unchanged_files_alone() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    let harness = Harness::new();
    let api = Client::new("api")
        .token_url("http://127.0.0.1:9/token")
        .client_id("api")
        .secret("api-secret")
        .output_with(
            "out/api.header",
            &["format = \"header\"", "mode = \"0644\""],
        )
        .output_with(
            "out/api.txt",
            &[
                "format = \"template\"",
                r#"template = "{{ client }}={{ access_token }}""#,
            ],
        );
    let path = harness.write_config(&Config::new().client(api));
    let config = bearerd::config::Config::load(&path).expect("config");
    let spec = Arc::new(config.clients[0].clone());
    let token = bearerd::token::Token {
        access_token: bearerd::secret::Secret::new("abc.def"),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at: std::time::UNIX_EPOCH,
        expires_at: std::time::UNIX_EPOCH + Duration::from_secs(3600),
        issued_token_type: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let write = || runtime.block_on(bearerd::worker::write_outputs(&spec, &token));

    assert_eq!(write(), Ok(true));
    let header = harness.path("out/api.header");
    assert_eq!(
        std::fs::read_to_string(&header).expect("header"),
        "Authorization: Bearer abc.def\n"
    );
    let metadata = std::fs::metadata(&header).expect("metadata");
    assert_eq!(metadata.mode() & 0o7777, 0o644);
    assert_eq!(harness.read("out/api.txt"), "api=abc.def");

    assert_eq!(write(), Ok(false));
    assert_eq!(
        std::fs::metadata(&header).expect("metadata").ino(),
        metadata.ino()
    );
}
