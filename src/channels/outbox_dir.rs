//! Writes messages as files instead of sending them: `.eml` for email, `.sms.json` for SMS.
//! The quick start's default, so a newcomer sees real rendered messages without a server.

use std::path::{Path, PathBuf};

use super::{Delivered, DeliveryError, email::build_message};
use crate::store::Payload;

/// A folder of delivered messages.
#[derive(Debug, Clone)]
pub struct OutboxDir {
    dir: PathBuf,
    from: Option<String>,
}

impl OutboxDir {
    /// Writes into `dir` (created if missing); emails get `from` as their sender.
    pub fn new(dir: &Path, from: Option<String>) -> Self {
        Self {
            dir: dir.to_owned(),
            from,
        }
    }

    /// The default sender.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// Writes one message, atomically (a temporary file renamed into place), named by its key.
    ///
    /// # Errors
    /// Transient on an I/O error: the disk may have room again later.
    pub async fn write(
        &self,
        key: &str,
        payload: &Payload,
        from: Option<&str>,
    ) -> Result<Delivered, DeliveryError> {
        let (name, bytes) = match payload {
            Payload::Email { .. } => {
                let message = build_message(key, payload, from.unwrap_or("trellis@localhost"))?;
                (format!("{key}.eml"), message.formatted())
            }
            Payload::Sms { to, body } => (
                format!("{key}.sms.json"),
                serde_json::to_vec_pretty(&serde_json::json!({ "to": to, "body": body }))
                    .expect("JSON always serializes"),
            ),
            _ => {
                return Err(DeliveryError::permanent(
                    "the outbox folder takes only email and SMS",
                ));
            }
        };
        let io = |e: std::io::Error| {
            DeliveryError::transient(format!("writing to {}: {e}", self.dir.display()))
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, self.dir.join(&name))
            .await
            .map_err(io)?;
        Ok(Delivered {
            provider_id: Some(name),
        })
    }
}
