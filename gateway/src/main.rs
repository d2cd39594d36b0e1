//! The `meshgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshgate::auth::users::{User, Users};
use meshgate::auth::{AuthConfig, GatewayTokens, Principal};
use meshgate::catalog::CatalogState;
use meshgate::telemetry::{self, LogFormat};
use meshgate::{Gateway, GatewayConfig, sample, server};
use meshgate_adapters::memory::MemoryAdapter;

/// mimalloc: with glibc's allocator the large blocks reads free stayed in per-thread arenas, so
/// 64 concurrent readers held twice the memory (bench/RESULTS.md, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// meshgate: serves a data mesh's products over Arrow Flight.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "MESHGATE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Export a span per call to this OpenTelemetry collector (OTLP over gRPC,
    /// `http://host:4317`). Off when not given.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a mesh (the bundled sample mesh in ./mesh when --mesh is not given).
    Serve(Box<GatewayConfig>),
    /// Validate a mesh folder: print every problem with file, field and fix.
    Check {
        /// Mesh folder.
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        /// A folder outside the mesh that bindings may read (repeatable), as for `serve`.
        #[arg(long = "storage-root", env = "MESHGATE_STORAGE_ROOTS", value_delimiter = ',')]
        storage_roots: Vec<PathBuf>,
        /// The object stores file, as for `serve`.
        #[arg(long, env = "MESHGATE_STORES")]
        stores: Option<PathBuf>,
    },
    /// Work with the bundled sample mesh.
    #[command(subcommand)]
    Sample(SampleCommand),
    /// Issue gateway tokens (development, automation).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the users file of Basic credentials.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Who a token or user is.
#[derive(Debug, clap::Args)]
struct Identity {
    /// Roles, comma-separated.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Groups, comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Home domain.
    #[arg(long)]
    domain: Option<String>,
    /// Purpose of use.
    #[arg(long)]
    purpose: Option<String>,
    /// Clearance.
    #[arg(long)]
    clearance: Option<String>,
    /// Further attributes, `key=value` (e.g. `region=EMEA`).
    #[arg(long = "attr", value_parser = parse_kv)]
    attributes: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not key=value"))
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a gateway-signed JWT for a subject.
    Issue {
        /// Authentication configuration whose gateway secret signs the token.
        #[arg(long, env = "MESHGATE_AUTH", default_value = ".meshgate/auth.yaml")]
        auth: PathBuf,
        /// Subject.
        #[arg(long)]
        sub: String,
        #[command(flatten)]
        identity: Identity,
        /// Lifetime.
        #[arg(long, default_value = "1h", value_parser = meshgate::config::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add (or replace) a user; the password is read from the environment variable named by
    /// --password-env, or from standard input.
    Add {
        /// Users file (created when missing).
        #[arg(long)]
        file: PathBuf,
        /// User name.
        #[arg(long)]
        name: String,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        #[command(flatten)]
        identity: Identity,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a whole audit log: every segment's hash chain, the links between segments, and the
    /// checkpoint; reports the first broken record or a log cut short.
    Verify {
        /// The log's folder (`--audit-log`).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SampleCommand {
    /// Write the sample mesh (manifests and generated data) into DIR; existing files stay.
    Write {
        /// Target folder.
        dir: PathBuf,
        /// Data size: 1.0 is 200,000 orders.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

/// Stack of every runtime thread. Planning recurses over expression trees; requests are bounded
/// (`query::EXPRESSION_LIMITS`) so that the bound, not the stack, is what a large one meets, and
/// this leaves a wide margin over what the bound needs.
const THREAD_STACK_BYTES: usize = 16 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshgate::net::install_crypto_provider();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(THREAD_STACK_BYTES).build();
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The exporter's connections live on the runtime.
    let telemetry = {
        let _in = rt.enter();
        telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref())
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meshgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(cli));
    // Outside the runtime's tasks: the last export runs on the runtime while this thread waits.
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Check { mesh, storage_roots, stores } => check(&mesh, storage_roots, stores).await,
        Command::Sample(SampleCommand::Write { dir, scale }) => {
            sample::write(&dir, scale).map(|_| ExitCode::SUCCESS).map_err(|e| e.to_string())
        }
        Command::Token(TokenCommand::Issue { auth, sub, identity, ttl }) => issue_token(&auth, sub, identity, ttl),
        Command::Users(UsersCommand::Add { file, name, password_env, identity }) => {
            add_user(&file, &name, password_env, identity)
        }
        Command::Audit(AuditCommand::Verify { dir }) => verify_audit(&dir),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "meshgate stopped");
            ExitCode::FAILURE
        }
    }
}

fn principal_of(sub: String, id: Identity) -> Principal {
    Principal {
        subject: sub,
        roles: id.roles,
        groups: id.groups,
        domain: id.domain,
        purpose: id.purpose,
        clearance: id.clearance,
        attributes: id.attributes.into_iter().collect(),
        ..Principal::anonymous()
    }
}

