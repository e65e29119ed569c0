-- Rollups that keep report queries fast as the raw tables grow. Each is filled by a
-- materialized view on insert, so it must see every event once: the sink guarantees
-- that for telemetry, and feedback enters its rollup once, when it is linked to a trace.

-- Latency per minute and per hour, with requests and errors, per stage and tenant. The
-- quantile states are bfloat16 histograms (quantilesBFloat16: relative error under
-- 0.4%) because their size is bounded: merging a day of them cost 6 ms at 1M rows, where
-- the exact-sample states of `quantiles` carried every value along and cost as much as a
-- raw scan. Report windows read whole hours from stage_hours and only the first partial
-- hour from stage_minutes.
CREATE TABLE IF NOT EXISTS stage_minutes
(
    minute DateTime('UTC'),
    stage LowCardinality(String),
    tenant LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    latency AggregateFunction(quantilesBFloat16(0.5, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (minute, stage, tenant);

CREATE MATERIALIZED VIEW IF NOT EXISTS stage_minutes_mv TO stage_minutes AS
SELECT
    toStartOfMinute(started_at) AS minute,
    stage,
    tenant,
    count() AS events,
    countIf(status = 'error') AS errors,
    quantilesBFloat16State(0.5, 0.95, 0.99)(latency_ms) AS latency
FROM telemetry
GROUP BY minute, stage, tenant;

CREATE TABLE IF NOT EXISTS stage_hours
(
    hour DateTime('UTC'),
    stage LowCardinality(String),
    tenant LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    latency AggregateFunction(quantilesBFloat16(0.5, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (hour, stage, tenant);

CREATE MATERIALIZED VIEW IF NOT EXISTS stage_hours_mv TO stage_hours AS
SELECT
    toStartOfHour(started_at) AS hour,
    stage,
    tenant,
    count() AS events,
    countIf(status = 'error') AS errors,
    quantilesBFloat16State(0.5, 0.95, 0.99)(latency_ms) AS latency
FROM telemetry
GROUP BY hour, stage, tenant;

-- Tokens and cost per day, tenant, model and stage.
CREATE TABLE IF NOT EXISTS cost_days
(
    day Date,
    tenant LowCardinality(String),
    model LowCardinality(String),
    stage LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    unpriced SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (day, tenant, model, stage);

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_days_mv TO cost_days AS
SELECT
    toDate(started_at) AS day,
    tenant,
    model,
    stage,
    count() AS events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    countIf(NOT priced) AS unpriced
FROM telemetry
WHERE model != ''
GROUP BY day, tenant, model, stage;

-- Feedback per day, tenant, prompt version and score name; only feedback linked to a
-- trace (trace_seen), so each event is counted once, when it is linked.
CREATE TABLE IF NOT EXISTS feedback_days
(
    day Date,
    tenant LowCardinality(String),
    template_id LowCardinality(String),
    template_version LowCardinality(String),
    name LowCardinality(String),
    data_type LowCardinality(String),
    category String,
    events SimpleAggregateFunction(sum, UInt64),
    scored SimpleAggregateFunction(sum, UInt64),
    score_sum SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (day, tenant, template_id, template_version, name, data_type, category);

CREATE MATERIALIZED VIEW IF NOT EXISTS feedback_days_mv TO feedback_days AS
SELECT
    toDate(occurred_at) AS day,
    tenant,
    template_id,
    template_version,
    name,
    data_type,
    category,
    count() AS events,
    countIf(score IS NOT NULL) AS scored,
    sum(ifNull(score, 0)) AS score_sum
FROM feedback
WHERE trace_seen
GROUP BY day, tenant, template_id, template_version, name, data_type, category;
