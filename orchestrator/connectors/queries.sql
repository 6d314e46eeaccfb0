-- Named queries of the store. Each block starts with "-- name: NAME"; a block named
-- "NAME@postgres" replaces NAME on PostgreSQL. Parameters are :name. {for_update} and
-- {skip_locked} are "FOR UPDATE" and "FOR UPDATE SKIP LOCKED" where the database has them
-- (PostgreSQL) and nothing on SQLite, whose single writer already serialises transactions.
-- Queries that return rows
-- return whole rows (RETURNING *), so every connector hands back the same dicts.
-- The in-memory connector (orchestrator.memory) implements each of these in Python.

-- name: insert_call
INSERT INTO calls (id, idempotency_key, request_hash, to_number, from_number, agent_id,
                   campaign, metadata, purpose, goal, template_id, status, reason, attempts,
                   created_at, updated_at, ended_at)
VALUES (:id, :idempotency_key, :request_hash, :to_number, :from_number, :agent_id,
        :campaign, :metadata, :purpose, :goal, :template_id, :status, NULL, 1,
        :now, :now, NULL)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING *;

-- name: get_call
SELECT * FROM calls WHERE id = :id;

-- name: get_call_by_idempotency_key
SELECT * FROM calls WHERE idempotency_key = :idempotency_key;

-- name: list_calls
SELECT * FROM calls
WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:campaign AS TEXT) IS NULL OR campaign = :campaign)
  AND (CAST(:after AS TEXT) IS NULL OR id > :after)
ORDER BY id
LIMIT :limit;

-- name: update_call
-- Only the call's latest attempt speaks for the call.
UPDATE calls SET status = :status, reason = :reason, ended_at = :ended_at, updated_at = :now
WHERE id = :id AND attempts = :attempt
RETURNING *;

-- name: next_call_attempt
-- A retry: the call's next attempt becomes the one that speaks for it (only from the attempt
-- the caller saw, so a redelivered retry does not schedule a second one).
UPDATE calls
SET attempts = :number, status = 'queued', reason = NULL, ended_at = NULL, updated_at = :now
WHERE id = :id AND attempts = :previous
RETURNING *;

-- name: insert_attempt
INSERT INTO attempts (id, call_id, number, to_number, from_number, status, live, ambiguous,
                      webhook_token, priority, not_before, created_at, campaign)
VALUES (:id, :call_id, :number, :to_number, :from_number, 'queued', 0, 0,
        :webhook_token, :priority, :not_before, :now, :campaign)
RETURNING *;

-- name: bulk_insert_call
-- A campaign import: many calls in one statement batch (no events: the campaign reports).
INSERT INTO calls (id, idempotency_key, request_hash, to_number, from_number, agent_id,
                   campaign, metadata, purpose, goal, template_id, status, reason, attempts,
                   created_at, updated_at, ended_at)
VALUES (:id, NULL, NULL, :to_number, :from_number, :agent_id, :campaign, :metadata, :purpose,
        :goal, :template_id, 'queued', NULL, 1, :now, :now, NULL);

-- name: bulk_insert_attempt
INSERT INTO attempts (id, call_id, number, to_number, from_number, status, live, ambiguous,
                      webhook_token, priority, not_before, created_at, campaign)
VALUES (:id, :call_id, 1, :to_number, :from_number, 'queued', 0, 0, :webhook_token,
        :priority, :not_before, :now, :campaign);

-- name: get_attempt
SELECT * FROM attempts WHERE id = :id;

-- name: lock_attempt
-- Every transaction that changes an attempt reads it with this first: on PostgreSQL the row
-- lock makes a second writer wait and then see the first one's result (no lost update).
-- Lock order everywhere: the attempt, then its call and timers.
SELECT * FROM attempts WHERE id = :id {for_update};

-- name: try_lock_attempt
-- The watchdog only: it holds a timer row already, so it never waits for an attempt (that
-- would invert the lock order); a busy attempt is simply looked at again a moment later.
SELECT * FROM attempts WHERE id = :id {skip_locked};

-- name: get_attempt_by_token
-- Locked as lock_attempt locks: the webhook that names its attempt by token changes it next.
SELECT * FROM attempts WHERE webhook_token = :webhook_token {for_update};

