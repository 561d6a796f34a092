//! Time spans in Postfix notation (`90s`, `30m`, `12h`, `5d`, `2w`).
//!
//! Queue lifetimes go into Postfix `maximal_queue_lifetime` verbatim, so the spec uses the
//! MTA's own notation instead of Go durations, and one parser serves every span field.

use std::{fmt, str::FromStr, time::Duration};

const SECONDS_PER_UNIT: [(char, u64); 5] = [
    ('s', 1),
    ('m', 60),
    ('h', 3_600),
    ('d', 86_400),
    ('w', 604_800),
];

/// A positive span of time: a number followed by one unit of `s`, `m`, `h`, `d`, `w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan {
    seconds: u64,
}

/// Why a string is not a [`TimeSpan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeSpanError {
    #[error("{0:?} is not a number followed by one of the units s, m, h, d, w")]
    Syntax(String),
    #[error("must be greater than zero")]
    Zero,
}

impl TimeSpan {
    pub const fn from_days(days: u64) -> Self {
        Self {
            seconds: days * 86_400,
        }
    }

    pub const fn seconds(self) -> u64 {
        self.seconds
    }

    pub const fn as_duration(self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

impl FromStr for TimeSpan {
    type Err = TimeSpanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || TimeSpanError::Syntax(text.to_string());
        let unit = text.chars().last().ok_or_else(syntax)?;
        let per_unit = SECONDS_PER_UNIT
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, s)| *s)
            .ok_or_else(syntax)?;
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let count: u64 = digits.parse().map_err(|_| syntax())?;
        if count == 0 {
            return Err(TimeSpanError::Zero);
        }
        Ok(Self {
            seconds: count * per_unit,
        })
    }
}

impl fmt::Display for TimeSpan {
    /// The largest unit that divides the span exactly, as Postfix would read it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, per_unit) = SECONDS_PER_UNIT
            .iter()
            .rev()
            .find(|(_, s)| self.seconds.is_multiple_of(*s))
            .copied()
            .unwrap_or(('s', 1));
        write!(f, "{}{}", self.seconds / per_unit, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("90s", 90),
            ("30m", 1_800),
            ("12h", 43_200),
            ("5d", 432_000),
            ("2w", 1_209_600),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                text.parse::<TimeSpan>().unwrap().seconds(),
                seconds,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_spans() {
        for text in [
            "",
            "d",
            "5",
            "5x",
            "5 d",
            "-5d",
            "1.5d",
            "5dd",
            "12345678s",
            "1h30m",
        ] {
            assert!(
                matches!(text.parse::<TimeSpan>(), Err(TimeSpanError::Syntax(_))),
                "{text:?} should be a syntax error"
            );
        }
        assert_eq!("0d".parse::<TimeSpan>(), Err(TimeSpanError::Zero));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!("168h".parse::<TimeSpan>().unwrap().to_string(), "1w");
        assert_eq!("120m".parse::<TimeSpan>().unwrap().to_string(), "2h");
        assert_eq!("100d".parse::<TimeSpan>().unwrap().to_string(), "100d");
        assert_eq!("61s".parse::<TimeSpan>().unwrap().to_string(), "61s");
    }
}
