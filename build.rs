//! Rebuilds the crate when a migration file changes: `sqlx::migrate!` embeds the SQL at compile
//! time, and cargo does not otherwise notice new or edited files under `migrations/`.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
