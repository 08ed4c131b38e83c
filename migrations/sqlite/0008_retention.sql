-- Retention (docs/operations.md, "Retention"): the pruner reaches old rows of finished work
-- through these indexes instead of scanning the tables, and deleting an outbox row finds its
-- attempts (the foreign key's cascade) without a scan.

CREATE INDEX rollback_steps_updated_at ON rollback_steps (updated_at);
CREATE INDEX webhook_outbox_delivered ON webhook_outbox (delivered_at) WHERE state = 'delivered';
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery);

-- The rollback claim reads the few rollbacks that need a worker, in claim order. Finished
-- rollbacks are never deleted, so without this it would walk `seq` past all of them. The list
-- is the claim's (`WORKABLE_SQL` in src/store/common.rs; a planner uses the index only while
-- they match).
CREATE INDEX rollbacks_workable ON rollbacks (seq)
    WHERE status IN ('accepted', 'preparing', 'executing');

-- The webhook claim reads pending events in claim order; delivered ones are the bulk of the
-- table (until retention removes them) and are never claimed again.
CREATE INDEX webhook_outbox_pending ON webhook_outbox (seq) WHERE state = 'pending';
