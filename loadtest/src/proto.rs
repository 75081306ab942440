//! Wire types of the hub's socket protocol and REST API, reduced to the fields the load test
//! reads. Unknown fields are ignored on purpose: the harness must keep working when the hub adds
//! fields to the order JSON.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Order status as the hub reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Accepted,
    Ready,
    Assigned,
    PickedUp,
    Delivered,
    Rejected,
    Cancelled,
    DeliveryFailed,
    #[serde(other)]
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Accepted => "accepted",
            Status::Ready => "ready",
            Status::Assigned => "assigned",
            Status::PickedUp => "picked_up",
            Status::Delivered => "delivered",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::DeliveryFailed => "delivery_failed",
            Status::Unknown => "unknown",
        }
    }

    /// `delivered`, `rejected`, `cancelled`, `delivery_failed`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Delivered | Status::Rejected | Status::Cancelled | Status::DeliveryFailed
        )
    }
}

/// Event kind of an `order` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Created,
    Accepted,
    Rejected,
    Cancelled,
    Ready,
    Assigned,
    Declined,
    Unassigned,
    PickedUp,
    Delivered,
    DeliveryFailed,
    DriverLost,
    #[serde(other)]
    Unknown,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Created,
        Kind::Accepted,
        Kind::Rejected,
        Kind::Cancelled,
        Kind::Ready,
        Kind::Assigned,
        Kind::Declined,
        Kind::Unassigned,
        Kind::PickedUp,
        Kind::Delivered,
        Kind::DeliveryFailed,
        Kind::DriverLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Accepted => "accepted",
            Kind::Rejected => "rejected",
            Kind::Cancelled => "cancelled",
            Kind::Ready => "ready",
            Kind::Assigned => "assigned",
            Kind::Declined => "declined",
            Kind::Unassigned => "unassigned",
            Kind::PickedUp => "picked_up",
            Kind::Delivered => "delivered",
            Kind::DeliveryFailed => "delivery_failed",
            Kind::DriverLost => "driver_lost",
            Kind::Unknown => "unknown",
        }
    }
}

/// A transition the harness's actors send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Accept,
    MarkReady,
    PickUp,
    Deliver,
    Decline,
    FailDelivery,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Accept,
        Action::MarkReady,
        Action::PickUp,
        Action::Deliver,
        Action::Decline,
        Action::FailDelivery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::MarkReady => "mark_ready",
            Action::PickUp => "pick_up",
            Action::Deliver => "deliver",
            Action::Decline => "decline",
            Action::FailDelivery => "fail_delivery",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "accept" => Action::Accept,
            "mark_ready" => Action::MarkReady,
            "pick_up" => Action::PickUp,
            "deliver" => Action::Deliver,
            "decline" => Action::Decline,
            "fail_delivery" => Action::FailDelivery,
            _ => return None,
        })
    }

    /// The event kind a successful transition records.
    pub fn kind(self) -> Kind {
        match self {
            Action::Accept => Kind::Accepted,
            Action::MarkReady => Kind::Ready,
            Action::PickUp => Kind::PickedUp,
            Action::Deliver => Kind::Delivered,
            Action::Decline => Kind::Declined,
            Action::FailDelivery => Kind::DeliveryFailed,
        }
    }
}

/// The order JSON, reduced.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub id: Uuid,
    #[serde(default)]
    pub shop_id: Option<Uuid>,
    #[serde(default)]
    pub buyer_id: Option<Uuid>,
    #[serde(default)]
    pub driver_id: Option<Uuid>,
    pub status: Status,
    pub version: u64,
}

/// Payload of an event; only `driver_id` is read (`assigned`, `declined`, `unassigned`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub driver_id: Option<Uuid>,
}

/// `event` of an `order` message.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub kind: Kind,
    pub version: u64,
    #[serde(default)]
    pub payload: Option<Payload>,
}

/// A frame from the hub.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome,
    Snapshot {
        #[serde(default)]
        orders: Vec<Order>,
    },
    Order {
        event: Event,
        order: Order,
    },
    Ack {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        order: Order,
    },
    Error {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        code: String,
        #[serde(default)]
        order: Option<Order>,
        /// Seconds to wait before retrying, on the errors that invite a retry.
        #[serde(default)]
        retry_after_s: Option<u64>,
    },
    #[serde(other)]
    Other,
}

/// A frame to the hub.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg<'a> {
    Auth {
        token: &'a str,
    },
    Subscribe {
        topic: &'a str,
        #[serde(rename = "ref")]
        reference: &'a str,
    },
    Transition {
        #[serde(rename = "ref")]
        reference: &'a str,
        order_id: Uuid,
        action: Action,
        expected_version: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        otp: Option<&'a str>,
    },
    Location {
        lat: f64,
        lng: f64,
    },
}

impl ClientMsg<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }
}

