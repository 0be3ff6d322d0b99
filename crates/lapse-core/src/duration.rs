//! Durations as users write them. Two grammars, and neither ever guesses seconds:
//!
//! - **Text** ([`parse_duration`]: API strings, config files, server flags): one or more
//!   `<number><unit>` parts, spaces allowed between them (`30m`, `2h30m`, `1h 30m`, `1.5h`,
//!   `300ms`, `2 hours`, `30 minutes`, `1 day`), case-insensitive (`30M` is thirty minutes).
//!   Units: `ns`, `us`/`µs`, `ms`, `s`/`sec`/`second`, `m`/`min`/`minute`, `h`/`hr`/`hour`,
//!   `d`/`day`, `w`/`week`, each word also plural. A bare number is refused: in the API a JSON
//!   *number* is seconds, and a string must say its unit.
//! - **CLI** ([`parse_cli_duration`]: `--ttl`/`--duration`/`-d`, `extend --by`): the
//!   instance-manager seed's grammar (bdanp/instance-manager@b96c07f,
//!   `internal/utils/validators.go` `ParseDuration`): the text is trimmed and lower-cased, and a
//!   bare whole number means **hours** (`-d 2` is two hours); anything else is the text grammar,
//!   which covers what the seed's Go `time.ParseDuration` and its `"N hours"` form accept.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration; write a number with a unit, such as \"90s\", \"30m\", \"2h30m\" or \"2 hours\"")]
    Unparsable(String),
    #[error(
        "{0:?} has no unit; write \"{0}s\" for seconds or \"{0}h\" for hours (a JSON number, not a string, means seconds)"
    )]
    NoUnit(String),
    #[error("must be positive, got {0}")]
    NotPositive(String),
    #[error("{given} is above the maximum of {max}")]
    AboveMaximum { given: String, max: String },
}

/// The longest duration either grammar gives: about 292 years, far above any lease maximum.
const MAX_NANOS: u128 = u64::MAX as u128;

