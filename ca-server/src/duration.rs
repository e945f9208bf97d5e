//! Durations that come from a request or a command-line flag (`ttl`, `expiring_within`,
//! `--ttl`, `--expiring-within`), parsed together with their allowed range.
//!
//! A duration is added to the clock's time; chrono panics when that overflows, so every such
//! value is checked here first. Syntax errors and range errors are told apart: `1.5h` is
//! `bad_request` (write `90m`), `99999999999d`, `1e30s` or `-1h` is `out_of_range`, and both
//! messages name the field and what it accepts.

use crate::error::{ApiError, Code};
use ca_core::profile::Span;
use chrono::Duration;

/// The range of `expiring_within` / `--expiring-within`: 1 second to 100 years.
pub(crate) const EXPIRING_WITHIN: Range = Range {
    min_secs: 1,
    max_secs: 36_500 * 86_400,
};

/// The widest token lifetime the CLI sends (`--ttl`); the server then applies its own
/// `tokens.max_ttl` (at most 365d, see [`TOKEN_TTL_CEILING`]).
pub(crate) const TOKEN_TTL_FLAG: Range = Range {
    min_secs: 1,
    max_secs: TOKEN_TTL_CEILING,
};

/// Ceiling of `tokens.max_ttl` in the configuration (seconds): 365 days.
pub(crate) const TOKEN_TTL_CEILING: i64 = 365 * 86_400;

/// An inclusive range of whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    /// Shortest accepted duration (seconds).
    pub min_secs: i64,
    /// Longest accepted duration (seconds).
    pub max_secs: i64,
}

impl Range {
    /// `1s` to `max`.
    pub(crate) fn up_to(max: Duration) -> Range {
        Range {
            min_secs: 1,
            max_secs: max.num_seconds().max(1),
        }
    }
}

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not written as `<whole number><s|m|h|d>`.
    Syntax(String),
    /// A number, outside the range.
    OutOfRange(String),
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Syntax(m) | DurationError::OutOfRange(m) => f.write_str(m),
        }
    }
}

impl From<DurationError> for ApiError {
    fn from(e: DurationError) -> Self {
        match e {
            DurationError::Syntax(m) => ApiError::bad_request(m),
            DurationError::OutOfRange(m) => ApiError::new(Code::OutOfRange, m),
        }
    }
}

fn span_text(secs: i64) -> String {
    Span(Duration::seconds(secs)).to_string()
}

/// Parse `value` (`30s`, `15m`, `24h`, `90d`) for `field` and check it lies in `range`.
pub(crate) fn parse(field: &str, value: &str, range: Range) -> Result<Span, DurationError> {
    let out_of_range = || {
        DurationError::OutOfRange(format!(
            "{field}={value:?} is out of range: it must be between {} and {}",
            span_text(range.min_secs),
            span_text(range.max_secs)
        ))
    };
    let syntax = || {
        DurationError::Syntax(format!(
            "{field}={value:?} is not a duration: write a whole number and a unit s, m, h or d \
             (30s, 15m, 24h, 90d)"
        ))
    };
    let t = value.trim();
    let Some(unit) = t.chars().last() else {
        return Err(syntax());
    };
    let multiplier: u128 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(syntax()),
    };
    let number = &t[..t.len() - 1];
    if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        // u128 holds 38 digits; more digits than that is out of range too.
        let secs = number
            .parse::<u128>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier));
        return match secs {
            Some(s) if s >= range.min_secs as u128 && s <= range.max_secs as u128 => {
                // In range, so it fits an i64 and a chrono Duration.
                Ok(Span(Duration::seconds(s as i64)))
            }
            _ => Err(out_of_range()),
        };
    }
    // Not a whole number: if it is a number at all (`-1`, `1e30`, `1.5`), say whether it is
    // outside the range; otherwise it is a syntax error.
    match number.parse::<f64>() {
        Ok(x) if !x.is_nan() => {
            let secs = x * multiplier as f64;
            if secs < range.min_secs as f64 || secs > range.max_secs as f64 {
                Err(out_of_range())
            } else {
                Err(syntax())
            }
        }
        _ => Err(syntax()),
    }
}

/// A clap value parser for a duration flag in `range` (the value is passed on as written).
pub(crate) fn flag(
    field: &'static str,
    range: Range,
) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |v: &str| {
        parse(field, v, range)
            .map(|_| v.trim().to_string())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_and_range_are_told_apart() {
        let r = Range::up_to(Duration::days(7));
        assert_eq!(parse("ttl", "90m", r), Ok(Span(Duration::minutes(90))));
        assert_eq!(parse("ttl", " 7d ", r), Ok(Span(Duration::days(7))));
        for bad in ["", "h", "abc", "1.5h", "10", "10w", "1 h", "NaNs", "0x10s"] {
            assert!(
                matches!(parse("ttl", bad, r), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        for huge in [
            "8d",
            "0s",
            "-1h",
            "1e30s",
            "infs",
            "99999999999d",
            "100000000d",
            "999999999999999999999999999999999999999999999d",
        ] {
            let e = parse("ttl", huge, r).unwrap_err();
            assert!(matches!(e, DurationError::OutOfRange(_)), "{huge:?}: {e}");
            assert!(
                e.to_string().contains("ttl=") && e.to_string().contains("7d"),
                "{e}"
            );
        }
    }
}
