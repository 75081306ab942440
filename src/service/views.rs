//! The JSON shapes clients see, shared by REST responses and socket messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Actor, BuyerId, DriverId, EventKind, OrderId, OrderStatus, ProductId, ShopId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub lat: f64,
    pub lng: f64,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

/// The order as every client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: OrderId,
    pub number: i64,
    pub shop_id: ShopId,
    /// The names of the shop, the buyer and the driver holding the order, for display: ids
    /// are for machines, people recognise names.
    #[serde(default)]
    pub shop_name: String,
    pub buyer_id: BuyerId,
    #[serde(default)]
    pub buyer_name: String,
    pub driver_id: Option<DriverId>,
    #[serde(default)]
    pub driver_name: Option<String>,
    pub status: OrderStatus,
    pub version: i32,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub delivery: Delivery,
    pub payment: Payment,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One entry of an order's versioned log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub version: i32,
    pub kind: EventKind,
    pub actor: ActorView,
    pub payload: serde_json::Value,
    #[serde(rename = "created_at", alias = "at")]
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActorView {
    pub role: crate::domain::Role,
    pub id: Option<Uuid>,
}

impl From<Actor> for ActorView {
    fn from(a: Actor) -> Self {
        Self {
            role: a.role,
            id: a.id,
        }
    }
}
