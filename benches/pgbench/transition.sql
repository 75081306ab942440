-- One transition as pgbench sees it: the one-row versioned update and the one-row event
-- insert, in one transaction (one commit, like a transition).
-- pgbench -n -c 32 -j 2 -T 30 -f transition.sql <scratch database>
\set id random(1, 100000)
BEGIN;
UPDATE orders SET status = CASE status WHEN 'accepted' THEN 'ready' ELSE 'accepted' END,
    version = version + 1, updated_at = now()
    WHERE id = :id;
INSERT INTO order_events (order_id, version, kind)
    SELECT id, version, status FROM orders WHERE id = :id;
END;
