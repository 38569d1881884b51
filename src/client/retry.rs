//! One retry combinator for the client: jittered exponential backoff, broker throttling, and one
//! **absolute** deadline.
//!
//! Why one: retry loops written by hand drift apart (different jitter, fixed sleeps, a nested
//! call that starts its own 30 s budget and so outlives its caller's). Here a retried operation
//! is a closure that says, per attempt, either "done" ([`ControlFlow::Break`]) or "try again"
//! ([`ControlFlow::Continue`] with the error and any `throttle_time_ms` the broker asked for);
//! the combinator sleeps the larger of the backoff and the throttle time, never past the
//! [`Deadline`], and hands back the last error when the deadline is reached. Nested operations
//! get [`Deadline::within`] of their caller's deadline, so no inner retry outlives the outer one.
//!
//! Throttling (KIP-219, <https://cwiki.apache.org/confluence/display/KAFKA/KIP-219+-+Improve+quota+communication>):
//! a broker that throttles a client answers with `throttle_time_ms` and expects the client not
//! to send to it again before that time; it is not an error and does not count as an attempt's
//! failure, but the next attempt waits for it. The shape follows rskafka's `backoff.rs`
//! (`ControlFlow`-returning closures, a deadline carried in the backoff).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::backoff::{jittered_delay, BackoffConfig};

