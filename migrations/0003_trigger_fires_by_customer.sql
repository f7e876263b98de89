-- The journey shell loads a customer's handled occurrences (`Tx::load_customer`, for a due
-- fire and for catch-ups) by customer and time; the primary key starts with the workflow, so
-- without this index each load scanned every occurrence ever recorded.
CREATE INDEX trigger_fires_by_customer ON trigger_fires (customer_id, occurrence);
