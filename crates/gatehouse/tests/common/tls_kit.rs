//! TLS test kit: a CA made with rcgen that issues server and client certificates, rustls
//! clients that report what the handshake chose, and a TLS origin (HTTP/1.1 or h2 by ALPN).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            cert,
            pem,
        }
    }

    /// A server certificate for `names` (the first is also its CN).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, names.first().copied().unwrap_or("server"), false)
    }

    /// A client certificate with CN `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(&[], cn, true)
    }

    fn issue(&self, names: &[&str], cn: &str, client: bool) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Gatehouse Tests");
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// YAML-safe block text (indented `|` scalar) of a PEM.
pub fn yaml_block(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in pem.lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A rustls client config trusting `ca`, offering `alpn`, optionally with a client
/// certificate, limited to `versions`.
pub fn client_config(
    ca: &Ca,
    alpn: &[&str],
    client: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut c = match client {
        Some(i) => b
            .with_client_auth_cert(certs(&i.cert), key(&i.key))
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

pub const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What a handshake chose.
pub struct Shook {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// The CN of the certificate the server presented.
    pub server_cn: String,
    pub alpn: Option<String>,
}

/// A TLS handshake with `addr`, sending `sni`.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Shook> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let server_cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    Ok(Shook {
        stream,
        server_cn,
        alpn,
    })
}

/// One GET over an established TLS stream (HTTP/2 when ALPN chose it): status and body.
pub async fn get_over(shook: Shook, host: &str, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let io = TokioIo::new(shook.stream);
    let resp = if shook.alpn.as_deref() == Some("h2") {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        s.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// An HTTPS origin with `cert`, answering a JSON echo (`origin`, `version`, `sni`,
/// `client_cn`, `headers`); it asks for client certificates from `client_ca` when given.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsOrigin {
    pub async fn start(name: &'static str, cert: &Issued, client_ca: Option<&Ca>) -> TlsOrigin {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match client_ca {
            Some(ca) => b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider,
                )
                .build()
                .unwrap(),
            ),
            None => b.with_no_client_auth(),
        };
        let mut config = b
            .with_single_cert(certs(&cert.cert), key(&cert.key))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let h2 = conn.alpn_protocol() == Some(b"h2");
                    let sni = conn.server_name().unwrap_or("").to_owned();
                    let client_cn = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| {
                            let (_, p) = x509_parser::parse_x509_certificate(c.as_ref()).unwrap();
                            p.subject().to_string()
                        })
                        .unwrap_or_default();
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (sni, client_cn) = (sni.clone(), client_cn.clone());
                        async move {
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect();
                            let json = serde_json::json!({
                                "origin": name,
                                "version": format!("{:?}", req.version()),
                                "path": req.uri().path(),
                                "sni": sni,
                                "client_cn": client_cn,
                                "headers": headers,
                            });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(json.to_string()),
                            )))
                        }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        TlsOrigin { addr, task }
    }
}
