//! The polite request rate (`[agent] max_requests_per_second`): many clients against a server
//! that answers 429 above its rate, with the limit and without it, and `Retry-After` beside the
//! bucket. What the server saw is read from its recorded requests; no speed is asserted.

use std::time::{Duration, SystemTime};

use bearerd_idp::{Fault, IdpSettings, RateLimit, RecordedRequest, TOKEN_PATH};

use crate::harness::{Client, Config, Harness, TestIdp, text};

const CLIENTS: usize = 20;

/// A server allowing 2 token requests a second from this address, in bursts of up to 2, as
/// Camunda SaaS allows about one: a client spacing its requests 0.5 s apart never trips it.
fn server() -> TestIdp {
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        ..IdpSettings::default()
    });
    idp.set_rate_limit(Some(RateLimit {
        per_second: 2.0,
        burst: 2.0,
        retry_after: None,
    }));
    idp
}

/// `CLIENTS` clients of `url`, each writing `out/cNN.token`, with `agent` lines.
fn config(url: &str, agent: &[&str]) -> Config {
    let config = agent
        .iter()
        .fold(Config::new(), |config, line| config.agent(line));
    config.clients((0..CLIENTS).map(|number| {
        let name = format!("c{number:02}");
        Client::new(&name)
            .token_url(url)
            .client_id(&name)
            .secret("s")
            .output(format!("out/{name}.token"))
    }))
}

fn token_requests(requests: Vec<RecordedRequest>) -> Vec<SystemTime> {
    requests
        .into_iter()
        .filter(|request| request.path == TOKEN_PATH)
        .map(|request| request.received_at)
        .collect()
}

/// The most requests that arrived within any one second.
fn most_in_one_second(times: &[SystemTime]) -> usize {
    times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|time| {
                    time.duration_since(*start)
                        .is_ok_and(|after| after < Duration::from_secs(1))
                })
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn tokens_written(harness: &Harness) -> usize {
    (0..CLIENTS)
        .filter(|number| {
            std::fs::read_to_string(harness.path(&format!("out/c{number:02}.token")))
                .is_ok_and(|token| !token.is_empty())
        })
        .count()
}

/// 20 clients at 2 requests a second: every token is written, the server never answers 429,
/// and its log shows the requests spread out (one every half second, so at most 3 in any
/// second) instead of arriving together.
#[test]
fn twenty_clients_at_two_a_second_never_trip_a_server_limit_of_two_a_second() {
    let idp = server();
    let harness = Harness::new();
    harness.write_config(&config(&idp.token_url(), &["max_requests_per_second = 2"]));
    let output = harness.run(&["run", "--once", "--deadline", "120s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(tokens_written(&harness), CLIENTS);
    assert_eq!(idp.rate_limited_count(), 0, "{}", text(&output.stderr));
    let mut times = token_requests(idp.requests());
    times.sort();
    assert_eq!(times.len(), CLIENTS, "one request per client, no retries");
    let most = most_in_one_second(&times);
    assert!(most <= 3, "{most} requests within one second");
    // 19 gaps of at least half a second each.
    let span = times[CLIENTS - 1]
        .duration_since(times[0])
        .expect("in order");
    assert!(span >= Duration::from_millis(9_000), "all within {span:?}");
}

/// The same server and clients without the limit: the server does answer 429 (so the test
/// above can fail), and bearerd still gets every token by backing off.
#[test]
fn without_the_limit_the_same_server_answers_429() {
    let idp = server();
    let harness = Harness::new();
    harness.write_config(&config(&idp.token_url(), &[]));
    let output = harness.run(&["run", "--once", "--deadline", "120s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(tokens_written(&harness), CLIENTS);
    assert!(
        idp.rate_limited_count() > 0,
        "no 429 among {} requests",
        idp.token_request_count()
    );
    let times = token_requests(idp.requests());
    assert!(most_in_one_second(&times) > 3);
}

/// A 429 with `Retry-After: 3` from a client allowed 2 requests a second: the retry waits the
/// server's 3 s, not the bucket's half second.
#[test]
fn retry_after_still_wins_over_the_bucket() {
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        ..IdpSettings::default()
    });
    idp.set_fault_times(
        Fault::Status {
            status: 429,
            body: "slow down".into(),
            content_type: "text/plain".into(),
            retry_after: Some("3".into()),
        },
        1,
    );
    let harness = Harness::new();
    let config = Config::new()
        .agent("max_requests_per_second = 2")
        .backoff("100ms", "1s")
        .client(
            Client::new("api")
                .token_url(&idp.token_url())
                .client_id("api")
                .secret("s")
                .output("out/api.token"),
        );
    harness.write_config(&config);
    let output = harness.run(&["run", "--once", "--deadline", "60s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let times = token_requests(idp.requests());
    assert_eq!(times.len(), 2, "the 429, then the retry");
    let gap = times[1].duration_since(times[0]).expect("in order");
    assert!(gap >= Duration::from_millis(2_900), "retried after {gap:?}");
}

#[test]
fn check_prints_the_request_rate() {
    let harness = Harness::new();
    harness.write_config(&config(
        "https://login.cloud.camunda.io/oauth/token",
        &["max_requests_per_second = 0.5"],
    ));
    let output = harness.run(&["check"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    assert!(
        report.contains("max_requests_per_second 0.5 per token endpoint host"),
        "{report}"
    );
    harness.write_config(&config("https://login.cloud.camunda.io/oauth/token", &[]));
    let report = text(&harness.run(&["check"]).stdout);
    assert!(report.contains("max_requests_per_second off"), "{report}");
}
