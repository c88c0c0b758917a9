//! The `gatehouse` binary: `run` a gateway from a YAML file (hot-reloaded on change and on
//! SIGHUP), `validate` a file, or start a `demo` with a built-in echo upstream.

mod acme;
mod config_cmd;
mod diff;
mod echo;
mod explain;
mod node;
mod store_mode;
mod upgrade;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_admin::{Control, Source};
use gatehouse_model::{Config, ConfigErrors};
use gatehouse_proxy::{Gateway, StartOptions};
use gatehouse_runtime::{parse_config, parse_config_for_node, NodeContext, Snapshot};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `gatehouse plugins [schema NAME]`.
fn plugins(what: Option<PluginsCommand>) -> ExitCode {
    match what {
        None => {
            for k in gatehouse_plugins::registry().kinds() {
                println!("{}\tpriority {}", k.name(), k.priority());
            }
            ExitCode::SUCCESS
        }
        Some(PluginsCommand::Schema { name }) => match gatehouse_plugins::registry().find(&name) {
            Some(k) => match serde_json::to_string_pretty(&k.schema()) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                eprintln!("error: unknown plugin \"{name}\"; `gatehouse plugins` lists them");
                ExitCode::FAILURE
            }
        },
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "An API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. With `-c FILE` (DB-less mode) the file is watched: a valid change is
    /// applied within a second, an invalid one is logged and ignored; SIGHUP reloads. Without
    /// it, config lives in a store (`--store`, default sqlite://./gatehouse-data/gatehouse.db)
    /// and is changed through the admin API.
    Run {
        /// The config file (DB-less mode).
        #[arg(short = 'c', long = "config", conflicts_with = "store")]
        config: Option<PathBuf>,
        /// The config store: sqlite://PATH or postgres://...
        #[arg(long, env = "GATEHOUSE_STORE")]
        store: Option<String>,
        /// Store mode: where this node keeps its last-known-good config snapshot.
        #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// Listen on these addresses instead of the file's `listen` (repeatable).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Worker threads (default: the file's node.workers, else one per core).
        #[arg(long, env = "GATEHOUSE_WORKERS")]
        workers: Option<usize>,
        /// This node's index among gateway nodes, for upstream subsetting.
        #[arg(long, env = "GATEHOUSE_NODE_INDEX")]
        node_index: Option<u32>,
        /// Redis for cluster-wide limits, e.g. redis://127.0.0.1:6379 (replaces the file's
        /// `redis:`).
        #[arg(long, env = "GATEHOUSE_REDIS")]
        redis: Option<String>,
        /// Where the admin API listens (default: the file's admin.address, else
        /// 127.0.0.1:9180). A non-loopback address needs admin tokens.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// A YAML list of admin tokens (`{name, role, sha256}`), instead of the file's
        /// admin.tokens.
        #[arg(long, env = "GATEHOUSE_ADMIN_TOKENS")]
        admin_tokens: Option<PathBuf>,
        /// Also serve `/metrics` and `/ready` here, with no token (default: the file's
        /// admin.metrics_address; none).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Serve the admin API over HTTPS, with the config's certificates chosen by SNI (as
        /// the file's admin.tls does).
        #[arg(long)]
        admin_tls: bool,
    },
    /// Make an admin API token: prints the secret (shown once) and the entry to store.
    AdminToken {
        /// Who holds it; recorded as the author of their changes.
        name: String,
        /// viewer (reads) or admin (reads and writes).
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Check a config file: exit 0 when valid, else print `path: message` lines and exit 1.
    Validate {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// The Redis address the node will run with (as `run --redis`); not dialled.
        #[arg(long, env = "GATEHOUSE_REDIS")]
        redis: Option<String>,
    },
    /// Start a built-in echo upstream and a gateway in front of it, and print what to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo's admin API listens (what `gatehouse config`, `explain --admin` and
        /// `curl .../status` talk to).
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Work with a running gateway's config through its admin API.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show what the gateway would do with a request: the route that matches, the plugins
    /// that run in order with their scopes, the upstream path and targets. Nothing is sent.
    Explain {
        /// e.g. GET
        method: String,
        /// `http://HOST/PATH?QUERY`, or `/PATH?QUERY` (host from `-H 'Host: ...'`).
        url: String,
        /// Request headers, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Explain against this config file...
        #[arg(short = 'c', long = "config", conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// ...or against the config a running gateway serves (its admin API URL).
        #[arg(long, env = "GATEHOUSE_ADMIN")]
        admin: Option<String>,
        /// The admin token, when the API asks for one.
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Release operations on a running gateway (store mode).
    Release {
        #[command(subcommand)]
        what: ReleaseCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the plugins this build knows, or print one plugin's config schema.
    Plugins {
        #[command(subcommand)]
        what: Option<PluginsCommand>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the running config as YAML, ready for `gatehouse run -c`.
    Export,
    /// List the store's revisions, newest first (store mode).
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make an earlier revision's config live again, as a new revision (store mode).
    Rollback { revision: i64 },
    /// Show what applying a file would change: entities created, updated (with the fields
    /// that change) and deleted.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Make a file's entities the running config (store mode), as one revision: shows the
    /// diff and asks first.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Warn loudly when the change deletes or modifies more than this share of the
        /// existing entities.
        #[arg(long, default_value_t = 0.25)]
        warn_over: f64,
    },
}

/// How a command reaches a running gateway's admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's URL.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN",
        default_value = "http://127.0.0.1:9180",
        global = true
    )]
    admin: String,
    /// The admin token, when the API asks for one (`gatehouse admin-token` makes one).
    #[arg(long, env = "GATEHOUSE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn api(self) -> config_cmd::AdminApi {
        config_cmd::AdminApi {
            url: self.admin,
            token: self.token,
        }
    }
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Switch a blue-green service to its other upstream (or the side `--to` names), as one
    /// atomic revision; requests under way finish where they started.
    Switch {
        service: String,
        /// `blue` or `green` (default: whichever is not active).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Print the JSON Schema of a plugin's `config`.
    Schema { name: String },
}

