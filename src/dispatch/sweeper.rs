//! Cancels orders the vendor never accepted. It polls Postgres rather than keeping timers in
//! memory, so a restart loses nothing: an order that timed out while the hub was down is
//! cancelled on the first sweep after start.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Action, Actor};
use crate::error::Error;
use crate::service::Hub;
use crate::service::orders::TransitionRequest;
use crate::store;

pub fn spawn(hub: Arc<Hub>) {
    let timeout = Duration::from_secs(hub.config.accept_timeout_s);
    let every = (timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let shutdown = hub.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
            let stuck = match store::orders::pending_before(&hub.db, cutoff).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "timeout sweep failed");
                    continue;
                }
            };
            for (id, version) in stuck {
                let req = TransitionRequest {
                    action: Action::Cancel,
                    expected_version: version,
                    otp: None,
                    reason: Some("vendor_timeout".into()),
                };
                match hub.transition(Actor::SYSTEM, id, req).await {
                    Ok(_) => {
                        tracing::info!(order = %id, "cancelled: vendor did not accept in time")
                    }
                    // Accepted (or otherwise moved) meanwhile: nothing to do.
                    Err(Error::VersionConflict { .. } | Error::InvalidTransition { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, order = %id, "could not cancel a stuck order")
                    }
                }
            }
        }
    });
}
