//! `seed-demo`: a small demo city (shops with products, drivers) so that a person can run a
//! delivery in the browser right after start. Running it again keeps the same accounts and
//! issues fresh login codes (the hub stores only their hashes, so old codes cannot be shown).

use std::fmt::Write as _;

use crate::domain::{Actor, Role};
use crate::error::Error;
use crate::service::Hub;
use crate::service::catalog::{NewDriverRequest, NewProductRequest, NewShopRequest};
use crate::store::{accounts, catalog};

/// (name, lat, lng, address, products as (name, cents)).
type DemoShop = (
    &'static str,
    f64,
    f64,
    &'static str,
    &'static [(&'static str, i64)],
);

const SHOPS: &[DemoShop] = &[
    (
        "Demo Corner Café",
        52.5219,
        13.4132,
        "Alexanderplatz 3",
        &[("Flat white", 350), ("Croissant", 280), ("Cheesecake", 450)],
    ),
    (
        "Demo Noodle Bar",
        52.5096,
        13.3760,
        "Potsdamer Platz 1",
        &[("Ramen", 1290), ("Gyoza", 650), ("Iced tea", 300)],
    ),
    (
        "Demo Green Grocer",
        52.5301,
        13.4011,
        "Torstraße 60",
        &[("Apples 1 kg", 299), ("Bread", 420), ("Milk", 139)],
    ),
];

/// (name, phone to sign in with, lat, lng).
const DRIVERS: &[(&str, &str, f64, f64)] = &[
    ("Demo Driver Ada", "+49 30 555 1001", 52.5200, 13.4050),
    ("Demo Driver Ben", "+49 30 555 1002", 52.5150, 13.3900),
    ("Demo Driver Cy", "+49 30 555 1003", 52.5280, 13.4200),
];

/// Creates or refreshes the demo city and returns a printable summary with login codes.
pub async fn seed_demo(hub: &Hub, base_url: &str) -> crate::error::Result<String> {
    let mut out = String::new();
    let _ = writeln!(out, "Demo city ready. Open {base_url}/ in a browser.\n");
    let _ = writeln!(
        out,
        "Vendors (pick the shop on the sign-in page, enter its code):"
    );
    for (name, lat, lng, address, products) in SHOPS {
        let (id, code) = match accounts::find_shop_by_name(&hub.db, name).await? {
            Some(s) => (s.id, hub.rotate_login_code(Role::Vendor, s.id).await?.0),
            None => {
                let req = NewShopRequest {
                    name: (*name).into(),
                    lat: *lat,
                    lng: *lng,
                    address: (*address).into(),
                };
                let (s, code) = hub.create_shop(Actor::ADMIN, req).await?;
                (s.id, code)
            }
        };
        if catalog::list_active(&hub.db, id).await?.is_empty() {
            for (p, cents) in *products {
                let req = NewProductRequest {
                    name: (*p).into(),
                    price_cents: *cents,
                    active: true,
                };
                hub.add_product(Actor::ADMIN, id, req).await?;
            }
        }
        let _ = writeln!(out, "  {name:<20} code {code}  (id {id})");
    }
    let _ = writeln!(out, "\nDrivers (sign in with the phone number and code):");
    for (name, phone, lat, lng) in DRIVERS {
        let (id, code, phone) = match accounts::find_driver_by_name(&hub.db, name).await? {
            Some(d) => {
                let mut kept = d.phone.clone();
                if d.phone != *phone {
                    match hub.set_driver_phone(d.id, phone).await {
                        Ok(()) => kept = (*phone).into(),
                        // Another driver has the number: this one keeps signing in by id.
                        Err(Error::Validation(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                let code = hub.rotate_login_code(Role::Driver, d.id).await?.0;
                (d.id, code, kept)
            }
            None => {
                let req = |phone: &str| NewDriverRequest {
                    name: (*name).into(),
                    phone: phone.into(),
                };
                let (d, code) = match hub.create_driver(Actor::ADMIN, req(phone)).await {
                    Err(Error::Validation(_)) => hub.create_driver(Actor::ADMIN, req("")).await?,
                    created => created?,
                };
                (d.id, code, d.phone)
            }
        };
        crate::store::fleet::save_positions(
            &hub.db,
            &[id],
            &[*lat],
            &[*lng],
            &[chrono::Utc::now()],
        )
        .await?;
        let _ = if phone.is_empty() {
            writeln!(
                out,
                "  {name:<20} id {id}  code {code}  (its phone is taken)"
            )
        } else {
            writeln!(out, "  {name:<20} phone {phone}  code {code}  (id {id})")
        };
    }
    let _ = writeln!(
        out,
        "\nBuyers sign up on the page with a name and phone number."
    );
    Ok(out)
}
