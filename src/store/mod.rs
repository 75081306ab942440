//! Postgres access. Only this module writes SQL; every function is one query or one
//! transaction, and transactions never span anything but the database.

pub mod accounts;
pub mod catalog;
pub mod cluster;
pub mod fleet;
pub mod health;
pub mod orders;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects a pool (without creating the database).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres`).
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&admin).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!("CREATE DATABASE {quoted}");
        sqlx::query(&sql).execute(&mut conn).await?;
        tracing::info!(database = %name, "created database");
    }
    Ok(())
}

/// Answers when Postgres does (for `/readyz`).
pub async fn ping(db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db).await.map(|_| ())
}

/// True when the error is a unique violation of the named constraint or index.
pub fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
