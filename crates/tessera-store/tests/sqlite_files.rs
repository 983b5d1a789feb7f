//! What `SqliteStore::open` does with files that are not (healthy) Tessera stores, and with
//! paths it cannot use: a clear error naming the file and saying what to do, never a panic,
//! and never a change to somebody else's file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tessera_store::{Op, SqliteStore, Store, StoreError};

fn open_err(path: &Path) -> StoreError {
    match SqliteStore::open(path) {
        Ok(_) => panic!("opening {} must fail", path.display()),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_corrupt(err: &StoreError, path: &Path, detail: &str) {
    let p = path.display();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "expected Corrupt, got {err:?}"
    );
    assert!(
        msg.starts_with(&format!(
            "datastore {p} is corrupt or not a Tessera store: "
        )),
        "message must name the file: {msg}"
    );
    assert!(msg.contains(detail), "message must say {detail:?}: {msg}");
    assert!(
        msg.ends_with(&format!(
            "; move it away (for example `mv {p} {p}.broken`) or point --datastore \
             (or TESSERA_DATASTORE) elsewhere"
        )),
        "message must say what to do: {msg}"
    );
}

#[test]
fn text_file_is_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let text = "these are my notes, not a database\n".repeat(40);
    fs::write(&path, &text).unwrap();
    let err = open_err(&path);
    assert_corrupt(&err, &path, "the file is not a SQLite database");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        text,
        "the file must not be modified"
    );
    assert!(
        !dir.path().join("notes.db-wal").exists(),
        "no WAL may be created next to it"
    );
}

#[test]
fn short_garbage_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    fs::write(&path, b"\x00\xffgarbage").unwrap();
    assert_corrupt(&open_err(&path), &path, "not a SQLite database");
}

#[test]
fn random_bytes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let mut x: u32 = 0x9E37_79B9;
    let bytes: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    fs::write(&path, &bytes).unwrap();
    assert_corrupt(&open_err(&path), &path, "not a SQLite database");
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn another_programs_sqlite_database_is_refused_and_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann');")
            .unwrap();
    }
    let before = fs::read(&path).unwrap();
    let err = open_err(&path);
    assert_corrupt(
        &err,
        &path,
        "it is a SQLite database of another program (it has tables but no Tessera `meta` table)",
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the foreign database must not change"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        mode, "delete",
        "the foreign database must not be switched to WAL"
    );
}

#[test]
fn foreign_meta_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE meta (k TEXT, v TEXT);")
        .unwrap();
    assert_corrupt(
        &open_err(&path),
        &path,
        "it has a `meta` table that is not Tessera's",
    );
}

#[test]
fn wrong_format_marker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE meta SET format = 'other-tool'", [])
        .unwrap();
    assert_corrupt(
        &open_err(&path),
        &path,
        "its format marker is \"other-tool\", expected \"tessera-store\"",
    );
}

#[test]
fn newer_schema_version_is_refused_with_upgrade_advice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE meta SET schema_version = 99", [])
        .unwrap();
    let err = open_err(&path);
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "datastore {} refused the request: it was written by a newer Tessera (store schema \
             version 99, this binary understands up to {}); upgrade this binary",
            path.display(),
            tessera_store::SCHEMA_VERSION
        )
    );
}

/// A store with enough data to span many pages, checkpointed and closed, so that the database
/// file alone holds everything.
fn populated_store(path: &Path) -> u64 {
    let store = SqliteStore::open(path).unwrap();
    for chunk in 0..10 {
        let ops: Vec<Op> = (0..20)
            .map(|i| Op::Put(format!("/k/{chunk}/{i}"), vec![b'v'; 1500]))
            .collect();
        store.txn(&[], &ops).unwrap();
    }
    store.checkpoint().unwrap();
    drop(store);
    let wal = fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    assert_eq!(wal, 0);
    fs::metadata(path).unwrap().len()
}

/// Opens and reads everything, returning the first error.
fn open_and_read_all(path: &Path) -> Result<(), StoreError> {
    let store = SqliteStore::open(path)?;
    store.range("")?;
    store.integrity_check()
}

