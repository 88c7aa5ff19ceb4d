//! The polite request rate (`[agent] max_requests_per_second`): one token bucket per token
//! endpoint host, which every attempt passes before it takes its place in flight.
//! The bucket is a pure function of the monotonic time it is given (waiting is the clock's);
//! this file sends nothing, reads no config and decides no retries (a backoff or a
//! `Retry-After` is waited out before, in `worker`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use url::Url;

use crate::clock::Clock;

/// A token bucket holding at most one token, refilled every `interval`: requests go at most
/// one per interval, evenly spaced, never two at once (a server that counts per second sees
/// no burst on top of the rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    interval: Duration,
    /// When the next request may go; `None`: at once.
    next_free: Option<Instant>,
}

impl Bucket {
    fn new(per_second: f64) -> Self {
        Self {
            interval: interval(per_second),
            next_free: None,
        }
    }

    /// How long from `now` until a request may go.
    fn wait(&self, now: Instant) -> Duration {
        self.next_free
            .map_or(Duration::ZERO, |free| free.saturating_duration_since(now))
    }

    /// How long to sleep from `now` before this turn (zero: go now): the wait, except that a
    /// bucket that [catches up](Self::catches_up) goes at once when its turn is less than a
    /// timer tick away (a shorter sleep would last a whole tick: above 1,000 a second every
    /// turn would be a tick late, and 2,000 a second gave ~600).
    fn sleep_for(&self, now: Instant) -> Duration {
        let wait = self.wait(now);
        if self.catches_up() && wait < TIMER_TICK {
            Duration::ZERO
        } else {
            wait
        }
    }

    /// Whether the bucket keeps its rate on average rather than its spacing strictly: above
    /// 10 a second, where a tick or two lost per turn would slow it (500 a second gave 320).
    fn catches_up(&self) -> bool {
        self.interval < STRICT_FROM
    }

    /// A request goes at `now`: the next one may go one interval later, counted from `now`,
    /// or, in a bucket that [catches up](Self::catches_up), from this one's turn if it went
    /// early or less than [`CATCH_UP`] late (after an idle spell, still from `now`: no burst
    /// is saved up).
    fn take(&mut self, now: Instant) {
        let at = match self.next_free {
            Some(free) if now <= free => free,
            Some(free) if self.catches_up() && now - free < CATCH_UP => free,
            Some(_) | None => now,
        };
        self.next_free = Some(at + self.interval);
    }
}

/// The resolution of the runtime's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Above 10 requests a second (an interval under this), the timers' resolution matters and
/// the rate is kept on average ([`Bucket::catches_up`]); at or below it, which is where a
/// polite setting lies (Camunda SaaS: 1), two requests are never closer than the interval.
const STRICT_FROM: Duration = Duration::from_millis(100);

/// How late a turn of a fast bucket may go and still count from when it was due: a sleep ends
/// on the tick after its deadline, and a busy machine wakes the task a little later still.
/// With the tick a turn may go early, this is the slack of the schedule: the turns due in
/// 6 ms may go together (no more than `max_concurrent_requests` are in flight), and a server
/// counting per second sees at most 0.6 % more than the rate, plus one.
const CATCH_UP: Duration = Duration::from_millis(5);

/// One request every `1 / per_second` seconds; `per_second` is checked by the config
/// (0.001 to 10,000), the clamp only keeps a stray value from panicking.
fn interval(per_second: f64) -> Duration {
    Duration::from_secs_f64(1.0 / per_second.clamp(0.001, 1_000_000.0))
}

