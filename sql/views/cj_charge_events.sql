-- cj_charge_events: one row per resource-consumption event in the outbox (a charge), attributed
-- to the CJ run it charged.
--
-- Entitlements charges the customer once per event it receives, and every outbox row becomes a
-- new event (the relay gives each a fresh event_id; docs/design.md §F7), so a run with two rows
-- was charged twice. A charge belongs to the run named by its `data.processing_id`, which
-- upstream sets to the CJ batch id (`str(cj_batch_uploads.id)`, docs/design.md §F6): never
-- count charges per BOS batch, whose legitimate re-runs are charged once each. Rule R1 of the
-- producers counts every row, published or not; only a published row has reached Entitlements.
--
-- Read by `cj-health-exporter charges` (exporter/commands/charges.py) under the read-only
-- role: the view runs with its owner's rights and shows a charge's facts only (who was
-- charged, how much, when), never the rest of an event.
--
-- Cost: one pass over the outbox's resource-consumption rows (upstream has no index on
-- event_type; this is a command a person runs, not the poll). A charge whose document cannot
-- be read (`unreadable`, see sql/views/cj_health_json.sql) or that names no run is its own
-- partition: it is never merged with another charge into a duplicate.

CREATE OR REPLACE VIEW cj_charge_events AS
SELECT
    c.outbox_id,
    c.processing_id,
    u.id AS cj_batch_id,
    COALESCE(u.bos_batch_id, c.aggregate_id) AS bos_batch_id,
    c.user_id,
    c.org_id,
    c.quantity,
    c.created_at,
    c.published_at,
    -- 1 for the run's first charge (the legitimate one), 2.. for the ones to refund.
    row_number() OVER run AS charge_number,
    count(*) OVER (PARTITION BY c.run_key) AS run_charges,
    c.unreadable
FROM (
    SELECT
        o.id AS outbox_id,
        o.aggregate_id,
        o.created_at,
        o.published_at,
        d.doc -> 'data' ->> 'processing_id' AS processing_id,
        COALESCE(d.doc -> 'data' ->> 'processing_id', 'outbox:' || o.id::text) AS run_key,
        d.doc -> 'data' ->> 'user_id' AS user_id,
        d.doc -> 'data' ->> 'org_id' AS org_id,
        -- A quantity that is not what the contract allows (a whole number >= 0) is unknown,
        -- never 0 and never an error: a cast of any JSON number could overflow (1e200000),
        -- so only plain digits are cast, as in cj_batch_health's charged quantity.
        CASE WHEN d.doc #>> '{data,quantity}' ~ '^[0-9]{1,15}$'
             AND json_typeof(d.doc -> 'data' -> 'quantity') = 'number'
             THEN (d.doc #>> '{data,quantity}')::numeric END AS quantity,
        d.doc IS NULL AS unreadable  -- event_data is NOT NULL
    FROM event_outbox AS o
    CROSS JOIN LATERAL (SELECT cj_health_json(o.event_data) AS doc OFFSET 0) AS d
    WHERE o.event_type = 'huleedu.resource.consumption.v1'
) AS c
LEFT JOIN cj_batch_uploads AS u
    ON u.id = CASE WHEN c.processing_id ~ '^[0-9]{1,9}$' THEN c.processing_id::integer END
WINDOW run AS (PARTITION BY c.run_key ORDER BY c.created_at, c.outbox_id);

COMMENT ON VIEW cj_charge_events IS
    'cj-health-exporter: one row per resource-consumption outbox event, attributed to its CJ run';
