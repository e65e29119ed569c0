-- Prompt registry and experiments: which label served each request, the experiment and
-- arm it was assigned, and whether HyDE shaped its search. Empty on older rows.
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS label LowCardinality(String);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS experiment LowCardinality(String);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS arm LowCardinality(String);
ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS hyde LowCardinality(String);
