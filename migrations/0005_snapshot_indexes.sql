-- Socket snapshots read the active orders of one shop, buyer or driver, or all of them
-- (store::orders::active_sql, one statement per scope). These partial indexes hold active
-- orders only, so a snapshot costs in proportion to the scope's active orders, not to the
-- order history, and a restart that makes every socket re-snapshot at once stays cheap.
-- A driver's snapshot needs no new index: orders_one_active_per_driver_idx (0001) is exactly
-- it. See migrations/README.md.
CREATE INDEX orders_shop_active_idx ON orders (shop_id, id)
    WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up');
CREATE INDEX orders_buyer_active_idx ON orders (buyer_id, id)
    WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up');
-- The fleet snapshot, in snapshot order: read in id order, no sort, stops at the limit.
CREATE INDEX orders_active_id_idx ON orders (id)
    WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up');
