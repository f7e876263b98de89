//! The customer profile: contact points, time zone, consent and free attributes.

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::{Channel, CustomerId};

/// Consent per channel. Absent consent is no consent: marketing goes only to those who said yes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// May we email this customer?
    #[serde(default)]
    pub email: bool,
    /// May we text this customer?
    #[serde(default)]
    pub sms: bool,
}

impl Consent {
    /// Whether the customer agreed to messages on `channel`.
    pub fn allows(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
        }
    }
}

/// One customer, in the JSON shape the simulator's `--customer` file and the API take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// The customer's id.
    pub id: CustomerId,
    /// Email address, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// IANA time zone name, such as `Europe/Paris`; UTC when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_zone"
    )]
    pub timezone: Option<String>,
    /// Locale such as `en-US` or `de`, used by date and money helpers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Free attributes: `plan`, `first_name`, `birthday`, anything the sender knows.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Tags, such as `vip`.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Consent per channel.
    #[serde(default)]
    pub consent: Consent,
}

fn deserialize_zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    if let Some(name) = &name {
        check_zone(name).map_err(serde::de::Error::custom)?;
    }
    Ok(name)
}

/// Checks that `name` is an IANA time zone known to the bundled database.
///
/// # Errors
/// A sentence naming the zone, fit for a user.
pub fn check_zone(name: &str) -> Result<TimeZone, String> {
    jiff::tz::db().get(name).map_err(|_| {
        format!("unknown time zone {name:?} (expected an IANA name such as \"Europe/Paris\")")
    })
}

impl Customer {
    /// A profile with only an id: no contact points, no consent.
    pub fn minimal(id: CustomerId) -> Self {
        Self {
            id,
            email: None,
            phone: None,
            timezone: None,
            locale: None,
            attributes: Map::new(),
            tags: BTreeSet::new(),
            consent: Consent::default(),
        }
    }

    /// Checks the email address's shape and normalises the phone number to E.164, as the API
    /// and the importer both require.
    ///
    /// # Errors
    /// A sentence naming the field and what is wrong.
    pub fn normalise_contacts(mut self) -> Result<Self, String> {
        if let Some(email) = &self.email
            && !looks_like_email(email)
        {
            return Err(format!("email: {email:?} is not an email address"));
        }
        if let Some(phone) = &self.phone {
            self.phone = Some(
                super::PhoneE164::parse(phone)
                    .map_err(|e| format!("phone: {e}"))?
                    .to_string(),
            );
        }
        Ok(self)
    }

    /// The customer's time zone; UTC when none is set.
    pub fn tz(&self) -> TimeZone {
        self.timezone
            .as_deref()
            .and_then(|name| check_zone(name).ok())
            .unwrap_or(TimeZone::UTC)
    }

    /// The address for `channel`, if the customer has one.
    pub fn address(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Email => self.email.as_deref(),
            Channel::Sms => self.phone.as_deref(),
        }
    }

    /// Looks up a field by the name conditions use: a profile field (`email`, `phone`,
    /// `timezone`, `locale`, `id`) or an attribute path such as `address.city`.
    pub fn field(&self, path: &str) -> Option<Value> {
        let text = |v: &Option<String>| v.clone().map(Value::String);
        match path {
            "id" => Some(Value::String(self.id.to_string())),
            "email" => text(&self.email),
            "phone" => text(&self.phone),
            "timezone" => text(&self.timezone),
            "locale" => text(&self.locale),
            "tags" => Some(Value::Array(
                self.tags.iter().cloned().map(Value::String).collect(),
            )),
            _ => lookup_path(&self.attributes, path).cloned(),
        }
    }
}

/// One `@` between a non-empty local part and a dotted domain, no spaces. The SMTP server
/// has the last word; this catches typos at the door.
fn looks_like_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        && !text.chars().any(char::is_whitespace)
}

/// Follows a dotted path (`a.b.c`) through nested JSON objects.
pub(crate) fn lookup_path<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = map.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_json_is_strict_about_keys_and_time_zones() {
        let ok: Customer = serde_json::from_str(
            r#"{"id":"c1","timezone":"America/New_York","attributes":{"plan":"pro","address":{"city":"Oslo"}}}"#,
        )
        .unwrap();
        assert_eq!(ok.field("plan"), Some(Value::from("pro")));
        assert_eq!(ok.field("address.city"), Some(Value::from("Oslo")));
        assert_eq!(ok.field("missing"), None);
        assert_eq!(ok.tz().iana_name(), Some("America/New_York"));
        assert!(!ok.consent.email, "consent defaults to no");

        let bad_zone = serde_json::from_str::<Customer>(r#"{"id":"c1","timezone":"Mars/Olympus"}"#);
        assert!(
            bad_zone
                .unwrap_err()
                .to_string()
                .contains("unknown time zone")
        );
        let unknown_key = serde_json::from_str::<Customer>(r#"{"id":"c1","emial":"x@y"}"#);
        let with = |email: &str| {
            Customer {
                email: Some(email.into()),
                ..ok.clone()
            }
            .normalise_contacts()
        };
        assert!(with("ada@example.com").is_ok());
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
        ] {
            assert!(with(bad).is_err(), "{bad} accepted");
        }
        assert!(unknown_key.unwrap_err().to_string().contains("emial"));
    }
}
