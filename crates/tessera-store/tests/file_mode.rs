//! The store file is 0600 and the directories created for it 0700, whatever the umask.
//!
//! The umask is process-wide, so this file holds a single test that changes it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tessera_store::{Op, SqliteStore, Store};

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn check_modes_under_umask(umask: libc::mode_t) {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("var");
    let db = top.join("lib").join("tessera").join("tessera.db");
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(umask) };
    let opened = SqliteStore::open(&db);
    // Restore before asserting so a failure does not leak the umask into the report.
    unsafe { libc::umask(old) };
    let store = opened.unwrap_or_else(|e| panic!("open under umask {umask:o}: {e}"));
    assert_eq!(mode(&db), 0o600, "database file under umask {umask:o}");
    for created in [&top, &top.join("lib"), &top.join("lib").join("tessera")] {
        assert_eq!(
            mode(created),
            0o700,
            "{} under umask {umask:o}",
            created.display()
        );
    }
    // SQLite creates the -wal and -shm files on first write; they hold the same data and must
    // be just as private.
    store
        .txn(&[], &[Op::Put("/k".into(), b"v".to_vec())])
        .expect("the owner can write even under a restrictive umask");
    for suffix in ["-wal", "-shm"] {
        let side = Path::new(&format!("{}{suffix}", db.display())).to_path_buf();
        assert_eq!(
            mode(&side),
            0o600,
            "{} under umask {umask:o}",
            side.display()
        );
    }
    // An existing directory keeps its mode: only what the store created is tightened.
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    drop(SqliteStore::open(shared.join("t.db")).unwrap());
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&shared.join("t.db")), 0o600);
}

#[test]
fn file_is_0600_and_created_dirs_0700_under_any_umask() {
    check_modes_under_umask(0o000);
    check_modes_under_umask(0o022);
    // Strips the owner's write bit: the store must still end up writable by its owner.
    check_modes_under_umask(0o277);
}
