//! Email through SMTP with lettre: multipart text + HTML, a `Message-ID` derived from the
//! idempotency key (so a receiver can tell a resend), and RFC 8058 one-click unsubscribe
//! headers.
//!
//! Plain and STARTTLS connections go through [`NodelayPool`] (see there why);
//! implicit TLS (`smtps://`) through lettre's own pooled transport.

use std::time::Duration;

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::smtp_pool::{NodelayPool, Refusal, SmtpTarget, StartTls};
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

/// Whether a permanent SMTP reply refuses the recipient's address itself rather than this
/// message, the sender or the connection: an enhanced status of the recipient-addressing
/// family (RFC 3463: `5.1.1` no such mailbox, `5.1.2` bad destination system, `5.1.3` bad
/// address syntax, `5.1.6` mailbox moved, `5.1.10` null MX). A bare 550, a `5.7.x` policy
/// refusal (spam, DMARC, relaying) or a `5.1.7`/`5.1.8` about the sender suppresses nothing:
/// those are about the message or the sender, and suppressing would block the customer's
/// transactional mail for good.
pub fn refuses_the_address(reply: &str) -> bool {
    const RECIPIENT: [&str; 5] = ["5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"];
    reply.split_whitespace().any(|word| {
        let word = word.trim_start_matches(|c: char| !c.is_ascii_digit());
        RECIPIENT.contains(&word)
    })
}

/// Maps a lettre error to what the dispatcher should do.
pub fn classify(err: &lettre::transport::smtp::Error) -> DeliveryError {
    classify_reply(err.status().map(u16::from), err.to_string())
}

