//! Exponential backoff with jitter, applied through the message's visibility
//! timeout: a failed message becomes visible again only after the delay.

use std::time::Duration;

use rand::Rng;

/// SQS refuses visibility timeouts above 12 hours.
const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, where `attempt` (1-based) is the
    /// attempt that just failed. "Equal jitter": half the exponential delay is
    /// fixed, half random, so retries spread out but never come back at once.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter_ms = rng.gen_range(0..=half.as_millis().max(1) as u64);
        (half + Duration::from_millis(jitter_ms)).min(ceiling.max(Duration::from_millis(1)))
    }

    /// The exponential part before jitter: base * 2^(attempt-1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let cap = self.cap.min(SQS_MAX_VISIBILITY);
        self.base.saturating_mul(1u32 << exponent).min(cap)
    }

    /// The delay in whole seconds, as `ChangeMessageVisibility` wants it
    /// (at least one second, so a retried message never returns at once).
    pub fn visibility_seconds(&self, attempt: u32, rng: &mut impl Rng) -> i32 {
        let delay = self.delay(attempt, rng);
        delay.as_secs_f64().ceil().max(1.0) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_ceiling_doubles_per_attempt_until_the_cap() {
        let b = backoff();
        let ceilings: Vec<u64> = (1..=7).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jittered_delays_stay_between_half_and_the_full_ceiling() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let ceiling = b.ceiling(attempt);
            for _ in 0..200 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_actually_varies_the_delay() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..50).map(|_| b.delay(4, &mut rng)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn huge_attempt_numbers_neither_overflow_nor_exceed_the_sqs_limit() {
        let b = Backoff {
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(100 * 3600),
        };
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(b.ceiling(u32::MAX), SQS_MAX_VISIBILITY);
        assert!(b.visibility_seconds(u32::MAX, &mut rng) <= 12 * 3600);
    }

    #[test]
    fn visibility_is_at_least_one_second() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
        };
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(b.visibility_seconds(1, &mut rng), 1);
    }
}
