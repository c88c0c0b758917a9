//! The ACME challenges this node answers while an order is pending: HTTP-01 tokens (served
//! on `/.well-known/acme-challenge/`) and TLS-ALPN-01 certificates (served to handshakes
//! that offer `acme-tls/1`). In store mode HTTP-01 answers are also published in the store,
//! so whichever node the CA reaches answers; TLS-ALPN-01 is answered by the ordering node
//! only (a handshake cannot wait for the store).

use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The well-known path prefix of HTTP-01 (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Where HTTP-01 answers other nodes published are looked up (the store): the CA may
/// reach any node behind the load balancer, not only the one that ordered.
pub trait SharedTokens: Send + Sync {
    fn lookup(
        &self,
        token: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;
}

#[derive(Default)]
pub struct Challenges {
    http: Mutex<HashMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    shared: std::sync::OnceLock<Arc<dyn SharedTokens>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The key authorization to answer for HTTP-01 `token`.
    pub fn http(&self, token: &str) -> Option<String> {
        self.http.lock().ok()?.get(token).cloned()
    }

    /// The answer for `token`: this node's, else one another node published.
    pub async fn http_anywhere(&self, token: &str) -> Option<String> {
        if let Some(ka) = self.http(token) {
            return Some(ka);
        }
        let shared = self.shared.get()?.clone();
        shared.lookup(token.to_owned()).await
    }

    /// Looks HTTP-01 tokens up in `shared` too (set once, in store mode).
    pub fn share_tokens(&self, shared: Arc<dyn SharedTokens>) {
        let _ = self.shared.set(shared);
    }

    pub fn set_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    pub fn clear_http(&self, token: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.remove(token);
        }
    }

    /// The TLS-ALPN-01 certificate for `domain`.
    pub fn alpn(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.lock().ok()?.get(domain).cloned()
    }

    /// Makes and keeps the TLS-ALPN-01 certificate for `domain`: self-signed, naming it, with
    /// the critical acmeIdentifier extension holding `digest` (SHA-256 of the key
    /// authorization).
    pub fn set_alpn(&self, domain: &str, digest: &[u8]) -> Result<(), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| e.to_string())?;
        let signing = super::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        if let Ok(mut m) = self.alpn.lock() {
            m.insert(domain.to_owned(), certified);
        }
        Ok(())
    }

    pub fn clear_alpn(&self, domain: &str) {
        if let Ok(mut m) = self.alpn.lock() {
            m.remove(domain);
        }
    }
}