/// `gatehouse config ...` against a running gateway's admin API.
async fn config_command(what: ConfigCommand, admin: config_cmd::AdminApi) -> anyhow::Result<()> {
    match what {
        ConfigCommand::Export => print!("{}", config_cmd::export(&admin).await?),
        ConfigCommand::History { limit } => print!("{}", config_cmd::history(&admin, limit).await?),
        ConfigCommand::Rollback { revision } => {
            let new = config_cmd::rollback(&admin, revision).await?;
            println!("revision {revision}'s config is live again as revision {new}");
        }
        ConfigCommand::Diff { file } => print!("{}", config_cmd::diff_file(&admin, &file).await?),
        ConfigCommand::Apply {
            file,
            yes,
            warn_over,
        } => println!(
            "{}",
            config_cmd::apply(&admin, &file, yes, warn_over).await?
        ),
    }
    Ok(())
}

/// `gatehouse release ...` against a running gateway's admin API.
async fn release_command(what: ReleaseCommand, admin: config_cmd::AdminApi) -> anyhow::Result<()> {
    match what {
        ReleaseCommand::Switch { service, to } => {
            println!(
                "{}",
                config_cmd::switch(&admin, &service, to.as_deref()).await?
            )
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Validate { config, redis } => return validate(&config, redis.as_deref()),
        Command::Plugins { what } => return plugins(what),
        Command::Explain {
            method,
            url,
            headers,
            config,
            admin,
            token,
            json,
        } => rt.block_on(async {
            let (config, api) = match (config, admin) {
                (Some(path), _) => (load(&path, None).map_err(|e| anyhow::anyhow!("{e}"))?, None),
                (None, Some(url)) => {
                    let api = config_cmd::AdminApi { url, token };
                    (config_cmd::fetch_config(&api).await?, Some(api))
                }
                (None, None) => anyhow::bail!("say which config: -c FILE or --admin URL"),
            };
            let mut e = explain::explain(config, &method, &url, &headers)?;
            if let (Some(api), Some(m)) = (api, e.route.as_mut()) {
                // The running gateway's targets: discovered and registered ones included.
                m.targets = config_cmd::live_targets(&api, &m.upstream).await?;
            }
            print!("{}", explain::render(&e, json)?);
            Ok(())
        }),
        Command::Config { what, admin } => rt.block_on(config_command(what, admin.api())),
        Command::Release { what, admin } => rt.block_on(release_command(what, admin.api())),
        Command::AdminToken { name, role } => return admin_token(&name, &role),
        Command::Run {
            config,
            store,
            data_dir,
            listen,
            workers,
            node_index,
            redis,
            admin,
            admin_tokens,
            metrics,
            admin_tls,
        } => rt.block_on(async move {
            let flags = NodeFlags {
                listen,
                workers,
                node_index,
                redis,
                admin,
                data_dir,
                admin_tokens: load_tokens(admin_tokens.as_deref())?,
                metrics,
                admin_tls,
            };
            match config {
                Some(file) => run(file, flags).await,
                None => {
                    let url = store.unwrap_or_else(|| DEFAULT_STORE.to_owned());
                    store_mode::run(url, flags).await
                }
            }
        }),
        Command::Demo { listen, admin } => rt.block_on(demo(listen, admin)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

const DEFAULT_STORE: &str = "sqlite://./gatehouse-data/gatehouse.db";

/// Node settings from the command line (store mode has no file to hold them).
pub struct NodeFlags {
    pub listen: Vec<SocketAddr>,
    pub workers: Option<usize>,
    pub node_index: Option<u32>,
    pub redis: Option<String>,
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// From `--admin-tokens FILE`; None when not given.
    pub admin_tokens: Option<Vec<gatehouse_model::AdminToken>>,
    /// `--metrics ADDR`: `/metrics` and `/ready` with no token.
    pub metrics: Option<SocketAddr>,
    /// `--admin-tls`: the admin API over HTTPS.
    pub admin_tls: bool,
}

/// Reads `--admin-tokens FILE`: a YAML list of `{name, role, sha256}`, checked like the
/// file's admin.tokens.
fn load_tokens(path: Option<&Path>) -> anyhow::Result<Option<Vec<gatehouse_model::AdminToken>>> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tokens: Vec<gatehouse_model::AdminToken> = yaml_serde::from_str(&text)
        .with_context(|| format!("{}: not a list of {{name, role, sha256}}", path.display()))?;
    let check = Config {
        admin: Some(gatehouse_model::Admin {
            address: "127.0.0.1:9180".into(),
            tokens: tokens.clone(),
            metrics_address: None,
            tls: None,
        }),
        ..Config::default()
    };
    let errs = gatehouse_model::validate(&check);
    if let Some(e) = errs.first() {
        anyhow::bail!("{}: {e}", path.display());
    }
    Ok(Some(tokens))
}

fn admin_token(name: &str, role: &str) -> ExitCode {
    if role != "admin" && role != "viewer" {
        eprintln!("error: --role {role:?}: expected admin or viewer");
        return ExitCode::FAILURE;
    }
    match gatehouse_admin::new_token() {
        Ok((secret, hash)) => {
            println!("token (shown once; give it to {name}): {secret}");
            println!("store this entry (admin.tokens in the file, or the --admin-tokens list):");
            println!("- {{name: {name}, role: {role}, sha256: {hash}}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn load(path: &Path, redis: Option<&str>) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![gatehouse_model::ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )])
    })?;
    parse_config_for_node(&text, gatehouse_plugins::registry(), redis)
}

pub(crate) fn node_context(
    config: &Config,
    workers: Option<usize>,
    node_index: Option<u32>,
) -> NodeContext {
    NodeContext {
        registry: gatehouse_plugins::registry(),
        workers: workers
            .or(config.node.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        node_index: node_index
            .or(config.node.index)
            .unwrap_or_else(default_node_index),
    }
}

/// Without a configured index, the host name picks one: stable per host, and spread evenly
/// only on average (configure `node.index` for an exact spread).
fn default_node_index() -> u32 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    fnv1a(host.trim().as_bytes()) % 1024
}

/// FNV-1a: a stable hash of the host name (not for security).
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
    })
}

fn validate(path: &Path, redis: Option<&str>) -> ExitCode {
    let errors = match load(path, redis) {
        Ok(config) => {
            let node = node_context(&config, None, None);
            match Snapshot::plan(config, None, node) {
                Ok(_) => {
                    println!("{}: valid", path.display());
                    return ExitCode::SUCCESS;
                }
                Err(mut e) => {
                    if let Ok(text) = std::fs::read_to_string(path) {
                        gatehouse_model::place(&text, &mut e);
                    }
                    ConfigErrors(e)
                }
            }
        }
        Err(e) => e,
    };
    println!("{errors}");
    ExitCode::FAILURE
}

async fn run(path: PathBuf, flags: NodeFlags) -> anyhow::Result<()> {
    upgrade::take_inherited();
    let NodeFlags {
        listen,
        workers,
        node_index,
        redis,
        admin,
        admin_tokens,
        metrics,
        admin_tls,
        data_dir,
        ..
    } = flags;
    let redis = redis.as_deref();
    let config = load(&path, redis).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let admin_addr = match admin {
        Some(a) => a,
        None => match &config.admin {
            Some(a) => a.address.parse()?,
            None => SocketAddr::from(([127, 0, 0, 1], 9180)),
        },
    };
    let metrics = match (
        metrics,
        config
            .admin
            .as_ref()
            .and_then(|a| a.metrics_address.as_ref()),
    ) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse()
                .with_context(|| format!("admin.metrics_address: \"{m}\" is not host:port"))?,
        ),
        (None, None) => None,
    };
    let tokens = admin_tokens
        .or_else(|| config.admin.as_ref().map(|a| a.tokens.clone()))
        .unwrap_or_default();
    let admin_tls = config
        .admin
        .as_ref()
        .and_then(|a| a.tls.clone())
        .or_else(|| admin_tls.then(node::default_admin_tls));
    gatehouse_admin::check_address(admin_addr, !tokens.is_empty())
        .map_err(|e| anyhow::anyhow!(e))?;
    let node = node_context(&config, workers, node_index);
    let opts = StartOptions {
        listen,
        workers: node.workers,
        node_index: node.node_index,
        registry: gatehouse_plugins::registry(),
    };
    let gateway = Gateway::start(config, &opts)?;
    gateway.shared().keep_discovered_in(&data_dir);
    let view = node::NodeView {
        shared: gateway.shared().clone(),
        for_node: None,
    };
    let control =
        Arc::new(Control::new(Source::File(path.clone()), Arc::new(view)).with_tokens(&tokens));
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let watcher = watch_file(&path, tx).context("cannot watch the config file")?;
    let source = FileSource {
        path,
        redis: redis.map(str::to_owned),
        changes,
        _watcher: watcher,
    };
    let admin = node::AdminListen {
        address: admin_addr,
        metrics,
        tls: admin_tls,
    };
    tokio::spawn(acme::run(
        gateway.shared().clone(),
        acme::Storage::Dir(data_dir.join("acme")),
        acme_holder(),
    ));
    node::serve(gateway, control, admin, node.workers, source).await
}

