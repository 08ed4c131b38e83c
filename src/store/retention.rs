//! Retention: deleting the operational rows of finished work once they are old enough
//! (docs/operations.md, "Retention"). One trait ([`RetentionStore`], required by
//! [`super::Store`]), implemented in `postgres/retention.rs` and `sqlite/retention.rs` with the
//! same behaviour.
//!
//! Only two kinds of rows go: the steps of finished rollbacks (the rollback row itself, with
//! its status and evidence, stays for the audit export) and delivered webhook events with
//! their attempts. The ledger (`ects`, `ect_edges`, `ledger_chain`) is append-only and never
//! touched; pending deliveries and running rollbacks never match.
//!
//! Each call deletes at most `limit` rows in one short statement (or transaction), so a prune
//! never holds locks for long; the caller repeats until a call deletes fewer. Ages come from
//! the store's clock, as leases do. Several replicas may prune at once: PostgreSQL's
//! `SKIP LOCKED` gives each other rows, SQLite's single writer runs them one after the other.

use std::time::Duration;

use super::StoreError;

/// Rollback statuses that never change again, as stored (see
/// [`crate::rollback::model::RollbackStatus::is_terminal`]).
pub(crate) const FINISHED: &str = "'completed', 'partial', 'failed', 'aborted', 'superseded'";

/// What one call of [`RetentionStore::prune_webhook_deliveries`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedDeliveries {
    /// Outbox rows (one event for one webhook).
    pub events: u64,
    /// Their recorded attempts.
    pub attempts: u64,
}

/// Pruning of operational rows. Implemented by every [`super::Store`].
#[async_trait::async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes up to `limit` steps of finished rollbacks whose rollback and step were last
    /// written more than `older_than` ago; returns how many. A superseded rollback's steps are
    /// kept while the rollback that superseded it still runs (it reuses what they undid).
    async fn prune_rollback_steps(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Deletes up to `limit` webhook events delivered more than `older_than` ago, with their
    /// attempts. Pending events are never deleted, however old.
    async fn prune_webhook_deliveries(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PrunedDeliveries, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::FINISHED;
    use crate::rollback::model::ALL_STATUSES;

    #[test]
    fn finished_lists_exactly_the_terminal_statuses() {
        for status in ALL_STATUSES {
            let name = status.as_str();
            assert_eq!(
                FINISHED.contains(&format!("'{name}'")),
                status.is_terminal(),
                "{name}"
            );
        }
    }
}
