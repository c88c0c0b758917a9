//! ACME (RFC 8555) on a node: orders the certificates `acme.certificates` names from the
//! directory (instant-acme), answering the CA's HTTP-01 or TLS-ALPN-01 validation through
//! the data plane, keeps them in the store (every node serves them; a lease lets one node
//! order while the others wait) or in the data directory, renews them before they expire,
//! and hands them to the listeners without a restart.

use gatehouse_model::{Acme, AcmeCertificate, AcmeChallenge, Certificate};
use gatehouse_proxy::Shared;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a node may take to order one certificate before another may try.
const LEASE: i64 = 600;
/// Looked at again at least this often (renewal, another node's order).
const RECHECK: Duration = Duration::from_secs(3600);
/// After a failed order.
const RETRY: Duration = Duration::from_secs(60);
/// While another node holds the lease.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(2);

/// Where certificates and the account are kept.
pub enum Storage {
    /// Shared by every node of the store.
    Store(Arc<gatehouse_store::Store>),
    /// This node's data directory (file mode).
    Dir(PathBuf),
}

impl Storage {
    async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        match self {
            Storage::Store(s) => Ok(s.acme_get(key).await?),
            Storage::Dir(d) => match tokio::fs::read_to_string(d.join(file_name(key))).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn lease(&self, key: &str, holder: &str) -> anyhow::Result<bool> {
        match self {
            Storage::Store(s) => Ok(s.acme_lease(key, holder, now() + LEASE).await?),
            // One node per data directory.
            Storage::Dir(_) => Ok(true),
        }
    }

    async fn put(&self, key: &str, holder: &str, data: &str) -> anyhow::Result<()> {
        match self {
            Storage::Store(s) => Ok(s.acme_put(key, holder, data).await?),
            Storage::Dir(d) => {
                tokio::fs::create_dir_all(d).await?;
                // Written aside, then renamed: a crash never leaves half a key.
                let path = d.join(file_name(key));
                let tmp = path.with_extension("tmp");
                write_private(&tmp, data).await?;
                tokio::fs::rename(&tmp, &path).await?;
                Ok(())
            }
        }
    }

    async fn release(&self, key: &str, holder: &str) {
        if let Storage::Store(s) = self {
            if let Err(e) = s.acme_release(key, holder).await {
                tracing::warn!(key, error = %e, "cannot release an ACME lease");
            }
        }
    }
}

/// Keys hold private keys: readable by the owner only.
async fn write_private(path: &std::path::Path, data: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_owned();
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)?
}

fn file_name(key: &str) -> String {
    key.replace([':', '/'], "_") + ".json"
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// HTTP-01 answers other nodes published in the store.
pub struct StoreTokens(pub Arc<gatehouse_store::Store>);

impl gatehouse_runtime::tls::challenges::SharedTokens for StoreTokens {
    fn lookup(
        &self,
        token: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>> {
        let store = self.0.clone();
        Box::pin(async move {
            // Tokens are base64url: nothing else may be used as a key.
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return None;
            }
            store
                .acme_get(&format!("token:{token}"))
                .await
                .ok()
                .flatten()
        })
    }
}

/// A certificate as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    domains: Vec<String>,
    cert: String,
    key: String,
    #[serde(default)]
    not_before: i64,
    not_after: i64,
}

impl Stored {
    /// When to renew: `renew_before` ahead of expiry, or a third of its life ahead for a
    /// certificate that lives shorter than that (as certbot does), so a short-lived one is
    /// not ordered again at once.
    fn renew_at(&self, renew_before: i64) -> i64 {
        let life = self.not_after - self.not_before;
        let ahead = if self.not_before > 0 && life > 0 {
            renew_before.min(life / 3)
        } else {
            renew_before
        };
        self.not_after - ahead
    }
}

