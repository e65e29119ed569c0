-- Retrieval modes (dense, bm25, hybrid). Rows from before this migration were all dense:
-- their mode reads 'dense' where a prompt was known, and their passage scores were the
-- dense leg's, so dense_scores defaults to them. New rows always set both.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS retrieval_mode LowCardinality(String)
    DEFAULT if(template_id != '', 'dense', '');
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS dense_scores Array(Float32) DEFAULT passage_scores;
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS bm25_scores Array(Float32);
