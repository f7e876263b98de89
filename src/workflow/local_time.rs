//! Local times of day (`09:00`) and weekdays (`mon`), as waits and triggers use them.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A wall-clock time of day, `HH:MM`, read in the customer's (or the trigger's) time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(Time);

impl TimeOfDay {
    /// The civil time.
    pub fn time(self) -> Time {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid time of day {text:?}: write HH:MM on a 24-hour clock, such as \"09:00\""
            )
        };
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: i8 = h.parse().map_err(|_| bad())?;
        let minute: i8 = m.parse().map_err(|_| bad())?;
        Time::new(hour, minute, 0, 0).map(Self).map_err(|_| bad())
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

super::string_format!(TimeOfDay, {
    "type": "string",
    "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$",
    "description": "A local time of day on a 24-hour clock, e.g. \"09:00\".",
});

/// A day of the week, written as its first three letters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// jiff's weekday.
    pub fn to_jiff(self) -> jiff::civil::Weekday {
        use jiff::civil::Weekday as J;
        match self {
            Weekday::Mon => J::Monday,
            Weekday::Tue => J::Tuesday,
            Weekday::Wed => J::Wednesday,
            Weekday::Thu => J::Thursday,
            Weekday::Fri => J::Friday,
            Weekday::Sat => J::Saturday,
            Weekday::Sun => J::Sunday,
        }
    }
}

/// A nightly window, such as 21:00–08:00, in which marketing is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// When quiet begins.
    pub start: TimeOfDay,
    /// When quiet ends.
    pub end: TimeOfDay,
}

impl FromStr for QuietHours {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (start, end) = text.split_once('-').ok_or_else(|| {
            format!("quiet hours {text:?}: write START-END, such as \"21:00-08:00\"")
        })?;
        let hours = Self {
            start: start.trim().parse()?,
            end: end.trim().parse()?,
        };
        if hours.start == hours.end {
            return Err(format!(
                "quiet hours {text:?} start and end at the same time"
            ));
        }
        Ok(hours)
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

super::string_format!(QuietHours, {"type": "string", "pattern": "^[0-2]?[0-9]:[0-5][0-9]-[0-2]?[0-9]:[0-5][0-9]$", "description": "Local START-END, e.g. \"21:00-08:00\"."});

/// A workflow's own quiet hours, replacing the global setting for the channels it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietOverride {
    /// Email: `START-END`, or `none` for no quiet hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<QuietSetting>,
    /// SMS: `START-END`, or `none` for no quiet hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<QuietSetting>,
}

/// Quiet hours, or explicitly none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum QuietSetting {
    /// `START-END`.
    Hours(QuietHours),
    /// `none`.
    None(NoneWord),
}

/// The word `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoneWord {
    /// No quiet hours.
    None,
}

impl QuietOverride {
    /// The quiet hours in force for `channel`: this override's, else `global`.
    pub fn for_channel(
        &self,
        channel: crate::model::Channel,
        global: Option<QuietHours>,
    ) -> Option<QuietHours> {
        let setting = match channel {
            crate::model::Channel::Email => self.email,
            crate::model::Channel::Sms => self.sms,
        };
        match setting {
            Some(QuietSetting::Hours(hours)) => Some(hours),
            Some(QuietSetting::None(_)) => None,
            None => global,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_accept_hh_mm_only() {
        assert_eq!("09:00".parse::<TimeOfDay>().unwrap().to_string(), "09:00");
        assert_eq!("9:05".parse::<TimeOfDay>().unwrap().to_string(), "09:05");
        for bad in ["24:00", "9", "09:60", "9am", "09:0", ""] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad:?} was accepted");
        }
    }
}
