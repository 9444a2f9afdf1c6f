-- batch-prompt schema, version 3: status counts answers taken from the cache without reading done rows.
-- Forward-only: never edit this file after it lands; add 0004_*.sql instead.

-- Only rows answered from the cache are in it (cached = 1 implies done): `status` counts them per model
-- from this index alone, O(cached rows), instead of scanning every done row of the job.
CREATE INDEX prompts_cached ON prompts (job_id, model) WHERE cached = 1;
