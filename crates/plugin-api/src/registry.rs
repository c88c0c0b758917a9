//! How plugin kinds are made known to the gateway: the [`Registry`] handed to compile, and
//! [`TypedKind`], which turns a typed config into a [`PluginKind`] without boilerplate.

use crate::{parse_config, schema_of, BuildEnv, Credential, FieldError, Plugin, PluginKind};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The plugin kinds one gateway knows, by name. Compile looks kinds up here, so a test (or a
/// build with extra plugins) registers its own kinds by making its own registry.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: Vec<&'static dyn PluginKind>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.kinds.iter().map(|k| k.name()))
            .finish()
    }
}

impl Registry {
    pub fn new(kinds: &[&'static dyn PluginKind]) -> Self {
        Self {
            kinds: kinds.to_vec(),
        }
    }

    /// This registry with `kind` added (replacing a kind of the same name).
    pub fn with(mut self, kind: &'static dyn PluginKind) -> Self {
        self.kinds.retain(|k| k.name() != kind.name());
        self.kinds.push(kind);
        self
    }

    /// The kind called `name`.
    pub fn find(&self, name: &str) -> Option<&'static dyn PluginKind> {
        self.kinds.iter().copied().find(|k| k.name() == name)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static dyn PluginKind> + '_ {
        self.kinds.iter().copied()
    }

    /// A registry that lives as long as the process, for the gateway's node context (one per
    /// process or per test, so leaking it is bounded).
    pub fn leak(self) -> &'static Registry {
        Box::leak(Box::new(self))
    }
}

/// A plugin kind with a typed config: implement this and the [`PluginKind`] (name, schema,
/// parsing with field paths) comes with it.
pub trait TypedKind: Send + Sync + 'static {
    const NAME: &'static str;
    /// Higher runs first within a phase (see [`PluginKind::priority`]).
    const PRIORITY: i32;
    /// Whether the kind identifies callers (see [`PluginKind::authenticates`]).
    const AUTHENTICATES: bool = false;
    /// Whether an instance may be scoped to one consumer. An authentication plugin may not:
    /// it runs before there is a consumer, so such an instance could never run.
    const CONSUMER_SCOPABLE: bool = !Self::AUTHENTICATES;
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Checks a parsed config (every problem reported) and builds the instance.
    fn build(
        &self,
        config: Self::Config,
        env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, Vec<FieldError>>;

    /// For kinds that identify callers: the JSON Schema of one credential in
    /// `consumers[].credentials.<kind>`.
    fn credential_schema(&self) -> Option<serde_json::Value> {
        None
    }

    /// Checks one credential of a consumer and makes what lookups find.
    fn credential(&self, _config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "",
            format!("{} takes no consumer credentials", Self::NAME),
        )])
    }

    /// Turns one credential, as written to the admin API, into what is stored: a secret
    /// that only needs checking is replaced by its hash. The default keeps it as given.
    fn seal_credential(
        &self,
        _fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        Ok(())
    }
    /// Takes out of a stored credential what must never be read back (a secret the gateway
    /// uses, such as an HMAC key): the admin API and `config export` show it without.
    fn redact_credential(&self, _fields: &mut serde_json::Map<String, serde_json::Value>) {}
}

impl<T: TypedKind> PluginKind for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn priority(&self) -> i32 {
        T::PRIORITY
    }
    fn schema(&self) -> serde_json::Value {
        schema_of::<T::Config>()
    }
    fn consumer_scopable(&self) -> bool {
        T::CONSUMER_SCOPABLE
    }
    fn authenticates(&self) -> bool {
        T::AUTHENTICATES
    }
    fn build(
        &self,
        config: &serde_json::Value,
        env: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, Vec<FieldError>> {
        TypedKind::build(self, parse_config(config)?, env)
    }
    fn credential_schema(&self) -> Option<serde_json::Value> {
        TypedKind::credential_schema(self)
    }
    fn credential(&self, config: &serde_json::Value) -> Result<Credential, Vec<FieldError>> {
        TypedKind::credential(self, config)
    }
    fn seal_credential(
        &self,
        fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        TypedKind::seal_credential(self, fields)
    }
    fn redact_credential(&self, fields: &mut serde_json::Map<String, serde_json::Value>) {
        TypedKind::redact_credential(self, fields)
    }
}
