//! A TLS listener's rustls server config: versions and suites from `listen[].tls`, the
//! certificate chosen by SNI from the node's index, ALPN `h2` and `http/1.1`, optional client
//! certificate verification, and session resumption (stateful cache and TLS 1.3 tickets).

use super::CertResolver;
use gatehouse_model::{ClientCertificate, ListenTls, TlsVersion};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::ServerConfig;
use std::sync::Arc;

/// Sessions kept for resumption by ID (TLS 1.2) per listener; tickets need no memory.
const SESSION_CACHE: usize = 16 * 1024;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The server config of a listener with `tls`; `Err` says which setting is wrong
/// (`client_ca: ...`, `cipher_suites: ...`).
pub fn server_config(
    tls: &ListenTls,
    resolver: Arc<CertResolver>,
) -> Result<ServerConfig, (&'static str, String)> {
    let mut provider = (*super::provider()).clone();
    provider.cipher_suites =
        super::cipher_suites(&tls.cipher_suites).map_err(|m| ("cipher_suites", m))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_protocol_versions(versions)
        .map_err(|e| {
            (
                "cipher_suites",
                format!("no suite left for the allowed versions: {e}"),
            )
        })?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(super::roots_from_pem(ca).map_err(|m| ("client_ca", m))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider));
            let verifier = match tls.client_certificate {
                ClientCertificate::Required => verifier,
                ClientCertificate::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| ("client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if tls.http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
    } else {
        vec![ALPN_HTTP1.to_vec()]
    };
    // Only ACME's validation offers it; such a connection ends after its handshake.
    config
        .alpn_protocols
        .push(super::challenges::ACME_TLS_ALPN.to_vec());
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| ("min_version", format!("no session ticketer: {e}")))?;
    Ok(config)
}

/// Every problem building the listeners' TLS configs would meet, with its path
/// (`listen[1].tls.client_ca: ...`). Builds each config once with an empty index.
pub fn check_listeners(
    listen: &[gatehouse_model::Listen],
    errs: &mut Vec<gatehouse_model::ConfigError>,
) {
    let resolver = Arc::new(CertResolver {
        index: Default::default(),
        challenges: Default::default(),
    });
    for (i, l) in listen.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        if let Err((field, m)) = server_config(tls, resolver.clone()) {
            errs.push(gatehouse_model::ConfigError::new(
                format!("listen[{i}].tls.{field}"),
                m,
            ));
        }
    }
}