fn issue_token(
    auth: &std::path::Path,
    sub: String,
    id: Identity,
    ttl: std::time::Duration,
) -> Result<ExitCode, String> {
    let cfg = AuthConfig::load(auth).map_err(|e| e.to_string())?;
    let secret = cfg.gateway_secret().map_err(|e| e.to_string())?;
    let tokens = GatewayTokens::new(&secret, &cfg.gateway.issuer, &cfg.gateway.audience, cfg.gateway.ttl);
    let token = tokens.issue(&principal_of(sub, id), Some(ttl)).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn add_user(
    file: &std::path::Path,
    name: &str,
    password_env: Option<String>,
    id: Identity,
) -> Result<ExitCode, String> {
    let password = match password_env {
        Some(var) => std::env::var(&var).map_err(|_| format!("variable {var} is not set"))?,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.len() < 8 {
        return Err("the password must be at least 8 characters".into());
    }
    let mut users = if file.exists() { Users::load(file).map_err(|e| e.to_string())? } else { Users::default() };
    let p = principal_of(name.to_string(), id);
    users.users.insert(
        name.to_string(),
        User {
            password_hash: Users::hash(&password),
            roles: p.roles,
            groups: p.groups,
            domain: p.domain,
            purpose: p.purpose,
            clearance: p.clearance,
            attributes: p.attributes,
            disabled: false,
        },
    );
    users.save(file).map_err(|e| e.to_string())?;
    eprintln!("user {name} written to {}", file.display());
    Ok(ExitCode::SUCCESS)
}

fn verify_audit(dir: &std::path::Path) -> Result<ExitCode, String> {
    match meshgate::audit::segments::verify_all(dir) {
        Ok(r) => {
            let checkpoint = if r.checkpointed { ", matches its checkpoint" } else { ", no checkpoint yet" };
            println!("ok: {} records in {} segments, chain intact{checkpoint}", r.records, r.segments);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ meshgate::audit::segments::Error::Io { .. }) => Err(e.to_string()),
        Err(e) => {
            println!("broken: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn serve(mut config: GatewayConfig) -> Result<ExitCode, String> {
    if config.mesh.is_none() && !config.listen.ip().is_loopback() {
        // The sample's development users have published passwords: never off loopback.
        return Err(format!(
            "no mesh and no authentication configured, and {} is not a loopback address: the sample mesh \
             and its development users are served only on 127.0.0.1. Mount your mesh and an auth \
             configuration and pass --mesh DIR --auth FILE --audit-log DIR (docs/deployment.md)",
            config.listen
        ));
    }
    if let Some(mesh) = config.mesh.as_ref().filter(|m| !m.is_dir()) {
        return Err(format!(
            "the mesh folder {} does not exist: mount your mesh there (e.g. `-v $PWD/mesh:{}`) or pass --mesh DIR",
            mesh.display(),
            mesh.display()
        ));
    }
    if config.mesh.is_none() {
        let dir = PathBuf::from("mesh");
        tracing::info!(mesh = %dir.display(), "no --mesh given: serving the bundled sample mesh");
        sample::write(&dir, 1.0).map_err(|e| e.to_string())?;
        config.mesh = Some(dir);
        if config.auth.is_none() && !config.insecure_no_auth {
            let dev = PathBuf::from(".meshgate");
            let auth = sample::write_dev_auth(&dev).map_err(|e| e.to_string())?;
            config.auth = Some(auth);
            config.audit_log.get_or_insert_with(|| dev.join("audit"));
            tracing::info!(
                "authentication is on. Development token: `meshgate token issue --sub alice --roles analyst --attr region=EMEA`, \
                 or Basic credentials alice / alice-dev-password in Handshake (README: sample users)"
            );
        }
    }
    let gateway = Gateway::bind(config, MemoryAdapter::default()).await.map_err(|e| e.to_string())?;
    tracing::info!(addr = %gateway.local_addr(), "ready: connect with pyarrow.flight.connect(\"grpc://{}\") (README: reading from Python)", gateway.local_addr());
    gateway.run_until_signal().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

async fn check(
    mesh: &std::path::Path,
    storage_roots: Vec<PathBuf>,
    stores: Option<PathBuf>,
) -> Result<ExitCode, String> {
    let config = GatewayConfig { storage_roots, stores, ..GatewayConfig::for_mesh(mesh) };
    let (_, catalog) = server::open_catalog(&config, mesh, MemoryAdapter::default()).map_err(|e| e.to_string())?;
    let loaded = catalog.load_products(&CatalogState::default()).await.map_err(|e| e.to_string())?;
    let snapshot = CatalogState::next(&CatalogState::default(), loaded, &[]);
    let mut bad = 0;
    for ((domain, product), entry) in &snapshot.entries {
        if entry.problems.is_empty() {
            eprintln!("ok       {domain}/{product}");
        } else {
            bad += 1;
            eprintln!("refused  {domain}/{product}");
            for p in &entry.problems {
                eprintln!("         - {p}");
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