-- name: get_attempt_by_provider_id
SELECT * FROM attempts WHERE provider_call_id = :provider_call_id;

-- name: get_ambiguous_attempt
-- A webhook that names no attempt of ours (the deployed provider echoes no metadata) is matched
-- by its numbers: the newest live attempt between them whose provider id is unknown, because
-- the placing POST's answer was lost (ambiguous) or has not come back yet (still dialing).
SELECT * FROM attempts
WHERE to_number = :to_number AND from_number = :from_number AND live = 1
  AND provider_call_id IS NULL AND (ambiguous = 1 OR status = 'dialing')
ORDER BY created_at DESC
LIMIT 1;

-- name: get_attempt_by_number
SELECT * FROM attempts WHERE call_id = :call_id AND number = :number;

-- name: list_attempts
SELECT * FROM attempts WHERE call_id = :call_id ORDER BY number;

-- name: count_live
SELECT COUNT(*) AS n FROM attempts WHERE live = 1;

-- name: any_due_attempt
-- Whether any queued attempt is due (index attempts_queue): a claim with nothing due ends here.
SELECT 1 AS due FROM attempts WHERE status = 'queued' AND not_before <= :now LIMIT 1;

-- name: due_attempts_of_campaign
-- The head of one campaign's queue (index attempts_campaign_queue), numbers not live.
SELECT a.* FROM attempts a
WHERE a.status = 'queued' AND a.campaign = :campaign AND a.not_before <= :now
  AND NOT EXISTS (SELECT 1 FROM attempts b WHERE b.to_number = a.to_number AND b.live = 1)
ORDER BY a.priority DESC, a.not_before, a.id
LIMIT :limit;

-- name: due_attempts_without_campaign
SELECT a.* FROM attempts a
WHERE a.status = 'queued' AND a.campaign IS NULL AND a.not_before <= :now
  AND NOT EXISTS (SELECT 1 FROM attempts b WHERE b.to_number = a.to_number AND b.live = 1)
ORDER BY a.priority DESC, a.not_before, a.id
LIMIT :limit;

-- name: claim_attempt_by_id
-- One candidate chosen by the claim, made live and leased (if nobody took it meanwhile); its
-- first look-up at the provider is due at :check_at.
UPDATE attempts
SET status = 'dialing', live = 1, from_number = :from_number, lease_owner = :owner,
    lease_until = :lease_until, placed_at = :now, check_at = :check_at, ending = NULL
WHERE id = :id AND status = 'queued'
RETURNING *;

-- name: defer_attempt
UPDATE attempts SET not_before = :not_before WHERE id = :id AND status = 'queued';

-- name: set_call_from
UPDATE calls SET from_number = :from_number WHERE id = :id;

-- name: count_recent_attempts
SELECT COUNT(*) AS n FROM attempts WHERE to_number = :to_number AND placed_at >= :since;

-- name: count_live_by_from
SELECT from_number, COUNT(*) AS n FROM attempts WHERE live = 1 GROUP BY from_number;

-- name: active_campaigns
SELECT * FROM campaigns WHERE status = 'active' ORDER BY id;

-- name: insert_campaign
INSERT INTO campaigns (id, name, status, reason, settings, priority, share, budget,
                       price_per_minute, spent, dialed, rows_total, rows_invalid, created_at,
                       updated_at)
VALUES (:id, :name, :status, NULL, :settings, :priority, :share, :budget, :price_per_minute,
        0, 0, 0, 0, :now, :now)
RETURNING *;

-- name: get_campaign
SELECT * FROM campaigns WHERE id = :id;

-- name: list_campaigns
SELECT * FROM campaigns ORDER BY created_at DESC, id LIMIT :limit;

-- name: list_open_campaigns
-- The campaigns still working (status, campaign list): however old, never crowded out.
SELECT * FROM campaigns WHERE status IN ('active', 'paused')
ORDER BY created_at DESC, id LIMIT :limit;

-- name: set_campaign_status
-- Only from the statuses given: a canceled campaign is never resumed.
UPDATE campaigns SET status = :status, reason = :reason, updated_at = :now
WHERE id = :id AND status IN (:from_a, :from_b)
RETURNING *;

