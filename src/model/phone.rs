//! Phone numbers in E.164, the form SMS providers take: `+` and 8 to 15 digits.

use std::fmt;

/// A phone number normalised to E.164.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Normalises a number as people write it: spaces, dots, dashes and parentheses go, a
    /// leading `00` becomes `+`.
    ///
    /// # Errors
    /// A sentence when the number has no country code or the wrong number of digits.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let compact: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')' | '\u{a0}'))
            .collect();
        let digits = match compact.strip_prefix('+') {
            Some(rest) => rest.to_owned(),
            None => match compact.strip_prefix("00") {
                Some(rest) => rest.to_owned(),
                None => {
                    return Err(format!(
                        "phone number {raw:?} has no country code: write it as +<country><number>"
                    ));
                }
            },
        };
        if !digits.chars().all(|c| c.is_ascii_digit())
            || !(8..=15).contains(&digits.len())
            || digits.starts_with('0')
        {
            return Err(format!("phone number {raw:?} is not a valid E.164 number"));
        }
        Ok(Self(format!("+{digits}")))
    }

    /// The number as `+<digits>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised_to_e164_or_refused() {
        for (raw, want) in [
            ("+1 (415) 555-0101", "+14155550101"),
            ("0049 30 1234567", "+49301234567"),
            ("+44.20.7946.0958", "+442079460958"),
        ] {
            assert_eq!(PhoneE164::parse(raw).unwrap().as_str(), want);
        }
        for bad in [
            "415 555 0101",
            "+1",
            "+12345678901234567",
            "+1-800-FLOWERS",
            "+0123456789",
        ] {
            assert!(PhoneE164::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
