-- The provider's records as the second source of truth beside webhooks: each live attempt is
-- looked up (get-call, list-calls) when check_at comes, and what the last look-up found is kept.
-- ending says why a live attempt must end now ('watchdog': max_call_duration passed; 'canceled':
-- its campaign was canceled with hangup): its next look-up is the last, and it may hang up.
ALTER TABLE attempts ADD COLUMN agent_call_sid TEXT;
ALTER TABLE attempts ADD COLUMN check_at DOUBLE PRECISION;
ALTER TABLE attempts ADD COLUMN checked_at DOUBLE PRECISION;
ALTER TABLE attempts ADD COLUMN check_result TEXT;
ALTER TABLE attempts ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN ending TEXT;
ALTER TABLE attempts ADD COLUMN settled_by TEXT;
-- Calls live when this migration runs are looked up at once.
UPDATE attempts SET check_at = COALESCE(placed_at, created_at) WHERE live = 1;
-- The look-ups due: live attempts only, so the index stays as small as the live calls.
CREATE INDEX attempts_check_due ON attempts (check_at) WHERE live = 1;
-- The look-up budget of the fleet is a row of pacing (name 'lookup'), as the dialer's is.
