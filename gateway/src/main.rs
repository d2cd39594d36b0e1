//! The `meshgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meshgate::catalog::Catalog;
use meshgate::{Gateway, GatewayConfig, sample, server};
use meshgate_adapters::AdapterRegistry;
use meshgate_adapters::memory::MemoryAdapter;

/// meshgate: serves a data mesh's products over Arrow Flight.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "MESHGATE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a mesh (the bundled sample mesh in ./mesh when --mesh is not given).
    Serve(GatewayConfig),
    /// Validate a mesh folder: print every problem with file, field and fix.
    Check {
        /// Mesh folder.
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
    },
    /// Work with the bundled sample mesh.
    #[command(subcommand)]
    Sample(SampleCommand),
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Serve(config) => serve(config).await,
        Command::Check { mesh } => check(&mesh).await,
        Command::Sample(SampleCommand::Write { dir, scale }) => {
            sample::write(&dir, scale).map(|_| ExitCode::SUCCESS).map_err(|e| e.to_string())
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "meshgate stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: GatewayConfig) -> Result<ExitCode, String> {
    if config.mesh.is_none() {
        let dir = PathBuf::from("mesh");
        tracing::info!(mesh = %dir.display(), "no --mesh given: serving the bundled sample mesh");
        sample::write(&dir, 1.0).map_err(|e| e.to_string())?;
        config.mesh = Some(dir);
    }
    let gateway = Gateway::bind(config, MemoryAdapter::default()).await.map_err(|e| e.to_string())?;
    tracing::info!(
        addr = %gateway.local_addr(),
        "ready: in Python, `pyarrow.flight.connect(\"grpc://{}\").list_flights()`",
        gateway.local_addr()
    );
    gateway.run_until_signal().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

async fn check(mesh: &std::path::Path) -> Result<ExitCode, String> {
    let config = GatewayConfig::for_mesh(mesh);
    let ctx = server::session_context(&config).map_err(|e| e.to_string())?;
    let catalog = Catalog::load(mesh, AdapterRegistry::with_defaults(MemoryAdapter::default()), ctx.state())
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = catalog.snapshot();
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
