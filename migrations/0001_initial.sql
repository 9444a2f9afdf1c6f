-- batch-prompt schema, version 1: jobs and their prompts.
-- Forward-only: never edit this file after it lands; add 0002_*.sql instead.

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec_hash TEXT NOT NULL,
    spec TEXT NOT NULL,                 -- canonical JSON of the spec (never a key)
    api TEXT NOT NULL CHECK (api IN ('chat', 'completions')),
    prompts_per_request INTEGER NOT NULL,
    base_url TEXT,
    state TEXT NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'ready')),
    n_prompts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE prompts (
    id INTEGER PRIMARY KEY,             -- insertion order is export order
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    hash TEXT NOT NULL,                 -- request identity, see batch_prompt/expand.py
    template_index INTEGER NOT NULL,
    keywords_index INTEGER NOT NULL,
    model_index INTEGER NOT NULL,
    sample_index INTEGER NOT NULL,
    model TEXT NOT NULL,
    template TEXT NOT NULL,             -- JSON: a string or a list of messages
    keywords TEXT NOT NULL,             -- JSON: the keyword dict
    request TEXT NOT NULL,              -- JSON: the rendered one-prompt request body
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    response TEXT,                      -- JSON: this prompt's response (its own choices only)
    cached INTEGER NOT NULL DEFAULT 0,  -- 1 when filled from the cache, not from a call
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    lease_owner TEXT,                   -- host:pid:token of the process holding a running row
    lease_expires REAL,                 -- unix time after which a running row may be reclaimed
    created_at REAL NOT NULL,
    finished_at REAL
);

-- Export walks a job's rows in order.
CREATE INDEX prompts_job_order ON prompts (job_id, id);
-- Claims, resume and status touch only unfinished rows: O(rows not done).
CREATE INDEX prompts_unfinished ON prompts (job_id, status, id) WHERE status != 'done';
