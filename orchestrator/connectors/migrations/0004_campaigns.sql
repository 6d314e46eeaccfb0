-- Campaigns: many calls imported at once, dialled under shared settings, paced fairly.

CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    settings TEXT NOT NULL,
    priority INTEGER NOT NULL,
    share DOUBLE PRECISION NOT NULL,
    budget DOUBLE PRECISION,
    price_per_minute DOUBLE PRECISION NOT NULL,
    spent DOUBLE PRECISION NOT NULL,
    dialed INTEGER NOT NULL,
    rows_total INTEGER NOT NULL,
    rows_invalid INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX campaigns_by_status ON campaigns (status);

-- Rows of an import that could not become calls, with their line and why.
CREATE TABLE campaign_errors (
    campaign_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (campaign_id, line)
);

-- Each attempt knows its campaign, so a campaign's queue is one index range: a claim costs the
-- same with ten queued calls or ten million.
ALTER TABLE attempts ADD COLUMN campaign TEXT;
CREATE INDEX attempts_campaign_queue ON attempts (campaign, priority DESC, not_before)
    WHERE status = 'queued';
-- Attempts to one person over the last day (the daily cap across campaigns).
CREATE INDEX attempts_by_number_recent ON attempts (to_number, placed_at);
-- Live calls per caller id (the per-number concurrency of a from pool).
CREATE INDEX attempts_live_by_from ON attempts (from_number) WHERE live = 1;

-- Numbers never to call, added through the API (a file list is read by each daemon too).
CREATE TABLE do_not_call (
    number TEXT PRIMARY KEY,
    reason TEXT,
    added_at DOUBLE PRECISION NOT NULL
);

-- Why the fleet's dialing is paused (rate limited, balance, unauthorized), and how far the
-- pace is slowed after the provider said 429 (1: full speed).
ALTER TABLE pacing ADD COLUMN reason TEXT;
ALTER TABLE pacing ADD COLUMN factor DOUBLE PRECISION NOT NULL DEFAULT 1;