/// Follows the serving config's `acme` until the process ends.
pub async fn run(shared: Arc<Shared>, storage: Storage, holder: String) {
    let mut changes = shared.snapshot.load().changes.subscribe();
    loop {
        changes.mark_unchanged();
        let acme = shared.snapshot.load().config.acme.clone();
        let wait = match acme {
            Some(a) if !a.certificates.is_empty() => round(&shared, &storage, &holder, &a).await,
            _ => {
                shared.set_acme_certificates(Vec::new());
                RECHECK
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// One pass over the certificates: load what is stored and fresh, order what is not;
/// returns how long until the next pass.
async fn round(shared: &Shared, storage: &Storage, holder: &str, a: &Acme) -> Duration {
    let mut served = Vec::new();
    let mut next = RECHECK;
    let renew_before = a.renew_before.as_secs() as i64;
    for c in &a.certificates {
        let key = format!("cert:{}", c.name);
        let stored: Option<Stored> = match storage.get(&key).await {
            Ok(t) => t.and_then(|t| serde_json::from_str(&t).ok()),
            Err(e) => {
                tracing::warn!(certificate = %c.name, error = %e, "cannot read a stored ACME certificate");
                next = next.min(RETRY);
                None
            }
        };
        let usable = stored
            .as_ref()
            .filter(|s| s.domains == c.domains && s.not_after > now());
        let fresh = usable.filter(|s| s.renew_at(renew_before) > now());
        if let Some(s) = fresh {
            served.push(certificate(c, s));
            let renew_in = (s.renew_at(renew_before) - now()).max(1) as u64;
            next = next.min(Duration::from_secs(renew_in));
            continue;
        }
        if usable.is_some() {
            tracing::info!(certificate = %c.name, "renewing an ACME certificate before it expires");
        }
        match storage.lease(&key, holder).await {
            Ok(true) => match order(shared, storage, holder, a, c).await {
                Ok(s) => {
                    let data = serde_json::to_string(&s).unwrap_or_default();
                    match storage.put(&key, holder, &data).await {
                        Ok(()) => {
                            tracing::info!(certificate = %c.name, domains = ?c.domains, "ACME certificate obtained and stored")
                        }
                        Err(e) => {
                            tracing::warn!(certificate = %c.name, error = %e, "ACME certificate obtained but not stored")
                        }
                    }
                    let renew_in = (s.renew_at(renew_before) - now()).max(1) as u64;
                    next = next.min(Duration::from_secs(renew_in));
                    served.push(certificate(c, &s));
                }
                Err(e) => {
                    tracing::warn!(certificate = %c.name, error = format!("{e:#}"), "ACME order failed; retrying in a minute");
                    storage.release(&key, holder).await;
                    next = next.min(RETRY);
                    if let Some(s) = usable {
                        served.push(certificate(c, s));
                    }
                }
            },
            Ok(false) => {
                // Another node orders it: serve what there is, look again soon.
                next = next.min(WAIT_FOR_OTHER);
                if let Some(s) = usable {
                    served.push(certificate(c, s));
                }
            }
            Err(e) => {
                tracing::warn!(certificate = %c.name, error = %e, "cannot take the ACME lease");
                next = next.min(RETRY);
            }
        }
    }
    shared.set_acme_certificates(served);
    next
}

fn certificate(c: &AcmeCertificate, s: &Stored) -> Certificate {
    Certificate {
        name: c.name.clone(),
        snis: c.domains.clone(),
        cert: s.cert.clone(),
        key: Some(s.key.clone()),
        default: c.default,
    }
}

/// The node's ACME account: stored credentials, or a new account (then stored).
async fn account(storage: &Storage, holder: &str, a: &Acme) -> anyhow::Result<Account> {
    let builder = || match &a.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let key = format!("account:{}", a.directory);
    if let Some(text) = storage.get(&key).await? {
        let creds: AccountCredentials = serde_json::from_str(&text)?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact: Vec<String> = a.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            a.directory.clone(),
            None,
        )
        .await?;
    storage
        .put(&key, holder, &serde_json::to_string(&creds)?)
        .await?;
    Ok(account)
}

/// Orders `c`, answering its challenges, and returns it.
async fn order(
    shared: &Shared,
    storage: &Storage,
    holder: &str,
    a: &Acme,
    c: &AcmeCertificate,
) -> anyhow::Result<Stored> {
    tracing::info!(certificate = %c.name, domains = ?c.domains, directory = %a.directory, "ordering an ACME certificate");
    let account = account(storage, holder, a).await?;
    let ids: Vec<Identifier> = c.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let kind = match a.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let challenges = shared.challenges.clone();
    let mut answered = Answered {
        challenges: challenges.clone(),
        tokens: Vec::new(),
        domains: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => anyhow::bail!("authorization is {other:?}"),
        }
        let mut ch = authz
            .challenge(kind.clone())
            .ok_or_else(|| anyhow::anyhow!("the CA offers no {kind:?} challenge"))?;
        let ka = ch.key_authorization();
        match a.challenge {
            AcmeChallenge::Http01 => {
                challenges.set_http(&ch.token, ka.as_str());
                answered.tokens.push(ch.token.clone());
                // Published for the other nodes the CA may reach instead of this one.
                if let Storage::Store(_) = storage {
                    storage
                        .put(&format!("token:{}", ch.token), holder, ka.as_str())
                        .await?;
                }
            }
            AcmeChallenge::TlsAlpn01 => {
                let domain = ch.identifier().to_string();
                challenges
                    .set_alpn(&domain, ka.digest().as_ref())
                    .map_err(|e| anyhow::anyhow!("TLS-ALPN-01 certificate: {e}"))?;
                answered.domains.push(domain);
            }
        }
        ch.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        anyhow::bail!("the order is {status:?}, not ready");
    }
    let key = order.finalize().await?;
    let cert = order.poll_certificate(&retries).await?;
    if let Storage::Store(_) = storage {
        for t in &answered.tokens {
            let _ = storage.put(&format!("token:{t}"), holder, "").await;
        }
    }
    drop(answered);
    let (not_before, not_after) = validity(&cert)?;
    Ok(Stored {
        domains: c.domains.clone(),
        cert,
        key,
        not_before,
        not_after,
    })
}

/// Takes the challenge answers back once the order is done (or failed).
struct Answered {
    challenges: Arc<gatehouse_runtime::tls::Challenges>,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Answered {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.clear_http(t);
        }
        for d in &self.domains {
            self.challenges.clear_alpn(d);
        }
    }
}

/// The leaf's not-before and not-after, Unix seconds.
fn validity(chain_pem: &str) -> anyhow::Result<(i64, i64)> {
    let certs = gatehouse_runtime::tls::certs_from_pem(chain_pem).map_err(anyhow::Error::msg)?;
    let leaf = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("empty chain"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("the issued certificate does not parse: {e}"))?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}
