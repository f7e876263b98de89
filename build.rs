//! Rebuilds when a migration is added or removed: `sqlx::migrate!` embeds the `migrations/`
//! folder at compile time, and cargo does not watch that folder on its own.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
