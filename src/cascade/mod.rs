//! Cascade detection over the ingested ledger (design.md §10, the cascade draft's "Cascade
//! Detection"): incremental, on ingest. The ledger hands every appended error node and
//! `circuit_breaker_open` report to a bounded queue ([`DetectionQueue`]); one task per process
//! ([`CascadeDetector`]) reads the new node's neighbourhood from the store, runs the pure
//! pattern checks of [`detect`], and raises each cascade once: an alert row (unique per pattern
//! and root cause, so replicas agree) and a signed `cascade_detected` ECT in the root cause's
//! workflow.

pub mod detect;
mod detector;

pub use detect::{Detection, Node, Pattern};
pub use detector::{CascadeDetector, CascadeSettings, DetectionQueue, RaisedAlert};
