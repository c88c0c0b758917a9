//! TLS in the config: what a listener offers (`listen[].tls`), the certificates it serves by
//! SNI (`certificates[]`), and how upstreams are reached over TLS (`upstreams[].tls`).
//! Parsing the PEM itself (and checking that key and certificate match) is the runtime's:
//! this crate holds no crypto.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A listener that serves HTTPS. Certificates come from `certificates[]`, chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`. Older ones never are.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Cipher suites offered, by their IANA names (`TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, ...). Empty: every suite rustls considers
    /// safe, in its order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Offer HTTP/2 by ALPN (with `http/1.1`). Default: on.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Verify client certificates against these CA certificates (PEM text, or the path of a
    /// PEM file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// With `client_ca`: whether a client must present a certificate (`required`, the
    /// default) or may go without one (`optional`: a certificate it does present is still
    /// verified).
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub client_certificate: ClientCertificate,
    /// Send the verified client certificate's subject (`CN=alice,O=Example`) upstream in this
    /// header. A client's own value of the header is always removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_subject_header: Option<String>,
    /// How long a client has to complete the handshake.
    #[serde(
        default = "default_handshake_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<300, _>"
    )]
    #[schemars(with = "String")]
    pub handshake_timeout: Duration,
}

fn yes() -> bool {
    true
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// See [`ListenTls::client_certificate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificate {
    #[default]
    Required,
    Optional,
}

/// A certificate chain with its private key, served to clients whose SNI it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub name: String,
    /// Server names it serves: exact (`api.example.com`) or one leading wildcard label
    /// (`*.example.com`, which matches `a.example.com`, not `a.b.example.com`). Empty: the
    /// names the certificate itself lists (its subject alternative names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snis: Vec<String>,
    /// The chain, leaf first: PEM text, or the path of a PEM file.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1 PEM, or the path of a PEM file). Write-only:
    /// the admin API and `config export` never return it; a certificate written back without
    /// one keeps the key it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Served to clients that send no SNI, or one no certificate names. At most one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// How the targets of an upstream are reached over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The server name sent (SNI) and verified. Default: the target's host; for a target
    /// that is an IP address, the address is verified and no SNI is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the targets' certificates against these CA certificates (PEM text or a file
    /// path) instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Verify the target's certificate (default). Off, any certificate is accepted, and a
    /// warning is logged when the config loads: for test rigs, never for production.
    #[serde(default = "yes")]
    pub verify: bool,
    /// A client certificate (PEM chain, or a path) to present: mTLS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Its private key (PEM or a path). Write-only, like a certificate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// The protocols a route accepts requests over. See `Route::protocols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteProtocol {
    Http,
    Https,
}

/// The answers `https_redirect_status_code` may name: a redirect to the `https://` URL
/// (301, 302, 307, 308), or a refusal (426 Upgrade Required, 403 Forbidden).
pub const HTTPS_REDIRECT_CODES: [u16; 6] = [301, 302, 307, 308, 403, 426];

/// Whether `text` is PEM given inline (not a file path).
pub fn is_inline_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN")
}

