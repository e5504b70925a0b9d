-- The deliveries seen last (the web console's deliveries page), without sorting the table.
CREATE INDEX delivery_last_seen ON delivery (last_seen_at DESC, id DESC);
