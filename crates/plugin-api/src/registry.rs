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
    /// Whether an instance may be scoped to one consumer. An authentication plugin may not:
    /// it runs before there is a consumer, so such an instance could never run.
    const CONSUMER_SCOPABLE: bool = true;
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
}
