//! Send-time controls: quiet hours in the customer's local time and frequency caps across
//! workflows. Pure: the shell hands in the policy and the customer's recent sends.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::time::next_local_time;
use crate::model::Channel;
use crate::workflow::{Duration, QuietHours};

/// When quiet ends, if the local time at `now` in `tz` is inside the window.
pub fn quiet_ends_after(quiet: QuietHours, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    let local = now.to_zoned(tz.clone()).time();
    let (start, end) = (quiet.start.time(), quiet.end.time());
    let inside = if start < end {
        local >= start && local < end
    } else {
        local >= start || local < end
    };
    inside.then(|| next_local_time(now, tz, quiet.end, None))
}

/// At most `max` messages on `channel` per customer in any `window`, across all workflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The channel.
    pub channel: Channel,
    /// Messages allowed in a window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

impl FromStr for Cap {
    type Err = String;
    /// `email=3/7d`, `sms=1/1d`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("frequency cap {text:?}: write CHANNEL=MAX/WINDOW, such as \"email=3/7d\"");
        let (channel, rest) = text.split_once('=').ok_or_else(bad)?;
        let (max, window) = rest.split_once('/').ok_or_else(bad)?;
        let channel = match channel.trim() {
            "email" => Channel::Email,
            "sms" => Channel::Sms,
            _ => return Err(bad()),
        };
        let window: Duration = window.trim().parse()?;
        if !window.is_positive() {
            return Err(bad());
        }
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        if max == 0 {
            return Err(format!(
                "frequency cap {text:?}: a cap of 0 would hold every marketing message forever; \
                 allow at least 1, or pause the workflows instead"
            ));
        }
        Ok(Self {
            channel,
            max,
            window,
        })
    }
}

/// What to do with a message that falls in quiet hours or over a cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Hold the message (and the journey) until it may go.
    #[default]
    Delay,
    /// Skip the message, record why, and go on.
    Drop,
}

impl FromStr for Overflow {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "delay" => Ok(Overflow::Delay),
            "drop" => Ok(Overflow::Drop),
            _ => Err(format!("{text:?}: write delay or drop")),
        }
    }
}

/// A send that frequency caps count: its channel and the moment it was decided. Only
/// [`counts_toward_caps`] makes one, so every shell — the scheduler's bookkeeping within a
/// visit, the outbox row the store counts later, the simulator — counts by the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapMark {
    channel: Channel,
    at: Timestamp,
}

impl CapMark {
    /// The channel the send counts on.
    pub fn channel(self) -> Channel {
        self.channel
    }

    /// When it counts from: the decision to send, not an earlier hold.
    pub fn at(self) -> Timestamp {
        self.at
    }

    /// A mark read back from the store, which only ever stored marks made by
    /// [`counts_toward_caps`].
    pub fn stored(channel: Channel, at: Timestamp) -> Self {
        Self { channel, at }
    }
}

/// What frequency caps count: a marketing workflow's decision to send an email or SMS, at the
/// moment of that decision. Holds, suppressions decided by the engine, webhooks and
/// transactional messages never count. The shells keep a mark only for a message they queue
/// for delivery (rendered, its address not suppressed); what happens to it later (sent,
/// failed, cancelled) does not change that it counted.
pub fn counts_toward_caps(
    category: crate::workflow::Category,
    effect: &super::Effect,
    now: Timestamp,
) -> Option<CapMark> {
    match effect {
        super::Effect::Send(message) if category == crate::workflow::Category::Marketing => {
            Some(CapMark {
                channel: message.channel,
                at: now,
            })
        }
        _ => None,
    }
}

/// The customer as trigger times see them: with the policy's default zone when they have
/// none, so that schedule and date triggers fire at the same local time in `serve` and
/// `simulate` (waits and quiet hours apply the same default through the engine).
pub fn with_default_zone<'a>(
    customer: &'a crate::model::Customer,
    policy: &SendPolicy,
) -> std::borrow::Cow<'a, crate::model::Customer> {
    match (
        &customer.timezone,
        policy
            .default_timezone
            .as_ref()
            .and_then(|tz| tz.iana_name()),
    ) {
        (None, Some(name)) => {
            let mut with_zone = customer.clone();
            with_zone.timezone = Some(name.to_owned());
            std::borrow::Cow::Owned(with_zone)
        }
        _ => std::borrow::Cow::Borrowed(customer),
    }
}

/// The send-time rules in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendPolicy {
    /// Quiet hours for email.
    pub quiet_email: Option<QuietHours>,
    /// Quiet hours for SMS.
    pub quiet_sms: Option<QuietHours>,
    /// Quiet hours: delay or drop.
    pub quiet_mode: Overflow,
    /// Frequency caps.
    pub caps: Vec<Cap>,
    /// Caps: delay or drop.
    pub cap_mode: Overflow,
    /// The zone of customers without one.
    pub default_timezone: Option<TimeZone>,
}

impl SendPolicy {
    /// Quiet hours for a channel.
    pub fn quiet(&self, channel: Channel) -> Option<QuietHours> {
        match channel {
            Channel::Email => self.quiet_email,
            Channel::Sms => self.quiet_sms,
        }
    }

