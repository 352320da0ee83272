//! How fast callers without a client certificate may call, per address.
//!
//! Enrollment and health are open to anyone who completes a TLS handshake;
//! enrollment costs a database lookup and, with a good token, a signature.
//! A token bucket per client address keeps one host from spending that for
//! everyone (a token cannot be guessed, but guessing still costs us).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Buckets kept past which full ones (idle addresses) are forgotten.
const PRUNE_AT: usize = 4096;

#[derive(Debug)]
pub struct AnonymousLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl AnonymousLimiter {
    pub fn new(limits: &LimitsConfig) -> Self {
        AnonymousLimiter {
            per_second: f64::from(limits.anonymous_calls_per_second),
            burst: f64::from(limits.anonymous_burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call from `peer`'s bucket; `Err` says how long until the
    /// next one would be allowed.
    pub fn take(&self, peer: IpAddr) -> Result<(), Duration> {
        self.take_at(peer, Instant::now())
    }

    fn take_at(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> AnonymousLimiter {
        AnonymousLimiter::new(&LimitsConfig {
            anonymous_calls_per_second: per_second,
            anonymous_burst: burst,
            ..LimitsConfig::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = limiter(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.take_at(A, start), Ok(()));
        }
        let wait = limiter.take_at(A, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another address has its own bucket.
        assert_eq!(limiter.take_at(B, start), Ok(()));
        // 100 ms later, one more call (and only one).
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.take_at(A, later), Ok(()));
        assert!(limiter.take_at(A, later).is_err());
        // A quiet spell refills to the burst, no further.
        let quiet = later + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.take_at(A, quiet), Ok(()));
        }
        assert!(limiter.take_at(A, quiet).is_err());
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let limiter = limiter(10, 5);
        let start = Instant::now();
        for i in 0..PRUNE_AT as u32 {
            let _ = limiter.take_at(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), start);
        }
        assert_eq!(limiter.tracked(), PRUNE_AT);
        let _ = limiter.take_at(A, start + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 1);
    }
}
