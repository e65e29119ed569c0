-- Console search. The telemetry table is ordered by trace_id, so "the newest traces
-- whose question or answer has these words" would read the time of every matching row
-- (most rows, for a common word). trace_search keeps the prompting and generation rows'
-- filter columns and texts ordered by time, with full-text (inverted) indexes over the
-- lower-cased words of the question and the answer: a rare word is found through the
-- postings of its index, a common one by reading from the newest end until the page is
-- full. A materialized view fills it from every telemetry insert; the INSERT below copies
-- the rows stored before this migration (a copy the view also made is the same row, and
-- ReplacingMergeTree keeps one). Text indexes are GA from ClickHouse 26.2 (chDB 4.4
-- embeds 26.9).
CREATE TABLE IF NOT EXISTS trace_search
(
    trace_id String,
    event_id String,
    started_at DateTime64(3, 'UTC'),
    stage LowCardinality(String),
    status LowCardinality(String),
    tenant LowCardinality(String),
    template_id LowCardinality(String),
    template_version LowCardinality(String),
    label LowCardinality(String),
    experiment LowCardinality(String),
    arm LowCardinality(String),
    retrieval_mode LowCardinality(String),
    conversation_id String,
    question String,
    answer String,
    INDEX question_words lower(question) TYPE text(tokenizer = splitByNonAlpha),
    INDEX answer_words lower(answer) TYPE text(tokenizer = splitByNonAlpha)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (started_at, event_id);
CREATE MATERIALIZED VIEW IF NOT EXISTS trace_search_mv TO trace_search AS
SELECT trace_id, event_id, started_at, stage, status, tenant, template_id, template_version, label,
       experiment, arm, retrieval_mode, conversation_id, question, answer
FROM telemetry
WHERE stage IN ('prompting', 'generation');
INSERT INTO trace_search
SELECT trace_id, event_id, started_at, stage, status, tenant, template_id, template_version, label,
       experiment, arm, retrieval_mode, conversation_id, question, answer
FROM telemetry
WHERE stage IN ('prompting', 'generation');
-- Payloads for the trace page, on the generation row only: the prompt as the model got
-- it and the text of each passage sent, by passage id, each cut to the telemetry
-- settings' limit; empty when LLMOPS_TELEMETRY__KEEP_PAYLOADS is false. Columns are read
-- only when named, so the searches and reports do not pay for them.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS rendered_prompt String;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS passage_texts Map(String, String);
