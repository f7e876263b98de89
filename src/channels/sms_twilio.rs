//! SMS through a Twilio-compatible HTTP API:
//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with form fields `To`, `From`, `Body`.

use std::time::Duration;

use super::{Delivered, DeliveryError, http_error, http_outcome};
use crate::config::Secret;

/// A Twilio-compatible SMS provider.
#[derive(Debug)]
pub struct TwilioChannel {
    client: reqwest::Client,
    base: String,
    sid: String,
    token: Secret,
    from: String,
}

impl TwilioChannel {
    /// A channel for account `sid` at `base` (such as `https://api.twilio.com`), sending
    /// from `from`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, sid: &str, token: Secret, from: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            sid: sid.to_owned(),
            token,
            from: from.to_owned(),
        })
    }

    /// Sends one SMS; the idempotency key goes along as `I-Twilio-Idempotency-Token`.
    ///
    /// # Errors
    /// Transient on a connection error, 429 or 5xx; permanent on another 4xx.
    pub async fn send(&self, key: &str, to: &str, body: &str) -> Result<Delivered, DeliveryError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.sid
        );
        let response = self
            .client
            .post(&url)
            .basic_auth(&self.sid, Some(self.token.expose()))
            .header("I-Twilio-Idempotency-Token", key)
            .form(&[("To", to), ("From", &self.from), ("Body", body)])
            .send()
            .await
            .map_err(|e| http_error(&e, "the SMS provider"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        http_outcome(status, retry_after.as_deref(), "the SMS provider")?;
        let sid = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned));
        Ok(Delivered { provider_id: sid })
    }
}
