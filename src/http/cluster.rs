//! `GET /api/admin/cluster`: this node, the live nodes with their socket counts, and who holds
//! the dispatcher's lease.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::extract::Auth;
use crate::cluster::ClusterView;
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::service::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new().route("/admin/cluster", get(cluster))
}

async fn cluster(State(hub): State<Arc<Hub>>, Auth(actor): Auth) -> Result<Json<ClusterView>> {
    if actor.role != Role::Admin {
        return Err(Error::Forbidden("admin only".into()));
    }
    Ok(Json(hub.cluster_view().await?))
}
