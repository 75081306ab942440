//! Is Postgres reachable? A process-wide health state fed by two sources: every database error
//! classified as an outage ([`crate::error::is_outage`]) marks it down at once, and a probe
//! (`SELECT 1` with a short timeout, twice a second) marks it down when nothing else is
//! talking to the database, and up again as soon as an answer comes back.
//!
//! While it is down, requests and socket commands answer `unavailable` (503 with
//! `Retry-After`) without waiting for a pool timeout, `/readyz` says 503 at once, and the
//! hub recovers by itself when the probe succeeds. One process talks to one Postgres, so the
//! state is a process-wide flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

static DOWN: AtomicBool = AtomicBool::new(false);

/// How often the probe runs, and how long it waits for an answer.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// A database call just failed as an outage.
pub fn report_outage() {
    if !DOWN.swap(true, Ordering::AcqRel) {
        tracing::error!("database unreachable: answering 503 until the probe succeeds");
        metrics::gauge!("hub_db_up").set(0.0);
        metrics::counter!("hub_db_outages_total").increment(1);
    }
}

fn report_ok() {
    if DOWN.swap(false, Ordering::AcqRel) {
        tracing::info!("database reachable again");
    }
    metrics::gauge!("hub_db_up").set(1.0);
}

pub fn is_down() -> bool {
    DOWN.load(Ordering::Acquire)
}

/// `Err(Unavailable)` at once while the database is known to be down.
pub fn check() -> Result<(), Error> {
    if is_down() {
        metrics::counter!("hub_db_fast_failures_total").increment(1);
        Err(Error::Unavailable)
    } else {
        Ok(())
    }
}

/// One probe on its own connection (so that a busy pool never looks like an outage): true
/// when Postgres answered within [`PROBE_TIMEOUT`].
async fn probe(db: &PgPool, conn: &mut Option<PgConnection>) -> bool {
    let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
        if conn.is_none() {
            *conn = Some(db.connect_options().connect().await?);
        }
        match conn.as_mut() {
            Some(c) => sqlx::query("SELECT 1").execute(c).await.map(|_| ()),
            None => Ok(()),
        }
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        *conn = None; // reconnect next time
    }
    match answered {
        Ok(Ok(())) => {
            report_ok();
            true
        }
        Ok(Err(e)) if !crate::error::is_outage(&e) => {
            // The server answered, with an error that is not an outage: it is up.
            report_ok();
            true
        }
        _ => {
            report_outage();
            false
        }
    }
}

/// Runs the probe until shutdown.
pub fn spawn_probe(db: PgPool, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut conn: Option<PgConnection> = None;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            probe(&db, &mut conn).await;
        }
    });
}
