//! Cancels orders the vendor never accepted, and reports `ready` orders that have waited too
//! long for a driver (`dispatch_delayed`, once per order; they stay in the dispatch queue). It
//! polls Postgres rather than keeping timers in memory, so a restart loses nothing: an order
//! that timed out while the hub was down is handled on the first sweep after start. In a
//! cluster it runs on the node that holds the dispatcher's lease only (once per cluster).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Action, Actor};
use crate::error::Error;
use crate::service::Hub;
use crate::service::orders::{SystemInput, TransitionRequest};
use crate::store;

pub fn spawn(hub: Arc<Hub>) {
    let timeout = Duration::from_secs(hub.config.accept_timeout_s);
    let ready_alert = Duration::from_secs(hub.config.ready_alert_s);
    let every =
        (timeout.min(ready_alert) / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let shutdown = hub.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !hub.cluster.is_leader() {
                continue;
            }
            report_delayed(&hub, ready_alert).await;
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

/// Reports every `ready` order waiting longer than `after` (once per order).
async fn report_delayed(hub: &Hub, after: Duration) {
    let now = chrono::Utc::now();
    let cutoff = now - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    let waiting = match store::orders::ready_unreported_before(&hub.db, cutoff).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "ready-wait sweep failed");
            return;
        }
    };
    for (id, version, ready_at) in waiting {
        let req = TransitionRequest {
            action: Action::ReportDispatchDelayed,
            expected_version: version,
            otp: None,
            reason: None,
        };
        let sys = SystemInput {
            waited_s: Some((now - ready_at).num_seconds().max(0) as u64),
            ..SystemInput::default()
        };
        match hub.transition_with(Actor::SYSTEM, id, req, sys).await {
            Ok(_) => {
                metrics::counter!("hub_dispatch_delayed_total").increment(1);
                tracing::warn!(order = %id, "no driver found in time; reported to the shop and the fleet")
            }
            // Assigned (or otherwise moved) meanwhile: nothing to report.
            Err(Error::VersionConflict { .. } | Error::InvalidTransition { .. }) => {}
            Err(e) => tracing::warn!(error = %e, order = %id, "could not report a delayed order"),
        }
    }
}
