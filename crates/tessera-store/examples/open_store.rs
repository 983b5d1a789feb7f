//! Opens each datastore URL given on the command line and prints its description, revision
//! and key count, or the error exactly as users would see it.
//!
//! ```text
//! cargo run -p tessera-store --example open_store -- /tmp/t.db memory etcd://127.0.0.1:2379
//! ```

fn main() {
    let mut failed = false;
    for url in std::env::args().skip(1) {
        match tessera_store::open(&url).and_then(|store| {
            let snap = store.read(&[tessera_store::Read::Prefix(String::new())])?;
            Ok((store.describe(), snap.revision, snap.list(0).len()))
        }) {
            Ok((describe, revision, keys)) => {
                println!("{url}: {describe} at revision {revision}, {keys} keys")
            }
            Err(e) => {
                failed = true;
                println!("{url}: error: {e}");
            }
        }
    }
    std::process::exit(i32::from(failed));
}
