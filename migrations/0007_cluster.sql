-- Cluster membership and the dispatcher's lease.

-- One row per hub process that has started: its id is part of every connection id it hands
-- out (so connection ids are unique across nodes), and its heartbeat (`seen_at`, with the
-- socket count) is what `GET /api/admin/cluster` lists as live.
CREATE TABLE cluster_nodes (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    sockets     integer NOT NULL DEFAULT 0,
    stopped_at  timestamptz
);

-- The dispatcher's lease. The holder is whichever node holds the session-level advisory lock
-- on a dedicated connection; on taking it, the node bumps `epoch`. Every assignment carries
-- the epoch it was decided under and the write statement checks it against this row (reading
-- it FOR SHARE), so an assignment decided under an old epoch can never commit.
CREATE TABLE dispatch_lease (
    id          integer PRIMARY KEY CHECK (id = 1),
    epoch       bigint NOT NULL,
    node_id     bigint,
    acquired_at timestamptz
);
INSERT INTO dispatch_lease (id, epoch) VALUES (1, 0);

-- Every lease taken, for the record (and for the failover tests).
CREATE TABLE dispatch_lease_history (
    epoch       bigint PRIMARY KEY,
    node_id     bigint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
