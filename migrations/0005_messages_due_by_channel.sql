-- The continuous dispatcher claims each channel's due messages up to that channel's free
-- capacity, so a backlog on one channel never keeps another's messages waiting. Without this
-- index, claiming a channel's next message walked `messages_due` through every due message
-- of the other channels first (a query-plan test fails without it).
CREATE INDEX messages_due_by_channel ON messages (channel, next_attempt_at) WHERE status = 'pending';
