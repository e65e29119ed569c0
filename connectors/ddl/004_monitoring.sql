-- Query embeddings for drift checks: kept on the embedding stage's telemetry rows (for
-- the sampled share of traces, LLMOPS_TELEMETRY__VECTOR_SAMPLE) and cleared after 14 days
-- by a column TTL, so the cost stays bounded: 384 float32s, 1,542 bytes a query on disk.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS query_vector Array(Float32)
    TTL toDateTime(started_at) + toIntervalDay(14);

-- Every alert and every resolution the monitor emitted, as events (one row each).
CREATE TABLE IF NOT EXISTS alerts
(
    event_id String,
    alert_id String,
    event_type LowCardinality(String),
    check_name LowCardinality(String),
    subject String,
    value Float64,
    threshold Float64,
    p_value Nullable(Float64),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    message String,
    occurred_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, event_id);
