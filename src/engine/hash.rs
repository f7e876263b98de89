//! Deterministic hashes of ids: idempotency keys, workflow versions and split buckets.
//!
//! The engine reads no randomness; anything that must look random is a hash of ids.

use sha2::{Digest, Sha256};

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixing keeps ("ab", "c") and ("a", "bc") apart.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The first `len` hex digits (at most 64) of the SHA-256 of `parts`.
pub fn hex_digest(parts: &[&str], len: usize) -> String {
    let mut out = String::with_capacity(64);
    for byte in digest(parts) {
        out.push_str(&format!("{byte:02x}"));
    }
    out.truncate(len.min(64));
    out
}

/// A number in `0..modulus` derived from `parts`, uniform enough for A/B buckets.
pub fn bucket(parts: &[&str], modulus: u64) -> u64 {
    let bytes = digest(parts);
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first) % modulus.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_customers_across_the_range() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[bucket(&["wf", &format!("c{i}")], 4) as usize] += 1;
        }
        for n in counts {
            assert!((850..1150).contains(&n), "uneven buckets: {counts:?}");
        }
    }
}