-- name: count_campaign_rows
UPDATE campaigns
SET rows_total = rows_total + :total, rows_invalid = rows_invalid + :invalid, updated_at = :now
WHERE id = :id;

-- name: campaign_dialed
UPDATE campaigns SET dialed = dialed + 1 WHERE id = :id;

-- name: campaign_spent
-- A call of the campaign ended: its cost, and its length for the average a live call is
-- expected to cost.
UPDATE campaigns
SET spent = spent + :cost, talk_seconds = talk_seconds + :seconds, talked = talked + 1,
    updated_at = :now
WHERE id = :id
RETURNING *;

-- name: campaign_live
-- Live calls by campaign, for what they are expected to cost (a claim counts it).
SELECT campaign, COUNT(*) AS live FROM attempts
WHERE live = 1 AND campaign IS NOT NULL GROUP BY campaign ORDER BY campaign;

-- name: set_campaign_settings
-- PATCH: the settings and the columns the claim reads (a canceled campaign is not changed).
UPDATE campaigns
SET settings = :settings, priority = :priority, share = :share, budget = :budget,
    price_per_minute = :price_per_minute, updated_at = :now
WHERE id = :id AND status <> 'canceled'
RETURNING *;

-- name: reprioritize_campaign_queue
UPDATE attempts SET priority = :priority WHERE campaign = :campaign AND status = 'queued';

-- name: start_campaign_import
-- One more import under way, until :until at least.
UPDATE campaigns SET importing = importing + 1, importing_until = :until WHERE id = :id;

-- name: extend_campaign_import
-- A chunk of an import arrived: it is under way until :until.
UPDATE campaigns SET importing_until = :until WHERE id = :id;

-- name: end_campaign_import
-- An import ended; the last one to end clears the lease (the right side reads the old row).
UPDATE campaigns
SET importing = CASE WHEN importing > 0 THEN importing - 1 ELSE 0 END,
    importing_until = CASE WHEN importing <= 1 THEN 0 ELSE importing_until END
WHERE id = :id;

-- name: lock_campaign
-- A campaign read to change what belongs to it (its rows, its settings): a completion, a
-- PATCH or an import of the same campaign waits for this one.
SELECT * FROM campaigns WHERE id = :id {for_update};

-- name: complete_campaign
-- Only an active campaign, and only if no import has started meanwhile (re-read on PostgreSQL
-- after a lock wait): a paused one stays paused.
UPDATE campaigns SET status = 'completed', reason = NULL, updated_at = :now
WHERE id = :id AND status = 'active' AND importing_until <= :now
RETURNING *;

-- name: reopen_campaign
-- A completed campaign has work again (new rows, a retry).
UPDATE campaigns SET status = 'active', reason = NULL, updated_at = :now
WHERE id = :id AND status = 'completed';

-- name: unfinished_campaigns
-- Campaigns that may have just finished: active, with no import under way.
SELECT * FROM campaigns WHERE status = 'active' AND importing_until <= :now ORDER BY id;

-- name: campaign_open_call
-- A call of the campaign not yet final (index calls_by_campaign_status: one probe a status).
SELECT 1 AS open FROM calls
WHERE campaign = :campaign AND status IN ('queued', 'dialing', 'initiated', 'ringing', 'in_progress')
LIMIT 1;

-- name: campaign_pending_delivery
-- A delivery not yet done about one of the campaign's calls: a retry handler may yet queue
-- the call again, so the campaign is not finished until its handlers are.
SELECT 1 AS pending FROM deliveries d JOIN calls c ON c.id = d.call_id
WHERE d.state = 'pending' AND c.campaign = :campaign
LIMIT 1;

-- name: campaign_last_call
-- The call a campaign-wide event is about: the campaign's newest.
SELECT * FROM calls WHERE campaign = :campaign ORDER BY id DESC LIMIT 1;

-- name: begin_import
-- The number of a new import into the campaign (its refused rows are kept under it).
UPDATE campaigns SET imports = imports + 1, updated_at = :now WHERE id = :id
RETURNING imports;

