DROP INDEX delivery_last_seen;
