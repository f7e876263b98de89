//! A partial update of a customer (`PATCH /v1/customers/{id}`, and the simulator's
//! `$profile` script lines): what is given replaces, attributes merge. Pure.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::customer::{Consent, Customer, check_zone};

/// A partial update of a profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    /// A new email address.
    pub email: Option<String>,
    /// A new phone number.
    pub phone: Option<String>,
    /// A new IANA time zone.
    pub timezone: Option<String>,
    /// A new locale.
    pub locale: Option<String>,
    /// Merged: a `null` value removes the attribute.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Replaces the tags.
    pub tags: Option<BTreeSet<String>>,
    /// Tags to add.
    #[serde(default)]
    pub add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove_tags: Vec<String>,
    /// Consent fields to change.
    pub consent: Option<ConsentPatch>,
}

/// Consent fields to change; absent ones stay as they are.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentPatch {
    /// Email consent.
    pub email: Option<bool>,
    /// SMS consent.
    pub sms: Option<bool>,
}

impl CustomerPatch {
    /// `customer` with the patch applied, contacts normalised.
    ///
    /// # Errors
    /// A sentence for the user: an unknown time zone, an email or phone that is not one.
    pub fn apply(self, mut customer: Customer) -> Result<Customer, String> {
        if let Some(zone) = &self.timezone {
            check_zone(zone).map_err(|e| format!("timezone: {e}"))?;
        }
        customer.email = self.email.or(customer.email);
        customer.phone = self.phone.or(customer.phone);
        customer.timezone = self.timezone.or(customer.timezone);
        customer.locale = self.locale.or(customer.locale);
        for (name, value) in self.attributes {
            if value.is_null() {
                customer.attributes.remove(&name);
            } else {
                customer.attributes.insert(name, value);
            }
        }
        if let Some(tags) = self.tags {
            customer.tags = tags;
        }
        customer.tags.extend(self.add_tags);
        for tag in self.remove_tags {
            customer.tags.remove(&tag);
        }
        if let Some(consent) = self.consent {
            customer.consent = Consent {
                email: consent.email.unwrap_or(customer.consent.email),
                sms: consent.sms.unwrap_or(customer.consent.sms),
            };
        }
        customer.normalise_contacts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ada() -> Customer {
        serde_json::from_value(serde_json::json!({
            "id": "ada", "email": "ada@example.com", "attributes": {"plan": "pro", "x": 1},
            "tags": ["a", "b"], "consent": {"email": true, "sms": true}
        }))
        .unwrap()
    }

    #[test]
    fn given_fields_replace_attributes_merge_and_null_removes() {
        let patch: CustomerPatch = serde_json::from_value(serde_json::json!({
            "phone": "+14155550101", "attributes": {"plan": "free", "x": null},
            "add_tags": ["c"], "remove_tags": ["a"], "consent": {"sms": false}
        }))
        .unwrap();
        let patched = patch.apply(ada()).unwrap();
        assert_eq!(patched.email.as_deref(), Some("ada@example.com"));
        assert_eq!(patched.phone.as_deref(), Some("+14155550101"));
        assert_eq!(
            patched.attributes,
            serde_json::from_str::<Map<String, Value>>(r#"{"plan":"free"}"#).unwrap()
        );
        assert_eq!(patched.tags, ["b", "c"].map(String::from).into());
        assert_eq!(
            patched.consent,
            Consent {
                email: true,
                sms: false
            }
        );
    }

    #[test]
    fn an_unknown_zone_is_refused_with_its_name() {
        let patch = CustomerPatch {
            timezone: Some("Mars/Olympus".into()),
            ..CustomerPatch::default()
        };
        let err = patch.apply(ada()).unwrap_err();
        assert!(
            err.starts_with("timezone: ") && err.contains("Mars/Olympus"),
            "{err}"
        );
    }
}
