//! Email through SMTP with lettre: multipart text + HTML, a `Message-ID` derived from the
//! idempotency key (so a receiver can tell a resend), and RFC 8058 one-click unsubscribe
//! headers.
//!
//! lettre does not set `TCP_NODELAY`, so each pooled connection stalls about 40 ms per
//! message on delayed ACKs; the pool is sized (`--smtp-pool`) so the channel is not the
//! bottleneck.

use std::time::Duration;

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Delivered, DeliveryError};
use crate::store::Payload;

/// `List-Unsubscribe: <url>`.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim_matches(['<', '>']).to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// Whether an SMTP reply code is worth retrying: 4xx is transient, 5xx permanent.
pub fn reply_is_transient(code: u16) -> bool {
    (400..500).contains(&code)
}

/// Maps a lettre error to what the dispatcher should do.
pub fn classify(err: &lettre::transport::smtp::Error) -> DeliveryError {
    let reason = err.to_string();
    match err.status().map(u16::from) {
        Some(code) if reply_is_transient(code) => DeliveryError::transient(reason),
        Some(_) => DeliveryError::permanent(reason),
        // No reply at all: a refused or dropped connection, a timeout, a TLS failure.
        None => DeliveryError::transient(reason),
    }
}

/// Builds the message for an email payload.
///
/// # Errors
/// A permanent error when an address does not parse.
pub fn build_message(
    key: &str,
    payload: &Payload,
    default_from: &str,
) -> Result<Message, DeliveryError> {
    let Payload::Email {
        to,
        from,
        reply_to,
        subject,
        html,
        text,
        unsubscribe,
    } = payload
    else {
        return Err(DeliveryError::permanent("not an email"));
    };
    let mailbox = |what: &str, addr: &str| {
        addr.parse::<Mailbox>().map_err(|e| {
            DeliveryError::permanent(format!("{what} address {addr:?} is invalid: {e}"))
        })
    };
    let from = mailbox("from", from.as_deref().unwrap_or(default_from))?;
    let domain = from.email.domain().to_owned();
    let mut builder = Message::builder()
        .from(from)
        .to(mailbox("to", to)?)
        .subject(subject)
        .message_id(Some(format!("<{key}@{domain}>")))
        .header(ListUnsubscribe(unsubscribe.clone()))
        .header(ListUnsubscribePost);
    if let Some(reply_to) = reply_to {
        builder = builder.reply_to(mailbox("reply-to", reply_to)?);
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        ))
        .map_err(|e| DeliveryError::permanent(format!("building the message: {e}")))
}

/// An SMTP connection pool.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: String,
}

impl std::fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL holds the password; show only the sender.
        f.debug_struct("SmtpChannel")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// Connects lazily to the server in `url`: `smtp://user:pass@host:587` (STARTTLS
    /// required, or opportunistic for a loopback host), `smtps://…` (TLS), or an explicit
    /// `?tls=required|opportunistic`.
    ///
    /// # Errors
    /// A sentence naming what is wrong with the URL (never the URL itself: it holds the password).
    pub fn new(url: &str, from: &str, pool_size: u32) -> Result<Self, String> {
        from.parse::<Mailbox>()
            .map_err(|e| format!("sender address {from:?} is invalid: {e}"))?;
        let url = default_tls(url);
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| format!("the SMTP URL is invalid: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .pool_config(PoolConfig::new().max_size(pool_size))
            .build();
        Ok(Self {
            transport,
            from: from.to_owned(),
        })
    }

    /// The default sender.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// Sends one email.
    ///
    /// # Errors
    /// Transient or permanent, from the server's reply.
    pub async fn send(&self, key: &str, payload: &Payload) -> Result<Delivered, DeliveryError> {
        let message = build_message(key, payload, &self.from)?;
        let response = self
            .transport
            .send(message)
            .await
            .map_err(|e| classify(&e))?;
        Ok(Delivered {
            provider_id: response
                .message()
                .next()
                .map(|line| line.chars().take(200).collect()),
        })
    }
}

/// `smtp://` with no `tls=` means STARTTLS required, except on loopback where local relays
/// and test sinks rarely speak TLS.
fn default_tls(url: &str) -> String {
    if !url.starts_with("smtp://") || url.contains("tls=") {
        return url.to_owned();
    }
    let host = url
        .trim_start_matches("smtp://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split([':', '/', '?'])
        .next()
        .unwrap_or_default();
    let mode = if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
        "opportunistic"
    } else {
        "required"
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}tls={mode}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_replies_map_to_retry_or_give_up() {
        for (code, transient) in [
            (421, true),
            (450, true),
            (451, true),
            (452, true),
            (500, false),
            (550, false),
            (552, false),
            (554, false),
        ] {
            assert_eq!(reply_is_transient(code), transient, "{code}");
        }
    }

    #[test]
    fn smtp_urls_require_starttls_except_on_loopback() {
        assert_eq!(
            default_tls("smtp://u:p@mail.example.com:587"),
            "smtp://u:p@mail.example.com:587?tls=required"
        );
        assert_eq!(
            default_tls("smtp://127.0.0.1:2525"),
            "smtp://127.0.0.1:2525?tls=opportunistic"
        );
        assert_eq!(
            default_tls("smtps://u:p@mail.example.com"),
            "smtps://u:p@mail.example.com"
        );
        assert_eq!(
            default_tls("smtp://h:25?tls=opportunistic"),
            "smtp://h:25?tls=opportunistic"
        );
    }

    #[test]
    fn messages_carry_the_key_as_message_id_and_one_click_unsubscribe_headers() {
        let payload = Payload::Email {
            to: "ada@example.com".into(),
            from: None,
            reply_to: Some("help@acme.example".into()),
            subject: "Hello".into(),
            html: "<p>Hi</p>".into(),
            text: "Hi".into(),
            unsubscribe: "https://t.example/unsubscribe/tok".into(),
        };
        let raw = String::from_utf8(
            build_message("abc123", &payload, "Acme <news@acme.example>")
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(raw.contains("Message-ID: <abc123@acme.example>"), "{raw}");
        assert!(
            raw.contains("List-Unsubscribe: <https://t.example/unsubscribe/tok>"),
            "{raw}"
        );
        assert!(
            raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Reply-To: help@acme.example"), "{raw}");
    }
}
