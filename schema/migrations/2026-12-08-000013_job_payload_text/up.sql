-- Payloads are kept as the text GitHub sent, byte for byte. Parsing 8-13 KB of JSON into
-- `jsonb` was most of what storing a job event cost PostgreSQL, and `jsonb` returned the
-- payload re-ordered and re-spaced, and could not hold U+0000 nor numbers past `numeric`'s
-- scale. The planner stores only bodies it has parsed as a JSON object; whoever queries a
-- payload's fields casts it (`payload::jsonb`).
--
-- Storage `main`: compressed (lz4: GitHub's payloads shrink to about a quarter) and kept in the
-- row rather than in TOAST chunks, a third cheaper to write and one read fewer.
ALTER TABLE job_payload
    ALTER COLUMN payload TYPE TEXT USING payload::text,
    ALTER COLUMN payload SET STORAGE MAIN,
    ALTER COLUMN payload SET COMPRESSION lz4;
