//! Delivery: the only code that opens connections to providers. Each channel turns an
//! outbox message into an attempt and says whether a failure is worth retrying;
//! `dispatch` drains the outbox.

pub mod dispatch;
pub mod email;
pub mod outbox_dir;
pub mod retry;
pub mod sms_kannel;
pub mod sms_twilio;
pub mod smtp_pool;
pub mod smtp_session;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::store::{OutboxMessage, Payload};

/// Why an attempt failed, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: a 4xx SMTP reply, a connection error, an HTTP 5xx or 429.
    #[error("temporary failure: {reason}")]
    Transient {
        /// The provider asked to wait (HTTP `Retry-After`).
        retry_after: Option<RetryAfter>,
        /// What happened.
        reason: String,
    },
    /// Not worth retrying: a 5xx SMTP reply, an HTTP 4xx, a refused destination.
    #[error("permanent failure: {reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
    /// The recipient's address itself was refused for good (SMTP `550 5.1.1 no such user`):
    /// the message fails and the address is suppressed, so nothing is sent to it again.
    #[error("address refused: {reason}")]
    Refused {
        /// What the provider said.
        reason: String,
    },
}

impl DeliveryError {
    /// A transient error without a provider-given delay.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            retry_after: None,
            reason: reason.into(),
        }
    }

    /// A permanent error.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
        }
    }
}

/// A successful attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivered {
    /// The provider's id for the message, if it gave one.
    pub provider_id: Option<String>,
}

/// Where email goes.
#[derive(Debug)]
pub enum EmailSink {
    /// An SMTP server.
    Smtp(email::SmtpChannel),
    /// `.eml` files in a folder.
    Dir(outbox_dir::OutboxDir),
}

/// Where SMS goes.
#[derive(Debug)]
pub enum SmsSink {
    /// A Twilio-compatible HTTP API.
    Twilio(sms_twilio::TwilioChannel),
    /// A Kannel gateway.
    Kannel(sms_kannel::KannelChannel),
    /// JSON files in a folder.
    Dir(outbox_dir::OutboxDir),
}

/// All channels, each with its own concurrency limit.
#[derive(Debug)]
pub struct Channels {
    /// Email.
    pub email: EmailSink,
    /// SMS; `None` when no provider or outbox folder is configured.
    pub sms: Option<SmsSink>,
    /// Webhooks.
    pub webhook: webhook::WebhookChannel,
    /// Concurrent attempts per channel: email, SMS, webhook (indexed by [`Lane`]).
    pub limits: [Arc<Semaphore>; 3],
}

/// The channels as the dispatcher schedules them, each with its own concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Email.
    Email,
    /// SMS.
    Sms,
    /// Webhooks (and payloads with nothing to deliver, which fail at once).
    Webhook,
}

impl Lane {
    /// Every lane, in the order of [`Channels::limits`].
    pub const ALL: [Lane; 3] = [Lane::Email, Lane::Sms, Lane::Webhook];

    /// The lane a payload is delivered in.
    pub fn of(payload: &Payload) -> Lane {
        match payload {
            Payload::Email { .. } => Lane::Email,
            Payload::Sms { .. } => Lane::Sms,
            Payload::Webhook { .. } | Payload::None => Lane::Webhook,
        }
    }

    /// The lane's messages as stored (`messages.channel`, [`Payload::channel_name`]).
    /// Messages stored with nothing to deliver (`none`) are never pending, so no lane
    /// claims them.
    pub fn channel_name(self) -> &'static str {
        match self {
            Lane::Email => "email",
            Lane::Sms => "sms",
            Lane::Webhook => "webhook",
        }
    }

    fn index(self) -> usize {
        match self {
            Lane::Email => 0,
            Lane::Sms => 1,
            Lane::Webhook => 2,
        }
    }
}

impl Channels {
    /// The concurrency limit of the message's channel. The dispatcher holds a permit from
    /// before the attempt until its outcome is recorded, so at most this many messages per
    /// channel are ever between "sent" and "recorded as sent".
    pub fn limit_for(&self, payload: &Payload) -> &Arc<Semaphore> {
        self.limit(Lane::of(payload))
    }

    /// A lane's concurrency limit (see [`Channels::limit_for`]).
    pub fn limit(&self, lane: Lane) -> &Arc<Semaphore> {
        &self.limits[lane.index()]
    }

    /// Makes one delivery attempt. The caller holds the channel's permit ([`Channels::limit_for`]).
    pub async fn deliver(&self, message: &OutboxMessage) -> Result<Delivered, DeliveryError> {
        match &message.payload {
            Payload::Email { .. } => match &self.email {
                EmailSink::Smtp(smtp) => smtp.send(&message.key, &message.payload).await,
                EmailSink::Dir(dir) => {
                    dir.write(&message.key, &message.payload, self.email_from())
                        .await
                }
            },
            Payload::Sms { to, body } => match &self.sms {
                Some(SmsSink::Twilio(twilio)) => twilio.send(&message.key, to, body).await,
                Some(SmsSink::Kannel(kannel)) => kannel.send(&message.key, to, body).await,
                Some(SmsSink::Dir(dir)) => dir.write(&message.key, &message.payload, None).await,
                None => Err(DeliveryError::transient("no SMS provider is configured")),
            },
            Payload::Webhook {
                method,
                url,
                headers,
                body,
            } => {
                self.webhook
                    .call(&message.key, method, url, headers, body.as_ref())
                    .await
            }
            Payload::None => Err(DeliveryError::permanent("nothing to deliver")),
        }
    }

