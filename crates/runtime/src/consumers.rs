//! The config's consumers compiled into the [`ConsumerIndex`] authentication plugins look
//! credentials up in: each credential checked by the plugin kind that owns its shape.

use gatehouse_model::{Config, ConfigError};
use gatehouse_plugin_api::{ConsumerIndex, Registry};

/// The index of `config`'s consumers and their credentials; every problem is reported.
pub fn index(config: &Config, registry: &Registry) -> (ConsumerIndex, Vec<ConfigError>) {
    let mut ix = ConsumerIndex::default();
    let mut errs = Vec::new();
    for (i, c) in config.consumers.iter().enumerate() {
        let index = ix.push(&c.username);
        for (kind_name, list) in &c.credentials {
            let at = format!("consumers[{i}].credentials.{kind_name}");
            let Some(kind) = registry.find(kind_name) else {
                errs.push(ConfigError::new(
                    at,
                    format!("unknown plugin \"{kind_name}\""),
                ));
                continue;
            };
            if kind.credential_schema().is_none() {
                errs.push(ConfigError::new(
                    at,
                    format!("{kind_name} takes no consumer credentials"),
                ));
                continue;
            }
            for (j, value) in list.iter().enumerate() {
                let at = format!("{at}[{j}]");
                match kind.credential(value) {
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
                        ConfigError::new(path, f.message)
                    })),
                }
            }
        }
    }
    (ix, errs)
}