/// Parses a duration given as text, in the text grammar (see the module doc).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let shown = text.trim();
    let lower = shown.to_lowercase();
    let (negative, body) = match lower.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, lower.strip_prefix('+').unwrap_or(&lower)),
    };
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if negative || body.bytes().all(|b| b == b'0') {
            DurationError::NotPositive(shown.to_owned())
        } else {
            DurationError::NoUnit(shown.to_owned())
        });
    }
    let nanos = parts(body).ok_or_else(|| DurationError::Unparsable(shown.to_owned()))?;
    if negative || nanos == 0 {
        return Err(DurationError::NotPositive(shown.to_owned()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses a duration in the CLI grammar: a bare whole number is hours (see the module doc).
pub fn parse_cli_duration(text: &str) -> Result<Duration, DurationError> {
    let shown = text.trim();
    let (negative, digits) = match shown.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, shown.strip_prefix('+').unwrap_or(shown)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return parse_duration(shown);
    }
    let hours: u64 = digits.parse().map_err(|_| DurationError::Unparsable(shown.to_owned()))?;
    if negative || hours == 0 {
        return Err(DurationError::NotPositive(shown.to_owned()));
    }
    let nanos = u128::from(hours) * 3_600_000_000_000;
    if nanos > MAX_NANOS {
        return Err(DurationError::Unparsable(shown.to_owned()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// The sum of `<number><unit>` parts in `s` (already lower-cased), in nanoseconds; `None` when
/// `s` is empty, malformed, or too long a duration.
fn parts(s: &str) -> Option<u128> {
    let mut rest = s.trim_start();
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let after = after.trim_start();
        let unit_len = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let part = scaled(number, unit_nanos(unit)?)?;
        total = total.checked_add(part).filter(|t| *t <= MAX_NANOS)?;
        rest = after.trim_start();
    }
    Some(total)
}

/// `number` (digits with at most one `.`, at least one digit) times `unit` nanoseconds,
/// exactly: the fraction is kept to the nanosecond and cut there.
fn scaled(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut nanos = whole.checked_mul(unit)?;
    let mut scale = unit;
    for digit in fraction.bytes().take(30) {
        scale /= 10;
        nanos = nanos.checked_add(u128::from(digit - b'0') * scale)?;
    }
    (nanos <= MAX_NANOS).then_some(nanos)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => S,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * S,
        "d" | "day" | "days" => 86_400 * S,
        "w" | "week" | "weeks" => 604_800 * S,
        _ => return None,
    })
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

    const H: u64 = 3600;

    #[test]
    fn text_grammar() {
        let check =
            |input: &str, secs: u64| assert_eq!(parse_duration(input), Ok(Duration::from_secs(secs)), "{input}");
        check("30m", 1800);
        check("30M", 1800);
        check("1h30m", 5400);
        check("2H30M", 2 * H + 1800);
        check("1h 30m", 5400);
        check("90s", 90);
        check(" 2d ", 2 * 24 * H);
        check("1.5h", 5400);
        check(".5h", 1800);
        check("+5m", 300);
        check("2 hours", 2 * H);
        check("2 Hours", 2 * H);
        check("30 minutes", 1800);
        check("1 minute", 60);
        check("45 seconds", 45);
        check("1 day", 24 * H);
        check("1 week", 7 * 24 * H);
        check("1 hour 30 minutes", 5400);
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(from_seconds(45), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn text_grammar_never_guesses_seconds() {
        for bare in ["90", " 2 ", "+7", "0000012"] {
            assert!(matches!(parse_duration(bare), Err(DurationError::NoUnit(_))), "{bare}");
        }
        let message = parse_duration("90").unwrap_err().to_string();
        assert!(message.contains("\"90s\"") && message.contains("\"90h\""), "{message}");
    }

    #[test]
    fn cli_grammar_is_the_seeds() {
        let check =
            |input: &str, secs: u64| assert_eq!(parse_cli_duration(input), Ok(Duration::from_secs(secs)), "{input}");
        // A bare number is hours, as the instance-manager seed's `ParseDuration`.
        check("2", 2 * H);
        check(" 2 ", 2 * H);
        check("+3", 3 * H);
        check("1", H);
        check("30m", 1800);
        check("2h30m", 2 * H + 1800);
        check("30 minutes", 1800);
        check("2 hours", 2 * H);
        check("2 HOURS", 2 * H);
        check("90s", 90);
        for bad in ["0", "-2", "-2h", "00"] {
            assert!(matches!(parse_cli_duration(bad), Err(DurationError::NotPositive(_))), "{bad}");
        }
        assert!(matches!(parse_cli_duration("99999999999999999999"), Err(DurationError::Unparsable(_))));
        assert!(matches!(parse_cli_duration("9999999999"), Err(DurationError::Unparsable(_))));
    }

    #[test]
    fn refused() {
        let check = |input: &str, want: fn(String) -> DurationError| {
            assert_eq!(parse_duration(input), Err(want(input.trim().to_owned())), "{input}");
        };
        check("0", DurationError::NotPositive);
        check("0s", DurationError::NotPositive);
        check("0h0m", DurationError::NotPositive);
        check("-5m", DurationError::NotPositive);
        check("-5", DurationError::NotPositive);
        for unparsable in [
            "soon",
            "",
            "   ",
            "5 parsecs",
            "h",
            "5",
            "1.2.3s",
            ".h",
            "5m!",
            "1y",
            "1M5",
            "2 hoursxyz",
            "99999999999999999999999s",
            "300000w",
            "--5m",
            "5m-",
        ] {
            let got = parse_duration(unparsable);
            assert!(
                matches!(got, Err(DurationError::Unparsable(_) | DurationError::NoUnit(_))),
                "{unparsable:?}: {got:?}"
            );
        }
        assert_eq!(from_seconds(0), Err(DurationError::NotPositive("0".into())));
        assert_eq!(from_seconds(-3), Err(DurationError::NotPositive("-3".into())));
        let max = Duration::from_secs(3600);
        assert!(matches!(at_most(Duration::from_secs(3601), max), Err(DurationError::AboveMaximum { .. })));
        assert_eq!(at_most(max, max), Ok(max));
    }
}
