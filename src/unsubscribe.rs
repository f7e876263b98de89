//! Signed tokens: unsubscribe tokens (an HMAC over customer and channel, verified without a
//! database lookup and never expiring) and signatures for values handed out in callback URLs.
//! Pure: the key is passed in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::{Channel, CustomerId};

/// The length of the signature part, in hex digits.
const SIGNATURE_HEX: usize = 32;

fn mac(key: &[u8], customer: &str, channel: Channel) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(channel.as_str().as_bytes());
    mac.update(b"\0");
    mac.update(customer.as_bytes());
    let bytes = mac.finalize().into_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..SIGNATURE_HEX].to_owned()
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A signature of `value` for `purpose` (such as a delivery-report callback URL), so a value
/// handed out in a URL can be trusted when it comes back.
pub fn sign_value(key: &[u8], purpose: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    let bytes = mac.finalize().into_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..SIGNATURE_HEX].to_owned()
}

/// Whether `signature` is [`sign_value`]'s for `purpose` and `value`, compared in constant time.
pub fn verify_value(key: &[u8], purpose: &str, value: &str, signature: &str) -> bool {
    let expected = sign_value(key, purpose, value);
    expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A token for `customer` on `channel`: `<channel>.<hex customer id>.<signature>`.
pub fn sign(key: &[u8], customer: &CustomerId, channel: Channel) -> String {
    format!(
        "{}.{}.{}",
        channel.as_str(),
        hex_encode(customer.as_str()),
        mac(key, customer.as_str(), channel)
    )
}

/// The customer and channel a token was made for, if its signature holds.
pub fn verify(key: &[u8], token: &str) -> Option<(CustomerId, Channel)> {
    let mut parts = token.split('.');
    let channel = match parts.next()? {
        "email" => Channel::Email,
        "sms" => Channel::Sms,
        _ => return None,
    };
    let hex = parts.next()?;
    let customer = hex_decode(hex)?;
    // Only the token issued: hex in another case decodes to the same customer, but it is
    // a different string, and a tampered one.
    if hex_encode(&customer) != hex {
        return None;
    }
    let signature = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let expected = mac(key, &customer, channel);
    // Compare in constant time: the signature is a secret until it is right.
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return None;
    }
    Some((CustomerId::parse(customer).ok()?, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_is_refused() {
        let key = b"secret key";
        let ada = CustomerId::parse("ada@example").unwrap();
        let token = sign(key, &ada, Channel::Email);
        assert_eq!(verify(key, &token), Some((ada.clone(), Channel::Email)));
        assert_eq!(verify(b"other key", &token), None);
        let other = sign(key, &CustomerId::parse("bob").unwrap(), Channel::Email);
        let forged = format!(
            "{}.{}",
            &token[..token.rfind('.').unwrap()],
            &other[other.rfind('.').unwrap() + 1..]
        );
        assert_eq!(verify(key, &forged), None);
        assert_eq!(verify(key, &token.replacen("email", "sms", 1)), None);
        assert_eq!(verify(key, "garbage"), None);
        // "z" is hex 7a; 7A decodes to the same customer but is not the token issued.
        let z = sign(key, &CustomerId::parse("z").unwrap(), Channel::Email);
        assert!(verify(key, &z).is_some());
        assert_eq!(verify(key, &z.replace(".7a.", ".7A.")), None);
    }
}
