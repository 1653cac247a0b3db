//! `operator`: one binary, every role.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use operator::{Application, Roles};
use operator_config::Settings;
use operator_domain::TenantId;
use operator_domain::auth::Role;
use operator_store::db::NewKey;

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

#[derive(Subcommand, Clone)]
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
    /// Manage tenants (on the database of the settings).
    Tenants {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys (on the database of the settings).
    Keys {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand, Clone)]
enum TenantCommand {
    /// Create a tenant and its first owner key, printed once.
    Create {
        /// The tenant's id: lowercase letters, digits, '-' and '_' (e.g. acme).
        id: String,
        /// A display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tenants.
    List,
}

#[derive(Subcommand, Clone)]
enum KeyCommand {
    /// Make an API key for a tenant, printed once.
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// owner, admin, member or viewer.
        #[arg(long, default_value = "owner")]
        role: String,
        #[arg(long, default_value = "made with operator keys create")]
        name: String,
        /// Days until the key stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// The key may also create and list tenants (`/v1/admin/tenants`).
        #[arg(long)]
        platform_admin: bool,
    },
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
        Command::Tenants { command } => {
            let result = tenants(command, &settings).await;
            telemetry.shutdown();
            return result;
        }
        Command::Keys { command } => {
            let result = keys(command, &settings).await;
            telemetry.shutdown();
            return result;
        }
        Command::Serve => Roles::SERVE,
        Command::Api => Roles::API,
        Command::Worker => Roles::WORKER,
        Command::Scheduler => Roles::SCHEDULER,
    };
    let key_path = operator::owner_key_path(&settings);
    let application = Application::build(settings, roles).await?;
    if let Some(url) = application.public_url() {
        println!("OperatorNext API: {url}  (docs: {url}/docs, spec: {url}/openapi.json)");
    }
    if let Some(key) = application.first_key() {
        println!(
            "Owner key of tenant default (shown once; kept in {}, mode 0600):\n  {key}\n\
             Send it as: Authorization: Bearer <key>",
            key_path.display()
        );
    }
    let result = application
        .run_until_stopped(operator::shutdown_signal())
        .await;
    telemetry.shutdown();
    result
}

async fn tenants(command: TenantCommand, settings: &Settings) -> anyhow::Result<()> {
    let tenants = operator::tenant_repository(settings).await?;
    match command {
        TenantCommand::Create { id, name } => {
            let id = TenantId::parse(&id)?;
            let (tenant, key, token) = tenants
                .create_tenant_with_owner(&id, name.as_deref().unwrap_or(id.as_str()), "operator")
                .await?;
            println!(
                "tenant {} created; its owner key {} (shown once):\n{}",
                tenant.id,
                key.id,
                token.expose()
            );
        }
        TenantCommand::List => {
            for tenant in tenants.tenants().await? {
                println!(
                    "{}\t{}\t{}",
                    tenant.id,
                    tenant.created_at.to_rfc3339(),
                    tenant.name
                );
            }
        }
    }
    Ok(())
}

async fn keys(command: KeyCommand, settings: &Settings) -> anyhow::Result<()> {
    let tenants = operator::tenant_repository(settings).await?;
    match command {
        KeyCommand::Create {
            tenant,
            role,
            name,
            expires_in_days,
            platform_admin,
        } => {
            let tenant = TenantId::parse(&tenant)?;
            anyhow::ensure!(
                tenants.tenant(&tenant).await?.is_some(),
                "no tenant {tenant}; create it with operator tenants create {tenant}"
            );
            let expires_at = expires_in_days
                .map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
            let (key, token) = tenants
                .create_key(NewKey {
                    tenant,
                    name,
                    role: Role::parse(&role)?,
                    platform_admin,
                    expires_at,
                    created_by: Some("operator".to_owned()),
                })
                .await?;
            println!(
                "key {} ({}, {}) (shown once):\n{}",
                key.id,
                key.prefix,
                key.role,
                token.expose()
            );
        }
    }
    Ok(())
}
