-- batch-prompt schema, version 9: a job's api may be 'responses' (the Responses API, /v1/responses).
-- Forward-only: never edit this file after it lands; add 0010_*.sql instead.

-- SQLite cannot change a CHECK constraint in place: the jobs table is rebuilt (SQLite's documented
-- procedure: a new table, the rows copied, the old one dropped, the new one renamed). The migration runs
-- with foreign keys off and checks them before it commits (schema.migrate).
CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec_hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    api TEXT NOT NULL CHECK (api IN ('chat', 'completions', 'responses')),
    prompts_per_request INTEGER NOT NULL,
    base_url TEXT,
    state TEXT NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'ready')),
    n_prompts INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'batch')),
    fresh INTEGER NOT NULL DEFAULT 0,
    creator TEXT,
    deadline_at REAL,
    plan TEXT
);
INSERT INTO jobs_new (id, name, spec_hash, spec, api, prompts_per_request, base_url, state, n_prompts, created_at,
                      mode, fresh, creator, deadline_at, plan)
    SELECT id, name, spec_hash, spec, api, prompts_per_request, base_url, state, n_prompts, created_at, mode, fresh,
           creator, deadline_at, plan FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
