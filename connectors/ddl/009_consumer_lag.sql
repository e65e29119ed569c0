-- Consumer lag samples: one row per stage and partition, every sample the analytics
-- leader takes (agents/lag.py). committed_offset -1: the group committed nothing there.
CREATE TABLE IF NOT EXISTS consumer_lag
(
    sampled_at DateTime64(3, 'UTC'),
    group_id LowCardinality(String),
    stage LowCardinality(String),
    topic LowCardinality(String),
    partition UInt32,
    end_offset Int64,
    committed_offset Int64,
    lag Int64
)
ENGINE = MergeTree
ORDER BY (stage, partition, sampled_at)
TTL toDateTime(sampled_at) + toIntervalDay(30);
