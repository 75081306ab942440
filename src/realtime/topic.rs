//! Topic names: `shop:<uuid>`, `driver:<uuid>`, `buyer:<uuid>`, `order:<uuid>`, `fleet`.

use std::fmt;

use crate::domain::{BuyerId, DriverId, OrderId, ShopId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Shop(ShopId),
    Driver(DriverId),
    Buyer(BuyerId),
    Order(OrderId),
    Fleet,
}

impl Topic {
    /// Parses a topic; `None` for anything malformed.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "fleet" {
            return Some(Topic::Fleet);
        }
        let (kind, id) = s.split_once(':')?;
        if id.len() != 36 {
            return None; // only the hyphenated form, so one order has one topic name
        }
        let id = uuid::Uuid::parse_str(id).ok()?;
        Some(match kind {
            "shop" => Topic::Shop(ShopId(id)),
            "driver" => Topic::Driver(DriverId(id)),
            "buyer" => Topic::Buyer(BuyerId(id)),
            "order" => Topic::Order(OrderId(id)),
            _ => return None,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Shop(id) => write!(f, "shop:{id}"),
            Topic::Driver(id) => write!(f, "driver:{id}"),
            Topic::Buyer(id) => write!(f, "buyer:{id}"),
            Topic::Order(id) => write!(f, "order:{id}"),
            Topic::Fleet => f.write_str("fleet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_kind() {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        for kind in ["shop", "driver", "buyer", "order"] {
            let s = format!("{kind}:{id}");
            assert_eq!(Topic::parse(&s).map(|t| t.to_string()), Some(s));
        }
        assert_eq!(Topic::parse("fleet"), Some(Topic::Fleet));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "shop",
            "shop:",
            "shop:nope",
            "car:0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "shop:0193a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "fleet:x",
            "SHOP:0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }
}
