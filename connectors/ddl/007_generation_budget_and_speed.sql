-- Generation: how the passages were fitted into the prompt's token budget (sent, cut,
-- and how tokens were counted) and, for streamed answers, time to first token and
-- output tokens per second. Older rows and other stages: zeros, '' and NULL; the speed
-- columns are NULL where an answer was not streamed, so quantiles skip them.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS context_passages UInt16;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS context_passages_cut UInt16;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS context_tokens UInt32;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS context_tokens_cut UInt32;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS tokens_counted_by LowCardinality(String);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS ttft_ms Nullable(Float64);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS tokens_per_s Nullable(Float64);
