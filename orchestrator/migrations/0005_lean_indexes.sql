-- Fewer index writes per queued call (a million-row import writes every index a million times).
-- attempts_by_call repeated the index behind UNIQUE (call_id, number).
DROP INDEX attempts_by_call;
-- The daily cap counts placed attempts only: a queued attempt need not be in this index.
DROP INDEX attempts_by_number_recent;
CREATE INDEX attempts_by_number_recent ON attempts (to_number, placed_at)
    WHERE placed_at IS NOT NULL;
