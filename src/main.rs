//! The `dispatch-hub` binary: `serve` (default), `migrate`, `seed-demo`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dispatch_hub::config::Config;
use dispatch_hub::{app, seed, store};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dispatch-hub",
    version,
    about = "Real-time dispatch hub for hyperlocal delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve REST, WebSockets and the web demo (the default).
    Serve,
    /// Create the database if needed and apply the migrations.
    Migrate,
    /// Create (or refresh) the demo city and print its login codes.
    SeedDemo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    if config.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // Each socket is a file descriptor: use all the process may have.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }

    store::ensure_database(&config.database_url)
        .await
        .context("cannot reach Postgres (DATABASE_URL)")?;
    let db = store::connect(&config.database_url, config.db_max_connections).await?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            store::MIGRATOR.run(&db).await?;
            tracing::info!("migrations applied");
        }
        Command::SeedDemo => {
            store::MIGRATOR.run(&db).await?;
            let (hub, _receivers) = app::build_hub(Arc::new(config.clone()), db);
            let summary = seed::seed_demo(&hub, &format!("http://{}", config.bind)).await?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{summary}")?;
            if config.admin_token.is_some() {
                writeln!(stdout, "Fleet map: log in as admin with HUB_ADMIN_TOKEN.")?;
            }
        }
        Command::Serve => {
            let running = app::start(config, db).await?;
            running.run_until_signal().await;
        }
    }
    Ok(())
}