-- name: insert_campaign_error
INSERT INTO campaign_errors (campaign_id, import_no, line, reason)
VALUES (:campaign_id, :import_no, :line, :reason)
ON CONFLICT (campaign_id, import_no, line) DO NOTHING;

-- name: list_campaign_errors
SELECT * FROM campaign_errors
WHERE campaign_id = :campaign_id
  AND (import_no > :after_import OR (import_no = :after_import AND line > :after_line))
ORDER BY import_no, line LIMIT :limit;

-- name: queued_by_hold
-- Queued attempts by what holds them (status). Completed and canceled campaigns have none.
SELECT CASE WHEN c.status = 'paused' THEN 'paused_campaign'
            WHEN a.not_before > :now THEN 'later'
            ELSE 'ready' END AS hold,
       COUNT(*) AS n
FROM attempts a LEFT JOIN campaigns c ON c.id = a.campaign
WHERE a.status = 'queued'
GROUP BY 1 ORDER BY 1;

-- name: count_dead_deliveries
-- Dead letters now (index deliveries_dead): replayed ones are pending again.
SELECT COUNT(*) AS n FROM deliveries WHERE state = 'dead';

-- name: campaign_queued_numbers
-- The numbers a campaign still has to dial, with how many calls each (an estimate of what
-- remains: their time zones).
SELECT to_number, COUNT(*) AS n FROM attempts
WHERE campaign = :campaign AND status = 'queued'
GROUP BY to_number ORDER BY to_number;

-- name: campaign_progress
-- Calls by status; retries: those past their first attempt (a queued one waits for a retry).
SELECT status, COUNT(*) AS calls, SUM(attempts) AS attempts,
       SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) AS retries
FROM calls
WHERE campaign = :campaign GROUP BY status;

-- name: cancel_campaign_calls
-- A canceled campaign's waiting calls end (before their attempts, whose status selects them).
UPDATE calls
SET status = 'canceled', reason = 'CAMPAIGN_CANCELED', ended_at = :now, updated_at = :now
WHERE campaign = :campaign AND status = 'queued';

-- name: cancel_campaign_queue
UPDATE attempts
SET status = 'canceled', error_code = 'CAMPAIGN_CANCELED', error_message = :reason,
    ended_at = :now
WHERE campaign = :campaign AND status = 'queued';

-- name: is_do_not_call
SELECT number, reason FROM do_not_call WHERE number = :number;

-- name: add_do_not_call
INSERT INTO do_not_call (number, reason, added_at) VALUES (:number, :reason, :now)
ON CONFLICT (number) DO NOTHING;

-- name: remove_do_not_call
DELETE FROM do_not_call WHERE number = :number;

-- name: list_do_not_call
SELECT number, reason, added_at FROM do_not_call WHERE number > :after
ORDER BY number LIMIT :limit;

-- name: count_queued
SELECT COUNT(*) AS n FROM attempts WHERE status = 'queued';

-- name: lock_dialing
-- Claims run one at a time across the fleet, so max_live_calls and the pace hold for all
-- daemons together. On SQLite, BEGIN IMMEDIATE already serialises every writer.
SELECT 1 AS locked;

-- name: lock_dialing@postgres
SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(7245001)) AS held;

-- name: get_pacing
SELECT * FROM pacing WHERE name = :bucket;

-- name: put_pacing
INSERT INTO pacing (name, tokens, updated_at, paused_until, reason, factor)
VALUES (:bucket, :tokens, :now, :paused_until, :reason, :factor)
ON CONFLICT (name) DO UPDATE
SET tokens = excluded.tokens, updated_at = excluded.updated_at,
    paused_until = excluded.paused_until, reason = excluded.reason, factor = excluded.factor;

-- name: update_attempt
-- Every column an attempt's progress can change, set at once from the engine's new row.
UPDATE attempts
SET status = :status, live = :live, ambiguous = :ambiguous,
    provider_call_id = :provider_call_id, provider_status = :provider_status,
    error_code = :error_code, error_message = :error_message, not_before = :not_before,
    lease_owner = :lease_owner, lease_until = :lease_until, duration = :duration,
    ended_at = :ended_at, agent_call_sid = :agent_call_sid, check_at = :check_at,
    checked_at = :checked_at, check_result = :check_result, checks = :checks,
    ending = :ending, settled_by = :settled_by, failures = :failures
