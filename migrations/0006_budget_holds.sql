-- batch-prompt schema, version 6: one budget per job across processes. Each process running a job with
-- a budget keeps here what its requests in flight may still cost (their worst cases), renewed every
-- second under a lease: the others count it beside the spend recorded, so that two processes resuming
-- one job never spend together past its budget.
-- Forward-only: never edit this file after it lands; add 0007_*.sql instead.

CREATE TABLE budget_holds (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    owner TEXT NOT NULL,              -- the process (its lease owner)
    reserved REAL NOT NULL,           -- USD held by its requests in flight, at list price
    expires REAL NOT NULL,            -- wall clock: a hold not renewed by then is a dead process's
    PRIMARY KEY (job_id, owner)
);
