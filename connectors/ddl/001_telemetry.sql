-- One row per StageCompleted. ReplacingMergeTree keyed on (trace_id, event_id) is the
-- backstop for redelivery; the sink also skips event ids already stored, so the
-- materialized views below see each event once. ORDER BY trace_id makes one trace's
-- lookup a range read.
CREATE TABLE IF NOT EXISTS telemetry
(
    event_id String,
    trace_id String,
    tenant LowCardinality(String),
    stage LowCardinality(String),
    producer LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    ended_at DateTime64(3, 'UTC'),
    latency_ms Float64,
    status LowCardinality(String),
    error_class LowCardinality(String),
    model LowCardinality(String),
    template_id LowCardinality(String),
    template_version LowCardinality(String),
    input_tokens UInt32,
    output_tokens UInt32,
    cost_usd Float64,
    priced Bool,
    passage_ids Array(String),
    passage_scores Array(Float32),
    question String,
    answer String,
    citations Array(String),
    stored_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (trace_id, event_id);
