//! Checked identifiers. Each is made by `parse`, so a value of the type is always valid.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier was being parsed.
        kind: &'static str,
    },
    /// The string was longer than the limit.
    #[error("{kind} is longer than {max} characters")]
    TooLong {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The limit.
        max: usize,
    },
    /// The string held a character outside the allowed set.
    #[error("{kind} {value:?} may only hold letters, digits, '_', '-', '.', ':', '@' and '+'")]
    BadChar {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The refused string.
        value: String,
    },
    /// The string was `.` or `..`, which URLs resolve as path steps, so such an id could not
    /// be named in a URL such as `/v1/customers/{id}`.
    #[error("{kind} {value:?} is not allowed: '.' and '..' are path steps in a URL")]
    DotSegment {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The refused string.
        value: String,
    },
}

fn check(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if value == "." || value == ".." {
        return Err(IdError::DotSegment {
            kind,
            value: value.to_owned(),
        });
    }
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '+');
    if !value.chars().all(allowed) {
        return Err(IdError::BadChar {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            ///
            /// # Errors
            /// When `value` is empty, too long, or holds a character outside the allowed set.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A customer's id, as the sending system knows it.
    CustomerId, "customer id", 200
);
string_id!(
    /// An event's id; a second event with the same id is a resend and is not counted again.
    EventId, "event id", 200
);
string_id!(
    /// A node's id within one workflow.
    NodeId, "node id", 100
);
string_id!(
    /// A workflow's id, unique across `workflows/`.
    WorkflowId, "workflow id", 100
);

/// The key that makes a message unique: the same enrollment at the same node visit
/// always yields the same key, so a retried or replayed step never sends twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Derives a key from the parts that identify one message, hashed so that it is short,
    /// fixed-length and safe in a `Message-ID` header.
    pub fn derive(parts: &[&str]) -> Self {
        Self(crate::engine::hash::hex_digest(parts, 32))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A delivery channel.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Email through SMTP.
    Email,
    /// SMS through a gateway.
    Sms,
}

impl Channel {
    /// The channel's name as written in files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_long_and_odd_strings() {
        assert_eq!(
            CustomerId::parse(""),
            Err(IdError::Empty {
                kind: "customer id"
            })
        );
        assert!(matches!(
            NodeId::parse("x".repeat(101)),
            Err(IdError::TooLong { max: 100, .. })
        ));
        assert!(matches!(
            WorkflowId::parse("has space"),
            Err(IdError::BadChar { .. })
        ));
        assert_eq!(CustomerId::parse("cus_42").unwrap().as_str(), "cus_42");
        for dots in [".", ".."] {
            let err = CustomerId::parse(dots).unwrap_err();
            assert!(matches!(err, IdError::DotSegment { .. }), "{dots}");
            assert!(err.to_string().contains("path steps"), "{err}");
        }
        assert!(CustomerId::parse("...").is_ok());
        assert!(CustomerId::parse("a.b").is_ok());
    }

    #[test]
    fn idempotency_keys_are_stable_and_distinguish_their_parts() {
        let a = IdempotencyKey::derive(&["enr-1", "welcome", "1"]);
        assert_eq!(a, IdempotencyKey::derive(&["enr-1", "welcome", "1"]));
        assert_ne!(a, IdempotencyKey::derive(&["enr-1", "welcome", "2"]));
        // The separator keeps ("ab","c") apart from ("a","bc").
        assert_ne!(
            IdempotencyKey::derive(&["ab", "c"]),
            IdempotencyKey::derive(&["a", "bc"])
        );
        assert_eq!(a.as_str().len(), 32);
    }
}
