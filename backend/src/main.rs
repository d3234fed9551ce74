//! `flow-backend serve`: the Network Flow Monitor compatible backend.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flow_backend::server::{self, AppState, Config};
use flow_backend::sigv4::Credentials;
use flow_backend::store::Store;

#[derive(Parser)]
#[command(
    name = "flow-backend",
    version,
    about = "Network Flow Monitor API (2023-04-19) backend for flow-agent reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// Accept every request, signed or not.
    None,
    /// Verify SigV4 signatures against the access keys in --credentials.
    Sigv4,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the /publish ingest endpoint.
    Serve {
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080", env = "FLOW_BACKEND_LISTEN")]
        listen: String,
        /// A SQLite file path, or a postgres:// URL.
        #[arg(long, default_value = "./flow-backend.db", env = "FLOW_BACKEND_DATABASE")]
        database: String,
        #[arg(long, value_enum, default_value = "none")]
        auth: Auth,
        /// AWS-style credentials file (INI: aws_access_key_id / aws_secret_access_key per section).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Region used in ARNs.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// Account id used in ARNs and for flows whose ARNs name none.
        #[arg(long, default_value = "123456789012")]
        account_id: String,
        /// How long monitors stay PENDING/DELETING and scopes IN_PROGRESS/DEACTIVATING (ms).
        #[arg(long, default_value_t = 1000)]
        lifecycle_delay_ms: i64,
        #[arg(long, default_value_t = 10)]
        max_scopes: i64,
        #[arg(long, default_value_t = 100)]
        max_monitors: i64,
        /// API requests per second before ThrottlingException; 0 disables throttling.
        #[arg(long, default_value_t = 0.0)]
        rate_limit: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve {
        listen,
        database,
        auth,
        credentials,
        region,
        account_id,
        lifecycle_delay_ms,
        max_scopes,
        max_monitors,
        rate_limit,
    } = Cli::parse().command;
    flow_backend::validate::account_id(&account_id).map_err(|e| anyhow::anyhow!("--account-id: {e}"))?;
    let credentials = match (auth, credentials) {
        (Auth::None, _) => None,
        (Auth::Sigv4, Some(path)) => Some(Credentials::load(&path)?),
        (Auth::Sigv4, None) => anyhow::bail!("--auth sigv4 needs --credentials FILE"),
    };
    let store = Store::open(&database).await.context("opening the database")?;
    let version = store.schema_version().await?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(database = ?store.backend(), schema_version = version, "store ready");
    // A parseable line for scripts and tests that bind port 0.
    println!("flow-backend listening on http://{addr}");
    let config = Config { region, account_id, lifecycle_delay_ms, max_scopes, max_monitors, rate_limit, credentials };
    server::serve(listener, AppState::new(store, config)).await?;
    Ok(())
}
