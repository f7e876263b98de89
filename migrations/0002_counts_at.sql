-- When a message starts counting toward frequency caps (engine::policy::counts_toward_caps):
-- the decision to send a message that is queued for delivery, or NULL for what caps never
-- count. A held send gets its mark when it is sent, not when it was held; later outcomes
-- (failed, cancelled) do not uncount it.
ALTER TABLE messages ADD COLUMN counts_at INTEGER;

-- Rows written before this column counted by the old filter, from their creation.
UPDATE messages SET counts_at = created_at
 WHERE category = 'marketing' AND status IN ('pending', 'sending', 'sent')
   AND channel IN ('email', 'sms');

CREATE INDEX messages_caps ON messages (customer_id, counts_at) WHERE counts_at IS NOT NULL;
