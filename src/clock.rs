//! The only place that reads the wall clock or sleeps; tests shift time through it.
//! It decides nothing: callers compute deadlines (see `schedule`) and ask it to wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Wall-clock time, optionally shifted by an offset that tests can move (a simulated clock
/// step or suspend/resume). Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    pub(crate) fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        let shift = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            now + shift
        } else {
            now.checked_sub(shift).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    /// Moves this clock (and its clones) forward, as a wall-clock step or a resume would.
    /// Whoever sleeps on it must be told (an `Event::ClockChanged`), as the kernel tells us.
    pub fn jump(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(millis, Ordering::Relaxed);
    }

    /// Sleeps until the wall clock reads `deadline` as far as can be known now. A clock step
    /// while sleeping is not seen here: callers re-check when told the clock changed.
    /// A plain `Sleep`, not an `async fn` around one: every idle worker holds one.
    pub(crate) fn sleep_until(&self, deadline: SystemTime) -> tokio::time::Sleep {
        let left = deadline
            .duration_since(self.now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(left)
    }

    pub(crate) async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Seconds since the Unix epoch, for files and metrics.
    pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_moves_every_clone() {
        let clock = Clock::system();
        let clone = clock.clone();
        let before = clone.now();
        clock.jump(Duration::from_secs(3600));
        let after = clone.now();
        assert!(after.duration_since(before).expect("forward") >= Duration::from_secs(3600));
    }
}