WHERE id = :id;

-- name: try_lock_sweeper
-- The sweep of abandoned work runs on one daemon at a time (1 when this one may sweep).
SELECT 1 AS locked;

-- name: try_lock_sweeper@postgres
SELECT CASE WHEN pg_try_advisory_xact_lock(7245002) THEN 1 ELSE 0 END AS locked;

-- name: extend_attempt_lease
-- The heartbeat of a living daemon, for a placement it is still making (a lease is only ever
-- lengthened here). Work whose task died is not beaten for, so its lease runs out.
UPDATE attempts
SET lease_until = CASE WHEN lease_until < :lease_until THEN :lease_until ELSE lease_until END
WHERE id = :id AND lease_owner = :owner AND status = 'dialing' AND ambiguous = 0;

-- name: extend_delivery_lease
UPDATE deliveries
SET lease_until = CASE WHEN lease_until < :lease_until THEN :lease_until ELSE lease_until END
WHERE id = :id AND lease_owner = :owner AND state = 'pending';

-- name: notify
-- Wakes the other daemons when the transaction commits ('dial' or 'deliver'); SQLite has no
-- such thing and its daemons poll.
SELECT :topic AS topic;

-- name: notify@postgres
SELECT 1 AS sent FROM (SELECT pg_notify('orchestrator', CAST(:topic AS TEXT))) AS sent;

-- name: rescue_attempts
-- A placement whose daemon died mid-request: its outcome is unknown, so it is never resent
-- blindly; the provider's records are searched for it :grace seconds after it was sent.
UPDATE attempts
SET ambiguous = 1, lease_owner = NULL, lease_until = NULL,
    error_code = 'ABANDONED',
    error_message = 'the daemon stopped while placing this call; its outcome is unknown',
    check_at = placed_at + :grace
WHERE status = 'dialing' AND ambiguous = 0 AND lease_until < :now
RETURNING *;

-- name: release_attempts
UPDATE attempts
SET ambiguous = 1, lease_owner = NULL, lease_until = NULL,
    error_code = 'ABANDONED',
    error_message = 'the daemon stopped while placing this call; its outcome is unknown',
    check_at = placed_at + :grace
WHERE status = 'dialing' AND ambiguous = 0 AND lease_owner = :owner
RETURNING *;

-- name: due_checks
-- Live attempts whose look-up is due (index attempts_check_due), the most overdue first (an
-- attempt that must end now is due at 0). Locked, so two daemons never take the same one.
SELECT * FROM attempts
WHERE live = 1 AND check_at <= :now
ORDER BY check_at
LIMIT :limit
{skip_locked};

-- name: set_check_at
-- A look-up taken (its lease: due again at :check_at unless it is recorded first), given back,
-- or brought forward. Only a live attempt has look-ups.
UPDATE attempts SET check_at = :check_at WHERE id = :id AND live = 1;

-- name: get_live_attempt_by_number
SELECT * FROM attempts WHERE to_number = :to_number AND live = 1;

-- name: end_campaign_calls
-- A campaign canceled with hangup: its live attempts are looked up once more at once, and hung
-- up if the provider still has them live.
UPDATE attempts SET ending = 'canceled', check_at = 0
WHERE campaign = :campaign AND live = 1
RETURNING *;

-- name: lock_lookups
-- The look-up budget is spent one transaction at a time across the fleet (outside the dialing
-- lock, so look-ups never hold up a claim). SQLite's single writer serialises it already.
SELECT 1 AS locked;

-- name: lock_lookups@postgres
SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(7245003)) AS held;

-- name: insert_event
INSERT INTO events (id, call_id, attempt_id, type, occurred_at, dedupe_key, body)
VALUES (:id, :call_id, :attempt_id, :type, :occurred_at, :dedupe_key, :body)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING seq;

-- name: insert_event@postgres
-- A duplicate would still draw its seq from the sequence before ON CONFLICT drops it, leaving a
-- gap; NOT EXISTS skips the draw, and ON CONFLICT still settles a race.
INSERT INTO events (id, call_id, attempt_id, type, occurred_at, dedupe_key, body)
SELECT :id, :call_id, :attempt_id, :type, CAST(:occurred_at AS DOUBLE PRECISION), :dedupe_key,
       :body