    fn email_from(&self) -> Option<&str> {
        match &self.email {
            EmailSink::Smtp(smtp) => Some(smtp.from()),
            EmailSink::Dir(dir) => dir.from(),
        }
    }
}

/// How long a provider asked to wait before the next attempt (HTTP `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: 120`: seconds from the answer.
    Delay(Duration),
    /// `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`: not before this moment.
    Until(jiff::Timestamp),
}

impl RetryAfter {
    /// Reads a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3);
    /// `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Self::Delay(Duration::from_secs(seconds)));
        }
        // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date.
        jiff::fmt::rfc2822::parse(value)
            .ok()
            .map(|zoned| Self::Until(zoned.timestamp()))
    }

    /// The wait from `now`: zero for a date already past.
    pub fn wait_from(self, now: jiff::Timestamp) -> Duration {
        match self {
            Self::Delay(delay) => delay,
            Self::Until(at) => Duration::try_from(at.duration_since(now)).unwrap_or_default(),
        }
    }
}

/// Maps an HTTP response status to what the dispatcher should do: 2xx is success; 429 and
/// 5xx are worth retrying (honouring `Retry-After`, in seconds or as a date); other 4xx are
/// not.
pub fn http_outcome(
    status: u16,
    retry_after: Option<&str>,
    what: &str,
) -> Result<(), DeliveryError> {
    match status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(DeliveryError::Transient {
            retry_after: retry_after.and_then(RetryAfter::parse),
            reason: format!("{what} answered HTTP {status}"),
        }),
        _ => Err(DeliveryError::permanent(format!(
            "{what} answered HTTP {status}"
        ))),
    }
}

/// Maps a reqwest error that came before any response.
pub fn http_error(err: &reqwest::Error, what: &str) -> DeliveryError {
    let reason = format!("{what}: {}", crate::scheduler::error_chain(err));
    if err.is_builder() {
        // The request itself cannot be made (a header value with a line break, a bad
        // URL): it never will be, so retrying is pointless.
        return DeliveryError::permanent(reason);
    }
    // Connection refused, reset, timed out: the provider may be back soon.
    DeliveryError::transient(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deliverable_payload_is_claimed_in_the_lane_it_is_delivered_in() {
        let payloads = [
            Payload::Email {
                to: "a@example.com".into(),
                from: None,
                reply_to: None,
                subject: String::new(),
                html: String::new(),
                text: String::new(),
                unsubscribe: String::new(),
            },
            Payload::Sms {
                to: "+14155550101".into(),
                body: String::new(),
            },
            Payload::Webhook {
                method: "POST".into(),
                url: "https://example.com/".into(),
                headers: Vec::new(),
                body: None,
            },
        ];
        for payload in payloads {
            assert_eq!(Lane::of(&payload).channel_name(), payload.channel_name());
        }
    }

    #[test]
    fn a_request_that_cannot_be_built_is_a_permanent_failure() {
        let err = reqwest::Client::new()
            .get("http://example.com/")
            .header("x-name", "Vic\r\nX-Injected: 1")
            .build()
            .unwrap_err();
        assert!(matches!(
            http_error(&err, "the webhook"),
            DeliveryError::Permanent { .. }
        ));
    }

    #[test]
    fn http_statuses_map_to_success_retry_or_give_up() {
        assert_eq!(http_outcome(201, None, "x"), Ok(()));
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(
                    http_outcome(status, None, "x"),
                    Err(DeliveryError::Permanent { .. })
                ),
                "{status}"
            );
        }
        for status in [429, 500, 502, 503] {
            assert!(
                matches!(
                    http_outcome(status, None, "x"),
                    Err(DeliveryError::Transient { .. })
                ),
                "{status}"
            );
        }
        assert_eq!(
            http_outcome(429, Some("120"), "x"),
            Err(DeliveryError::Transient {
                retry_after: Some(RetryAfter::Delay(Duration::from_secs(120))),
                reason: "x answered HTTP 429".into()
            })
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_an_http_date() {
        let now: jiff::Timestamp = "2026-10-21T07:20:00Z".parse().unwrap();
        let date = RetryAfter::parse("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(date.wait_from(now), Duration::from_secs(480));
        assert_eq!(
            RetryAfter::parse(" 90 ").unwrap().wait_from(now),
            Duration::from_secs(90)
        );
        let past = RetryAfter::parse("Wed, 21 Oct 2026 07:00:00 GMT").unwrap();
        assert_eq!(past.wait_from(now), Duration::ZERO);
        for junk in ["soon", "-5", "", "1.5"] {
            assert_eq!(RetryAfter::parse(junk), None, "{junk:?}");
        }
    }
}
