-- One row per FeedbackReceived, stored with the prompt version, model and tenant of the
-- trace it rates. Feedback can arrive before its trace's telemetry: it is stored with
-- trace_seen = false and linked later by inserting the same event_id with a higher
-- revision (ReplacingMergeTree keeps the highest).
CREATE TABLE IF NOT EXISTS feedback
(
    event_id String,
    trace_id String,
    tenant LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    name LowCardinality(String),
    data_type LowCardinality(String),
    score Nullable(Float64),
    category String,
    comment String,
    user String,
    trace_seen Bool,
    template_id LowCardinality(String),
    template_version LowCardinality(String),
    model LowCardinality(String),
    revision UInt32,
    stored_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (trace_id, event_id);
