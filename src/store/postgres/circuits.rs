//! [`CircuitStore`](crate::store::CircuitStore) for PostgreSQL: the shared statements on the
//! one pool.

super::super::circuits::circuit_store_for!(super::PgStore, reader: pool, writer: pool);
