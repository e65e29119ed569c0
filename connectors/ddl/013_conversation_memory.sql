-- Conversation memory: on the prompting row, how many earlier turns of the conversation
-- the prompts showed (0: a first turn, a lone question, or an older row), so the report
-- can tell the share of turns that used memory.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS memory_turns UInt16;
