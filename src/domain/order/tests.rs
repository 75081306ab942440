use super::*;
use proptest::prelude::*;
use uuid::Uuid;

fn parties(driver: bool) -> Parties {
    Parties {
        shop_id: ShopId(Uuid::from_u128(1)),
        buyer_id: BuyerId(Uuid::from_u128(2)),
        driver_id: driver.then_some(DriverId(Uuid::from_u128(3))),
    }
}

fn vendor() -> Actor {
    Actor {
        role: Role::Vendor,
        id: Some(Uuid::from_u128(1)),
    }
}
fn buyer() -> Actor {
    Actor {
        role: Role::Buyer,
        id: Some(Uuid::from_u128(2)),
    }
}
fn driver() -> Actor {
    Actor {
        role: Role::Driver,
        id: Some(Uuid::from_u128(3)),
    }
}
fn stranger(role: Role) -> Actor {
    Actor {
        role,
        id: Some(Uuid::from_u128(99)),
    }
}
const NEW_DRIVER: DriverId = DriverId(Uuid::from_u128(3));

/// The whole legal table: (from, action, actor) → (to, kind). Everything else is invalid.
fn legal(from: OrderStatus, action: Action, actor: Actor) -> Option<(OrderStatus, EventKind)> {
    use Action::*;
    use OrderStatus::*;
    if actor == Actor::ADMIN {
        match (from, action) {
            (Ready | Assigned | PickedUp, Cancel) => {
                return Some((Cancelled, EventKind::Cancelled));
            }
            (Assigned, FailDelivery) => return Some((DeliveryFailed, EventKind::DeliveryFailed)),
            (PickedUp, Unassign) => return Some((Ready, EventKind::Unassigned)),
            _ => {}
        }
    }
    Some(match (from, action) {
        (Pending, Accept) => (Accepted, EventKind::Accepted),
        (Pending, Reject) => (Rejected, EventKind::Rejected),
        (Pending, Cancel) | (Accepted, Cancel) => (Cancelled, EventKind::Cancelled),
        (Accepted, MarkReady) => (Ready, EventKind::Ready),
        (Ready, Assign) => (Assigned, EventKind::Assigned),
        (Assigned, Decline) => (Ready, EventKind::Declined),
        (Assigned, Unassign) => (Ready, EventKind::Unassigned),
        (Assigned, PickUp) => (PickedUp, EventKind::PickedUp),
        (PickedUp, Deliver) => (Delivered, EventKind::Delivered),
        (PickedUp, FailDelivery) => (DeliveryFailed, EventKind::DeliveryFailed),
        (PickedUp, ReportDriverLost) => (PickedUp, EventKind::DriverLost),
        (Ready, ReportDispatchDelayed) => (Ready, EventKind::DispatchDelayed),
        _ => return None,
    })
}

/// The rightful actor of each action.
fn rightful(action: Action) -> Vec<Actor> {
    use Action::*;
    match action {
        Accept | Reject | MarkReady => vec![vendor()],
        Cancel => vec![vendor(), buyer(), Actor::SYSTEM, Actor::ADMIN],
        Assign | ReportDriverLost | ReportDispatchDelayed => vec![Actor::SYSTEM],
        Unassign => vec![Actor::SYSTEM, Actor::ADMIN],
        Decline | PickUp | Deliver => vec![driver()],
        FailDelivery => vec![driver(), Actor::ADMIN],
    }
}

#[test]
fn every_status_action_pair_matches_the_table() {
    for from in OrderStatus::ALL {
        for action in Action::ALL {
            for actor in rightful(action) {
                let got = plan(from, action, actor, parties(true), Some(NEW_DRIVER));
                match legal(from, action, actor) {
                    Some((to, kind)) => {
                        let p =
                            got.unwrap_or_else(|e| panic!("{from:?} {action:?} {actor:?}: {e}"));
                        assert_eq!((p.to, p.kind), (to, kind), "{from:?} {action:?}");
                    }
                    None => assert_eq!(
                        got,
                        Err(TransitionError::Invalid { from, action }),
                        "{from:?} {action:?} must be invalid"
                    ),
                }
            }
        }
    }
}

