//! Scope resolution and plugin config checking, through whole snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::snapshot::Snapshot;
use crate::NodeContext;
use std::sync::Arc;

fn node() -> NodeContext {
    NodeContext {
        workers: 1,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    }
}

const BASE: &str = "
upstreams: [{name: u, targets: [{address: '127.0.0.1:1'}]}]
services: [{name: s1, upstream: u}, {name: s2, upstream: u}]
routes:
  - {name: r1, paths: ['/a'], service: s1}
  - {name: r2, paths: ['/b'], service: s1}
  - {name: r3, paths: ['/c'], service: s2}
consumers: [{username: alice}, {username: bob}]
";

fn compile(plugins: &str, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
    let text = format!("{BASE}plugins:\n{plugins}");
    let config = gatehouse_model::parse_yaml(&text).map_err(|e| vec![e.to_string()])?;
    Snapshot::compile(config, previous, node())
        .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
}

/// Which instance (by its `limit`, used as a label) route `route` runs for `consumer`.
fn label(s: &Snapshot, route: usize, consumer: Option<usize>) -> Option<usize> {
    let entry = s.routes[route].plugins.entries.first()?;
    let picked = entry.pick(consumer)?;
    s.plugin_instances
        .iter()
        .find(|(_, (p, _))| Arc::ptr_eq(p, picked))
        .and_then(|(id, _)| {
            // The identity is the entry's JSON, then `|redis-url|nodes`.
            let entry = id.rsplitn(3, '|').nth(2)?;
            let v: serde_json::Value = serde_json::from_str(entry).ok()?;
            v["config"]["limit"].as_u64().map(|l| l as usize)
        })
}

#[test]
fn most_specific_scope_wins() {
    let s = compile(
        "
  - {name: rate-limit, config: {limit: 1}}
  - {name: rate-limit, service: s1, config: {limit: 2}}
  - {name: rate-limit, route: r1, config: {limit: 3}}
  - {name: rate-limit, consumer: alice, config: {limit: 4}}
  - {name: rate-limit, consumer: bob, route: r2, config: {limit: 5}}
",
        None,
    )
    .unwrap();
    let (alice, bob) = (Some(0), Some(1));
    // route r1 (service s1): route > service > global; consumer > route.
    assert_eq!(label(&s, 0, None), Some(3));
    assert_eq!(label(&s, 0, alice), Some(4));
    assert_eq!(label(&s, 0, bob), Some(3), "bob's instance is for r2 only");
    // route r2 (service s1): the service's; bob's consumer+route instance.
    assert_eq!(label(&s, 1, None), Some(2));
    assert_eq!(label(&s, 1, bob), Some(5));
    // route r3 (service s2): only the global one.
    assert_eq!(label(&s, 2, None), Some(1));
    assert_eq!(label(&s, 2, alice), Some(4));
}

#[test]
fn routes_without_plugins_have_empty_chains_and_disabled_instances_do_not_run() {
    let s = compile(
        "  - {name: rate-limit, route: r1, config: {limit: 3}}
  - {name: rate-limit, route: r2, enabled: false, config: {limit: 3}}\n",
        None,
    )
    .unwrap();
    assert_eq!(s.routes[0].plugins.entries.len(), 1);
    assert!(s.routes[1].plugins.entries.is_empty());
    assert!(s.routes[2].plugins.entries.is_empty());
}

#[test]
fn plugin_config_errors_carry_their_path() {
    let errs = compile(
        "
  - {name: rate-limit, config: {limit: 1}}
  - {name: rate-limit, route: r1, config: {limit: 0, key: [ip, 'query:']}}
  - {name: rate-limit, config: {limit: 2}}
  - {name: nope}
",
        None,
    )
    .err()
    .unwrap();
    assert_eq!(
        errs,
        [
            "plugins[1] (rate-limit).config.key[1]: \"query\" needs a query argument: \"query:NAME\"",
            "plugins[1] (rate-limit).config.limit: must be > 0",
            "plugins[2]: plugins[0] is a rate-limit with the same scope; one instance of a kind per scope",
            "plugins[3].name: unknown plugin \"nope\"",
        ]
    );
}

