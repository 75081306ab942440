-- The same update and insert without BEGIN/END: each statement commits on its own (two
-- commits per pgbench transaction). Each client keeps to its own orders, so that no two
-- clients race for one order's next version.
-- pgbench -n -c 32 -j 2 -T 30 -f two-statements.sql <scratch database>
\set id :client_id * 3000 + random(1, 3000)
UPDATE orders SET status = CASE status WHEN 'accepted' THEN 'ready' ELSE 'accepted' END,
    version = version + 1, updated_at = now()
    WHERE id = :id;
INSERT INTO order_events (order_id, version, kind)
    SELECT id, version, status FROM orders WHERE id = :id;
