-- A `ready` order that waits longer than HUB_READY_ALERT_S for a driver gets a versioned
-- `dispatch_delayed` event (it stays ready and dispatchable).
ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check CHECK (kind IN (
    'created', 'accepted', 'rejected', 'cancelled', 'ready', 'assigned', 'declined',
    'unassigned', 'picked_up', 'delivered', 'delivery_failed', 'driver_lost', 'dispatch_delayed'));
