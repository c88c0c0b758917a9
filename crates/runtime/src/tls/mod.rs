//! TLS compiled from the config: the certificate index listeners choose from by SNI
//! ([`certs`]), listener server configs ([`server`]) and upstream client configs
//! ([`client`]), all on rustls with the aws-lc-rs provider (one crypto library in the binary).

pub mod certs;
pub mod challenges;
pub mod client;
pub mod server;

pub use certs::{CertIndex, CertInfo, CertResolver};
pub use challenges::Challenges;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, OnceLock};

/// The process's crypto provider: aws-lc-rs, as the workspace's rustls features choose.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The bytes of a PEM setting: the text itself when it is inline PEM, else the file it names.
pub fn pem_bytes(text: &str) -> Result<Vec<u8>, String> {
    if gatehouse_model::is_inline_pem(text) {
        Ok(text.as_bytes().to_vec())
    } else {
        std::fs::read(text).map_err(|e| format!("cannot read PEM file \"{text}\": {e}"))
    }
}

/// Every certificate in a PEM setting, in order; an error when there is none.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = pem_bytes(text)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unparsable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the PEM".into());
    }
    Ok(certs)
}

/// The private key of a PEM setting (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = pem_bytes(text)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block in the PEM".into(),
        e => format!("unparsable PEM private key: {e}"),
    })
}

/// A root store of the CA certificates in a PEM setting.
pub fn roots_from_pem(text: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs_from_pem(text)?.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| format!("CA certificate {} is not usable: {e}", i + 1))?;
    }
    Ok(roots)
}

/// A cipher suite's IANA name (`TLS13_AES_128_GCM_SHA256`).
pub fn suite_name(s: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

/// The provider's suites named by `names` (all of them when `names` is empty); an error
/// names the first unknown one and lists what there is.
pub fn cipher_suites(names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let all = provider().cipher_suites.clone();
    if names.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::with_capacity(names.len());
    for n in names {
        match all.iter().find(|s| suite_name(s).eq_ignore_ascii_case(n)) {
            Some(s) => chosen.push(*s),
            None => {
                let known: Vec<String> = all.iter().map(suite_name).collect();
                return Err(format!(
                    "unknown cipher suite \"{n}\"; known: {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(chosen)
}

/// The subject of a DER certificate as RFC 4514 text (`CN=alice,O=Example`).
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// Why a TLS handshake failed, as the failures counter labels it.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof => "closed",
            _ => "io",
        };
    };
    use rustls::{Error, PeerIncompatible};
    match tls {
        Error::General(m) if m.contains("certificate chain resolved") => "no_certificate",
        Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::Tls13RequiredForQuic,
        ) => "protocol_version",
        Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon) => "no_shared_cipher",
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoCertificatesPresented | Error::InvalidCertificate(_) => "client_certificate",
        Error::AlertReceived(_) => "alert_received",
        Error::InvalidMessage(_) | Error::InappropriateHandshakeMessage { .. } => "bad_message",
        _ => "other",
    }
}

/// Takes the write-only TLS secrets out of `config` before it is shown: certificates' keys
/// and upstreams' client keys.
pub fn redact(config: &mut gatehouse_model::Config) {
    for c in &mut config.certificates {
        c.key = None;
    }
    for u in &mut config.upstreams {
        if let Some(t) = &mut u.tls {
            t.client_key = None;
        }
    }
}

/// A certificate (or upstream) written back without its key keeps the one stored under
/// its name: what the API showed can be sent back as it is.
pub fn keep_keys(new: &mut gatehouse_model::Config, old: &gatehouse_model::Config) {
    for c in new.certificates.iter_mut().filter(|c| c.key.is_none()) {
        if let Some(o) = old.certificates.iter().find(|o| o.name == c.name) {
            c.key.clone_from(&o.key);
        }
    }
    for u in &mut new.upstreams {
        let Some(t) = u.tls.as_mut().filter(|t| t.client_key.is_none()) else {
            continue;
        };
        if let Some(o) = old.upstreams.iter().find(|o| o.name == u.name) {
            if let Some(ot) = &o.tls {
                t.client_key.clone_from(&ot.client_key);
            }
        }
    }
}
