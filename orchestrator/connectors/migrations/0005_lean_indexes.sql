-- Fewer index writes per queued call (a million-row import writes every index a million times).
-- attempts_by_call repeated the index behind UNIQUE (call_id, number).
DROP INDEX attempts_by_call;
-- The daily cap counts placed attempts only: a queued attempt need not be in this index.
DROP INDEX attempts_by_number_recent;
CREATE INDEX attempts_by_number_recent ON attempts (to_number, placed_at)
    WHERE placed_at IS NOT NULL;
-- "Is anything due?" before a claim looks at each queue: one index probe, where a claim of a
-- campaign whose calls all wait (a calling window shut on a million of them) reads them all.
DROP INDEX attempts_queue;
CREATE INDEX attempts_queue ON attempts (not_before) WHERE status = 'queued';
-- The claim orders a campaign's queue by (priority DESC, not_before, id): with id in the index
-- no sort of the rows sharing a not_before is needed (63 ms -> 0.1 ms at 300k queued rows).
DROP INDEX attempts_campaign_queue;
CREATE INDEX attempts_campaign_queue ON attempts (campaign, priority DESC, not_before, id)
    WHERE status = 'queued';
