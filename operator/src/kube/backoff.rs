//! Retry delays after failed reconciles: exponential per object, capped, with jitter so that
//! the objects that failed together (an API server restart) do not all come back together.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// The first retry's delay (before jitter).
const FIRST: Duration = Duration::from_secs(5);
/// The longest delay (before jitter).
const MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per object, reset by a successful reconcile.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Counts a failure of `key` and returns how long to wait before trying it again.
    pub fn failed(&self, key: &str) -> Duration {
        let failures = {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(key.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        delay(failures, jitter())
    }

    /// Forgets `key`'s failures.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The delay after `failures` consecutive failures: `FIRST * 2^(failures - 1)`, at most `MAX`,
/// scaled by `unit` in [0, 1) onto [half, all] of it ("equal jitter").
fn delay(failures: u32, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = FIRST.saturating_mul(1 << exponent).min(MAX);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the standard library's per-process random hash keys.
fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap() {
        let full: Vec<u64> = (1..=10).map(|n| delay(n, 1.0).as_secs()).collect();
        assert_eq!(full, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(delay(u32::MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_keeps_at_least_half_of_the_delay() {
        assert_eq!(delay(3, 0.0), Duration::from_secs(10));
        for _ in 0..100 {
            let d = delay(3, jitter());
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(20), "{d:?}");
        }
    }

    #[test]
    fn a_success_starts_the_count_again() {
        let backoff = Backoff::default();
        for _ in 0..5 {
            backoff.failed("fr/a");
        }
        assert!(backoff.failed("fr/a") >= Duration::from_secs(80));
        assert!(backoff.failed("fr/b") <= FIRST);
        backoff.succeeded("fr/a");
        assert!(backoff.failed("fr/a") <= FIRST);
    }
}
