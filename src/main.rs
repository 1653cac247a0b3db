//! `operator`: one binary, every role.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::{Application, Roles};
use operator_config::Settings;

mod telemetry;

/// mimalloc rather than glibc's malloc: with glibc, allocating and freeing took about a
/// quarter of the API's CPU in the queue bench's end-to-end run (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "operator",
    version,
    about = "OperatorNext: browser tasks on a queue of headless Chromium workers"
)]
struct Cli {
    /// A TOML settings file (also OPERATOR_CONFIG_FILE); environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Everything in one process on the embedded defaults (SQLite, local queue, local files).
    Serve,
    /// The REST API.
    Api,
    /// A worker: claims tasks and runs them in Chromium.
    Worker,
    /// The scheduler: keeps the queue in step with the database.
    Scheduler,
    /// Apply database migrations, then exit.
    Migrate,
}

fn main() -> ExitCode {
    operator_store::install_crypto_provider();
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(cli.config.as_deref(), &env) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("operator: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("operator: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings, env.get("RUST_LOG").cloned())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings, rust_log: Option<String>) -> anyhow::Result<()> {
    let mut telemetry = crate::telemetry::init(&settings.telemetry, rust_log.as_deref())?;
    let roles = match command {
        Command::Migrate => {
            let result = operator::migrate(&settings).await;
            telemetry.shutdown();
            return result;
        }
        Command::Serve => Roles::SERVE,
        Command::Api => Roles::API,
        Command::Worker => Roles::WORKER,
        Command::Scheduler => Roles::SCHEDULER,
    };
    let application = Application::build(settings, roles).await?;
    if let Some(url) = application.public_url() {
        println!("OperatorNext API: {url}  (docs: {url}/docs, spec: {url}/openapi.json)");
    }
    let result = application
        .run_until_stopped(operator::shutdown_signal())
        .await;
    telemetry.shutdown();
    result
}