#[test]
fn damaged_pages_are_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let len = populated_store(&path);
    let mut bytes = fs::read(&path).unwrap();
    // Scribble over pages in the middle of the file, leaving the header and schema intact.
    let (start, end) = (len as usize / 3, len as usize / 3 * 2);
    bytes[start..end].fill(0xA5);
    fs::write(&path, &bytes).unwrap();
    let err = open_and_read_all(&path).expect_err("a damaged store must not read cleanly");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn truncated_store_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let len = populated_store(&path);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = open_and_read_all(&path).expect_err("a truncated store must not read cleanly");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn empty_existing_file_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    fs::write(&path, b"").unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.read(&[]).unwrap().revision,
        0,
        "a new store starts at revision 0"
    );
    assert_eq!(store.describe(), format!("sqlite:{}", path.display()));
}

#[test]
fn directory_as_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_err(dir.path());
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let p = dir.path().display();
    assert_eq!(
        err.to_string(),
        format!(
            "datastore {p} refused the request: opening the database file: the path is a \
             directory; point --datastore at a file, for example {p}/tessera.db"
        )
    );
}

#[test]
fn parent_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("plain-file");
    fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("sub").join("tessera.db");
    let err = open_err(&path);
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("datastore {} ", path.display())),
        "{msg}"
    );
    assert!(
        msg.contains(&blocker.display().to_string()),
        "must name the blocker: {msg}"
    );
    assert!(msg.contains("point --datastore"), "{msg}");
}

#[test]
fn relative_path_is_reported_absolute() {
    let store_dir = tempfile::tempdir_in(".").unwrap();
    let name = store_dir.path().file_name().unwrap().to_str().unwrap();
    let store = SqliteStore::open(format!("{name}/t.db")).unwrap();
    assert!(store.path().is_absolute());
    assert_eq!(
        store.path(),
        std::env::current_dir().unwrap().join(name).join("t.db")
    );
    assert!(store.describe().starts_with("sqlite:/"));
}

const UNPRIVILEGED_CHILD: &str = "TESSERA_TEST_UNPRIVILEGED_DIR";
const CHECKED: &str = "unprivileged checks ran";

/// Checks run by a user who may not touch the store: `dir/tessera.db` is unreadable to them
/// and `dir` is not writable.
fn check_as_unprivileged(dir: &Path) {
    let path = dir.join("tessera.db");
    let err = open_err(&path);
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "datastore {} refused the request: opening the database file: Permission denied",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("run as the user that owns the file"), "{msg}");

    let fresh = dir.join("new.db");
    let err = open_err(&fresh);
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "datastore {} refused the request: creating the database file: Permission denied",
            fresh.display()
        )),
        "{msg}"
    );
    println!("{CHECKED}");
}

#[test]
fn unreadable_file_and_unwritable_directory_are_refused() {
    if let Ok(dir) = std::env::var(UNPRIVILEGED_CHILD) {
        return check_as_unprivileged(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path().join("tessera.db")).unwrap());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fs::set_permissions(
            dir.path().join("tessera.db"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
        check_as_unprivileged(dir.path());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        return;
    }
    // Root reads every file, so the checks run in a child that dropped to `nobody`, against a
    // directory it may enter but not write, holding root's 0600 store.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::os::unix::process::CommandExt::gid(
        std::os::unix::process::CommandExt::uid(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "unreadable_file_and_unwritable_directory_are_refused",
                    "--nocapture",
                ])
                .env(UNPRIVILEGED_CHILD, dir.path()),
            65534,
        ),
        65534,
    )
    .output()
    .expect("running the check as user nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(CHECKED),
        "unprivileged child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Overwrites the one page of the table (not of its index) that holds `key`'s record, and
/// returns the page's number and its original bytes.
fn damage_page_holding(path: &Path, key: &str) -> (usize, Vec<u8>) {
    const PAGE: usize = 4096;
    let mut bytes = fs::read(path).unwrap();
    let holds = |page: &[u8], needle: &[u8]| page.windows(needle.len()).any(|w| w == needle);
    let n = (1..bytes.len() / PAGE)
        .find(|&n| {
            let page = &bytes[n * PAGE..(n + 1) * PAGE];
            holds(page, key.as_bytes()) && holds(page, &[b'v'; 64])
        })
        .expect("a table page holding the key");
    let original = bytes[n * PAGE..(n + 1) * PAGE].to_vec();
    bytes[n * PAGE..(n + 1) * PAGE].fill(0xA5);
    fs::write(path, &bytes).unwrap();
    (n, original)
}

#[track_caller]
fn assert_refused_as_damaged(result: Result<tessera_store::TxnOutcome, StoreError>, path: &Path) {
    let err = result.expect_err("a store known to be damaged must take no write");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let p = path.display();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "datastore {p} is corrupt or not a Tessera store: SQLite found damaged pages in \
             it, so it takes no more writes"
        )),
        "{msg}"
    );
    assert!(msg.contains("restore it from a backup"), "{msg}");
    assert!(
        msg.contains(&format!("sqlite3 {p} .recover | sqlite3 {p}.recovered")),
        "{msg}"
    );
}

