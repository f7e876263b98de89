//! Inbound SMS and bounce reports.
//!
//! `POST /sms/inbound` takes a Twilio-compatible inbound webhook (form fields `From`, `Body`)
//! and answers STOP, START and HELP as carriers require, in TwiML. Twilio sends the
//! credentials embedded in the webhook URL as Basic auth: the password is the API token.
//! `POST /v1/bounces` takes hard bounces and complaints from an email provider's webhook and
//! suppresses the address for good.

use axum::Json;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Body, parse_json};
use super::{ApiError, AppState};
use crate::model::{Channel, Event, PhoneE164};

/// Keywords that opt out of SMS (CTIA and carrier rules).
const STOP_WORDS: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
/// Keywords that opt back in.
const START_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];
/// Keywords that ask for help.
const HELP_WORDS: [&str; 2] = ["HELP", "INFO"];

/// What an inbound text asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// Opt out.
    Stop,
    /// Opt back in.
    Start,
    /// Help.
    Help,
    /// Anything else.
    Other,
}

/// Reads the keyword of an inbound text: the whole message, trimmed, in any case.
pub fn keyword(body: &str) -> Keyword {
    let word = body
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        Keyword::Stop
    } else if START_WORDS.contains(&word.as_str()) {
        Keyword::Start
    } else if HELP_WORDS.contains(&word.as_str()) {
        Keyword::Help
    } else {
        Keyword::Other
    }
}

/// The user name in the webhook URL's credentials (`https://twilio:<token>@host/sms/inbound`).
const WEBHOOK_USER: &str = "twilio";

/// The Basic credentials of a request: `(user, password)`.
/// `None` unless there is exactly one `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return None;
    };
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = decode_base64(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(user, password)| (user.to_owned(), password.to_owned()))
}

