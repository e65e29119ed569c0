-- Conversations: the conversation a request is a turn of (empty for lone questions), on
-- every stage's row, so a conversation's turns and their traces group together.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS conversation_id String;