#[test]
fn wrong_actors_are_forbidden_whatever_the_status() {
    let everyone = [
        vendor(),
        buyer(),
        driver(),
        Actor::SYSTEM,
        Actor::ADMIN,
        stranger(Role::Vendor),
        stranger(Role::Buyer),
        stranger(Role::Driver),
    ];
    for from in OrderStatus::ALL {
        for action in Action::ALL {
            let ok = rightful(action);
            for actor in everyone {
                if ok.contains(&actor) {
                    continue;
                }
                let got = plan(from, action, actor, parties(true), Some(NEW_DRIVER));
                assert_eq!(
                    got,
                    Err(TransitionError::Forbidden {
                        role: actor.role,
                        action
                    }),
                    "{actor:?} {action:?} from {from:?}"
                );
            }
        }
    }
}

#[test]
fn driver_changes_follow_the_status() {
    let p = plan(
        OrderStatus::Ready,
        Action::Assign,
        Actor::SYSTEM,
        parties(false),
        Some(NEW_DRIVER),
    )
    .unwrap();
    assert_eq!(p.driver, DriverChange::Set(NEW_DRIVER));
    let p = plan(
        OrderStatus::Assigned,
        Action::Decline,
        driver(),
        parties(true),
        None,
    )
    .unwrap();
    assert_eq!(p.driver, DriverChange::Clear);
    assert_eq!(
        plan(
            OrderStatus::Ready,
            Action::Assign,
            Actor::SYSTEM,
            parties(false),
            None
        ),
        Err(TransitionError::MissingDriver)
    );
}

#[test]
fn final_statuses_have_no_way_out() {
    for from in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
        for action in Action::ALL {
            for actor in [vendor(), buyer(), driver(), Actor::SYSTEM, Actor::ADMIN] {
                assert!(legal(from, action, actor).is_none());
                assert!(plan(from, action, actor, parties(true), Some(NEW_DRIVER)).is_err());
            }
        }
    }
}

#[test]
fn names_round_trip() {
    for s in OrderStatus::ALL {
        assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
    for r in [
        Role::Buyer,
        Role::Vendor,
        Role::Driver,
        Role::Admin,
        Role::System,
    ] {
        assert_eq!(Role::parse(r.as_str()), Some(r));
    }
    assert_eq!(EventKind::parse("driver_lost"), Some(EventKind::DriverLost));
    assert_eq!(OrderStatus::parse("nope"), None);
}

/// A tiny in-memory order that applies plans the way the store does.
#[derive(Debug, Clone)]
struct Sim {
    status: OrderStatus,
    version: i32,
    driver: Option<DriverId>,
}

fn actors() -> impl Strategy<Value = Actor> {
    prop_oneof![
        Just(vendor()),
        Just(buyer()),
        Just(driver()),
        Just(Actor::SYSTEM),
        Just(Actor::ADMIN),
        Just(stranger(Role::Driver)),
        Just(Actor {
            role: Role::Driver,
            id: Some(Uuid::from_u128(4))
        }),
    ]
}

proptest! {
    #[test]
    fn random_sequences_stay_legal(steps in proptest::collection::vec(
        (0..Action::ALL.len(), actors(), prop::bool::ANY), 0..60)) {
        let mut o = Sim { status: OrderStatus::Pending, version: 1, driver: None };
        for (ai, actor, pick_second) in steps {
            let action = Action::ALL[ai];
            let assign_to = Some(DriverId(Uuid::from_u128(if pick_second { 4 } else { 3 })));
            let before = o.clone();
            let parties = Parties {
                shop_id: ShopId(Uuid::from_u128(1)),
                buyer_id: BuyerId(Uuid::from_u128(2)),
                driver_id: o.driver,
            };
            match plan(o.status, action, actor, parties, assign_to) {
                Ok(p) => {
                    prop_assert_eq!(legal(o.status, action, actor).map(|l| l.0), Some(p.to));
                    o.status = p.to;
                    o.version += 1;
                    match p.driver {
                        DriverChange::Keep => {}
                        DriverChange::Set(d) => o.driver = Some(d),
                        DriverChange::Clear => o.driver = None,
                    }
                    prop_assert_eq!(o.version, before.version + 1);
                }
                Err(_) => {
                    prop_assert_eq!(o.version, before.version);
                    prop_assert_eq!(o.status, before.status);
                }
            }
            // The invariant the database also checks: a driver exactly when the status says so.
            prop_assert_eq!(o.driver.is_some(), o.status.has_driver(), "{:?}", o);
            // Final statuses never move.
            if before.status.is_final() {
                prop_assert_eq!(o.status, before.status);
            }
        }
    }
}
