-- Every step of a passage re-index (`llmops reindex`): started, progress, completed, the
-- quality gate's verdict with both scores, the alias switch and the rollback. One row per
-- event; change_id ties the steps of one re-index together.
CREATE TABLE IF NOT EXISTS index_changes
(
    event_id String,
    change_id String,
    event_type LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    alias String,
    source String,
    target String,
    encoder LowCardinality(String),
    source_encoder LowCardinality(String),
    actor String,
    rows_done Nullable(UInt64),
    rows_total Nullable(UInt64),
    rows_per_s Nullable(Float64),
    metric LowCardinality(String),
    source_score Nullable(Float64),
    target_score Nullable(Float64),
    margin Nullable(Float64),
    queries Nullable(UInt32),
    passed Nullable(Bool),
    switch_ms Nullable(Float64),
    message String
)
ENGINE = ReplacingMergeTree
ORDER BY (change_id, event_id);
