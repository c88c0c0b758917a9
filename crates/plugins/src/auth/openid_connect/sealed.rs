//! Cookies only the gateway can read or make: JSON sealed with AES-256-GCM (encrypted and
//! authenticated in one step, so a changed byte is a refused cookie), under a key derived
//! from the configured secret, with its own expiry inside.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Sealer {
    key: LessSafeKey,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl Sealer {
    /// A sealer whose key is the SHA-256 of `secret` (at least 32 bytes of it).
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("must be at least 32 bytes".into());
        }
        let key = super::super::sha256(secret.as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &key).map_err(|e| e.to_string())?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed for a cookie named `name` (the name is bound in, so one cookie's value
    /// cannot be replayed as another's).
    pub fn seal<T: Serialize>(&self, name: &str, value: &T) -> Option<String> {
        let mut data = serde_json::to_vec(value).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(B64.encode(out))
    }

    /// What `seal` made for `name`, or `None` for anything else.
    pub fn open<T: DeserializeOwned>(&self, name: &str, cookie: &str) -> Option<T> {
        if cookie.len() > 8192 {
            return None;
        }
        let raw = B64.decode(cookie).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_unchanged_under_its_name_and_key() {
        let s = Sealer::new("0123456789abcdef0123456789abcdef").unwrap();
        let c = s
            .seal("sess", &serde_json::json!({"sub": "alice"}))
            .unwrap();
        let v: serde_json::Value = s.open("sess", &c).unwrap();
        assert_eq!(v["sub"], "alice");
        assert!(
            s.open::<serde_json::Value>("other", &c).is_none(),
            "bound to its name"
        );
        let mut bytes = B64.decode(&c).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(s
            .open::<serde_json::Value>("sess", &B64.encode(bytes))
            .is_none());
        let other = Sealer::new("another-secret-of-32-bytes-or-more").unwrap();
        assert!(other.open::<serde_json::Value>("sess", &c).is_none());
        assert!(Sealer::new("short").is_err());
        assert!(s.open::<serde_json::Value>("sess", "!!").is_none());
    }
}