WHERE NOT EXISTS (SELECT 1 FROM events WHERE dedupe_key = :dedupe_key)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING seq;

-- name: list_events
SELECT * FROM events WHERE call_id = :call_id ORDER BY seq;

-- name: get_event
SELECT * FROM events WHERE seq = :seq;

-- name: insert_delivery
INSERT INTO deliveries (id, event_seq, event_id, call_id, handler, state, tries, not_before,
                        updated_at)
VALUES (:id, :event_seq, :event_id, :call_id, :handler, 'pending', 0, :now, :now);

-- name: claim_deliveries
-- Only the head of each (call, handler) queue: deliveries stay in order per call per handler.
UPDATE deliveries
SET lease_owner = :owner, lease_until = :lease_until, tries = tries + 1
WHERE id IN (
    SELECT d.id FROM deliveries d
    WHERE d.handler = :handler AND d.state = 'pending' AND d.not_before <= :now
      AND (d.lease_until IS NULL OR d.lease_until < :now)
      AND NOT EXISTS (
          SELECT 1 FROM deliveries e
          WHERE e.call_id = d.call_id AND e.handler = d.handler AND e.state = 'pending'
            AND e.event_seq < d.event_seq)
    ORDER BY d.event_seq
    LIMIT :limit
    {skip_locked}
)
RETURNING *;


-- name: finish_delivery
-- state is 'done', 'pending' (retry at :not_before) or 'dead'; only the lease holder may.
UPDATE deliveries
SET state = :state, not_before = :not_before, last_error = :last_error,
    lease_owner = NULL, lease_until = NULL, updated_at = :now
WHERE id = :id AND lease_owner = :owner;

-- name: list_deliveries
SELECT * FROM deliveries
WHERE (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:handler AS TEXT) IS NULL OR handler = :handler)
ORDER BY event_seq, handler
LIMIT :limit;

-- name: replay_delivery
-- A dead letter goes back to the queue with a fresh count of tries.
UPDATE deliveries
SET state = 'pending', tries = 0, not_before = :now, last_error = NULL, lease_owner = NULL,
    lease_until = NULL, updated_at = :now
WHERE id = :id AND state = 'dead'
RETURNING *;

-- name: return_delivery
-- A delivery claimed ahead and never tried (its handler's circuit opened, or the handler was
-- disabled, meanwhile) goes back untried, due at :not_before.
UPDATE deliveries
SET lease_owner = NULL, lease_until = NULL, tries = tries - 1, not_before = :not_before,
    updated_at = :now
WHERE id = :id AND lease_owner = :owner AND state = 'pending';

-- name: release_deliveries
UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, tries = tries - 1
WHERE lease_owner = :owner AND state = 'pending';

-- name: insert_timer
INSERT INTO timers (id, kind, ref, due_at) VALUES (:id, :kind, :ref, :due_at)
ON CONFLICT (kind, ref) DO NOTHING;

-- name: next_due_timer
-- The earliest due timer, locked for the transaction that runs and deletes it; a daemon killed
-- half-way rolls back and the timer is simply still due.
SELECT * FROM timers
WHERE due_at <= :now
ORDER BY due_at
LIMIT 1
{skip_locked};

-- name: delete_timer
DELETE FROM timers WHERE kind = :kind AND ref = :ref;

-- name: next_timer
SELECT MIN(due_at) AS due_at FROM timers;

-- name: kv_get
SELECT value FROM plugin_kv WHERE scope = :scope AND key = :key;

-- name: kv_set
INSERT INTO plugin_kv (scope, key, value, updated_at) VALUES (:scope, :key, :value, :now)
ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: kv_delete
DELETE FROM plugin_kv WHERE scope = :scope AND key = :key;

-- name: insert_receipt
INSERT INTO receipts (id, received_at, attempt_id, outcome, body)
VALUES (:id, :now, NULL, 'received', :body)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: update_receipt
UPDATE receipts SET attempt_id = :attempt_id, outcome = :outcome WHERE id = :id;
