#!/usr/bin/env bash
# Query plans at scale: fills a scratch PostgreSQL database with a generated ledger of N rows
# (plus rollbacks, steps, webhook events and attempts in proportion), then runs
# EXPLAIN (ANALYZE, BUFFERS) on every hot query the PostgreSQL store issues, with parameters
# taken from the middle of the generated data. The summary is in docs/benchmarks.md,
# "Query plans at scale".
#
#   scripts/explain-at-scale.sh [ROWS]          # default 1000000; 100000000 for the full size
#
# Environment:
#   PG_URL       server to use (default postgres://postgres@127.0.0.1:5432/postgres); its role
#                must be able to create databases
#   SCRATCH_DB   name of the scratch database (default unwind_explain); dropped first if it
#                exists, and dropped again at the end unless KEEP=1
#   OUT          file the plans are written to (default explain-<ROWS>.txt)
#   EXPLAIN_ONLY=1  skip the generation and explain against SCRATCH_DB as it is (generated
#                before with the same ROWS and KEEP=1)
#
# The schema comes from migrations/postgres/*.sql, applied in order, so the plans are those of
# the indexes the service creates. The scratch tables are UNLOGGED and their indexes are built
# after the bulk load (both only make generation faster; plans and index shapes are the same).
set -euo pipefail

ROWS=${1:-1000000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SCRATCH_DB=${SCRATCH_DB:-unwind_explain}
OUT=${OUT:-explain-${ROWS}.txt}
HERE=$(cd "$(dirname "$0")/.." && pwd)

case $ROWS in
  '' | *[!0-9]*) echo "ROWS must be a number, got '$ROWS'" >&2; exit 2 ;;
esac
if [ "$ROWS" -lt 100000 ]; then
  echo "ROWS must be at least 100000" >&2
  exit 2
fi

DB_URL="${PG_URL%/*}/${SCRATCH_DB}"
psql_admin() { psql "$PG_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_db() { psql "$DB_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
stamp() { date -u +%H:%M:%S; }

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    psql_admin -c "DROP DATABASE IF EXISTS ${SCRATCH_DB}" || true
  fi
}
trap cleanup EXIT

# The shape of the generated ledger. Workflows run 50 at a time, interleaved (as concurrent
# workflows are in a real ledger): each has NODES nodes spread over 50 * NODES rows.
NODES=200
CONCURRENT=50
WORKFLOWS=$(( (ROWS + NODES - 1) / NODES ))
ROLLBACKS=$(( ROWS / 1000 ))
EVENTS=$(( ROWS / 500 ))

if [ "${EXPLAIN_ONLY:-0}" = 1 ]; then
  START=0 END=0
else
psql_admin -c "DROP DATABASE IF EXISTS ${SCRATCH_DB}"
psql_admin -c "CREATE DATABASE ${SCRATCH_DB}"

