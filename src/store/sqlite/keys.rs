//! [`KeyStore`](crate::store::keys::KeyStore) for SQLite: reads on the reader pool, writes on the
//! single writer connection.

super::super::keys::key_store_for!(super::SqliteStore, reader: reader, writer: writer);