    /// The longest cap window: how far back the shell must load sends.
    pub fn longest_window(&self) -> Option<Duration> {
        self.caps.iter().map(|c| c.window).max()
    }

    /// When the next message on `channel` may go without breaking a cap, given the times of
    /// earlier sends on it; `None` when it may go now.
    pub fn cap_allows_at(
        &self,
        channel: Channel,
        sends: &[Timestamp],
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.caps
            .iter()
            .filter(|cap| cap.channel == channel)
            .filter_map(|cap| {
                let since = now
                    .checked_sub(cap.window.as_signed())
                    .unwrap_or(Timestamp::MIN);
                let mut recent: Vec<Timestamp> = sends
                    .iter()
                    .copied()
                    .filter(|t| *t > since && *t <= now)
                    .collect();
                if (recent.len() as u64) < u64::from(cap.max) {
                    return None;
                }
                recent.sort();
                // The window frees a place when the oldest send that fills it ages out.
                let oldest = recent[recent.len() - cap.max.max(1) as usize];
                oldest.checked_add(cap.window.as_signed()).ok()
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn quiet_hours_across_midnight_end_at_the_local_morning() {
        let la = TimeZone::get("America/Los_Angeles").unwrap();
        let q: QuietHours = "21:00-08:00".parse().unwrap();
        // 22:30 PDT on 2026-06-01 is 05:30 UTC on 06-02; quiet ends 08:00 PDT = 15:00 UTC.
        assert_eq!(
            quiet_ends_after(q, ts("2026-06-02T05:30:00Z"), &la),
            Some(ts("2026-06-02T15:00:00Z"))
        );
        // 07:59 local is still quiet; 08:00 and noon are not.
        assert_eq!(
            quiet_ends_after(q, ts("2026-06-02T14:59:00Z"), &la),
            Some(ts("2026-06-02T15:00:00Z"))
        );
        assert_eq!(quiet_ends_after(q, ts("2026-06-02T15:00:00Z"), &la), None);
        assert_eq!(quiet_ends_after(q, ts("2026-06-02T19:00:00Z"), &la), None);
        let day: QuietHours = "12:00-13:00".parse().unwrap();
        assert!(quiet_ends_after(day, ts("2026-06-02T12:30:00Z"), &TimeZone::UTC).is_some());
        assert!("09:00-09:00".parse::<QuietHours>().is_err());
    }

    #[test]
    fn only_a_marketing_decision_to_send_counts_toward_caps() {
        use crate::engine::{Effect, Message, Suppression};
        use crate::model::{IdempotencyKey, NodeId};
        use crate::workflow::Category;
        let now = ts("2026-06-02T18:00:00Z");
        let key = IdempotencyKey::derive(&["e", "n", "1"]);
        let node = NodeId::parse("n").unwrap();
        let send = Effect::Send(Message {
            key: key.clone(),
            node: node.clone(),
            channel: Channel::Sms,
            template: "t".into(),
            from: None,
            reply_to: None,
        });
        let mark = counts_toward_caps(Category::Marketing, &send, now).unwrap();
        assert_eq!((mark.channel(), mark.at()), (Channel::Sms, now));
        assert_eq!(
            counts_toward_caps(Category::Transactional, &send, now),
            None
        );
        let held = Effect::Held {
            key: key.clone(),
            node: node.clone(),
            channel: Channel::Sms,
            until: now,
            reason: Suppression::FrequencyCap,
        };
        let suppressed = Effect::Suppressed {
            key,
            node,
            channel: Channel::Sms,
            reason: Suppression::NoConsent,
        };
        for effect in [held, suppressed] {
            assert_eq!(counts_toward_caps(Category::Marketing, &effect, now), None);
        }
    }

    #[test]
    fn caps_hold_the_fourth_email_in_a_week_until_the_first_ages_out() {
        let policy = SendPolicy {
            caps: vec!["email=3/7d".parse().unwrap()],
            ..SendPolicy::default()
        };
        let sends = [
            ts("2026-06-01T09:00:00Z"),
            ts("2026-06-03T09:00:00Z"),
            ts("2026-06-05T09:00:00Z"),
        ];
        assert_eq!(
            policy.cap_allows_at(Channel::Email, &sends[..2], ts("2026-06-06T09:00:00Z")),
            None
        );
        assert_eq!(
            policy.cap_allows_at(Channel::Email, &sends, ts("2026-06-06T09:00:00Z")),
            Some(ts("2026-06-08T09:00:00Z"))
        );
        assert_eq!(
            policy.cap_allows_at(Channel::Sms, &sends, ts("2026-06-06T09:00:00Z")),
            None,
            "other channels are not capped"
        );
        assert!("email=3".parse::<Cap>().is_err() && "fax=1/1d".parse::<Cap>().is_err());
    }

    #[test]
    fn a_cap_of_zero_is_refused_rather_than_panicking_the_scheduler() {
        // It was accepted, and the first capped send indexed before the start of an empty list.
        let err = "email=0/1d".parse::<Cap>().unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
    }
}
