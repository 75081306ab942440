-- pgbench's side of the write-path benchmark: a table shaped like `orders` (the columns a
-- transition touches, its primary key) and one like `order_events`, 100,000 orders.
-- psql -f schema.sql <scratch database>
DROP TABLE IF EXISTS order_events, orders;
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    shop_id     bigint NOT NULL,
    driver_id   bigint,
    status      text NOT NULL,
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_events (
    order_id    bigint NOT NULL REFERENCES orders (id),
    version     integer NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);
INSERT INTO orders (id, shop_id, status, version)
    SELECT g, g % 200, 'pending', 1 FROM generate_series(1, 100000) g;
INSERT INTO order_events (order_id, version, kind)
    SELECT g, 1, 'created' FROM generate_series(1, 100000) g;
VACUUM ANALYZE;
