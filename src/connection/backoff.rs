//! Exponential backoff with full jitter and a deadline.
//!
//! Why jitter: when a broker restarts, every client that lost it retries at once; spreading the
//! retries (AWS "full jitter") keeps them from arriving in lock step. Why a deadline: a retry
//! loop must end, with an error that says how long it tried, rather than spin forever.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay's upper bound.
    pub backoff_initial_ms: u64,
    /// The largest delay's upper bound.
    pub backoff_max_ms: u64,
    /// How long retries may go on in total.
    pub deadline_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 50,
            backoff_max_ms: 1_000,
            deadline_ms: 30_000,
        }
    }
}

/// The delay after `retries` earlier delays: drawn from the upper half of a ceiling that doubles
/// from `backoff_initial_ms` up to `backoff_max_ms`, so retries spread out but never collapse to
/// zero. The one jitter formula of the crate (`client::retry` uses it too).
pub fn jittered_delay(config: &BackoffConfig, retries: u32) -> Duration {
    let ceiling = config
        .backoff_initial_ms
        .saturating_mul(1u64 << retries.min(20))
        .min(config.backoff_max_ms)
        .max(1);
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

/// One retry sequence.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempts: u32,
    deadline: Instant,
}

impl Backoff {
    /// Starts a retry sequence now.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempts: 0,
            deadline: Instant::now() + Duration::from_millis(config.deadline_ms),
        }
    }

    /// How many delays have been handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The deadline this sequence ends at.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next delay, or `None` once the deadline would be passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = jittered_delay(&self.config, self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        Some(delay.min(self.deadline - now))
    }

    /// Sleeps for the next delay; `false` when the deadline has passed (do not retry).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only skips the sleep.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_grow_and_stop_at_deadline() {
        let mut b = Backoff::new(BackoffConfig {
            backoff_initial_ms: 10,
            backoff_max_ms: 80,
            deadline_ms: 300,
        });
        let mut total = Duration::ZERO;
        let mut last_ceiling_hit = false;
        while let Some(d) = b.next_delay() {
            assert!(d <= Duration::from_millis(80));
            last_ceiling_hit |= d >= Duration::from_millis(40);
            total += d;
            tokio::time::advance(d).await;
        }
        assert!(last_ceiling_hit);
        assert!(total <= Duration::from_millis(300));
        assert!(b.attempts() >= 4);
    }
}
