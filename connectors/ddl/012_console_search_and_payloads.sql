-- Console search: full-text (inverted) indexes over the words of the question and the
-- answer, lower-cased, so the trace search reads the postings of the words asked for
-- instead of every row's text. The search query matches on the same expressions
-- (hasAllTokens(lower(question), ...)), which also run, slower, where the index is not
-- built yet. Text indexes are GA from ClickHouse 26.2 (chDB 4.x embeds 26.9). MATERIALIZE
-- builds them for rows stored before this migration (a background mutation).
ALTER TABLE telemetry ADD INDEX IF NOT EXISTS question_words lower(question)
    TYPE text(tokenizer = splitByNonAlpha);
ALTER TABLE telemetry ADD INDEX IF NOT EXISTS answer_words lower(answer)
    TYPE text(tokenizer = splitByNonAlpha);
ALTER TABLE telemetry MATERIALIZE INDEX question_words;
ALTER TABLE telemetry MATERIALIZE INDEX answer_words;
-- The newest traces first, with no text asked for (the traces page as it opens, and its
-- filters): the table is ordered by trace_id, so a time window is every part's rows; this
-- projection keeps the filter columns ordered by time, read from the newest end until
-- the page is full. A ReplacingMergeTree keeps a projection only when told what to do
-- with it on merges that replace rows.
ALTER TABLE telemetry MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE telemetry ADD PROJECTION IF NOT EXISTS newest
    (SELECT trace_id, started_at, stage, status, tenant, template_id, template_version, label,
            retrieval_mode, conversation_id ORDER BY started_at);
ALTER TABLE telemetry MATERIALIZE PROJECTION newest;
-- Payloads for the trace page, on the generation row only: the prompt as the model got
-- it and the text of each passage sent, by passage id, each cut to the telemetry
-- settings' limit; empty when LLMOPS_TELEMETRY__KEEP_PAYLOADS is false. Columns are read
-- only when named, so the searches and reports do not pay for them.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS rendered_prompt String;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS passage_texts Map(String, String);