#[test]
fn a_store_found_damaged_takes_no_more_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    populated_store(&path);
    let (page, original) = damage_page_holding(&path, "/k/1/3");

    let store = SqliteStore::open(&path).unwrap();
    // Records on healthy pages still read, and until the damage shows, writes go through.
    assert!(store.get("/k/9/19").unwrap().is_some());
    // A read across the damaged page (as `tessera ipam show` or `check` does) finds it...
    let err = store
        .range("/k/")
        .expect_err("the damaged page must not read");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // ...and from then on no write goes into the file, from this process or any other.
    let put = [Op::Put("/blocks/other-node".into(), b"{}".to_vec())];
    assert_refused_as_damaged(store.txn(&[], &put), &path);
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    assert_refused_as_damaged(again.txn(&[], &put), &path);
    assert!(again.get("/k/9/19").unwrap().is_some(), "reads still work");
    assert!(again.get("/blocks/other-node").unwrap().is_none());
    drop(again);

    // A file that passes SQLite's integrity check again (here: the page put back, as a
    // recovery or a restored backup would) takes writes again.
    let mut bytes = fs::read(&path).unwrap();
    bytes[page * 4096..(page + 1) * 4096].copy_from_slice(&original);
    fs::write(&path, &bytes).unwrap();
    let repaired = SqliteStore::open(&path).unwrap();
    repaired.txn(&[], &put).unwrap();
    repaired.integrity_check().unwrap();
    assert_eq!(repaired.range("/k/").unwrap().len(), 200);
}

#[test]
fn a_failed_integrity_check_stops_writes_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    populated_store(&path);
    damage_page_holding(&path, "/k/4/7");
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        store.integrity_check(),
        Err(StoreError::Corrupt { .. })
    ));
    let put = [Op::Put("/x".into(), b"1".to_vec())];
    assert_refused_as_damaged(store.txn(&[], &put), &path);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_store_in_a_directory_others_may_write_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let path = shared.join("tessera.db");
    drop(SqliteStore::open(&path).unwrap());
    for (mode, who) in [(0o777, "its group and others"), (0o775, "its group")] {
        chmod(&shared, mode);
        let err = open_err(&path);
        assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "datastore {} refused the request: its directory {} is writable by {who} \
                 (mode {mode:04o}), so another user could replace the store or plant its \
                 -wal and -shm files; keep the store in a directory only its owner can write \
                 (`chmod go-w {}`)",
                path.display(),
                shared.display(),
                shared.display()
            )
        );
    }
    // Readable by everyone is fine, and so is a shared directory with the sticky bit (as
    // /tmp) as long as every file of the store is this user's.
    for mode in [0o755, 0o1777] {
        chmod(&shared, mode);
        SqliteStore::open(&path).unwrap();
    }
}

#[test]
fn files_planted_by_another_user_in_a_sticky_directory_are_refused() {
    if !is_root() {
        // Only root can give a file away.
        return;
    }
    for planted in ["tessera.db-wal", "tessera.db-shm", "tessera.db"] {
        let top = tempfile::tempdir().unwrap();
        let shared = top.path().join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        let path = shared.join("tessera.db");
        let file = shared.join(planted);
        fs::write(&file, b"").unwrap();
        chmod(&file, 0o666);
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let err = open_err(&path);
        assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "datastore {} refused the request: {} belongs to uid 65534, and its directory \
                 {} may be written by others (mode 1777), so that user could have planted it; \
                 remove it, and keep the store in a directory only its owner can write",
                path.display(),
                file.display(),
                shared.display()
            ),
            "{planted}"
        );
    }
}

#[test]
fn a_link_to_a_store_in_a_directory_others_may_write_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let target = shared.join("tessera.db");
    drop(SqliteStore::open(&target).unwrap());
    chmod(&shared, 0o777);
    let private = top.path().join("private");
    fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let link = private.join("tessera.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = open_err(&link);
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "its directory {} is writable by its group and others",
            shared.display()
        )),
        "{err}"
    );
}
