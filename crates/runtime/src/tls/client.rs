//! The rustls client configs upstream connections use: the system's roots or a configured CA
//! bundle, an optional client certificate (mTLS to the upstream), ALPN by the upstream's
//! protocol, and a verifier that accepts anything for `verify: false` (logged when loaded).

use gatehouse_model::UpstreamTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, OnceLock};

/// The system's CA certificates, read once (it takes milliseconds and files).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system CA certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system CA certificates: https upstreams need tls.ca"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// A client config for an upstream with `tls` (None: all defaults). `h2` picks the ALPN
/// offer (`h2`, else `http/1.1`). `Err` names the setting at fault.
pub fn client_config(
    tls: Option<&UpstreamTls>,
    h2: bool,
) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let default = UpstreamTls {
        verify: true,
        ..Default::default()
    };
    let tls = tls.unwrap_or(&default);
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else {
        let roots = match &tls.ca {
            Some(ca) => Arc::new(super::roots_from_pem(ca).map_err(|m| ("ca", m))?),
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = super::certs_from_pem(cert).map_err(|m| ("client_cert", m))?;
            let key = super::key_from_pem(key).map_err(|m| ("client_key", m))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("client_key", format!("does not match client_cert ({e})")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if h2 {
        super::server::ALPN_H2.to_vec()
    } else {
        super::server::ALPN_HTTP1.to_vec()
    }];
    Ok(Arc::new(config))
}

/// The server name to send and verify for a target: the configured one, else the target's
/// host (an IP address is verified as such, and rustls sends no SNI for it).
pub fn server_name(sni: Option<&str>, address: &str) -> Result<ServerName<'static>, String> {
    let host = match sni {
        Some(s) => s,
        None => address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("\"{host}\" is not a server name: {e}"))
}

/// `verify: false`: any certificate is taken, signatures are still checked (the handshake
/// must be with whoever holds the key of the certificate shown).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
