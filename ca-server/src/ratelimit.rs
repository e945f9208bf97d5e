//! Token-bucket rate limits per client identity (certificate serial) or IP address, one bucket
//! family per route class. An empty bucket answers `429 rate_limited` with `Retry-After`.

use crate::config::{Limits, Rate};
use crate::error::{ApiError, ApiResult, Code};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

/// Which bucket family a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `POST /v1/enroll`, EST simpleenroll: keyed by client IP.
    Enroll,
    /// `POST /v1/renew`, EST simplereenroll: keyed by client certificate.
    Renew,
    /// Admin routes: keyed by admin certificate (or IP when none).
    Admin,
}

/// The limiters of one server.
#[derive(Debug)]
pub struct RateLimits {
    enroll: DefaultKeyedRateLimiter<String>,
    renew: DefaultKeyedRateLimiter<String>,
    admin: DefaultKeyedRateLimiter<String>,
}

fn quota(r: Rate) -> Quota {
    let per_second = NonZeroU32::new(r.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl RateLimits {
    /// Limiters for the configured rates.
    pub fn new(limits: &Limits) -> Self {
        RateLimits {
            enroll: RateLimiter::keyed(quota(limits.enroll)),
            renew: RateLimiter::keyed(quota(limits.renew)),
            admin: RateLimiter::keyed(quota(limits.admin)),
        }
    }

    fn limiter(&self, class: Class) -> &DefaultKeyedRateLimiter<String> {
        match class {
            Class::Enroll => &self.enroll,
            Class::Renew => &self.renew,
            Class::Admin => &self.admin,
        }
    }

    /// Take one token from `key`'s bucket, or refuse with Retry-After.
    pub fn check(&self, class: Class, key: &str) -> ApiResult<()> {
        match self.limiter(class).check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut e = ApiError::new(
                    Code::RateLimited,
                    format!("too many requests; retry in {} s", secs.max(1)),
                );
                e.retry_after = Some(secs.max(1));
                Err(e)
            }
        }
    }

    /// Forget idle buckets (called periodically; bounds memory under many clients).
    pub fn retain_recent(&self) {
        self.enroll.retain_recent();
        self.renew.retain_recent();
        self.admin.retain_recent();
    }
}