/// Maps an SMTP reply code (`None`: no reply at all) and its text to what the dispatcher
/// should do.
pub fn classify_reply(code: Option<u16>, reason: String) -> DeliveryError {
    match code {
        Some(code) if reply_is_transient(code) => DeliveryError::transient(reason),
        Some(_) if refuses_the_address(&reason) => DeliveryError::Refused { reason },
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

/// How messages reach the server.
enum Transport {
    /// `smtp://`, plain or STARTTLS.
    Pooled(NodelayPool),
    /// `smtps://`, implicit TLS.
    Lettre(AsyncSmtpTransport<Tokio1Executor>),
}

/// An SMTP connection pool.
pub struct SmtpChannel {
    transport: Transport,
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

const TIMEOUT: Duration = Duration::from_secs(30);

impl SmtpChannel {
    /// Connects lazily to the server in `url`: `smtp://user:pass@host:587` (STARTTLS
    /// required, or opportunistic for a loopback host), `smtps://…` (TLS), or an explicit
    /// `?tls=required|opportunistic|off`. An optional path names the EHLO host
    /// (`smtp://host:25/mail.example.com`).
    ///
    /// # Errors
    /// A sentence naming what is wrong with the URL (never the URL itself: it holds the password).
    pub fn new(url: &str, from: &str, pool_size: u32) -> Result<Self, String> {
        from.parse::<Mailbox>()
            .map_err(|e| format!("sender address {from:?} is invalid: {e}"))?;
        let url = default_tls(url);
        let transport = if url.starts_with("smtps://") {
            Transport::Lettre(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
                    .map_err(|e| format!("the SMTP URL is invalid: {e}"))?
                    .timeout(Some(TIMEOUT))
                    .pool_config(PoolConfig::new().max_size(pool_size))
                    .build(),
            )
        } else {
            Transport::Pooled(NodelayPool::new(
                parse_target(&url)?,
                usize::try_from(pool_size).unwrap_or(usize::MAX),
            ))
        };
        Ok(Self {
            transport,
            from: from.to_owned(),
        })
    }

    /// Connects and logs in once, so that settings that can never work (no usable `AUTH`
    /// mechanism, credentials refused, STARTTLS required but not offered) stop `serve` at
    /// startup instead of leaving every message to be retried for a day. A server that is
    /// merely unreachable is only logged: it may come up later.
    ///
    /// # Errors
    /// A sentence naming the configuration problem.
    pub async fn check(&self) -> Result<(), String> {
        match &self.transport {
            Transport::Pooled(pool) => match pool.probe().await {
                Ok(()) => Ok(()),
                Err(Refusal::Misconfigured(reason)) => Err(reason),
                Err(Refusal::Failed(err)) => {
                    tracing::warn!(error = %err, "The SMTP server cannot be reached now; email waits in the outbox.");
                    Ok(())
                }
            },
            Transport::Lettre(transport) => match transport.test_connection().await {
                Ok(_) => Ok(()),
                Err(e) if e.is_client() || e.is_permanent() => Err(format!(
                    "the SMTP server refused the SMTP URL's settings: {e}"
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "The SMTP server cannot be reached now; email waits in the outbox.");
                    Ok(())
                }
            },
        }
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
        let reply: Vec<String> = match &self.transport {
            Transport::Pooled(pool) => pool.send(&message).await?,
            Transport::Lettre(transport) => transport
                .send(message)
                .await
                .map_err(|e| classify(&e))?
                .message()
                .map(str::to_owned)
                .collect(),
        };
        Ok(Delivered {
            provider_id: reply.first().map(|line| line.chars().take(200).collect()),
        })
    }
}

/// Reads host, port, STARTTLS mode, credentials and EHLO name from an `smtp://` URL.
fn parse_target(url: &str) -> Result<SmtpTarget, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("the SMTP URL is invalid: {e}"))?;
    if parsed.scheme() != "smtp" {
        return Err(format!(
            "the SMTP URL must start with smtp:// or smtps://, not {}://",
            parsed.scheme()
        ));
    }
    let host = parsed
        .host_str()
        .ok_or("the SMTP URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let tls_param = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let params =
        || TlsParameters::new(host.clone()).map_err(|e| format!("TLS settings for {host}: {e}"));
    let tls = match tls_param.as_deref() {
        Some("off") => StartTls::Off,
        Some("opportunistic") => StartTls::Opportunistic(params()?),
        Some("required") | None => StartTls::Required(params()?),
        Some(other) => {
            return Err(format!(
                "the SMTP URL's tls= must be required, opportunistic or off, not {other:?}"
            ));
        }
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| "the SMTP URL's user or password is not UTF-8 once decoded".to_owned())
    };
    let credentials = match parsed.password() {
        Some(password) => Some(Credentials::new(
            decode(parsed.username())?,
            decode(password)?,
        )),
        None => None,
    };
    let path = parsed.path().trim_matches('/');
    Ok(SmtpTarget {
        port: parsed
            .port()
            .unwrap_or(if tls_param.is_some() { 587 } else { 25 }),
        host: host.clone(),
        tls,
        credentials,
        hello: if path.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(path.to_owned())
        },
        timeout: TIMEOUT,
    })
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
    fn only_a_recipient_addressing_refusal_suppresses_the_address() {
        for refused in [
            "permanent error (550): 5.1.1 <gone@example.com>: no such user",
            "permanent error (550): 5.1.10 null MX",
            "permanent error (553): 5.1.3 bad address syntax",
        ] {
            assert!(refuses_the_address(refused), "{refused}");
        }
        for not_the_address in [
            "permanent error (550): 5.7.1 relaying denied",
            "permanent error (550): 5.7.26 unauthenticated email is not accepted",
            "permanent error (553): 5.1.8 bad sender address domain",
            "permanent error (550): mailbox unavailable",
            "permanent error (554): 5.6.0 message content rejected",
            "permanent error (550): 5.1.15 unknown",
        ] {
            assert!(!refuses_the_address(not_the_address), "{not_the_address}");
        }
    }

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
    fn smtp_urls_give_host_port_tls_credentials_and_hello_name() {
        let target =
            parse_target("smtp://ada%40x:p%2Fw@127.0.0.1:2525/mx.acme.example?tls=off").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 2525));
        assert!(matches!(target.tls, StartTls::Off));
        assert_eq!(
            target.credentials,
            Some(Credentials::new("ada@x".into(), "p/w".into()))
        );
        assert_eq!(target.hello, ClientId::Domain("mx.acme.example".into()));
        let target = parse_target(&default_tls("smtp://mail.example.com")).unwrap();
        assert_eq!(target.port, 587);
        assert!(matches!(target.tls, StartTls::Required(_)));
        assert!(target.credentials.is_none());
        let err = parse_target("smtp://h?tls=maybe").err().unwrap();
        assert!(err.contains("required, opportunistic or off"), "{err}");
        let err = parse_target("http://h").err().unwrap();
        assert!(err.contains("smtp://"), "{err}");
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
