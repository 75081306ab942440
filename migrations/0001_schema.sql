-- The hub's durable state. Every order transition is one transaction that bumps
-- orders.version and appends the matching order_events row; see migrations/README.md.

CREATE TABLE shops (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
    lat              double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lng              double precision NOT NULL CHECK (lng BETWEEN -180 AND 180),
    address          text NOT NULL DEFAULT '' CHECK (length(address) <= 300),
    login_code_hash  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id           uuid PRIMARY KEY,
    shop_id      uuid NOT NULL REFERENCES shops (id) ON DELETE RESTRICT,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
    price_cents  bigint NOT NULL CHECK (price_cents BETWEEN 0 AND 10000000),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_shop_idx ON products (shop_id);

CREATE TABLE drivers (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
    phone            text NOT NULL DEFAULT '' CHECK (length(phone) <= 32),
    login_code_hash  text NOT NULL,
    last_lat         double precision CHECK (last_lat BETWEEN -90 AND 90),
    last_lng         double precision CHECK (last_lng BETWEEN -180 AND 180),
    last_seen_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((last_lat IS NULL) = (last_lng IS NULL))
);

CREATE TABLE buyers (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
    phone       text NOT NULL CHECK (length(phone) BETWEEN 3 AND 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE order_number_seq START 1001;

CREATE TABLE orders (
    id                 uuid PRIMARY KEY,
    number             bigint NOT NULL UNIQUE DEFAULT nextval('order_number_seq'),
    shop_id            uuid NOT NULL REFERENCES shops (id) ON DELETE RESTRICT,
    buyer_id           uuid NOT NULL REFERENCES buyers (id) ON DELETE RESTRICT,
    driver_id          uuid REFERENCES drivers (id) ON DELETE RESTRICT,
    status             text NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'cancelled', 'ready',
                                                      'assigned', 'picked_up', 'delivered', 'delivery_failed')),
    version            integer NOT NULL CHECK (version >= 1),
    items              jsonb NOT NULL CHECK (jsonb_typeof(items) = 'array' AND jsonb_array_length(items) BETWEEN 1 AND 50),
    total_cents        bigint NOT NULL CHECK (total_cents >= 0),
    delivery_lat       double precision NOT NULL CHECK (delivery_lat BETWEEN -90 AND 90),
    delivery_lng       double precision NOT NULL CHECK (delivery_lng BETWEEN -180 AND 180),
    delivery_address   text NOT NULL CHECK (length(delivery_address) BETWEEN 1 AND 300),
    payment_type       text NOT NULL CHECK (payment_type IN ('cod')),
    payment_status     text NOT NULL CHECK (payment_status IN ('pending', 'collected')),
    otp_hash           text NOT NULL,
    otp_failed_attempts integer NOT NULL DEFAULT 0 CHECK (otp_failed_attempts BETWEEN 0 AND 5),
    idempotency_key    text CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    request_hash       text,
    ready_at           timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- A driver is set exactly while the order is with one (or after it ended with one).
    CHECK (status NOT IN ('assigned', 'picked_up', 'delivered', 'delivery_failed') OR driver_id IS NOT NULL),
    CHECK (status NOT IN ('pending', 'accepted', 'ready', 'rejected', 'cancelled') OR driver_id IS NULL)
);
-- One buyer, one key, one order: the idempotency guarantee lives in the database.
CREATE UNIQUE INDEX orders_idempotency_idx ON orders (buyer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The safety net under the dispatcher: a driver holds at most one active order.
CREATE UNIQUE INDEX orders_one_active_per_driver_idx ON orders (driver_id) WHERE status IN ('assigned', 'picked_up');
CREATE INDEX orders_shop_idx ON orders (shop_id, id DESC);
CREATE INDEX orders_buyer_idx ON orders (buyer_id, id DESC);
CREATE INDEX orders_driver_idx ON orders (driver_id, id DESC) WHERE driver_id IS NOT NULL;
CREATE INDEX orders_active_idx ON orders (status, created_at) WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up');

CREATE TABLE order_events (
    order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE RESTRICT,
    version     integer NOT NULL CHECK (version >= 1),
    kind        text NOT NULL CHECK (kind IN ('created', 'accepted', 'rejected', 'cancelled', 'ready', 'assigned',
                                              'declined', 'unassigned', 'picked_up', 'delivered', 'delivery_failed',
                                              'driver_lost')),
    actor_role  text NOT NULL CHECK (actor_role IN ('buyer', 'vendor', 'driver', 'admin', 'system')),
    actor_id    uuid,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);

CREATE TABLE commissions (
    order_id      uuid PRIMARY KEY REFERENCES orders (id) ON DELETE RESTRICT,
    driver_id     uuid NOT NULL REFERENCES drivers (id) ON DELETE RESTRICT,
    amount_cents  bigint NOT NULL CHECK (amount_cents >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commissions_driver_idx ON commissions (driver_id, created_at DESC);

CREATE TABLE sessions (
    token_hash  text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('buyer', 'vendor', 'driver')),
    subject_id  uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_subject_idx ON sessions (role, subject_id);