/// The TLS settings' problems serde cannot see (PEM contents are checked when compiled).
pub(crate) fn validate(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    validate_acme(config, err);
    for (i, l) in config.listen.iter().enumerate() {
        let Some(t) = &l.tls else { continue };
        let p = format!("listen[{i}].tls");
        if let Some(h) = &t.client_subject_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    format!("{p}.client_subject_header"),
                    format!("\"{h}\" is not a valid header name"),
                );
            }
            if t.client_ca.is_none() {
                err(
                    format!("{p}.client_subject_header"),
                    "needs client_ca: only verified client certificates are passed on".into(),
                );
            }
        }
        if t.handshake_timeout.is_zero() {
            err(
                format!("{p}.handshake_timeout"),
                "must be more than 0".into(),
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut default = None;
    for (i, c) in config.certificates.iter().enumerate() {
        let p = format!("certificates[{i}]");
        if !crate::is_valid_name(&c.name) {
            err(
                format!("{p}.name"),
                "must be 1-128 letters, digits, '-', '_', '.' or '~'".into(),
            );
        }
        if !names.insert(c.name.as_str()) {
            err(
                format!("{p}.name"),
                format!("duplicate certificate name \"{}\"", c.name),
            );
        }
        for (j, sni) in c.snis.iter().enumerate() {
            if let Err(m) = check_sni(sni) {
                err(format!("{p}.snis[{j}]"), m);
            }
        }
        if c.key.is_none() {
            err(
                format!("{p}.key"),
                "missing: a certificate needs its private key".into(),
            );
        }
        if c.default {
            if let Some(first) = default {
                err(
                    format!("{p}.default"),
                    format!("certificates[{first}] is the default already; only one may be"),
                );
            }
            default = Some(i);
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if !HTTPS_REDIRECT_CODES.contains(&r.https_redirect_status_code) {
            err(
                format!("routes[{i}].https_redirect_status_code"),
                format!(
                    "{} is not one of {HTTPS_REDIRECT_CODES:?}",
                    r.https_redirect_status_code
                ),
            );
        }
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let Some(t) = &u.tls else { continue };
        let p = format!("upstreams[{i}].tls");
        if u.scheme != crate::Scheme::Https {
            err(p.clone(), "is for scheme: https upstreams only".into());
        }
        if t.client_cert.is_some() != t.client_key.is_some() {
            err(
                format!("{p}.client_key"),
                "client_cert and client_key go together".into(),
            );
        }
        if let Some(sni) = &t.sni {
            if let Err(m) = check_sni(sni).and_then(|()| {
                if sni.starts_with("*.") {
                    Err("must be one server name, not a wildcard".into())
                } else {
                    Ok(())
                }
            }) {
                err(format!("{p}.sni"), m);
            }
        }
    }
}

/// A server name as `snis` lists it: DNS labels, with at most a leading `*.`.
pub fn check_sni(sni: &str) -> Result<(), String> {
    let name = sni.strip_prefix("*.").unwrap_or(sni);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !name.contains('*');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{sni}\" is not a server name (a.example.com, or *.example.com)"
        ))
    }
}

/// Certificates obtained automatically from an ACME directory (RFC 8555: Let's Encrypt,
/// ZeroSSL, pebble for tests), stored (in the store when there is one, so every node serves
/// the same and one orders it; else in the data directory), renewed before they expire, and
/// served by SNI like `certificates[]`, without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// The account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A PEM file of the CA the directory's own HTTPS chains to, for test directories
    /// (pebble). Default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<String>,
    /// How domains are proven: `http-01` (the default: a plain listener on port 80 answers
    /// `/.well-known/acme-challenge/`) or `tls-alpn-01` (a TLS listener on 443 answers).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Renew a certificate this long before it expires.
    #[serde(
        default = "default_renew_before",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::duration::at_most::<7776000, _>"
    )]
    #[schemars(with = "String")]
    pub renew_before: Duration,
    /// The certificates to obtain.
    #[serde(default)]
    pub certificates: Vec<AcmeCertificate>,
}

fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 86400)
}

/// How an ACME server checks that the gateway answers for a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// One certificate obtained by ACME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeCertificate {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._~-]{1,128}$"))]
    pub name: String,
    /// The names it covers (and is served for).
    pub domains: Vec<String>,
    /// Served to clients with no SNI or an unknown one (unless a `certificates[]` entry is
    /// the default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// `acme`'s problems serde cannot see.
pub(crate) fn validate_acme(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    let Some(a) = &config.acme else { return };
    if !a.directory.starts_with("https://") && !a.directory.starts_with("http://") {
        err(
            "acme.directory".into(),
            "must be the directory's http(s):// URL".into(),
        );
    }
    let mut names: std::collections::HashSet<&str> = config
        .certificates
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    for (i, c) in a.certificates.iter().enumerate() {
        let p = format!("acme.certificates[{i}]");
        if !crate::is_valid_name(&c.name) {
            err(
                format!("{p}.name"),
                "must be 1-128 letters, digits, '-', '_', '.' or '~'".into(),
            );
        }
        if !names.insert(c.name.as_str()) {
            err(
                format!("{p}.name"),
                format!("\"{}\" is another certificate's name already", c.name),
            );
        }
        if c.domains.is_empty() {
            err(format!("{p}.domains"), "needs at least one domain".into());
        }
        for (j, d) in c.domains.iter().enumerate() {
            if let Err(m) = check_sni(d) {
                err(format!("{p}.domains[{j}]"), m);
            } else if d.starts_with("*.") {
                err(
                    format!("{p}.domains[{j}]"),
                    "wildcards need the dns-01 challenge, which is not offered".into(),
                );
            }
        }
    }
}
