//! Durations as marketers write them: `90m`, `2d`, `1h30m`, `-7d`.

use std::fmt;
use std::str::FromStr;

use jiff::SignedDuration;

/// A fixed length of time. Units: `s`, `m`, `h`, `d` (24 hours) and `w` (7 days).
///
/// A day here is 24 hours of elapsed time; to wait until a local time of day, which moves
/// with daylight-saving, use a `wait` node's `until` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(SignedDuration);

const UNITS: [(char, i64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl Duration {
    /// A duration of whole seconds.
    pub fn from_secs(secs: i64) -> Self {
        Self(SignedDuration::from_secs(secs))
    }

    /// The length as jiff's signed duration.
    pub fn as_signed(self) -> SignedDuration {
        self.0
    }

    /// Whether the duration is longer than zero.
    pub fn is_positive(self) -> bool {
        self.0.is_positive()
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {text:?}: write a number and a unit (s, m, h, d, w), such as \"90m\", \"2d\" or \"1h30m\""
            )
        };
        let trimmed = text.trim();
        let (negative, body) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if body.is_empty() {
            return Err(bad());
        }
        let mut total: i64 = 0;
        let mut digits = String::new();
        for c in body.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = UNITS.iter().find(|(u, _)| *u == c).ok_or_else(bad)?.1;
            let n: i64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|secs| total.checked_add(secs))
                .filter(|secs| *secs <= 100 * 365 * 86_400)
                .ok_or_else(|| format!("duration {text:?} is longer than 100 years"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        Ok(Self::from_secs(if negative { -total } else { total }))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        if secs < 0 {
            f.write_str("-")?;
            secs = -secs;
        }
        for (unit, size) in UNITS {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

super::string_format!(Duration, {
    "type": "string",
    "pattern": "^-?([0-9]+[smhdw])+$",
    "description": "A length of time: a number and a unit (s, m, h, d = 24h, w), e.g. \"90m\", \"2d\", \"1h30m\".",
    "examples": ["90m", "2d", "1h30m"]
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_in_marketer_units() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.as_signed().as_secs(), 5400);
        assert_eq!(d.to_string(), "1h30m");
        assert_eq!(
            "2d".parse::<Duration>().unwrap().as_signed().as_secs(),
            172_800
        );
        assert_eq!("-7d".parse::<Duration>().unwrap().to_string(), "-1w");
        assert_eq!("23h".parse::<Duration>().unwrap().to_string(), "23h");
    }

    #[test]
    fn malformed_durations_are_refused_with_a_hint() {
        for bad in ["", "5", "h", "2 days", "1x", "-", "99999999999w"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.contains("duration"), "{bad:?} gave {err}");
        }
    }
}