echo "$(stamp) schema from migrations/postgres"
for f in "$HERE"/migrations/postgres/*.sql; do
  psql_db -f "$f"
done

echo "$(stamp) generating $ROWS ledger rows in $WORKFLOWS workflows"
START=$(date +%s)
psql_db <<SQL
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';
SET max_parallel_maintenance_workers = 2;

-- Index and constraint definitions of the bulk-loaded tables, rebuilt after the load.
CREATE TEMP TABLE saved_index AS
  SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def,
         c.conname, c.conrelid::regclass::text AS tab, pg_get_constraintdef(c.oid) AS condef
  FROM pg_index i
  LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype IN ('p', 'u')
  WHERE i.indrelid::regclass::text IN ('ects', 'ect_edges', 'ledger_chain', 'workflows',
                                       'workflow_agents');
DO \$\$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM saved_index WHERE conname IS NOT NULL LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tab, r.conname);
  END LOOP;
  FOR r IN SELECT * FROM saved_index WHERE conname IS NULL LOOP
    EXECUTE format('DROP INDEX %s', r.name);
  END LOOP;
END
\$\$;
ALTER TABLE ects SET UNLOGGED;
ALTER TABLE ect_edges SET UNLOGGED;
ALTER TABLE ledger_chain SET UNLOGGED;
ALTER TABLE workflows SET UNLOGGED;
ALTER TABLE workflow_agents SET UNLOGGED;

-- Row i belongs to workflow w(i), as its k(i)-th node; its parents are the workflow's
-- previous node and, every fifth node, one or two more (fan-in). Every 20th node is a
-- checkpoint, every 97th an error report.
CREATE FUNCTION g_wid(i bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS
  \$\$ SELECT ((i - 1) / ($NODES * $CONCURRENT)) * $CONCURRENT + (i - 1) % $CONCURRENT \$\$;
CREATE FUNCTION g_k(i bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS
  \$\$ SELECT ((i - 1) % ($NODES * $CONCURRENT)) / $CONCURRENT \$\$;
CREATE FUNCTION g_jti(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
  \$\$ SELECT 'urn:uuid:' || md5(i::text)::uuid::text \$\$;
CREATE FUNCTION g_act(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS \$\$
  SELECT CASE WHEN g_k(i) % 20 = 0 THEN 'checkpoint'
              WHEN i % 97 = 0 THEN 'error'
              ELSE 'act_' || (i % 12) END \$\$;
CREATE FUNCTION g_parents(i bigint) RETURNS bigint[] IMMUTABLE LANGUAGE sql AS \$\$
  SELECT CASE WHEN g_k(i) = 0 THEN ARRAY[]::bigint[]
              WHEN g_k(i) % 5 = 0 AND g_k(i) >= 5
                THEN ARRAY[i - $CONCURRENT, i - 2 * $CONCURRENT, i - 5 * $CONCURRENT]
              WHEN g_k(i) % 5 = 3 AND g_k(i) >= 2
                THEN ARRAY[i - $CONCURRENT, i - 2 * $CONCURRENT]
              ELSE ARRAY[i - $CONCURRENT] END \$\$;

INSERT INTO ects (seq, jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, ext, token,
                  kid, content_hash, received_at)
OVERRIDING SYSTEM VALUE
SELECT i, g_jti(i), 'wf-' || g_wid(i),
       'spiffe://example.com/agent/a' || ((g_wid(i) * 7 + g_k(i) % 5) % 1000),
       NULL, g_act(i),
       (SELECT coalesce(jsonb_agg(g_jti(p)), '[]'::jsonb) FROM unnest(g_parents(i)) p),
       1767225600 + i / 10, 1767225600 + i / 10 + 600, md5((i * 3)::text),
       CASE WHEN g_act(i) = 'checkpoint'
            THEN jsonb_build_object('rollback_uri', 'https://agent.example/rollback',
                                    'reversible', true)
            ELSE '{}'::jsonb END,
       -- About the size of a real compact JWS (header, claims, ES256 signature).
       'eyJhbGciOiJFUzI1NiIsInR5cCI6IndpbXNlLWV4ZWMrand0In0.' || repeat(md5(i::text), 14)
         || '.' || md5((i + 1)::text) || md5((i + 2)::text),
       'agent-key-1', md5(i::text) || md5((i + 7)::text),
       to_timestamp(1767225600 + i / 10)
FROM generate_series(1, $ROWS) i;

INSERT INTO ect_edges (parent, child, wid)
SELECT g_jti(p), g_jti(i), 'wf-' || g_wid(i)
FROM generate_series(1, $ROWS) i, unnest(g_parents(i)) p;

INSERT INTO ledger_chain (seq, jti, chain_hash)
SELECT i, g_jti(i), md5((i * 5)::text) || md5((i * 11)::text) FROM generate_series(1, $ROWS) i;
UPDATE ledger_head SET seq = $ROWS, chain_hash = md5(($ROWS * 5)::text) || md5(($ROWS * 11)::text),
  backfill = false;
SELECT setval(pg_get_serial_sequence('ects', 'seq'), $ROWS);

INSERT INTO workflows (wid, first_seen, last_seen, nodes, checkpoints)
SELECT 'wf-' || w, to_timestamp(1767225600), to_timestamp(1767225600 + $ROWS / 10),
       $NODES, $NODES / 20
FROM generate_series(0, $WORKFLOWS - 1) w;
INSERT INTO workflow_agents (wid, iss)
SELECT 'wf-' || w, 'spiffe://example.com/agent/a' || ((w * 7 + a) % 1000)
FROM generate_series(0, $WORKFLOWS - 1) w, generate_series(0, 4) a
ON CONFLICT DO NOTHING;

DO \$\$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM saved_index WHERE conname IS NOT NULL LOOP
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.tab, r.conname, r.condef);
  END LOOP;
  FOR r IN SELECT * FROM saved_index WHERE conname IS NULL LOOP
    EXECUTE r.def;
  END LOOP;
END
\$\$;

-- Operational rows: one rollback per 1000 ledger rows (the newest 1% still running, the rest
-- finished, half of those more than 30 days ago), ten steps each; one webhook event per 500
-- rows (the newest 1% pending), one to three attempts each. Work still to do is the newest,
-- as in a real database: a query walking claim order from the start would cross all the rest.
INSERT INTO rollbacks (rollback_id, wid, checkpoint_id, trigger_ect, scope, status,
                       requested_by, reason, on_cannot_prepare, request_hash, plan,
                       failed_agents, result, created_at, updated_at, version)
SELECT 'urn:uuid:' || md5('rb' || r)::uuid, 'wf-' || (r % $WORKFLOWS), g_jti(r * 1000),
       NULL, 'sub_dag',
       CASE WHEN r > $ROLLBACKS - $ROLLBACKS / 100
              THEN CASE WHEN r % 2 = 0 THEN 'executing' ELSE 'awaiting_decision' END
            WHEN r % 10 = 2 THEN 'partial' ELSE 'completed' END,
       'operator:ops', 'generated', 'escalate', md5('h' || r), '[]', '[]', '{}',
       now() - (($ROLLBACKS - r) * interval '1 minute') - interval '10 days',
       now() - (($ROLLBACKS - r) * interval '1 minute') - interval '10 days'
         - CASE WHEN r % 2 = 0 THEN interval '40 days' ELSE interval '0' END, 5
FROM generate_series(1, $ROLLBACKS) r;
INSERT INTO rollback_steps (rollback_id, checkpoint_id, agent, rollback_uri, rank, critical,
                            reversible, expired, waits_for, prepare_status, execute_status,
                            attempts, response, updated_at)
SELECT r.rollback_id, g_jti(r.seq * 1000 + s), 'spiffe://example.com/agent/a' || s,
       'https://agent.example/rollback', s, s = 0, true, false, '[]', 'prepared', 'undone', 1,
       '{"status":"undone"}', r.updated_at
FROM rollbacks r, generate_series(0, 9) s;
UPDATE rollbacks SET lease_owner = 'w1', lease_until = now() + interval '30 seconds'
WHERE status = 'executing';

INSERT INTO webhook_outbox (event_id, event_key, event_type, url, body, created_at, state,
                            attempts, next_attempt_at, delivered_at)
SELECT 'evt_' || md5('e' || e), 'rollback:' || e, 'rollback.partial',
       'https://hooks.example/unwind', repeat('{"x":"' || md5(e::text) || '"}', 20),
       now() - (($EVENTS - e) * interval '30 seconds') - interval '5 days',
       CASE WHEN e > $EVENTS - $EVENTS / 100 THEN 'pending' ELSE 'delivered' END, 1 + e % 3,
       now() - (($EVENTS - e) * interval '30 seconds') - interval '5 days',
       CASE WHEN e > $EVENTS - $EVENTS / 100 THEN NULL
            ELSE now() - (($EVENTS - e) * interval '30 seconds') - interval '5 days'
                 - CASE WHEN e % 2 = 0 THEN interval '40 days' ELSE interval '0' END END
FROM generate_series(1, $EVENTS) e;
INSERT INTO webhook_attempts (delivery, attempt, attempted_at, duration_ms, http_status)
SELECT o.seq, a, o.created_at, 20, CASE WHEN a = o.attempts THEN 200 ELSE 500 END
FROM webhook_outbox o, generate_series(1, 3) a WHERE a <= o.attempts;

INSERT INTO cascade_alerts (id, wid, pattern, root_cause_ect, affected_agents, blast_radius,
                            ect, token, recorded, detected_at)
SELECT 'urn:uuid:' || md5('ca' || c)::uuid, 'wf-' || (c % $WORKFLOWS), 'error_cluster',
       g_jti(c * 97), '[]', '[]', g_jti(c * 97 + 1), 'token', c % 50 <> 0, now()
FROM generate_series(1, $ROWS / 10000) c;

VACUUM (ANALYZE);
SQL
END=$(date +%s)
echo "$(stamp) generated in $((END - START)) s"
fi

# Parameters from the middle of the data.
MID=$(( ROWS / 2 ))
JTI=$(psql_db -c "SELECT jti FROM ects WHERE seq = $MID")
WID=$(psql_db -c "SELECT wid FROM ects WHERE seq = $MID")
ISS=$(psql_db -c "SELECT iss FROM ects WHERE seq = $MID")
# A node deep in its workflow (many ancestors), and a node with children.
DEEP=$(psql_db -c "SELECT jti FROM ects WHERE wid = '$WID' ORDER BY seq DESC LIMIT 1")
IAT=$(psql_db -c "SELECT iat FROM ects WHERE seq = $MID")
RB=$(psql_db -c "SELECT rollback_id FROM rollbacks ORDER BY seq OFFSET $(( ROLLBACKS / 2 )) LIMIT 1")
RB_WID=$(psql_db -c "SELECT wid FROM rollbacks WHERE rollback_id = '$RB'")

SIZES=$(psql_db -c "SELECT string_agg(relname || ' ' || pg_size_pretty(pg_total_relation_size(oid)), ', ' ORDER BY pg_total_relation_size(oid) DESC) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")

{
  echo "# EXPLAIN (ANALYZE, BUFFERS) at $ROWS ledger rows"
  if [ "${EXPLAIN_ONLY:-0}" = 1 ]; then
    echo "# generated earlier; $WORKFLOWS workflows, $ROLLBACKS rollbacks, $EVENTS webhook events"
  else
    echo "# generated in $((END - START)) s; $WORKFLOWS workflows, $ROLLBACKS rollbacks, $EVENTS webhook events"
  fi
  echo "# sizes: $SIZES"
} >"$OUT"

# explain NAME SQL [SETUP]: the plan of SQL, after SETUP (e.g. dropping an index to show the
# plan without it). Both run in a transaction that is rolled back, so every plan sees the same
# data and indexes.
explain() {
  local name=$1 sql=$2 setup=${3:-}
  echo "$(stamp) $name"
  {
    echo
    echo "## $name"
    echo "$sql"
    psql_db <<SQL
BEGIN;
$setup
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $sql;
ROLLBACK;
SQL
  } >>"$OUT"
}

ECT_COLUMNS="seq, jti, wid, iss, sub, exec_act, parents::text AS parents, iat, exp, out_hash, ext::text AS ext, token, kid, content_hash, received_at"
ROLLBACK_COLUMNS="seq, rollback_id, wid, checkpoint_id, trigger_ect, scope, status, requested_by, reason, on_cannot_prepare, request_hash, plan::text, failed_agents::text, superseded_by, evidence_start, evidence_complete, result::text, created_at, updated_at, version"
FINISHED="'completed', 'partial', 'failed', 'aborted', 'superseded'"
JTIS="ARRAY(SELECT g_jti(i) FROM generate_series($MID, $MID + 99) i)"

CLAIM_ROLLBACK="UPDATE rollbacks SET lease_owner = 'w2', lease_until = now() + interval '30 seconds', fence = fence + 1, version = version + 1, updated_at = now() WHERE rollback_id = (SELECT rollback_id FROM rollbacks WHERE status IN ('accepted', 'preparing', 'executing') AND (lease_until IS NULL OR lease_until <= now()) ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING rollback_id, lease_owner, fence, lease_until"
CLAIM_WEBHOOK="UPDATE webhook_outbox SET lease_owner = 'w2', lease_until = now() + interval '15 seconds' WHERE seq IN (SELECT seq FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now()) ORDER BY seq LIMIT 16 FOR UPDATE SKIP LOCKED) RETURNING seq, event_id, event_type, url, body, attempts"
PRUNE_STEPS="DELETE FROM rollback_steps WHERE ctid = ANY(ARRAY(SELECT s.ctid FROM rollback_steps s JOIN rollbacks r ON r.rollback_id = s.rollback_id WHERE s.updated_at < now() - 2592000000000::int8 * interval '1 microsecond' AND r.updated_at < now() - 2592000000000::int8 * interval '1 microsecond' AND r.status IN ($FINISHED) AND NOT EXISTS (SELECT 1 FROM rollbacks n WHERE n.rollback_id = r.superseded_by AND n.status NOT IN ($FINISHED)) ORDER BY s.updated_at LIMIT 1000 FOR UPDATE OF s SKIP LOCKED))"
PRUNE_WEBHOOKS="WITH doomed AS (SELECT seq FROM webhook_outbox WHERE state = 'delivered' AND delivered_at < now() - 2592000000000::int8 * interval '1 microsecond' ORDER BY delivered_at LIMIT 1000 FOR UPDATE SKIP LOCKED), gone_attempts AS (DELETE FROM webhook_attempts WHERE delivery = ANY(ARRAY(SELECT seq FROM doomed)) RETURNING 1), gone_events AS (DELETE FROM webhook_outbox WHERE seq = ANY(ARRAY(SELECT seq FROM doomed)) RETURNING 1) SELECT (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_attempts)"

explain "ECT by jti (get_ect)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE jti = '$JTI'"
explain "ECTs by jti list (find_meta, ingest's duplicate and parent check, 100 jtis)" \
  "SELECT jti, wid, iat, content_hash FROM ects WHERE jti = ANY($JTIS)"
explain "List ECTs, no filter, page in the middle (list_ects)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE TRUE AND seq > $MID ORDER BY seq LIMIT 101"
explain "List ECTs of one workflow (list_ects wid=, also the export)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE TRUE AND wid = '$WID' ORDER BY seq LIMIT 1001"
explain "List ECTs by exec_act (list_ects exec_act=)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE TRUE AND exec_act = 'checkpoint' AND seq > $MID ORDER BY seq LIMIT 101"
explain "List ECTs by issuer (list_ects iss=)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE TRUE AND iss = '$ISS' AND seq > $MID ORDER BY seq LIMIT 101"
explain "Workflow DAG nodes (workflow_nodes: DAG, blast radius, rollback planning)" \
  "SELECT jti, iss, exec_act, iat, parents::text AS parents, CASE WHEN exec_act = 'checkpoint' THEN ext::text END AS ext FROM ects WHERE wid = '$WID' ORDER BY seq"
explain "Children of a node (children_of)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE jti IN (SELECT child FROM ect_edges WHERE parent = '$JTI') ORDER BY seq LIMIT 1000"
explain "Ancestors of a node, depth 64 (ancestors_of, cascade root cause)" \
  "WITH RECURSIVE up(jti, depth) AS (SELECT parent, 1 FROM ect_edges WHERE child = '$DEEP' UNION SELECT e.parent, up.depth + 1 FROM ect_edges e JOIN up ON e.child = up.jti WHERE up.depth < 64) SELECT $ECT_COLUMNS FROM ects WHERE jti IN (SELECT jti FROM up LIMIT 10000)"
explain "Cascade window: reports of one kind near a time (ects_issued_between)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE exec_act = 'error' AND iat BETWEEN $IAT - 60 AND $IAT + 60 ORDER BY iat, jti LIMIT 1000"
explain "Newest 10000 positions (newest_ects, cascade catch-up at start)" \
  "SELECT $ECT_COLUMNS FROM ects WHERE seq > (SELECT coalesce(max(seq), 0) FROM ects) - 10000 ORDER BY seq"
explain "Chain head (chain_head; every append locks it FOR UPDATE)" \
  "SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1 FOR UPDATE"
explain "Chain entries of a page (chain_entries, the export)" \
  "SELECT c.seq, c.jti, c.chain_hash, p.chain_hash AS prev_hash FROM ledger_chain c LEFT JOIN ledger_chain p ON p.seq = c.seq - 1 WHERE c.jti = ANY($JTIS)"
explain "Chain range, proof of a stretch (chain_range)" \
  "SELECT c.seq, c.jti, c.chain_hash, p.chain_hash AS prev_hash, e.token FROM ledger_chain c LEFT JOIN ledger_chain p ON p.seq = c.seq - 1 LEFT JOIN ects e ON e.jti = c.jti WHERE c.seq > $MID ORDER BY c.seq LIMIT 1000"
explain "List workflows, page in the middle (list_workflows)" \
  "SELECT w.seq, w.wid, w.nodes, w.checkpoints, w.first_seen, w.last_seen, (SELECT count(*) FROM workflow_agents a WHERE a.wid = w.wid) AS agents FROM workflows w WHERE w.seq > $(( WORKFLOWS / 2 )) ORDER BY w.seq LIMIT 101"
explain "One workflow (get_workflow)" \
  "SELECT w.seq, w.wid, w.nodes, w.checkpoints, w.first_seen, w.last_seen, (SELECT count(*) FROM workflow_agents a WHERE a.wid = w.wid) AS agents FROM workflows w WHERE w.wid = '$WID'"
explain "Rollback claim (claim_next_rollback)" "$CLAIM_ROLLBACK"
explain "A rollback's steps (get_rollback)" \
  "SELECT * FROM rollback_steps WHERE rollback_id = '$RB' ORDER BY rank, checkpoint_id"
explain "A workflow's active rollbacks (create_rollback's decision context)" \
  "SELECT $ROLLBACK_COLUMNS FROM rollbacks WHERE wid = '$RB_WID' AND status IN ('accepted', 'preparing', 'executing', 'awaiting_decision') ORDER BY seq"
explain "List rollbacks of a workflow (list_rollbacks wid=, the export)" \
  "SELECT $ROLLBACK_COLUMNS FROM rollbacks WHERE TRUE AND wid = '$RB_WID' ORDER BY seq LIMIT 1001"
explain "Rollbacks awaiting a decision (list_rollbacks status=, the metrics gauges)" \
  "SELECT $ROLLBACK_COLUMNS FROM rollbacks WHERE TRUE AND status = 'awaiting_decision' ORDER BY seq LIMIT 1001"
explain "Webhook claim (claim_deliveries)" "$CLAIM_WEBHOOK"
explain "Webhook attempts, page in the middle (list_attempts)" \
  "SELECT a.seq, o.event_id, o.event_type, o.url, a.attempt, a.attempted_at, a.duration_ms, a.http_status, a.error, o.body FROM webhook_attempts a JOIN webhook_outbox o ON o.seq = a.delivery WHERE a.seq > $EVENTS ORDER BY a.seq LIMIT 101"
explain "Unrecorded cascade alerts (cascade recovery at start)" \
  "SELECT id FROM cascade_alerts WHERE NOT recorded ORDER BY seq LIMIT 1000"
explain "Retention: steps of finished rollbacks, one batch (prune_rollback_steps)" "$PRUNE_STEPS"
explain "Retention: delivered webhook events and attempts, one batch (prune_webhook_deliveries)" "$PRUNE_WEBHOOKS"

# The same statements without the indexes of migration 0008, for comparison.
explain "Before 0008: rollback claim without rollbacks_workable" "$CLAIM_ROLLBACK" \
  "DROP INDEX rollbacks_workable;"
explain "Before 0008: webhook claim without webhook_outbox_pending" "$CLAIM_WEBHOOK" \
  "DROP INDEX webhook_outbox_pending;"
explain "Before 0008: retention of steps without rollback_steps_updated_at" "$PRUNE_STEPS" \
  "DROP INDEX rollback_steps_updated_at;"
explain "Before 0008: retention of webhook events without webhook_attempts_delivery" \
  "$PRUNE_WEBHOOKS" "DROP INDEX webhook_attempts_delivery;"

echo "$(stamp) plans written to $OUT"
