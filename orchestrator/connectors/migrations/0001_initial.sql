-- The durable state of the orchestrator. Portable SQL: it runs unchanged on SQLite and
-- PostgreSQL except for {serial}, which each connector replaces with its auto-increment type.
-- Timestamps are epoch seconds (DOUBLE PRECISION); JSON is stored as TEXT.

CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    agent_id TEXT,
    campaign TEXT,
    metadata TEXT NOT NULL,
    purpose TEXT,
    goal TEXT,
    template_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION
);
CREATE INDEX calls_by_status ON calls (status, id);
CREATE INDEX calls_by_campaign ON calls (campaign, id);

-- One row per placement of a call. The row is also the dial job: a queued row whose
-- not_before has passed is claimed with a lease; live = 1 while it holds a concurrency slot.
CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL REFERENCES calls (id),
    number INTEGER NOT NULL,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    status TEXT NOT NULL,
    live INTEGER NOT NULL DEFAULT 0,
    ambiguous INTEGER NOT NULL DEFAULT 0,
    webhook_token TEXT NOT NULL UNIQUE,
    provider_call_id TEXT UNIQUE,
    provider_status TEXT,
    error_code TEXT,
    error_message TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    duration DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    placed_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    UNIQUE (call_id, number)
);
CREATE INDEX attempts_queue ON attempts (priority, not_before) WHERE status = 'queued';
CREATE INDEX attempts_by_call ON attempts (call_id, number);
-- Never two live calls to one person: enforced here, not by luck.
CREATE UNIQUE INDEX attempts_one_live_per_number ON attempts (to_number) WHERE live = 1;
CREATE INDEX attempts_live_by_numbers ON attempts (to_number, from_number) WHERE live = 1;

-- The append-only event log. dedupe_key makes a lifecycle event happen once per attempt.
CREATE TABLE events (
    seq {serial} PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    call_id TEXT NOT NULL,
    attempt_id TEXT,
    type TEXT NOT NULL,
    occurred_at DOUBLE PRECISION NOT NULL,
    dedupe_key TEXT UNIQUE,
    body TEXT NOT NULL
);
CREATE INDEX events_by_call ON events (call_id, seq);

-- The outbox: one row per event and subscribed handler, claimed with a lease.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    event_seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    handler TEXT NOT NULL,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    last_error TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (event_id, handler)
);
CREATE INDEX deliveries_pending ON deliveries (handler, event_seq) WHERE state = 'pending';
CREATE INDEX deliveries_order ON deliveries (call_id, handler, event_seq) WHERE state = 'pending';

-- Due-time work (the watchdog of each placed attempt), taken and run in one transaction.
CREATE TABLE timers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX timers_due ON timers (due_at);

-- Every webhook delivery received, by the SHA-256 of its raw body: an exact repeat changes
-- nothing.
CREATE TABLE receipts (
    id TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    attempt_id TEXT,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL
);