/// The `ref` the harness puts on a transition: `<action>:<order id>` (at most 50 chars), so an
/// `error` answer can be tied back to the order and action without extra bookkeeping.
pub fn transition_ref(action: Action, order: Uuid) -> String {
    format!("{}:{}", action.as_str(), order)
}

/// Inverse of [`transition_ref`].
pub fn parse_transition_ref(r: &str) -> Option<(Action, Uuid)> {
    let (a, o) = r.split_once(':')?;
    Some((Action::parse(a)?, o.parse().ok()?))
}

/// The REST error body `{"error": {"code": …}}`.
#[derive(Debug, Deserialize)]
pub struct RestError {
    pub error: RestErrorInner,
}

#[derive(Debug, Deserialize)]
pub struct RestErrorInner {
    pub code: String,
    /// Present on the errors that invite a retry (also sent as `Retry-After`).
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_order_message() {
        let raw = r#"{"type":"order","topic":"shop:0193","event":{"kind":"assigned","version":4,
            "actor":{"role":"system","id":null},"payload":{"driver_id":"01936c1a-0000-7000-8000-000000000001","distance_m":412},
            "at":"2026-11-27T10:00:00Z"},"order":{"id":"01936c1e-0000-7000-8000-000000000002","number":1,
            "shop_id":"01936c1a-0000-7000-8000-000000000003","buyer_id":"01936c1a-0000-7000-8000-000000000004",
            "driver_id":"01936c1a-0000-7000-8000-000000000001","status":"assigned","version":4,"items":[],
            "total_cents":0,"payment":{"type":"cod","status":"pending"}}}"#;
        let ServerMsg::Order { event, order } = serde_json::from_str(raw).unwrap() else {
            panic!("not an order message");
        };
        assert_eq!(event.kind, Kind::Assigned);
        assert_eq!(event.version, 4);
        assert_eq!(order.status, Status::Assigned);
        assert_eq!(event.payload.unwrap().driver_id, order.driver_id);
    }

    #[test]
    fn parses_other_frames() {
        let m: ServerMsg =
            serde_json::from_str(r#"{"type":"welcome","role":"driver","subject_id":"x"}"#).unwrap();
        assert!(matches!(m, ServerMsg::Welcome));
        let m: ServerMsg = serde_json::from_str(r#"{"type":"pong"}"#).unwrap();
        assert!(matches!(m, ServerMsg::Other));
        let m: ServerMsg =
            serde_json::from_str(r#"{"type":"error","code":"rate_limited","message":"x"}"#)
                .unwrap();
        assert!(matches!(m, ServerMsg::Error { code, .. } if code == "rate_limited"));
        let m: ServerMsg = serde_json::from_str(
            r#"{"type":"error","ref":"accept:01936c1e-0000-7000-8000-000000000002",
                "code":"unavailable","message":"x","retry_after_s":1}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ServerMsg::Error { code, retry_after_s: Some(1), reference: Some(_), .. }
            if code == "unavailable")
        );
        let m: ServerMsg = serde_json::from_str(
            r#"{"type":"ack","ref":"t1","order":{"id":"01936c1e-0000-7000-8000-000000000002",
                "status":"accepted","version":2}}"#,
        )
        .unwrap();
        assert!(matches!(m, ServerMsg::Ack { reference: Some(r), .. } if r == "t1"));
        let m: ServerMsg =
            serde_json::from_str(r#"{"type":"snapshot","topic":"buyer:x","ref":"s","orders":[]}"#)
                .unwrap();
        assert!(matches!(m, ServerMsg::Snapshot { orders } if orders.is_empty()));
        let m: ServerMsg = serde_json::from_str(r#"{"type":"order","event":{"kind":"something_new",
            "version":2},"order":{"id":"01936c1e-0000-7000-8000-000000000002","status":"new","version":2}}"#)
        .unwrap();
        assert!(matches!(m, ServerMsg::Order { event, order }
            if event.kind == Kind::Unknown && order.status == Status::Unknown));
    }

    #[test]
    fn transition_frame_and_ref() {
        let id: Uuid = "01936c1e-0000-7000-8000-000000000002".parse().unwrap();
        let r = transition_ref(Action::MarkReady, id);
        assert!(r.len() <= 64);
        assert_eq!(parse_transition_ref(&r), Some((Action::MarkReady, id)));
        let json = ClientMsg::Transition {
            reference: &r,
            order_id: id,
            action: Action::Deliver,
            expected_version: 5,
            otp: Some("123456"),
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["action"], "deliver");
        assert_eq!(v["expected_version"], 5);
        assert_eq!(v["otp"], "123456");
        let json = ClientMsg::Location { lat: 1.0, lng: 2.0 }.to_json();
        assert_eq!(json, r#"{"type":"location","lat":1.0,"lng":2.0}"#);
    }
}
