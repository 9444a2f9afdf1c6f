-- batch-prompt schema, version 4: the Batch API mode's batches, and which prompts each holds.
-- Forward-only: never edit this file after it lands; add 0005_*.sql instead.

-- One row per batch this database submitted, written before anything is uploaded. `token` is in the
-- uploaded file's name and the batch's metadata, so that a process killed at any instant is followed
-- by one that finds what exists (the file, the batch) instead of making a second one.
CREATE TABLE batches (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,            -- the endpoint identity (base URL) it went to; never a key
    token TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('preparing', 'uploaded', 'submitted', 'collected', 'returned')),
    status TEXT,                       -- the provider's status when last seen (validating, in_progress, ...)
    input_file_id TEXT,
    batch_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    requests INTEGER NOT NULL,         -- lines in its input file
    completed INTEGER NOT NULL DEFAULT 0,  -- request counts as the provider last reported them
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,                        -- why the provider refused it (validation), or what went wrong
    files_left INTEGER NOT NULL DEFAULT 1,  -- 1 until its files at the provider are deleted
    created_at REAL NOT NULL,
    submitted_at REAL,
    finished_at REAL
);
CREATE INDEX batches_open ON batches (job_id) WHERE state NOT IN ('collected', 'returned');

-- The batch a prompt is in, while it is (its status is 'running', its lease owner 'batch:<id>', with no
-- expiry: no resume reclaims it; collecting the batch settles it).
ALTER TABLE prompts ADD COLUMN batch INTEGER REFERENCES batches(id);
CREATE INDEX prompts_batch ON prompts (batch, id) WHERE batch IS NOT NULL;