/// Who holds an ACME lease: this host and process.
pub(crate) fn acme_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// File mode's config: a YAML file, watched.
struct FileSource {
    path: PathBuf,
    redis: Option<String>,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl node::ConfigSource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn changed(&mut self) -> &'static str {
        if self.changes.recv().await.is_none() {
            return std::future::pending().await;
        }
        // Editors write in several steps; let them finish, then read once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while self.changes.try_recv().is_ok() {}
        "file changed"
    }

    async fn follow(&mut self, gateway: &Gateway, control: &Control, why: &str) {
        reload(gateway, control, &self.path, self.redis.as_deref(), why);
    }
}

fn reload(gateway: &Gateway, control: &Control, path: &Path, redis: Option<&str>, why: &str) {
    let result = load(path, redis).map_err(|e| e.0).and_then(|c| {
        if c == gateway.shared().snapshot.load().config {
            return Ok(false);
        }
        gateway.reload(c).map(|()| true)
    });
    match &result {
        Ok(true) => control.reloaded(true),
        Err(_) => control.reloaded(false),
        Ok(false) => {}
    }
    match result {
        Ok(true) => tracing::info!(reason = why, "configuration reloaded"),
        Ok(false) => tracing::debug!(reason = why, "configuration unchanged"),
        Err(mut errors) => {
            if let Ok(text) = std::fs::read_to_string(path) {
                gatehouse_model::place(&text, &mut errors);
            }
            for e in &errors {
                tracing::error!(
                    reason = why,
                    "configuration rejected, previous one still serving: {e}"
                );
            }
        }
    }
}

