//! [`KeyStore`](crate::store::keys::KeyStore) for PostgreSQL: the shared statements on the one
//! pool.

super::super::keys::key_store_for!(super::PgStore, reader: pool, writer: pool);
