//! The links templates see, such as the signed one-click unsubscribe link.

use std::sync::Arc;

use crate::model::{Channel, CustomerId};

/// Builds the links templates see, such as the signed unsubscribe link.
#[derive(Clone)]
pub struct Links {
    /// The public base URL, such as `https://trellis.example.com`.
    pub public_url: String,
    /// The key unsubscribe tokens are signed with.
    pub key: Arc<[u8]>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("public_url", &self.public_url)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Links {
    /// The unsubscribe link for a customer and channel.
    pub fn unsubscribe(&self, customer: &CustomerId, channel: Channel) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.public_url.trim_end_matches('/'),
            crate::unsubscribe::sign(&self.key, customer, channel)
        )
    }
}
