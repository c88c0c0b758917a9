//! The certificates TLS listeners serve: compiled from `certificates[]` into an index by
//! server name (exact, then one wildcard label, then the default), which a resolver reads
//! on every handshake through an `ArcSwap`, so a reload changes what new handshakes get
//! without touching connections already open.

use arc_swap::ArcSwap;
use gatehouse_model::{Certificate, ConfigError};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What `/status` and the metrics tell about a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    pub name: String,
    /// The names it is served for.
    pub snis: Vec<String>,
    pub subject: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub default: bool,
}

/// The compiled certificates, by server name.
#[derive(Default)]
pub struct CertIndex {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// By the name under the wildcard label: `example.com` for `*.example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    pub infos: Vec<CertInfo>,
}

impl std::fmt::Debug for CertIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertIndex")
            .field("certificates", &self.infos.len())
            .finish()
    }
}

impl CertIndex {
    /// The certificate for server name `sni` (lower case): exact, then wildcard, then the
    /// default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(c) = self.exact.get(name) {
                return Some(c.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return Some(c.clone());
                }
            }
        }
        self.default.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Compiles `certificates[]` and the certificates ACME obtained; problems are pushed with their paths (`certificates[1].key:
    /// does not match the certificate`) and the certificate is left out.
    pub fn compile(certs: &[Certificate], errs: &mut Vec<ConfigError>) -> CertIndex {
        let mut index = CertIndex::default();
        // Who claimed each name first, for the duplicate message.
        let mut owners: HashMap<String, usize> = HashMap::new();
        let now = now_unix();
        for (i, c) in certs.iter().enumerate() {
            let p = format!("certificates[{i}]");
            let (certified, info) = match load(c, now) {
                Ok(x) => x,
                Err((field, m)) => {
                    errs.push(ConfigError::new(format!("{p}.{field}"), m));
                    continue;
                }
            };
            let certified = Arc::new(certified);
            for (j, sni) in info.snis.iter().enumerate() {
                if let Some(&first) = owners.get(sni) {
                    let field = if c.snis.is_empty() {
                        "cert".to_string()
                    } else {
                        format!("snis[{j}]")
                    };
                    errs.push(ConfigError::new(
                        format!("{p}.{field}"),
                        format!(
                            "\"{sni}\" is served by certificates[{first}] (\"{}\") already",
                            certs.get(first).map_or("", |c| c.name.as_str())
                        ),
                    ));
                    continue;
                }
                owners.insert(sni.clone(), i);
                match sni.strip_prefix("*.") {
                    Some(parent) => index.wildcard.insert(parent.into(), certified.clone()),
                    None => index.exact.insert(sni.as_str().into(), certified.clone()),
                };
            }
            if c.default {
                index.default = Some(certified.clone());
            }
            index.infos.push(info);
        }
        index
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One certificate, checked: chain and key parse, key matches, not expired. `Err` names the
/// field at fault.
fn load(c: &Certificate, now: i64) -> Result<(CertifiedKey, CertInfo), (&'static str, String)> {
    let chain = super::certs_from_pem(&c.cert).map_err(|m| ("cert", m))?;
    let key_text = c.key.as_deref().ok_or((
        "key",
        "missing: a certificate needs its private key".to_string(),
    ))?;
    let key = super::key_from_pem(key_text).map_err(|m| ("key", m))?;
    let leaf = chain
        .first()
        .ok_or(("cert", "no certificate in the chain".to_string()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| ("cert", format!("the leaf certificate does not parse: {e}")))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if not_after < now {
        return Err((
            "cert",
            format!("expired on {}", validity.not_after.to_datetime()),
        ));
    }
    let snis = if c.snis.is_empty() {
        dns_names(&parsed)
    } else {
        c.snis.iter().map(|s| s.to_ascii_lowercase()).collect()
    };
    if snis.is_empty() && !c.default {
        return Err((
            "snis",
            "empty, and the certificate names no DNS name: list the names it serves".into(),
        ));
    }
    let subject = parsed.subject().to_string();
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ("key", format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        (
            "key",
            format!("does not match the certificate's public key ({e})"),
        )
    })?;
    Ok((
        certified,
        CertInfo {
            name: c.name.clone(),
            snis,
            subject,
            not_before,
            not_after,
            default: c.default,
        },
    ))
}

/// The DNS subject alternative names of a certificate, lower case.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Chooses a listener's certificate by SNI from the node's current index.
#[derive(Debug)]
pub struct CertResolver {
    pub index: Arc<ArcSwap<CertIndex>>,
    /// ACME TLS-ALPN-01 certificates, for handshakes that offer `acme-tls/1`.
    pub challenges: Arc<super::Challenges>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == super::challenges::ACME_TLS_ALPN));
        if acme {
            return self.challenges.alpn(hello.server_name()?);
        }
        // rustls gives the SNI lower-cased and validated as a DNS name.
        self.index.load().resolve(hello.server_name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cert(name: &str, sans: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        Certificate {
            name: name.into(),
            snis: vec![],
            cert: c.pem(),
            key: Some(key.serialize_pem()),
            default: false,
        }
    }

    #[test]
    fn names_resolve_exact_then_wildcard_then_default() {
        let mut a = cert("a", &["api.example.com"]);
        let b = cert("b", &["*.example.com"]);
        a.default = true;
        let mut errs = vec![];
        let idx = CertIndex::compile(&[a, b], &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let a_key = idx.resolve(Some("api.example.com")).unwrap();
        let b_key = idx.resolve(Some("x.example.com")).unwrap();
        assert!(!Arc::ptr_eq(&a_key, &b_key));
        // One label only: a.b.example.com is not *.example.com's; the default answers.
        assert!(Arc::ptr_eq(
            &idx.resolve(Some("a.b.example.com")).unwrap(),
            &a_key
        ));
        assert!(Arc::ptr_eq(&idx.resolve(None).unwrap(), &a_key));
        assert_eq!(idx.infos[0].snis, vec!["api.example.com".to_string()]);
    }

    #[test]
    fn bad_certificates_are_refused_with_their_field() {
        let good = cert("good", &["a.example.com"]);
        let other = cert("other", &["b.example.com"]);
        let mismatched = Certificate {
            name: "mismatched".into(),
            key: other.key.clone(),
            ..good.clone()
        };
        let garbage = Certificate {
            name: "garbage".into(),
            cert: "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            ..good.clone()
        };
        let dup = Certificate {
            name: "dup".into(),
            snis: vec!["a.example.com".into()],
            ..other.clone()
        };
        let mut errs = vec![];
        CertIndex::compile(&[good, mismatched, garbage, dup], &mut errs);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("certificates[1].key: does not match"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("certificates[2].cert: unparsable PEM"),
            "{text:?}"
        );
        assert!(
            text[2].starts_with(
                "certificates[3].snis[0]: \"a.example.com\" is served by certificates[0]"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn expired_certificates_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let c = params.self_signed(&key).unwrap();
        let old = Certificate {
            name: "old".into(),
            snis: vec![],
            cert: c.pem(),
            key: Some(key.serialize_pem()),
            default: false,
        };
        let mut errs = vec![];
        CertIndex::compile(&[old], &mut errs);
        assert_eq!(errs.len(), 1);
        let e = errs[0].to_string();
        assert!(
            e.starts_with("certificates[0].cert: expired on 2021-01-01"),
            "{e}"
        );
    }
}
