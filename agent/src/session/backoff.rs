//! Reconnection delays: exponential, capped, with full jitter, so a thousand
//! agents that lost the coordinator together do not come back together.

use std::time::Duration;

/// The first delays are short so a brief blip costs little.
const INITIAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Backoff {
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Backoff { cap, attempt: 0 }
    }

    /// The next delay: uniformly random in [0, min(cap, initial * 2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        INITIAL.saturating_mul(factor).min(self.cap)
    }

    /// After a session that worked, start over from short delays.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[4], Duration::from_secs(8));
        assert_eq!(ceilings[9], Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_spread_not_synchronized() {
        let delays: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut backoff = Backoff::new(Duration::from_secs(30));
                for _ in 0..6 {
                    backoff.next_delay();
                }
                backoff.next_delay()
            })
            .collect();
        let ceiling = Duration::from_secs(30);
        // Full jitter: every tenth of the range gets a share of the agents.
        for decile in 0..10 {
            let low = ceiling.mul_f64(decile as f64 / 10.0);
            let high = ceiling.mul_f64((decile + 1) as f64 / 10.0);
            let count = delays.iter().filter(|d| **d >= low && **d < high).count();
            assert!(
                count > 40,
                "decile {decile} holds only {count} of 1000 delays"
            );
        }
    }
}
