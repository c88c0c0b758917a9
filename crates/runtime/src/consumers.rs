//! The config's consumers compiled into the [`ConsumerIndex`] authentication plugins look
//! credentials up in: each credential checked by the plugin kind that owns its shape.

use gatehouse_model::{Config, ConfigError, ConsumerHeaders};
use gatehouse_plugin_api::{header_name, Consumer, ConsumerIndex, Registry};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The index of `config`'s consumers and their credentials; every problem is reported.
pub fn index(config: &Config, registry: &Registry) -> (ConsumerIndex, Vec<ConfigError>) {
    let mut ix = ConsumerIndex::default();
    let mut errs = Vec::new();
    for (i, c) in config.consumers.iter().enumerate() {
        let index = ix.push_with(&c.username, c.custom_id.as_deref(), &c.groups);
        for (j, spec) in c.credentials.iter().enumerate() {
            let at = format!("consumers[{i}].credentials[{j}]");
            let kind_name = &spec.kind;
            let Some(kind) = registry.find(kind_name) else {
                errs.push(ConfigError::new(
                    format!("{at}.type"),
                    format!("unknown plugin \"{kind_name}\""),
                ));
                continue;
            };
            if kind.credential_schema().is_none() {
                errs.push(ConfigError::new(
                    format!("{at}.type"),
                    format!("{kind_name} takes no consumer credentials"),
                ));
                continue;
            }
            match kind.credential(&spec.fields_value()) {
                Ok(credential) => {
                    if let Err(owner) = ix.add_credential(index, kind.name(), credential) {
                        errs.push(ConfigError::new(
                            at,
                            format!(
                                "consumer \"{owner}\" already has a {kind_name} credential \
                                 with this id; ids must be unique per kind"
                            ),
                        ));
                    }
                }
                Err(fields) => errs.extend(fields.into_iter().map(|f| {
                    let path = if f.path.is_empty() {
                        at.clone()
                    } else {
                        format!("{at}.{}", f.path)
                    };
                    ConfigError::new(path, gatehouse_model::in_words(&f.message))
                })),
            }
        }
    }
    (ix, errs)
}

/// `node.consumer_headers` compiled: the names to set (or clear) on routes with an
/// authentication plugin.
#[derive(Debug, Default)]
pub struct IdentityHeaders {
    username: Option<HeaderName>,
    id: Option<HeaderName>,
    groups: Option<HeaderName>,
    credential: Option<HeaderName>,
    anonymous: Option<HeaderName>,
}

impl IdentityHeaders {
    pub fn compile(h: &ConsumerHeaders) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut name = |field: &str, v: &str| {
            if v.is_empty() {
                return None;
            }
            header_name(v)
                .map_err(|e| {
                    errs.push(ConfigError::new(
                        format!("node.consumer_headers.{field}"),
                        e,
                    ))
                })
                .ok()
        };
        let out = Self {
            username: name("username", &h.username),
            id: name("id", &h.id),
            groups: name("groups", &h.groups),
            credential: name("credential", &h.credential),
            anonymous: name("anonymous", &h.anonymous),
        };
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.username,
            &self.id,
            &self.groups,
            &self.credential,
            &self.anonymous,
        ]
        .into_iter()
        .flatten()
    }

    /// Removes whatever the client sent under these names (so nobody can claim to be a
    /// consumer), then says who `consumer` is: values made when the config was compiled.
    pub fn apply(&self, headers: &mut HeaderMap, consumer: Option<&Consumer>, anonymous: bool) {
        for n in self.names() {
            headers.remove(n);
        }
        let Some(c) = consumer else { return };
        let v = &c.values;
        let mut set = |name: &Option<HeaderName>, value: &Option<HeaderValue>| {
            if let (Some(n), Some(v)) = (name, value) {
                headers.insert(n.clone(), v.clone());
            }
        };
        set(&self.username, &v.username);
        set(&self.id, &v.id);
        set(&self.groups, &v.groups);
        set(&self.credential, &v.credential);
        if anonymous {
            set(&self.anonymous, &Some(HeaderValue::from_static("true")));
        }
    }
}

/// Turns what a client wrote into what is stored: each credential's kind replaces secrets
/// that only need checking by their hashes. A credential written back as it was read (its
/// write-only secret left out) keeps the stored one from `old`, so reading a consumer and
/// writing it back loses nothing.
pub fn seal(new: &mut Config, old: &Config, registry: &Registry) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    for (i, c) in new.consumers.iter_mut().enumerate() {
        let before = old.consumers.iter().find(|o| o.username == c.username);
        for (j, spec) in c.credentials.iter_mut().enumerate() {
            let Some(kind) = registry.find(&spec.kind) else {
                continue;
            };
            let kept = before.and_then(|b| {
                b.credentials.iter().find(|o| {
                    let mut shown = (*o).clone();
                    kind.redact_credential(&mut shown.fields);
                    o.kind == spec.kind && shown == *spec && shown != **o
                })
            });
            if let Some(stored) = kept {
                *spec = stored.clone();
                continue;
            }
            if let Err(fields) = kind.seal_credential(&mut spec.fields) {
                errs.extend(fields.into_iter().map(|f| {
                    ConfigError::new(
                        format!("consumers[{i}].credentials[{j}].{}", f.path),
                        f.message,
                    )
                }));
            }
        }
    }
    errs
}

/// Takes write-only secrets out of every credential, for the admin API and exports.
pub fn redact(config: &mut Config, registry: &Registry) {
    for c in &mut config.consumers {
        redact_consumer(c, registry);
    }
}

pub fn redact_consumer(c: &mut gatehouse_model::Consumer, registry: &Registry) {
    for spec in &mut c.credentials {
        if let Some(kind) = registry.find(&spec.kind) {
            kind.redact_credential(&mut spec.fields);
        }
    }
}
