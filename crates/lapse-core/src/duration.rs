//! Durations as users write them: `"30m"`, `"1h30m"`, `"90s"`, `"90"` or the number `90`
//! (seconds).

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration; write seconds (90) or a span such as \"30m\" or \"1h30m\"")]
    Unparsable(String),
    #[error("must be positive, got {0}")]
    NotPositive(String),
    #[error("{given} is above the maximum of {max}")]
    AboveMaximum { given: String, max: String },
}

/// Parses a duration given as text: whole seconds or a humantime span.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('-') {
        if parse_duration(rest).is_ok() {
            return Err(DurationError::NotPositive(text.to_owned()));
        }
        return Err(DurationError::Unparsable(text.to_owned()));
    }
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(text).ok()
    };
    match parsed {
        Some(d) if d.is_zero() => Err(DurationError::NotPositive(text.to_owned())),
        Some(d) => Ok(d),
        None => Err(DurationError::Unparsable(text.to_owned())),
    }
}

/// Parses whole seconds given as a number.
pub fn from_seconds(seconds: i64) -> Result<Duration, DurationError> {
    if seconds <= 0 {
        return Err(DurationError::NotPositive(seconds.to_string()));
    }
    Ok(Duration::from_secs(seconds.unsigned_abs()))
}

/// Refuses `d` above `max`.
pub fn at_most(d: Duration, max: Duration) -> Result<Duration, DurationError> {
    if d > max {
        return Err(DurationError::AboveMaximum { given: format_duration(d), max: format_duration(max) });
    }
    Ok(d)
}

/// Formats a duration the way users write them (`1h 30m`), to whole seconds.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        let check =
            |input: &str, secs: u64| assert_eq!(parse_duration(input), Ok(Duration::from_secs(secs)), "{input}");
        check("30m", 1800);
        check("1h30m", 5400);
        check("1h 30m", 5400);
        check("90s", 90);
        check("90", 90);
        check(" 2d ", 172_800);
        assert_eq!(from_seconds(45), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn refused() {
        let check = |input: &str, want: fn(String) -> DurationError| {
            assert_eq!(parse_duration(input), Err(want(input.trim().to_owned())), "{input}");
        };
        check("0", DurationError::NotPositive);
        check("0s", DurationError::NotPositive);
        check("-5m", DurationError::NotPositive);
        check("-5", DurationError::NotPositive);
        check("soon", DurationError::Unparsable);
        check("", DurationError::Unparsable);
        check("5 parsecs", DurationError::Unparsable);
        check("99999999999999999999999", DurationError::Unparsable);
        assert_eq!(from_seconds(0), Err(DurationError::NotPositive("0".into())));
        assert_eq!(from_seconds(-3), Err(DurationError::NotPositive("-3".into())));
        let max = Duration::from_secs(3600);
        assert!(matches!(at_most(Duration::from_secs(3601), max), Err(DurationError::AboveMaximum { .. })));
        assert_eq!(at_most(max, max), Ok(max));
    }
}
