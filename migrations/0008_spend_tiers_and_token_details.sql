-- batch-prompt schema, version 8: spend at the flex tier, and the token details priced or shown apart.
-- `mode` may now be 'flex' (live requests answered at OpenAI's flex service tier, priced at the flex
-- price); `cached_tokens` (of prompt_tokens: read from the provider's prompt cache, priced at the cached
-- input rate) and `reasoning_tokens` (of completion_tokens: a reasoning model's hidden tokens) are kept
-- beside the totals they are part of. SQLite cannot change a CHECK in place: the table is rebuilt.
-- (0007 is another branch's; this one touches only `spend`.)
-- Forward-only: never edit this file after it lands; add 0009_*.sql instead.

CREATE TABLE spend_v8 (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    model TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('live', 'batch', 'flex')),
    requests INTEGER NOT NULL DEFAULT 0,          -- responses paid for (a packed request is one)
    answers INTEGER NOT NULL DEFAULT 0,           -- prompts answered by them
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,     -- of prompt_tokens: cached input
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,  -- of completion_tokens: reasoning
    PRIMARY KEY (job_id, model, mode)
) WITHOUT ROWID;

INSERT INTO spend_v8 (job_id, model, mode, requests, answers, prompt_tokens, completion_tokens)
    SELECT job_id, model, mode, requests, answers, prompt_tokens, completion_tokens FROM spend;

DROP TABLE spend;
ALTER TABLE spend_v8 RENAME TO spend;
