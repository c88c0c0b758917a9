//! Who is calling: the [`Consumer`] an authentication plugin identified, the credentials
//! consumers carry (each kind's own shape), and the [`ConsumerIndex`] compiled from them so a
//! lookup by credential is one hash probe.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// A caller identified by an authentication plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Index in the config's `consumers`: how consumer-scoped plugin instances are found.
    pub index: usize,
    pub username: Arc<str>,
    /// The consumer's `custom_id`.
    pub custom_id: Option<Arc<str>>,
    /// The consumer's `groups` (what `acl` decides by).
    pub groups: Arc<[Arc<str>]>,
    /// The credential that identified the caller (an API key's id, a JWT `sub`...), when it
    /// differs from the username; limits can be keyed by it.
    pub credential: Option<Arc<str>>,
    /// The same, made into header values once, so telling the upstream who called copies no
    /// bytes per request.
    pub values: Arc<Values>,
}

/// A consumer's identity as header values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Values {
    pub username: Option<http::HeaderValue>,
    /// The `custom_id`, or the username when there is none.
    pub id: Option<http::HeaderValue>,
    /// The groups, comma-separated.
    pub groups: Option<http::HeaderValue>,
    pub credential: Option<http::HeaderValue>,
}

impl Values {
    fn of(c: &Consumer) -> Self {
        let v = |s: &str| http::HeaderValue::from_str(s).ok();
        let groups: Vec<&str> = c.groups.iter().map(|g| &**g).collect();
        Self {
            username: v(&c.username),
            id: v(c.custom_id.as_deref().unwrap_or(&c.username)),
            groups: (!groups.is_empty()).then(|| v(&groups.join(","))).flatten(),
            credential: c.credential.as_deref().and_then(v),
        }
    }
}

impl Consumer {
    /// A consumer with only a name (no custom id, groups or credential).
    pub fn named(index: usize, username: &str) -> Self {
        Self {
            index,
            username: username.into(),
            custom_id: None,
            groups: Arc::from([]),
            credential: None,
            values: Arc::default(),
        }
        .with_values()
    }

    /// This consumer with its header values made from its fields.
    fn with_values(mut self) -> Self {
        self.values = Arc::new(Values::of(&self));
        self
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// One credential of a consumer as its plugin kind made it from config: the `id` lookups go
/// by (an API key, a basic-auth username, a JWT key id) and whatever the kind needs to check
/// a caller against it (a password hash, an HMAC secret).
#[derive(Clone)]
pub struct Credential {
    pub id: Box<str>,
    /// Shown as the consumer's `credential` (e.g. in limit keys and logs) instead of `id`,
    /// when `id` is a secret (an API key must not end up in logs).
    pub label: Option<Box<str>>,
    pub data: Arc<dyn Any + Send + Sync>,
}

impl Credential {
    pub fn new(id: impl Into<Box<str>>, data: impl Any + Send + Sync) -> Self {
        Self {
            id: id.into(),
            label: None,
            data: Arc::new(data),
        }
    }

    pub fn labelled(mut self, label: impl Into<Box<str>>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// What a credential lookup found: the consumer (with `credential` set) and the kind's data.
#[derive(Clone)]
pub struct Found {
    pub consumer: Consumer,
    data: Arc<dyn Any + Send + Sync>,
}

impl Found {
    /// The kind's data for this credential, as the type its `credential` made.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.data.downcast_ref()
    }

    /// The kind's data, shared, for a check that finishes later (in a [`crate::Flow::Wait`]).
    pub fn data_arc(&self) -> Arc<dyn Any + Send + Sync> {
        self.data.clone()
    }
}

/// Every consumer of a snapshot and their credentials by kind and id.
#[derive(Default, Clone)]
pub struct ConsumerIndex {
    consumers: Vec<Consumer>,
    by_name: HashMap<Arc<str>, usize>,
    by_kind: HashMap<&'static str, HashMap<Box<str>, Found>>,
}

impl ConsumerIndex {
    /// Adds the next consumer (its index is its position in `consumers`).
    pub fn push(&mut self, username: &str) -> usize {
        self.push_with(username, None, &[])
    }

    /// Adds the next consumer with its custom id and groups.
    pub fn push_with(
        &mut self,
        username: &str,
        custom_id: Option<&str>,
        groups: &[String],
    ) -> usize {
        let index = self.consumers.len();
        let username: Arc<str> = username.into();
        self.by_name.insert(username.clone(), index);
        self.consumers.push(
            Consumer {
                index,
                username,
                custom_id: custom_id.map(Into::into),
                groups: groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                credential: None,
                values: Arc::default(),
            }
            .with_values(),
        );
        index
    }

    /// Files `credential` of kind `kind` under consumer `index`; `Err` names the consumer that
    /// already has a credential with that id.
    pub fn add_credential(
        &mut self,
        index: usize,
        kind: &'static str,
        credential: Credential,
    ) -> Result<(), Arc<str>> {
        let Some(owner) = self.consumers.get(index) else {
            return Ok(());
        };
        let ids = self.by_kind.entry(kind).or_default();
        if let Some(other) = ids.get(&credential.id) {
            return Err(other.consumer.username.clone());
        }
        let shown = credential.label.as_deref().unwrap_or(&credential.id);
        let consumer = Consumer {
            credential: Some(shown.into()),
            ..owner.clone()
        }
        .with_values();
        ids.insert(
            credential.id,
            Found {
                consumer,
                data: credential.data,
            },
        );
        Ok(())
    }

    /// The consumer whose credential of kind `kind` has id `id`.
    pub fn find(&self, kind: &str, id: &str) -> Option<&Found> {
        self.by_kind.get(kind)?.get(id)
    }

    pub fn get(&self, index: usize) -> Option<&Consumer> {
        self.consumers.get(index)
    }

    pub fn by_username(&self, username: &str) -> Option<&Consumer> {
        self.consumers.get(*self.by_name.get(username)?)
    }

    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_by_kind_and_id_and_clash_by_kind() {
        let mut ix = ConsumerIndex::default();
        let a = ix.push("alice");
        let b = ix.push("bob");
        ix.add_credential(
            a,
            "key-auth",
            Credential::new("k1", ()).labelled("alice-key"),
        )
        .unwrap();
        ix.add_credential(b, "basic-auth", Credential::new("k1", "hash".to_string()))
            .unwrap();
        let clash = ix.add_credential(b, "key-auth", Credential::new("k1", ()));
        assert_eq!(clash.unwrap_err().as_ref(), "alice");
        let found = ix.find("key-auth", "k1").unwrap();
        assert_eq!(&*found.consumer.username, "alice");
        assert_eq!(found.consumer.credential.as_deref(), Some("alice-key"));
        let basic = ix.find("basic-auth", "k1").unwrap();
        assert_eq!(basic.data::<String>().map(String::as_str), Some("hash"));
        assert_eq!(basic.consumer.index, b);
        assert!(ix.find("key-auth", "k2").is_none());
        assert!(ix.find("jwt", "k1").is_none());
    }
}
