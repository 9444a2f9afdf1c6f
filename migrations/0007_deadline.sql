-- batch-prompt schema, version 7: `--mode auto --deadline`. A job run with a deadline keeps it (an absolute
-- time), so a plain resume keeps to it; and the plan last made for it, for status.
-- Forward-only: never edit this file after it lands; add 0008_*.sql instead.

-- Unix time the job must be finished by; NULL: no deadline (the job runs in its `mode`). While it is set
-- the job is in auto mode, and `mode` is the lane its last plan chose ('live' or 'batch').
ALTER TABLE jobs ADD COLUMN deadline_at REAL;
-- JSON: the last plan (`run.plan.Plan.to_dict`): the lane chosen, the take-back time, the rate assumed.
ALTER TABLE jobs ADD COLUMN plan TEXT;