/// The key a request is counted under: the host and port of the URL it goes to (the
/// scheme's default port when the URL names none).
pub(crate) fn host_of(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// The buckets of one `max_requests_per_second` setting, one per host, created when a host
/// is first asked for. Shared by every worker of a configuration and kept across reloads
/// that leave the setting alone (see `WorkerContext::renewed`).
#[derive(Debug)]
pub(crate) struct RateLimits {
    per_second: Option<f64>,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Bucket>>>>,
}

impl RateLimits {
    /// Limits of `per_second` requests per host; `None`: no limit.
    pub(crate) fn new(per_second: Option<f64>) -> Arc<Self> {
        Arc::new(Self {
            per_second,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn per_second(&self) -> Option<f64> {
        self.per_second
    }

    /// Waits for `host`'s turn, then for `admit` (the place in flight), and only then spends
    /// the turn, so a request goes at least one interval after the one before it. Turns are
    /// first come, first served per host; a caller dropped while it waits spends nothing.
    /// Without a limit, this is `admit`.
    pub(crate) async fn paced<T>(
        &self,
        host: String,
        clock: &Clock,
        admit: impl Future<Output = T>,
    ) -> T {
        let Some(per_second) = self.per_second else {
            return admit.await;
        };
        let bucket = Arc::clone(
            self.hosts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(host.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Bucket::new(per_second)))),
        );
        // tokio's mutex queues its waiters in order: the host's clients take turns.
        let mut bucket = bucket.lock().await;
        let wait = bucket.sleep_for(Instant::now());
        if !wait.is_zero() {
            tracing::debug!(
                %host,
                wait = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                "waiting for the request rate (max_requests_per_second)"
            );
            clock.sleep(wait).await;
        }
        let admitted = admit.await;
        bucket.take(Instant::now());
        admitted
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_first_request_goes_at_once_and_the_next_one_interval_later() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2.0);
        assert_eq!(bucket.wait(start), Duration::ZERO);
        bucket.take(start);
        assert_eq!(bucket.wait(start), Duration::from_millis(500));
        assert_eq!(
            bucket.wait(start + Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(bucket.wait(start + Duration::from_secs(1)), Duration::ZERO);
    }

    /// Turns that go a little late (a timer fires on its next tick) are counted from when
    /// they were due: ten turns at 500 a second, each 0.9 ms late, leave the eleventh due
    /// 22 ms after the first, not 31.
    #[test]
    fn turns_taken_within_a_tick_of_their_time_keep_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(500.0);
        bucket.take(start);
        for _ in 0..10 {
            let due = start + bucket.wait(start);
            bucket.take(due + Duration::from_micros(900));
        }
        assert_eq!(bucket.wait(start), Duration::from_millis(22));
    }

    /// At a polite rate the spacing is strict: a turn that went 3 ms late moves the next one
    /// 3 ms later too, so no two requests are ever closer than the interval.
    #[test]
    fn at_ten_a_second_or_fewer_a_late_turn_moves_the_next() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2.0);
        bucket.take(start);
        bucket.take(start + Duration::from_millis(503));
        assert_eq!(bucket.wait(start), Duration::from_millis(1003));
    }

    /// 10 a second is strict, anything faster catches up; a strict bucket sleeps even a wait
    /// shorter than a tick, a fast one goes at once.
    #[test]
    fn ten_a_second_is_the_last_strict_rate() {
        let start = Instant::now();
        for (per_second, strict) in [(10.0, true), (10.000_001, false), (500.0, false)] {
            let mut bucket = Bucket::new(per_second);
            assert_eq!(bucket.catches_up(), !strict, "{per_second}");
            bucket.take(start);
            let almost = start + interval(per_second) - Duration::from_micros(500);
            let sleep = bucket.sleep_for(almost);
            assert_eq!(sleep.is_zero(), !strict, "{per_second}: {sleep:?}");
        }
    }

    /// Over any second a fast bucket lets through at most 0.6 % more than its rate, plus one:
    /// at 500 a second, one turn that goes 4.9 ms late and all the rest on time.
    #[test]
    fn a_second_of_a_fast_bucket_holds_the_rate_and_its_slack() {
        let start = Instant::now();
        let mut bucket = Bucket::new(500.0);
        let mut go = |at: Instant, late: Duration| {
            let sent = at + bucket.sleep_for(at) + late;
            bucket.take(sent);
            sent
        };
        let first = go(start, Duration::ZERO);
        let mut sent = vec![first, go(first, Duration::from_micros(4_900))];
        for _ in 0..600 {
            let last = *sent.last().expect("sent");
            sent.push(go(last, Duration::ZERO));
        }
        for (index, from) in sent.iter().enumerate() {
            let within = sent[index..]
                .iter()
                .filter(|&&at| at < *from + Duration::from_secs(1))
                .count();
            assert!(
                within <= 504,
                "{within} within a second from request {index}"
            );
        }
    }

    #[test]
    fn a_fraction_means_one_request_every_few_seconds() {
        let start = Instant::now();
        let mut bucket = Bucket::new(0.5);
        bucket.take(start);
        assert_eq!(bucket.wait(start), Duration::from_secs(2));
    }

    #[test]
    fn an_idle_bucket_saves_no_burst() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1.0);
        bucket.take(start);
        let later = start + Duration::from_secs(3600);
        assert_eq!(bucket.wait(later), Duration::ZERO);
        bucket.take(later);
        assert_eq!(bucket.wait(later), Duration::from_secs(1));
    }

    #[test]
    fn hosts_are_keyed_with_their_port() {
        let key = |text: &str| host_of(&Url::parse(text).expect("url"));
        assert_eq!(
            key("https://login.cloud.camunda.io/oauth/token"),
            "login.cloud.camunda.io:443"
        );
        assert_eq!(key("http://127.0.0.1:8080/token"), "127.0.0.1:8080");
        assert_eq!(key("http://[::1]/token"), "[::1]:80");
        assert_ne!(key("http://127.0.0.1:1/t"), key("http://127.0.0.1:2/t"));
    }

    proptest! {
        /// Whenever requests try to go (each sleeps as the bucket says, then goes, up to a few
        /// ticks late as timers on a busy machine are), none waits longer than it must, and
        /// any run of them spans their intervals: wholly at up to 10 a second, less
        /// [`CATCH_UP`] and a tick above.
        #[test]
        fn requests_are_never_closer_than_the_interval(
            per_second in 0.001f64..10_000.0,
            arrivals in proptest::collection::vec((0u64..5_000_000, 0u64..8_000), 1..50),
        ) {
            let start = Instant::now();
            let mut bucket = Bucket::new(per_second);
            let spacing = interval(per_second);
            let mut arrivals = arrivals;
            arrivals.sort_unstable();
            let strict = !bucket.catches_up();
            let slack = if strict { Duration::ZERO } else { CATCH_UP + TIMER_TICK };
            let mut sent_at: Vec<Instant> = Vec::new();
            for (offset, late) in arrivals {
                let arrived = start + Duration::from_micros(offset);
                // Requests queue in order: one arriving before the last went waits for it.
                let ready = sent_at.last().map_or(arrived, |last| (*last).max(arrived));
                let wait = bucket.sleep_for(ready);
                if let Some(last) = sent_at.last() {
                    prop_assert!(ready + wait <= ready.max(*last + spacing));
                }
                let sent = ready + wait + Duration::from_micros(late);
                bucket.take(sent);
                for (index, earlier) in sent_at.iter().enumerate() {
                    let turns = u32::try_from(sent_at.len() - index).unwrap_or(u32::MAX);
                    prop_assert!(sent - *earlier + slack >= spacing * turns);
                }
                sent_at.push(sent);
            }
        }
    }
}
