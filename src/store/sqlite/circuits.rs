//! [`CircuitStore`](crate::store::CircuitStore) for SQLite: reads on the reader pool, the
//! compare-and-set writes on the single writer connection.

super::super::circuits::circuit_store_for!(super::SqliteStore, reader: reader, writer: writer);
