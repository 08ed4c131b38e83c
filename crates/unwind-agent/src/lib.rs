//! The agent side of the Unwind rollback protocol.
//!
//! Reserved: the prepare/execute endpoints, the checkpoint store and the reference agent
//! binary land here with the rollback coordination work.
