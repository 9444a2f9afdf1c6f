-- batch-prompt schema, version 5: every batch records where it was sent, so that any later run collects
-- it there (a resume without the --base-url it was sent with, a job whose endpoint changed since).
-- Forward-only: never edit this file after it lands; add 0006_*.sql instead.

-- The base URL as given to the SDK (`endpoint` is its case-folded identity), and the name of the
-- environment variable its key was read from (NULL: a key given in code); never the key itself.
ALTER TABLE batches ADD COLUMN base_url TEXT;
ALTER TABLE batches ADD COLUMN api_key_env TEXT;