/// Whether the request carries the webhook user and `token` as its Basic credentials; both
/// are compared in constant time, and both always, so timing tells nothing of either.
fn basic_auth_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some((user, password)) = basic_credentials(headers) else {
        return false;
    };
    let user_ok = super::constant_time_eq(user.as_bytes(), WEBHOOK_USER.as_bytes());
    let password_ok = super::constant_time_eq(password.as_bytes(), token.as_bytes());
    user_ok & password_ok
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n_bits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = u32::try_from(ALPHABET.iter().position(|a| *a == c)?).ok()?;
        bits = (bits << 6) | value;
        n_bits += 6;
        if n_bits >= 8 {
            n_bits -= 8;
            out.push(u8::try_from((bits >> n_bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn twiml(reply: Option<&str>) -> impl IntoResponse {
    let body = match reply {
        Some(text) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".to_owned(),
    };
    (StatusCode::OK, [(CONTENT_TYPE, "text/xml")], body)
}

/// The Twilio-compatible inbound SMS webhook.
pub(super) async fn sms(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(token) = &state.token
        && !basic_auth_ok(&headers, token.expose())
    {
        return Err(ApiError::BasicUnauthorized);
    }
    let form: Vec<(String, String)> = url_decode_form(&body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let from = field("From").ok_or_else(|| ApiError::InvalidField("From is missing".into()))?;
    let text = field("Body").unwrap_or_default();
    let phone =
        PhoneE164::parse(&from).map_err(|e| ApiError::InvalidField(format!("From: {e}")))?;
    let now = state.clock.now();
    let keyword = keyword(&text);
    let mut tx = state.store.begin().await?;
    let customers = tx
        .customers_by_address(Channel::Sms, phone.as_str())
        .await?;
    for mut customer in customers {
        match keyword {
            Keyword::Stop => {
                customer.consent.sms = false;
                tx.cancel_pending(&customer.id, Channel::Sms, now).await?;
            }
            Keyword::Start => customer.consent.sms = true,
            Keyword::Help | Keyword::Other => {}
        }
        if matches!(keyword, Keyword::Stop | Keyword::Start) {
            tx.put_customer(&customer, now).await?;
        }
        // Every inbound text is an event journeys can react to (`sms_received`).
        let mut properties = serde_json::Map::new();
        properties.insert("body".into(), Value::String(text.clone()));
        tx.insert_event(
            &customer.id,
            &Event {
                id: field("MessageSid").and_then(|s| crate::model::EventId::parse(s).ok()),
                name: "sms_received".into(),
                timestamp: now,
                properties,
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    state.nudge.notify_one();
    tracing::info!(keyword = ?keyword, "Inbound SMS handled.");
    Ok(twiml(match keyword {
        Keyword::Stop => Some(
            "You are unsubscribed and will receive no more messages. Reply START to resubscribe.",
        ),
        Keyword::Start => {
            Some("You are subscribed again. Reply STOP to unsubscribe, HELP for help.")
        }
        Keyword::Help => {
            Some("Reply STOP to unsubscribe, START to resubscribe. Msg & data rates may apply.")
        }
        Keyword::Other => None,
    }))
}

fn url_decode_form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let Some(hex) = s.get(i + 1..i + 3)
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A bounce or complaint report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BounceIn {
    email: String,
    /// `hard`, `soft` or `complaint`.
    #[serde(rename = "type")]
    kind: String,
}

/// Hard bounces and complaints suppress the address and withdraw email consent; soft
/// bounces are only acknowledged (the SMTP retry handles them).
pub(super) async fn bounce(
    State(state): State<AppState>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let report: BounceIn = parse_json(&body)?;
    let suppress = match report.kind.as_str() {
        "hard" | "complaint" => true,
        "soft" => false,
        other => {
            return Err(ApiError::InvalidField(format!(
                "type {other:?}: write hard, soft or complaint"
            )));
        }
    };
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let mut affected = 0;
    if suppress {
        tx.suppress(Channel::Email, &report.email, &report.kind, now)
            .await?;
        for mut customer in tx
            .customers_by_address(Channel::Email, &report.email)
            .await?
        {
            customer.consent.email = false;
            tx.put_customer(&customer, now).await?;
            tx.cancel_pending(&customer.id, Channel::Email, now).await?;
            affected += 1;
        }
    }
    tx.commit().await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "suppressed": suppress, "customers": affected })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_read_whole_and_in_any_case() {
        for (text, want) in [
            ("STOP", Keyword::Stop),
            (" stop ", Keyword::Stop),
            ("Unsubscribe", Keyword::Stop),
            ("start", Keyword::Start),
            ("HELP", Keyword::Help),
            ("stop sending me shoes", Keyword::Other),
            ("", Keyword::Other),
        ] {
            assert_eq!(keyword(text), want, "{text:?}");
        }
    }

    #[test]
    fn basic_auth_and_forms_decode() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Basic dHdpbGlvOnNlY3JldA==".parse().unwrap());
        assert_eq!(
            basic_credentials(&headers),
            Some(("twilio".into(), "secret".into()))
        );
        assert!(basic_auth_ok(&headers, "secret"));
        assert!(!basic_auth_ok(&headers, "secreT"));
        // "other:secret": the right password under another user name.
        headers.insert(AUTHORIZATION, "Basic b3RoZXI6c2VjcmV0".parse().unwrap());
        assert!(!basic_auth_ok(&headers, "secret"));
        // Two headers, the right one among them: ambiguous, so refused.
        headers.insert(AUTHORIZATION, "Basic dHdpbGlvOnNlY3JldA==".parse().unwrap());
        headers.append(AUTHORIZATION, "Basic b3RoZXI6c2VjcmV0".parse().unwrap());
        assert!(!basic_auth_ok(&headers, "secret"));
        assert_eq!(
            url_decode_form(b"From=%2B14155550101&Body=Stop+it"),
            vec![
                ("From".into(), "+14155550101".into()),
                ("Body".into(), "Stop it".into())
            ]
        );
    }
}