#[test]
fn unchanged_instances_survive_a_reload() {
    let first = compile(
        "  - {name: rate-limit, route: r1, config: {limit: 7}}
  - {name: rate-limit, route: r2, config: {limit: 8}}\n",
        None,
    )
    .unwrap();
    let second = compile(
        "  - {name: rate-limit, route: r1, config: {limit: 7}}
  - {name: rate-limit, route: r2, config: {limit: 9}}\n",
        Some(&first),
    )
    .unwrap();
    let pick = |s: &Snapshot, r: usize| s.routes[r].plugins.entries[0].pick(None).cloned();
    let (a1, a2) = (pick(&first, 0).unwrap(), pick(&second, 0).unwrap());
    assert!(Arc::ptr_eq(&a1, &a2), "unchanged instance was rebuilt");
    let (b1, b2) = (pick(&first, 1).unwrap(), pick(&second, 1).unwrap());
    assert!(!Arc::ptr_eq(&b1, &b2), "changed instance was kept");
}

/// A kind no shipped registry has: a test registers it, as any out-of-tree kind would be.
struct FakeKind;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    upstream: Option<String>,
}

struct Fake;

impl gatehouse_plugin_api::Plugin for Fake {
    fn needs(&self) -> gatehouse_plugin_api::Needs {
        gatehouse_plugin_api::Needs {
            request_body: Some(10),
            ..Default::default()
        }
    }
}

impl gatehouse_plugin_api::TypedKind for FakeKind {
    const NAME: &'static str = "fake";
    const PRIORITY: i32 = 1234;
    const CONSUMER_SCOPABLE: bool = false;
    type Config = FakeConfig;

    fn build(
        &self,
        c: FakeConfig,
        env: &gatehouse_plugin_api::BuildEnv,
    ) -> Result<Arc<dyn gatehouse_plugin_api::Plugin>, Vec<gatehouse_plugin_api::FieldError>> {
        if let Some(u) = &c.upstream {
            env.upstream(u)
                .map_err(|e| vec![gatehouse_plugin_api::FieldError::new("upstream", e)])?;
        }
        Ok(Arc::new(Fake))
    }
}

static FAKE: FakeKind = FakeKind;

fn compile_with_fake(plugins: &str, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
    let text = format!("{BASE}plugins:\n{plugins}");
    let config = gatehouse_model::parse_yaml(&text).map_err(|e| vec![e.to_string()])?;
    let node = NodeContext {
        registry: gatehouse_plugins::registry().clone().with(&FAKE).leak(),
        ..node()
    };
    Snapshot::compile(config, previous, node)
        .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
}

#[test]
fn a_registered_fake_kind_compiles_into_chains_with_its_needs_and_contracts() {
    let s =
        compile_with_fake("  - {name: fake, route: r1, config: {upstream: u}}\n", None).unwrap();
    let chain = &s.routes[0].plugins;
    assert_eq!(chain.entries[0].kind, "fake");
    assert_eq!(chain.entries[0].priority, 1234);
    assert_eq!(
        chain.needs.request_body,
        Some(10),
        "the chain knows what it asks for"
    );
    assert!(s.routes[1].plugins.entries.is_empty());
    assert_eq!(
        s.routes[1].plugins.needs,
        Default::default(),
        "other routes pay nothing"
    );
    // The stock registry does not know it.
    let e = compile("  - {name: fake, config: {}}\n", None)
        .err()
        .unwrap();
    assert_eq!(e, ["plugins[0].name: unknown plugin \"fake\""]);
    // Not consumer-scopable; an upstream it names must exist, also on reuse after a reload.
    let e = compile_with_fake("  - {name: fake, consumer: alice, config: {}}\n", None)
        .err()
        .unwrap();
    assert!(
        e[0].starts_with("plugins[0].consumer: a fake instance cannot be scoped"),
        "{e:?}"
    );
    let e = compile_with_fake("  - {name: fake, config: {upstream: nope}}\n", None)
        .err()
        .unwrap();
    assert_eq!(
        e,
        ["plugins[0] (fake).config.upstream: no upstream named \"nope\""]
    );
    let without_u = format!(
        "{}plugins:\n  - {{name: fake, route: r1, config: {{upstream: u}}}}\n",
        BASE.replace("upstreams: [{name: u,", "upstreams: [{name: v,")
            .replace("upstream: u}", "upstream: v}")
    );
    let config = gatehouse_model::parse_yaml(&without_u).unwrap();
    let node = NodeContext {
        registry: gatehouse_plugins::registry().clone().with(&FAKE).leak(),
        ..node()
    };
    let e = Snapshot::compile(config, Some(&s), node).err().unwrap();
    assert_eq!(
        e[0].to_string(),
        "plugins[0] (fake).config: no upstream named \"u\""
    );
}