/// Watches the file's directory (editors replace files by renaming, which a watch on the file
/// itself would miss) and signals writes, creations and removals of that file. Reads are not
/// signalled: our own reload reads the file, and reacting to that would loop.
fn watch_file(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let abs = std::path::absolute(path)?;
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = abs.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let changes = event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove();
        if changes
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_owned()) == name)
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

async fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let origin = echo::start("127.0.0.1:0".parse()?).await?;
    let yaml = format!(
        r#"
upstreams:
  - name: echo
    targets: [{{address: "{origin}"}}]
services:
  - name: echo
    upstream: echo
    timeouts: {{connect: 2s, read: 10s}}
routes:
  - name: echo
    paths: ["/echo/*"]
    strip_prefix: true
    service: echo
  - name: users
    paths: ["/users/{{id}}"]
    rewrite: "/accounts/{{id}}/profile"
    service: echo
observability:
  server_timing: true
  access_log:
    path: stdout
    fields: [time, method, path, route, status, duration, upstream_duration]
"#
    );
    let config = parse_config(&yaml, gatehouse_plugins::registry())
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    // A real file, served in file mode: the admin API, `gatehouse config export`, `explain
    // --admin` and edits to the file all work as they do for `gatehouse run -c`.
    let file = std::env::temp_dir().join(format!("gatehouse-demo-{}.yaml", std::process::id()));
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    drop(config);
    println!("Gatehouse demo: an echo upstream on {origin}, the gateway on http://{listen}");
    println!("Config ({}):{yaml}", file.display());
    println!("Try:");
    println!("  curl -s http://{listen}/echo/hello?x=1      # prefix route, prefix stripped");
    println!("  curl -s http://{listen}/users/42            # RESTful route, path rewritten");
    println!("  curl -s http://{listen}/nowhere             # no route: 404 JSON");
    println!(
        "  curl -si http://{listen}/echo/x | grep -i server-timing   # gateway vs upstream time"
    );
    println!("  curl -s http://{admin}/status               # the admin API");
    println!("Each request prints an access log line (JSON) below.");
    println!("Ctrl-C stops it.");
    let flags = NodeFlags {
        listen: vec![listen],
        workers: Some(1),
        node_index: Some(0),
        redis: None,
        admin: Some(admin),
        data_dir: std::env::temp_dir(),
        admin_tokens: Some(Vec::new()),
        metrics: None,
        admin_tls: false,
    };
    let served = run(file.clone(), flags).await;
    let _ = std::fs::remove_file(&file);
    served
}