/// An absolute point in time by which a retried operation (and everything it calls) must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self(Instant::now() + Duration::from_millis(ms))
    }

    /// At `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// The earlier of this deadline and `ms` milliseconds from now: the budget of a nested call.
    pub fn within(self, ms: u64) -> Self {
        self.min(Self::after_ms(ms))
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// What an attempt asks for when it did not finish.
#[derive(Debug)]
pub struct RetryAfter<E> {
    /// Why the attempt failed (returned when no attempt is left).
    pub error: E,
    /// How long the broker asked us to hold off (`throttle_time_ms`), 0 when it did not.
    pub throttle_ms: u64,
    /// A delay the error itself prescribes, used instead of the next backoff step (which then
    /// does not grow): e.g. CONCURRENT_TRANSACTIONS, retried after the configured short pause
    /// rather than an exponential backoff; 0 retries at once. `None`: the backoff.
    pub instead_of_backoff_ms: Option<u64>,
}

impl<E> RetryAfter<E> {
    /// A retriable failure without throttling.
    pub fn error(error: E) -> Self {
        Self {
            error,
            throttle_ms: 0,
            instead_of_backoff_ms: None,
        }
    }

    /// A retriable failure retried after exactly `delay_ms` (unless throttled for longer),
    /// not after the backoff.
    pub fn after_ms(error: E, delay_ms: u64) -> Self {
        Self {
            error,
            throttle_ms: 0,
            instead_of_backoff_ms: Some(delay_ms),
        }
    }
}

/// The end of a retry sequence that did not succeed in time.
#[derive(Debug)]
pub struct Exhausted<E> {
    /// The last attempt's error.
    pub last: E,
    /// How many attempts ran.
    pub attempts: u32,
}

/// Runs `op` until it breaks or `deadline` passes, sleeping a jittered exponential backoff
/// (bounded by `policy.backoff_initial_ms`/`backoff_max_ms`; `policy.deadline_ms` is ignored:
/// the caller's absolute `deadline` rules) or the broker's throttle time, whichever is longer,
/// between attempts (or the delay an attempt prescribes, [`RetryAfter::instead_of_backoff_ms`];
/// a zero delay does not sleep at all). `op` gets the attempt number (0 first).
///
/// The first attempt always runs, even when the deadline has passed, so that an operation with
/// a spent budget still reports a real error rather than a bare timeout.
///
/// # Cancel safety
/// As cancel safe as `op`; dropping the future between attempts only skips the sleep.
pub async fn retry<T, E, F, Fut>(
    policy: &BackoffConfig,
    deadline: Deadline,
    mut op: F,
) -> Result<T, Exhausted<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = ControlFlow<T, RetryAfter<E>>>,
{
    let mut attempt: u32 = 0;
    // Backoff steps taken: a prescribed delay does not grow the backoff.
    let mut steps: u32 = 0;
    loop {
        let after = match op(attempt).await {
            ControlFlow::Break(value) => return Ok(value),
            ControlFlow::Continue(after) => after,
        };
        attempt = attempt.saturating_add(1);
        let paced = match after.instead_of_backoff_ms {
            Some(ms) => Duration::from_millis(ms),
            None => {
                steps = steps.saturating_add(1);
                backoff_delay(policy, steps)
            }
        };
        let delay = paced.max(Duration::from_millis(after.throttle_ms));
        let remaining = deadline.remaining();
        if remaining.is_zero() || delay >= remaining {
            return Err(Exhausted {
                last: after.error,
                attempts: attempt,
            });
        }
        // A zero sleep may still wait for the timer's next tick (1 ms).
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The sleep before attempt `attempt` (1 = the first retry): full jitter in the upper half of an
/// exponentially growing ceiling, so retries spread out but never collapse to zero.
pub fn backoff_delay(policy: &BackoffConfig, attempt: u32) -> Duration {
    jittered_delay(policy, attempt.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> BackoffConfig {
        BackoffConfig {
            backoff_initial_ms: 10,
            backoff_max_ms: 80,
            deadline_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_retries() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, Exhausted<&str>> =
            retry(&policy(), Deadline::after_ms(10_000), |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 3 {
                        ControlFlow::Continue(RetryAfter::error("not yet"))
                    } else {
                        ControlFlow::Break(attempt)
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline_with_the_last_error() {
        let start = Instant::now();
        let result: Result<(), Exhausted<String>> =
            retry(&policy(), Deadline::after_ms(500), |attempt| async move {
                ControlFlow::Continue(RetryAfter::error(format!("attempt {attempt}")))
            })
            .await;
        let exhausted = result.unwrap_err();
        assert_eq!(
            exhausted.last,
            format!("attempt {}", exhausted.attempts - 1)
        );
        assert!(exhausted.attempts >= 6, "attempts {}", exhausted.attempts);
        // Never sleeps past the deadline.
        assert!(start.elapsed() <= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn first_attempt_runs_even_when_the_deadline_passed() {
        let deadline = Deadline::after_ms(0);
        tokio::time::advance(Duration::from_millis(5)).await;
        let result: Result<(), Exhausted<&str>> = retry(&policy(), deadline, |_| async {
            ControlFlow::Continue(RetryAfter::error("broker said no"))
        })
        .await;
        let exhausted = result.unwrap_err();
        assert_eq!((exhausted.last, exhausted.attempts), ("broker said no", 1));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_time_is_waited_out() {
        let start = Instant::now();
        let result: Result<(), Exhausted<&str>> = retry(
            &policy(),
            Deadline::after_ms(10_000),
            |attempt| async move {
                if attempt == 0 {
                    ControlFlow::Continue(RetryAfter {
                        error: "throttled",
                        throttle_ms: 700,
                        instead_of_backoff_ms: None,
                    })
                } else {
                    ControlFlow::Break(())
                }
            },
        )
        .await;
        result.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_beyond_the_deadline_ends_at_once() {
        let start = Instant::now();
        let result: Result<(), Exhausted<&str>> =
            retry(&policy(), Deadline::after_ms(100), |_| async {
                ControlFlow::Continue(RetryAfter {
                    error: "throttled",
                    throttle_ms: 5_000,
                    instead_of_backoff_ms: None,
                })
            })
            .await;
        assert_eq!(result.unwrap_err().attempts, 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_prescribed_delay_replaces_the_backoff() {
        let start = Instant::now();
        let result: Result<(), Exhausted<&str>> = retry(
            &BackoffConfig {
                backoff_initial_ms: 1_000,
                backoff_max_ms: 1_000,
                deadline_ms: 0,
            },
            Deadline::after_ms(10_000),
            |attempt| async move {
                match attempt {
                    0 => ControlFlow::Continue(RetryAfter::after_ms("busy", 20)),
                    1 => ControlFlow::Continue(RetryAfter::after_ms("at once", 0)),
                    _ => ControlFlow::Break(()),
                }
            },
        )
        .await;
        result.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn nested_deadline_never_outlives_the_outer_one() {
        let outer = Deadline::after_ms(200);
        let inner = outer.within(30_000);
        assert_eq!(inner, outer);
        let shorter = outer.within(50);
        assert!(shorter < outer);
    }

    #[test]
    fn backoff_grows_to_the_ceiling() {
        let p = policy();
        for _ in 0..100 {
            let d1 = backoff_delay(&p, 1);
            assert!(d1 >= Duration::from_millis(5) && d1 <= Duration::from_millis(10));
            let d10 = backoff_delay(&p, 10);
            assert!(d10 >= Duration::from_millis(40) && d10 <= Duration::from_millis(80));
        }
    }
}
