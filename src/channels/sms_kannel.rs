//! SMS through Kannel's `sendsms` HTTP interface (an open-source SMS gateway). Delivery
//! reports come back to Trellis at `/kannel/dlr`, on a URL signed per message so nobody else
//! can post them.

use std::time::Duration;

use super::{Delivered, DeliveryError, http_error, http_outcome};
use crate::config::Secret;

/// Kannel's DLR mask for every report: delivered, undelivered, buffered, submitted, rejected.
const DLR_MASK: &str = "31";

/// A Kannel smsbox.
#[derive(Debug)]
pub struct KannelChannel {
    client: reqwest::Client,
    sendsms_url: String,
    username: String,
    password: Secret,
    from: String,
    /// Base of the delivery-report callback, such as `https://trellis.example.com`.
    public_url: String,
    /// Signs callback URLs.
    key: Secret,
}

/// How a delivery report bears on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The message did not reach the phone.
    pub failed: bool,
    /// No later report will change the outcome.
    pub is_final: bool,
}

/// What a Kannel delivery-report status means: its name and how it bears on the message.
pub fn dlr_status(status: u32) -> (&'static str, Report) {
    let report = |failed, is_final| Report { failed, is_final };
    match status {
        1 => ("delivered", report(false, true)),
        2 => ("undelivered", report(true, true)),
        4 => ("buffered", report(false, false)),
        8 => ("submitted", report(false, false)),
        16 => ("rejected", report(true, true)),
        _ => ("unknown", report(false, false)),
    }
}

impl KannelChannel {
    /// A channel for the smsbox at `base` (such as `http://127.0.0.1:13013`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        base: &str,
        username: &str,
        password: Secret,
        from: &str,
        public_url: &str,
        key: Secret,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            client,
            sendsms_url: format!("{}/cgi-bin/sendsms", base.trim_end_matches('/')),
            username: username.to_owned(),
            password,
            from: from.to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Sends one SMS, asking for delivery reports.
    ///
    /// # Errors
    /// Transient on a connection error or 5xx; permanent on a 4xx (such as 403 for wrong
    /// credentials).
    pub async fn send(&self, key: &str, to: &str, body: &str) -> Result<Delivered, DeliveryError> {
        let signature = crate::unsubscribe::sign_value(self.key.expose().as_bytes(), "dlr", key);
        // Kannel replaces %d with the report's status.
        let dlr_url = format!(
            "{}/kannel/dlr?key={key}&sig={signature}&status=%d",
            self.public_url
        );
        let mut query: Vec<(&str, &str)> = vec![
            ("username", &self.username),
            ("password", self.password.expose()),
            ("from", &self.from),
            ("to", to),
            ("text", body),
            ("dlr-mask", DLR_MASK),
            ("dlr-url", &dlr_url),
        ];
        if !body.is_ascii() {
            query.extend([("charset", "UTF-8"), ("coding", "2")]);
        }
        let response = self
            .client
            .get(&self.sendsms_url)
            .query(&query)
            .send()
            .await
            // The URL carries the password in its query: never into an error or a log.
            .map_err(|e| http_error(&e.without_url(), "the Kannel gateway"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        http_outcome(status, None, "the Kannel gateway").map_err(|e| match e {
            DeliveryError::Permanent { reason } => {
                DeliveryError::permanent(format!("{reason}: {}", text.trim()))
            }
            other => other,
        })?;
        Ok(Delivered {
            provider_id: Some(text.trim().chars().take(100).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gateway_that_is_down_gives_an_error_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = KannelChannel::new(
            &format!("http://127.0.0.1:{port}"),
            "trellis",
            Secret::new("pw-canary-123"),
            "+15005550006",
            "https://trellis.test",
            Secret::new("key"),
        )
        .unwrap();
        let err = channel.send("k1", "+14155550101", "hi").await.unwrap_err();
        assert!(matches!(err, DeliveryError::Transient { .. }), "{err}");
        assert!(!err.to_string().contains("pw-canary-123"), "{err}");
    }
}
