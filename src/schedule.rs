//! Pure timing decisions: when to refresh a token and how long to wait after a failure.
//! No I/O, no clock, no randomness of its own: time and random numbers are arguments.

use std::time::{Duration, SystemTime};

/// How much of a token's lifetime the refresh jitter may take away, at most.
const JITTER_FRACTION: f64 = 0.05;

/// Never refresh sooner than this after issue (a server handing out 1 s tokens must not make
/// us spin) unless the token is shorter than that.
const MIN_REFRESH_AFTER: Duration = Duration::from_secs(1);

/// When to refresh a token issued at `issued_at` that expires at `expires_at`: once
/// `refresh_at` of the lifetime has passed, brought forward by up to 5 % of the lifetime
/// (`random` in `[0, 1)`) so that replicas spread out. Always before expiry.
pub(crate) fn refresh_deadline(
    issued_at: SystemTime,
    expires_at: SystemTime,
    refresh_at: f64,
    random: f64,
) -> SystemTime {
    let lifetime = expires_at
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO);
    let fraction = (refresh_at - JITTER_FRACTION * random.clamp(0.0, 1.0)).clamp(0.0, 1.0);
    let after = lifetime.mul_f64(fraction);
    let floor = MIN_REFRESH_AFTER.min(lifetime / 2);
    issued_at + after.max(floor).min(lifetime)
}

/// Why the last attempt failed, as far as waiting is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// May heal by itself: back off exponentially from `min`.
    Transient,
    /// Will not heal without a change (bad credentials): wait the longest, `max`.
    Permanent,
}

/// The longest `Retry-After` honoured (or `backoff_max`, when that is longer): a server asking
/// for a day must not park a client past its token's expiry, nor overflow a deadline.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// Bounds of the retry delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (0 for the first retry): exponential backoff with
    /// full jitter between `min` and `min · 2^(attempt + 1)` (capped at `max`) — the first retry
    /// is jittered too, so a fleet refused at once does not come back at once; `Permanent` failures
    /// wait `max`. A `retry_after` from the server is a floor (capped at [`RETRY_AFTER_CAP`] or
    /// `max`, whichever is longer). The backoff (not the
    /// server's floor) never sleeps past `expires_at`, the expiry of the token still on disk,
    /// so that a healed server is tried before the old token dies.
    pub(crate) fn delay(
        &self,
        failure: Failure,
        attempt: u32,
        retry_after: Option<Duration>,
        now: SystemTime,
        expires_at: Option<SystemTime>,
        random: f64,
    ) -> Duration {
        let min = self.min.min(self.max);
        let backoff = match failure {
            Failure::Permanent => self.max,
            Failure::Transient => {
                let ceiling = min
                    .checked_mul(
                        1u32.checked_shl(attempt.saturating_add(1).min(31))
                            .unwrap_or(u32::MAX),
                    )
                    .unwrap_or(self.max)
                    .min(self.max);
                min + (ceiling - min).mul_f64(random.clamp(0.0, 1.0))
            }
        };
        let until_expiry = expires_at
            .and_then(|expires_at| expires_at.duration_since(now).ok())
            .filter(|left| !left.is_zero());
        let backoff = match until_expiry {
            Some(left) => backoff.min(left.max(min)),
            None => backoff,
        };
        let server_floor = retry_after
            .unwrap_or(Duration::ZERO)
            .min(self.max.max(RETRY_AFTER_CAP));
        backoff.max(server_floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn refreshes_at_the_configured_fraction_without_jitter() {
        let deadline = refresh_deadline(at(1000), at(1000 + 3600), 0.8, 0.0);
        assert_eq!(deadline, at(1000 + 2880));
    }

    #[test]
    fn jitter_only_brings_the_refresh_forward_by_at_most_five_percent() {
        let deadline = refresh_deadline(at(0), at(1000), 0.8, 0.999_999);
        assert!(deadline >= at(750) && deadline < at(800), "{deadline:?}");
    }

    #[test]
    fn tiny_and_broken_lifetimes_are_clamped() {
        // Expired before issue: refresh at once.
        assert_eq!(refresh_deadline(at(100), at(50), 0.8, 0.0), at(100));
        // A 1 s token still waits half its life rather than spinning.
        let deadline = refresh_deadline(at(0), at(1), 0.01, 0.0);
        assert_eq!(
            deadline,
            SystemTime::UNIX_EPOCH + Duration::from_millis(500)
        );
    }

    const BACKOFF: Backoff = Backoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let ceiling = |attempt| BACKOFF.delay(Failure::Transient, attempt, None, at(0), None, 1.0);
        assert_eq!(ceiling(0), Duration::from_secs(2));
        assert_eq!(ceiling(1), Duration::from_secs(4));
        assert_eq!(ceiling(5), Duration::from_secs(64));
        assert_eq!(ceiling(9), Duration::from_secs(300));
        assert_eq!(ceiling(200), Duration::from_secs(300));
    }

    #[test]
    fn permanent_failures_wait_the_longest() {
        let delay = BACKOFF.delay(Failure::Permanent, 0, None, at(0), None, 0.0);
        assert_eq!(delay, Duration::from_secs(300));
    }

    #[test]
    fn retry_after_is_a_floor_even_past_expiry() {
        let delay = BACKOFF.delay(
            Failure::Transient,
            0,
            Some(Duration::from_secs(120)),
            at(0),
            Some(at(60)),
            0.0,
        );
        assert_eq!(delay, Duration::from_secs(120));
    }

    #[test]
    fn an_absurd_retry_after_is_capped() {
        let huge = Some(Duration::from_secs(u64::MAX));
        let delay = BACKOFF.delay(Failure::Transient, 0, huge, at(0), None, 0.0);
        assert_eq!(delay, RETRY_AFTER_CAP);
        assert!(at(0).checked_add(delay).is_some());
    }

    #[test]
    fn backoff_never_sleeps_past_the_current_tokens_expiry() {
        let delay = BACKOFF.delay(Failure::Permanent, 0, None, at(0), Some(at(42)), 0.5);
        assert_eq!(delay, Duration::from_secs(42));
        // Already expired: the expiry no longer bounds anything.
        let delay = BACKOFF.delay(Failure::Permanent, 0, None, at(100), Some(at(42)), 0.5);
        assert_eq!(delay, Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn refresh_is_never_after_expiry_nor_before_issue(
            issued in 0u64..1_000_000, lifetime in 0u64..400 * 86_400,
            refresh_at in 0.01f64..0.99, random in 0.0f64..1.0,
        ) {
            let deadline = refresh_deadline(at(issued), at(issued + lifetime), refresh_at, random);
            prop_assert!(deadline >= at(issued));
            prop_assert!(deadline <= at(issued + lifetime));
        }

        #[test]
        fn backoff_stays_within_bounds(
            attempt in 0u32..100, random in 0.0f64..1.0, permanent: bool,
            expires in proptest::option::of(0u64..1_000),
        ) {
            let failure = if permanent { Failure::Permanent } else { Failure::Transient };
            let delay = BACKOFF.delay(failure, attempt, None, at(10), expires.map(at), random);
            prop_assert!(delay >= BACKOFF.min);
            prop_assert!(delay <= BACKOFF.max);
        }
    }
}
