-- batch-prompt schema, version 2: what each job paid for, and the run choices kept with a job.
-- Forward-only: never edit this file after it lands; add 0003_*.sql instead.

-- Every response paid for, summed by job, model and mode (live calls or the Batch API), whether or not
-- its answer ended up in a row (an answer for a row another process had finished is still paid for).
-- Cost is derived from these tokens at the (live or batch) price; the tokens are the source of truth.
CREATE TABLE spend (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    model TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('live', 'batch')),
    requests INTEGER NOT NULL DEFAULT 0,          -- responses paid for (a packed request is one)
    answers INTEGER NOT NULL DEFAULT 0,           -- prompts answered by them
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, model, mode)
) WITHOUT ROWID;

-- What version 1 counted: the answers recorded from calls (not from the cache).
INSERT INTO spend (job_id, model, mode, requests, answers, prompt_tokens, completion_tokens)
    SELECT job_id, model, 'live', count(*), count(*), coalesce(sum(prompt_tokens), 0),
           coalesce(sum(completion_tokens), 0)
    FROM prompts WHERE status = 'done' AND cached = 0 GROUP BY job_id, model;

ALTER TABLE jobs DROP COLUMN prompt_tokens;
ALTER TABLE jobs DROP COLUMN completion_tokens;
-- The mode the job was last run in: a plain resume continues in it.
ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'batch'));
-- 1: the job asks for fresh samples (--no-cache): no resume answers it from the cache unless told to.
ALTER TABLE jobs ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;
-- The lease owner of the process writing a job still in state 'creating' (a create commits in chunks).
ALTER TABLE jobs ADD COLUMN creator TEXT;

-- A failed prompt's error kind ("BadRequestError 400", "RetryExhausted", ...), for grouping and retry-failed.
ALTER TABLE prompts ADD COLUMN error_kind TEXT;

-- Claims are per job and model (each model may have its own endpoint and limits): the unfinished rows'
-- index leads with both. Like the one it replaces, it holds only rows not done: O(rows not done).
DROP INDEX prompts_unfinished;
CREATE INDEX prompts_unfinished ON prompts (job_id, model, status, id) WHERE status != 'done';

-- A request in flight anywhere holds its hash here: no other process sends the same request meanwhile.
CREATE INDEX prompts_running_hash ON prompts (hash) WHERE status = 'running';
