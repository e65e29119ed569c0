-- Prompt artifacts: the artifact set the prompt version pins and the artifacts the
-- prompting stage put into the prompt (most similar first), on every stage's row from
-- prompting on, so a trace shows which examples shaped its answer. Empty on older rows.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS artifact_set LowCardinality(String);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS artifact_ids Array(String);
