-- What several daemons on one database share beyond the work itself.

-- The dialing pace of the whole fleet: one token bucket (and the provider's Retry-After pause),
-- read and written inside the claim transaction, which runs one at a time across the fleet.
CREATE TABLE pacing (
    name TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    paused_until DOUBLE PRECISION NOT NULL
);
