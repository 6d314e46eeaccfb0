-- Campaigns that finish and keep their budget.
-- importing, importing_until: how many imports are under way, and until when (each chunk
-- extends it, the last import to end clears it; an import cut off by a crash stops counting
-- once it passes): a campaign is not completed while rows may still come.
-- talk_seconds, talked: the length of every ended call of the campaign (answered or not) and
-- how many, for the expected cost of a live call (the budget counts it before it ends).
ALTER TABLE campaigns ADD COLUMN importing INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN importing_until DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN talk_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN talked INTEGER NOT NULL DEFAULT 0;
-- Whether a campaign has a call still open is one probe per open status, not a scan.
CREATE INDEX calls_by_campaign_status ON calls (campaign, status);
-- The dead letters now, for status, without a scan of every delivery ever made.
CREATE INDEX deliveries_dead ON deliveries (handler) WHERE state = 'dead';
