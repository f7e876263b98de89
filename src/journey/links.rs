//! The links templates see, such as the signed one-click unsubscribe link.

use std::sync::Arc;

use crate::model::{Channel, CustomerId};

/// The unsubscribe link shown in simulated messages; the runtime signs real ones.
pub const PREVIEW_UNSUBSCRIBE_LINK: &str = "https://trellis.invalid/unsubscribe/preview";

/// Builds the links templates see, such as the signed unsubscribe link.
#[derive(Clone)]
pub enum Links {
    /// Real links, signed.
    Signed {
        /// The public base URL, such as `https://trellis.example.com`.
        public_url: String,
        /// The key unsubscribe tokens are signed with.
        key: Arc<[u8]>,
    },
    /// Links that act on nothing, for previews and the simulator.
    Preview,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Links::Signed { public_url, .. } => f
                .debug_struct("Signed")
                .field("public_url", public_url)
                .field("key", &"[redacted]")
                .finish(),
            Links::Preview => f.write_str("Preview"),
        }
    }
}

impl Links {
    /// The unsubscribe link for a customer and channel.
    pub fn unsubscribe(&self, customer: &CustomerId, channel: Channel) -> String {
        match self {
            Links::Signed { public_url, key } => format!(
                "{}/unsubscribe/{}",
                public_url.trim_end_matches('/'),
                crate::unsubscribe::sign(key, customer, channel)
            ),
            Links::Preview => PREVIEW_UNSUBSCRIBE_LINK.to_owned(),
        }
    }
}
