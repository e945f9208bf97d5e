//! Retry delays: exponential backoff with jitter, never shorter than the server's `Retry-After`.

use rand::Rng;
use std::time::Duration;

/// The delay before retry number `failures` (1 = first retry): `min * 2^(failures-1)`, capped at
/// `max`, then drawn uniformly from its upper half ("equal jitter", so a fleet that failed
/// together does not retry together), and raised to `retry_after` when the server asked for it.
pub fn delay(
    failures: u32,
    min: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let half = base / 2;
    let jittered = half + half.mul_f64(rng.gen::<f64>());
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_retry_after() {
        let mut rng = rand::thread_rng();
        let min = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for _ in 0..100 {
            let d1 = delay(1, min, max, None, &mut rng);
            assert!(d1 >= Duration::from_secs(1) && d1 <= min, "{d1:?}");
            let d4 = delay(4, min, max, None, &mut rng);
            assert!(d4 >= Duration::from_secs(8) && d4 <= Duration::from_secs(16));
            let d20 = delay(20, min, max, None, &mut rng);
            assert!(d20 >= Duration::from_secs(30) && d20 <= max);
            let ra = delay(1, min, max, Some(Duration::from_secs(120)), &mut rng);
            assert_eq!(ra, Duration::from_secs(120));
        }
        // Jitter: not all equal.
        let v: std::collections::BTreeSet<_> = (0..20)
            .map(|_| delay(3, min, max, None, &mut rng))
            .collect();
        assert!(v.len() > 1);
    }
}
