//! The embedded SQLite backend: one file on the local disk, shared by every Tessera process on
//! the host.
//!
//! Layout: a `kv` table (key, value, create_rev, mod_rev) and a one-row `meta` table holding the
//! format marker, the schema version and the global revision counter. Writes run inside
//! `BEGIN IMMEDIATE`, so the write lock is taken before the compares are evaluated and a txn can
//! never fail half-way with `SQLITE_BUSY` on lock upgrade; waiting for the lock is left to
//! SQLite's busy handler. Reads run inside one deferred transaction, which in WAL mode pins one
//! snapshot for the whole batch.
//!
//! A file in which SQLite reported damage (`SQLITE_CORRUPT` on a read or a write, or a failed
//! integrity check) is marked as such in its header (`PRAGMA user_version`, which only touches
//! the first page), and a marked file takes no more writes: writing into a damaged b-tree can
//! spread the damage to records that were still intact. Reads still work, to see what is
//! left. Checking the mark costs one header read per write, never a scan; opening a marked
//! file runs the full integrity check, and a file that passes it (recovered, or restored
//! from a backup that carried the mark) is unmarked.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use tessera_core::ownership::{effective_uid, others_who_may_write};

use crate::{Compare, KeyValue, Op, Read, ReadResult, Snapshot, Store, StoreError, TxnOutcome};

/// Value of `meta.format`; anything else means the file belongs to some other program.
const FORMAT_MARKER: &str = "tessera-store";

/// Highest schema this code reads and writes. Bump it (and add a migration path) when the
/// table layout changes; older binaries then refuse newer files instead of misreading them.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a process waits by default for another one to release the write lock. Txns are
/// short (well under a millisecond each), so ten seconds only runs out when something is stuck.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    revision INTEGER NOT NULL
) STRICT;
CREATE TABLE kv (
    key TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) STRICT;
";

/// `user_version` of a file in which SQLite reported damage ("DAMG"); healthy stores keep 0.
const DAMAGED_MARK: i64 = 0x4441_4D47;

const SQL_DAMAGE_MARK: &str = "PRAGMA user_version";
const SQL_REVISION: &str = "SELECT revision FROM meta WHERE id = 1";
const SQL_BUMP: &str = "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision";
const SQL_GET: &str = "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?1";
const SQL_RANGE: &str =
    "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key";
const SQL_RANGE_OPEN: &str =
    "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 ORDER BY key";
const SQL_PUT: &str = "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev";
const SQL_DELETE: &str = "DELETE FROM kv WHERE key = ?1";

/// A [`Store`] kept in one SQLite file (the default backend).
///
/// Many processes may open the same file at once; each txn is serialised by SQLite's write lock
/// and readers never block writers (WAL mode). Within a process the connection sits behind a
/// mutex, so one `SqliteStore` can be shared between threads.
pub struct SqliteStore {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (mode 0600) and any missing parent
    /// directories (mode 0700) when it does not exist yet.
    ///
    /// Fails with [`StoreError::Corrupt`] when the file is not a SQLite database or is another
    /// program's database, [`StoreError::Refused`] when it cannot be opened for reading and
    /// writing, and [`StoreError::Unavailable`] when another process holds it locked too long.
    /// A file that is not a Tessera store is never modified.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_busy_timeout(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Like [`SqliteStore::open`], waiting at most `busy_timeout` for other processes' locks
    /// (on open and on every txn) before failing with [`StoreError::Unavailable`].
    pub fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let given = path.as_ref();
        // Absolute so that `describe()` and every error name the file unambiguously, whatever
        // directory the caller later moves to.
        let path = std::path::absolute(given).map_err(|e| StoreError::Unavailable {
            endpoint: given.display().to_string(),
            reason: format!(
                "cannot resolve the path against the current directory ({e}); \
                 pass an absolute path instead"
            ),
        })?;
        ensure_file(&path)?;
        check_not_exposed(&path)?;
        // SQLite follows a link to the file and keeps the -wal and -shm files beside it.
        if let Some(target) = fs::canonicalize(&path).ok().filter(|t| *t != path) {
            check_not_exposed(&target)?;
        }
        let ctx = ErrCtx {
            path: &path,
            busy_timeout,
        };
        let mut conn = Connection::open_with_flags(
            &path,
            // No SQLITE_OPEN_CREATE: the file was created above with the right mode, and if it
            // vanished in between we would rather fail than let SQLite create it world-readable.
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| ctx.sqlite("opening the database", e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| ctx.sqlite("setting the busy timeout", e))?;
        let layout = inspect(&conn, &ctx)?;
        // Only now that the file is known to be ours (or empty) may its header change.
        set_wal(&conn, &ctx)?;
        // Safe with WAL: a power loss may drop the last commits but never corrupts the file,
        // and it saves an fsync on every txn.
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| ctx.sqlite("setting synchronous mode", e))?;
        keep_wal_between_connections(&conn, &ctx)?;
        if let Layout::Empty = layout {
            create_schema(&mut conn, &ctx)?;
        }
        unmark_if_repaired(&conn, &ctx)?;
        Ok(Self {
            path,
            busy_timeout,
            conn: Mutex::new(conn),
        })
    }

    /// Copies everything in the write-ahead log into the database file and empties the log,
    /// so that the database file alone holds the store (before copying it, say).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        truncate_wal(&conn).map_err(|e| self.ctx().sqlite("checkpointing the WAL", e))
    }

    /// The absolute path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs SQLite's `PRAGMA integrity_check` over the whole file; for `tessera ipam check`
    /// and tests. Returns [`StoreError::Corrupt`] listing the problems SQLite found; the file
    /// then takes no more writes until it passes again.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let ctx = self.ctx();
        let conn = self.lock();
        let problems =
            integrity_problems(&conn).map_err(|e| self.failed(&conn, "checking integrity", e))?;
        if problems.is_empty() {
            set_damage_mark(&conn, 0).map_err(|e| ctx.sqlite("clearing the damage mark", e))?;
            return Ok(());
        }
        let _ = set_damage_mark(&conn, DAMAGED_MARK);
        Err(ctx.damaged(&format!(
            "SQLite's integrity check failed ({})",
            problems.join("; ")
        )))
    }

    /// The error for a failure of `doing`, after marking the file damaged when SQLite says
    /// it is. Call it once the failed transaction has been rolled back.
    fn failed(&self, conn: &Connection, doing: &str, e: rusqlite::Error) -> StoreError {
        if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) {
            // Best effort: the mark lives on the first page, which the damage spared if
            // SQLite got far enough to report it.
            let _ = set_damage_mark(conn, DAMAGED_MARK);
        }
        self.ctx().sqlite(doing, e)
    }

    fn ctx(&self) -> ErrCtx<'_> {
        ErrCtx {
            path: &self.path,
            busy_timeout: self.busy_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held unwound through a rusqlite `Transaction`, whose drop
        // rolled back; the connection is therefore usable again.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        let mut conn = self.lock();
        let result = read_snapshot(&mut conn, reads);
        result.map_err(|e| self.failed(&conn, "reading", e))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let mut conn = self.lock();
        let result = write_txn(&mut conn, compares, ops);
        match result {
            Ok(Written::Done(outcome)) => {
                if matches!(outcome, TxnOutcome::Committed(_)) && !ops.is_empty() {
                    self.checkpoint_if_large(&conn);
                }
                Ok(outcome)
            }
            Ok(Written::RefusedDamaged) => {
                Err(self.ctx().damaged("SQLite found damaged pages in it"))
            }
            Err(e) => Err(self.failed(&conn, "writing", e)),
        }
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

/// One snapshot read of every request in `reads`.
fn read_snapshot(conn: &mut Connection, reads: &[Read]) -> rusqlite::Result<Snapshot> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    // The first SELECT starts the WAL read transaction; every later read in the batch sees
    // the same snapshot, so the revision read here covers all results.
    let revision = current_revision(&tx)?;
    let mut results = Vec::with_capacity(reads.len());
    for read in reads {
        results.push(match read {
            Read::Get(key) => get(&tx, key)?,
            Read::Prefix(prefix) => range(&tx, prefix)?,
        });
    }
    tx.commit()?;
    Ok(Snapshot { revision, results })
}

/// What a write transaction came to.
enum Written {
    /// Committed, or not because a compare failed.
    Done(TxnOutcome),
    /// The file is marked damaged; nothing was written.
    RefusedDamaged,
}

/// The compares, then the ops, in one transaction. Any error rolls it back.
fn write_txn(conn: &mut Connection, compares: &[Compare], ops: &[Op]) -> rusqlite::Result<Written> {
    // A compare-only txn writes nothing, so a snapshot is enough and it need not wait for
    // the write lock.
    let behavior = if ops.is_empty() {
        TransactionBehavior::Deferred
    } else {
        TransactionBehavior::Immediate
    };
    let tx = conn.transaction_with_behavior(behavior)?;
    if !ops.is_empty() && damage_mark(&tx)? == DAMAGED_MARK {
        return Ok(Written::RefusedDamaged);
    }
    for compare in compares {
        let current = tx
            .prepare_cached(SQL_GET)
            .and_then(|mut s| s.query_row([compare.key()], row_to_kv).optional())?;
        if !compare.holds(current.as_ref()) {
            // Dropping `tx` rolls back; nothing was written.
            return Ok(Written::Done(TxnOutcome::Conflict));
        }
    }
    if ops.is_empty() {
        let revision = current_revision(&tx)?;
        tx.commit()?;
        return Ok(Written::Done(TxnOutcome::Committed(revision)));
    }
    let revision: i64 = tx.prepare_cached(SQL_BUMP)?.query_row([], |r| r.get(0))?;
    for op in ops {
        match op {
            Op::Put(key, value) => tx
                .prepare_cached(SQL_PUT)?
                .execute(params![key, value, revision])?,
            Op::Delete(key) => tx.prepare_cached(SQL_DELETE)?.execute([key])?,
        };
    }
    tx.commit()?;
    Ok(Written::Done(TxnOutcome::Committed(revision)))
}

/// The damage mark in the file's header (0, or [`DAMAGED_MARK`]).
fn damage_mark(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(SQL_DAMAGE_MARK)?
        .query_row([], |r| r.get(0))
}

/// Sets the damage mark, unless it already has that value.
fn set_damage_mark(conn: &Connection, mark: i64) -> rusqlite::Result<()> {
    if damage_mark(conn)? != mark {
        conn.execute_batch(&format!("PRAGMA user_version = {mark}"))?;
    }
    Ok(())
}

/// What `PRAGMA integrity_check` found; empty when the file is sound.
fn integrity_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let problems = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if problems == ["ok"] {
        Vec::new()
    } else {
        problems
    })
}

/// Unmarks a file marked damaged that now passes the integrity check (it was recovered, or
/// restored from a backup that carried the mark). A file still damaged stays marked: it can
/// be read but takes no writes. Only marked files pay for the check.
fn unmark_if_repaired(conn: &Connection, ctx: &ErrCtx<'_>) -> Result<(), StoreError> {
    let mark = damage_mark(conn).map_err(|e| ctx.sqlite("reading the damage mark", e))?;
    if mark != DAMAGED_MARK {
        return Ok(());
    }
    match integrity_problems(conn) {
        Ok(problems) if problems.is_empty() => {
            set_damage_mark(conn, 0).map_err(|e| ctx.sqlite("clearing the damage mark", e))
        }
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) => Ok(()),
        Err(e) => Err(ctx.sqlite("checking the integrity of a file marked damaged", e)),
    }
}

/// Copies the WAL into the database and empties it, waiting for other connections within
/// the busy timeout.
fn truncate_wal(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// WAL size above which a committing connection copies the WAL back into the database. Every
/// process that opens the store first rebuilds its index of the WAL by reading it, so the WAL
/// is kept small; checkpointing costs a few fsyncs, so not after every commit.
const WAL_CHECKPOINT_BYTES: u64 = 1 << 20;

impl SqliteStore {
    /// Copies the WAL into the database and empties it once it has grown past
    /// [`WAL_CHECKPOINT_BYTES`] (about every few hundred allocations). The checkpoint waits
    /// for running readers and writers within the busy timeout. Best effort: one that cannot
    /// finish now is done by a later commit.
    fn checkpoint_if_large(&self, conn: &Connection) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_CHECKPOINT_BYTES) {
            let _ = truncate_wal(conn);
        }
    }
}

fn current_revision(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(SQL_REVISION)?
        .query_row([], |r| r.get(0))
}

fn row_to_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

fn get(conn: &Connection, key: &str) -> rusqlite::Result<ReadResult> {
    let mut stmt = conn.prepare_cached(SQL_GET)?;
    let kv = stmt.query_row([key], row_to_kv).optional()?;
    Ok(kv.into_iter().collect())
}

fn range(conn: &Connection, prefix: &str) -> rusqlite::Result<ReadResult> {
    // A half-open interval lets SQLite walk the primary-key index instead of scanning.
    match prefix_end(prefix) {
        Some(end) => {
            let mut stmt = conn.prepare_cached(SQL_RANGE)?;
            let rows = stmt.query_map(params![prefix, end], row_to_kv)?;
            rows.collect()
        }
        None => {
            let mut stmt = conn.prepare_cached(SQL_RANGE_OPEN)?;
            let rows = stmt.query_map([prefix], row_to_kv)?;
            rows.collect()
        }
    }
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when no
/// such string exists (empty prefix, or one made only of U+10FFFF).
///
/// UTF-8 byte order equals code point order, so bumping the last code point gives a bound that
/// is itself valid UTF-8 and compares correctly under SQLite's BINARY collation.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0x10FFFF => continue,
            // Surrogates are not chars; the next scalar after U+D7FF is U+E000.
            0xD7FF => '\u{E000}',
            n => char::from_u32(n + 1).expect("successor of a scalar below U+D7FF or above U+DFFF"),
        };
        chars.push(next);
        return Some(chars.into_iter().collect());
    }
    None
}

enum Layout {
    /// No tables at all: a file this process (or a racing one) just created.
    Empty,
    /// A Tessera store of a schema version this code understands.
    Tessera,
}

/// Number of schema objects, and whether one of them is a table named `meta`.
fn schema_state(conn: &Connection) -> rusqlite::Result<(i64, bool)> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(type = 'table' AND name = 'meta'), 0) > 0 \
         FROM sqlite_schema",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Decides what the file holds without writing to it, so that pointing Tessera at somebody
/// else's database never changes that database.
fn inspect(conn: &Connection, ctx: &ErrCtx<'_>) -> Result<Layout, StoreError> {
    let (objects, has_meta) = retry_busy(ctx, || schema_state(conn))
        .map_err(|e| ctx.sqlite("reading the database schema", e))?;
    classify(conn, ctx, objects, has_meta)
}

fn classify(
    conn: &Connection,
    ctx: &ErrCtx<'_>,
    objects: i64,
    has_meta: bool,
) -> Result<Layout, StoreError> {
    if objects == 0 {
        return Ok(Layout::Empty);
    }
    if !has_meta {
        return Err(ctx.corrupt(
            "it is a SQLite database of another program (it has tables but no Tessera `meta` \
             table)",
        ));
    }
    check_meta(conn, ctx)?;
    Ok(Layout::Tessera)
}

fn check_meta(conn: &Connection, ctx: &ErrCtx<'_>) -> Result<(), StoreError> {
    let meta = retry_busy(ctx, || {
        conn.query_row(
            "SELECT format, schema_version FROM meta WHERE id = 1",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
    });
    let (format, version) = match meta {
        Ok(Some(meta)) => meta,
        Ok(None) => return Err(ctx.corrupt("its `meta` table is empty")),
        Err(e) if is_busy(&e) => return Err(ctx.sqlite("reading the store header", e)),
        Err(e) => {
            return Err(ctx.corrupt(&format!(
                "it has a `meta` table that is not Tessera's ({e})"
            )))
        }
    };
    if format != FORMAT_MARKER {
        return Err(ctx.corrupt(&format!(
            "its format marker is {format:?}, expected {FORMAT_MARKER:?}"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Refused {
            endpoint: ctx.shown(),
            reason: format!(
                "it was written by a newer Tessera (store schema version {version}, this binary \
                 understands up to {SCHEMA_VERSION}); upgrade this binary"
            ),
        });
    }
    if version < 1 {
        return Err(ctx.corrupt(&format!("its schema version {version} is invalid")));
    }
    Ok(())
}

/// Most connections are short-lived processes (one CNI invocation each). By default the last
/// connection to close checkpoints the WAL into the database (several fsyncs) and deletes the
/// `-wal` and `-shm` files, which the next process creates again: that dominated the cost of
/// an invocation. Instead the WAL stays, and the commit that finds it large checkpoints it
/// (`checkpoint_if_large`).
fn keep_wal_between_connections(conn: &Connection, ctx: &ErrCtx<'_>) -> Result<(), StoreError> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| ctx.sqlite("keeping the WAL on close", e))?;
    let mut persist: std::ffi::c_int = 1;
    // SAFETY: the handle is a live connection owned by `conn`; the argument is an int the call
    // only reads and writes during the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut persist as *mut std::ffi::c_int).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(StoreError::Refused {
            endpoint: ctx.shown(),
            reason: format!("SQLite refused to keep the WAL file (code {rc})"),
        });
    }
    Ok(())
}

fn set_wal(conn: &Connection, ctx: &ErrCtx<'_>) -> Result<(), StoreError> {
    // journal_mode is persistent in the file header, so after the first open this is a no-op
    // that only reports the mode.
    let mode: String = retry_busy(ctx, || {
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
    })
    .map_err(|e| ctx.sqlite("switching to WAL journal mode", e))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::Refused {
            endpoint: ctx.shown(),
            reason: format!(
                "SQLite could not switch the file to WAL journal mode (it stayed in {mode:?}); \
                 keep the store on a local filesystem (not NFS or a read-only mount)"
            ),
        })
    }
}

fn create_schema(conn: &mut Connection, ctx: &ErrCtx<'_>) -> Result<(), StoreError> {
    let (objects, has_meta) = retry_busy(ctx, || {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have initialised the file between `inspect` and taking the
        // lock; then leave it alone and judge what it wrote.
        let state = schema_state(&tx)?;
        if state.0 == 0 {
            tx.execute_batch(SCHEMA)?;
            tx.execute(
                "INSERT INTO meta (id, format, schema_version, revision) VALUES (1, ?1, ?2, 0)",
                params![FORMAT_MARKER, SCHEMA_VERSION],
            )?;
        }
        tx.commit()?;
        Ok(state)
    })
    .map_err(|e| ctx.sqlite("creating the store schema", e))?;
    if objects != 0 {
        classify(conn, ctx, objects, has_meta)?;
    }
    Ok(())
}

/// Retries `f` while SQLite reports the database busy, for up to the busy timeout.
///
/// The busy handler covers ordinary lock waits, but SQLite skips it where waiting could
/// deadlock: switching a fresh file to WAL while other processes hold shared locks on it, as
/// happens when many processes open a new store at once. Failing the statement releases this
/// connection's locks, so retrying from the top after a short sleep makes progress.
fn retry_busy<T>(
    ctx: &ErrCtx<'_>,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + ctx.busy_timeout;
    let mut pause = Duration::from_micros(500);
    loop {
        match f() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                // Per-process jitter so that processes which collided do not retry in step.
                let jitter = Duration::from_micros(u64::from(std::process::id() % 7) * 150);
                std::thread::sleep(pause + jitter);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Creates the database file with mode 0600 (and its missing parents with 0700) unless it
/// exists, and checks that this process may read and write it.
fn ensure_file(path: &Path) -> Result<(), StoreError> {
    // Common case first: the file exists and is ours; one open(2).
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, "opening the database file", &e)),
    }
    let parent = path.parent().ok_or_else(|| StoreError::Refused {
        endpoint: path.display().to_string(),
        reason: "the path names no file; point --datastore at a file such as \
                 /var/lib/tessera/tessera.db"
            .to_string(),
    })?;
    create_private_dirs(parent, path)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // The umask may have stripped bits from 0600 (leaving even the owner without
        // write access); fchmod sets the exact mode regardless.
        Ok(file) => file
            .set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| io_error(path, "setting mode 0600 on the new database file", &e)),
        // Another process created it first; it set the mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(path, "creating the database file", &e)),
    }
}

/// Refuses a store that other users could tamper with, as ssh refuses keys they could write:
/// one in a directory writable by its group or others (they could replace the file, or plant
/// `-wal` and `-shm` files whose frames SQLite would read as the store's), and, in such a
/// directory with the sticky bit (as /tmp), one whose files are not all this user's.
fn check_not_exposed(path: &Path) -> Result<(), StoreError> {
    let refused = |reason: String| StoreError::Refused {
        endpoint: path.display().to_string(),
        reason,
    };
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let meta = fs::metadata(dir).map_err(|e| io_error(path, "looking at its directory", &e))?;
    let mode = meta.mode() & 0o7777;
    let Some(who) = others_who_may_write(mode) else {
        return Ok(());
    };
    let d = dir.display();
    if mode & 0o1000 == 0 {
        return Err(refused(format!(
            "its directory {d} is writable by {who} (mode {mode:04o}), so another user could \
             replace the store or plant its -wal and -shm files; keep the store in a directory \
             only its owner can write (`chmod go-w {d}`)"
        )));
    }
    let me = effective_uid();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        match fs::symlink_metadata(file) {
            Ok(m) if m.uid() != me => {
                return Err(refused(format!(
                    "{} belongs to uid {}, and its directory {d} may be written by others \
                     (mode {mode:04o}), so that user could have planted it; remove it, and keep \
                     the store in a directory only its owner can write",
                    file.display(),
                    m.uid()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_error(
                    path,
                    &format!("looking at {}", file.display()),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

/// Creates every missing directory above the database file with mode 0700, because the store
/// holds which workload owns which address and is nobody else's business.
fn create_private_dirs(dir: &Path, file: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match fs::metadata(cur) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(StoreError::Refused {
                    endpoint: file.display().to_string(),
                    reason: format!(
                        "{} is not a directory, so the database file cannot be created below it; \
                         point --datastore elsewhere",
                        cur.display()
                    ),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(parent) => cur = parent,
                    None => break,
                }
            }
            Err(e) => {
                return Err(io_error(
                    file,
                    &format!("looking up directory {}", cur.display()),
                    &e,
                ))
            }
        }
    }
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(|e| {
                io_error(file, &format!("setting mode 0700 on {}", dir.display()), &e)
            })?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io_error(
                    file,
                    &format!("creating directory {}", dir.display()),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

fn io_error(path: &Path, doing: &str, e: &io::Error) -> StoreError {
    let endpoint = path.display().to_string();
    match e.kind() {
        io::ErrorKind::PermissionDenied => StoreError::Refused {
            endpoint,
            reason: format!(
                "{doing}: {e}; run as the user that owns the file (the default store of root \
                 is /var/lib/tessera/tessera.db), fix its permissions, or point --datastore \
                 elsewhere"
            ),
        },
        io::ErrorKind::IsADirectory => StoreError::Refused {
            endpoint,
            reason: format!(
                "{doing}: the path is a directory; point --datastore at a file, for example \
                 {}",
                path.join("tessera.db").display()
            ),
        },
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::InvalidInput => StoreError::Refused {
            endpoint,
            reason: format!("{doing}: {e}; point --datastore at a writable file path"),
        },
        _ => StoreError::Unavailable {
            endpoint,
            reason: format!("{doing}: {e}; check the disk and the path, then retry"),
        },
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Turns SQLite and filesystem failures into [`StoreError`]s that name the file.
struct ErrCtx<'a> {
    path: &'a Path,
    busy_timeout: Duration,
}

impl ErrCtx<'_> {
    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn corrupt(&self, what: &str) -> StoreError {
        let p = self.path.display();
        StoreError::Corrupt {
            endpoint: p.to_string(),
            reason: format!(
                "{what}; move it away (for example `mv {p} {p}.broken`) or point --datastore \
                 (or TESSERA_DATASTORE) elsewhere"
            ),
        }
    }

    /// A damaged file (`found` says how it showed), with what to do about it.
    fn damaged(&self, found: &str) -> StoreError {
        let p = self.path.display();
        StoreError::Corrupt {
            endpoint: p.to_string(),
            reason: format!(
                "{found}, so it takes no more writes (they could spread the damage; reads \
                 still work); stop the processes using it, then restore it from a backup, or \
                 keep what is readable with `sqlite3 {p} .recover | sqlite3 {p}.recovered && \
                 rm -f {p}-wal {p}-shm && mv {p}.recovered {p}`; a file that passes SQLite's \
                 integrity check takes writes again"
            ),
        }
    }

    fn sqlite(&self, doing: &str, e: rusqlite::Error) -> StoreError {
        let endpoint = self.shown();
        let Some(code) = e.sqlite_error_code() else {
            // Not an engine error: a column held a value of the wrong type or bad UTF-8,
            // which only happens when something other than Tessera wrote to the file.
            return self.corrupt(&format!("{doing}: unexpected data ({e})"));
        };
        match code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable {
                endpoint,
                reason: format!(
                    "{doing}: another process kept the database locked for more than {:?} \
                     ({e}); retry, and if it persists look for a hung process holding the file \
                     (for example `fuser {}`)",
                    self.busy_timeout,
                    self.path.display()
                ),
            },
            ErrorCode::NotADatabase => {
                self.corrupt(&format!("{doing}: the file is not a SQLite database ({e})"))
            }
            ErrorCode::DatabaseCorrupt => {
                self.damaged(&format!("{doing}: SQLite found damaged pages in it ({e})"))
            }
            // SQLITE_ERROR from our fixed statements means the tables do not look like ours.
            ErrorCode::Unknown | ErrorCode::SchemaChanged | ErrorCode::TypeMismatch => {
                self.corrupt(&format!("{doing}: the tables do not match Tessera's ({e})"))
            }
            ErrorCode::PermissionDenied | ErrorCode::ReadOnly | ErrorCode::CannotOpen => {
                StoreError::Refused {
                    endpoint,
                    reason: format!(
                        "{doing}: {e}; make sure this user may read and write the file, its \
                         directory and the -wal/-shm files next to it"
                    ),
                }
            }
            ErrorCode::TooBig => StoreError::Refused {
                endpoint,
                reason: format!("{doing}: {e}; the value exceeds SQLite's size limit"),
            },
            ErrorCode::DiskFull => StoreError::Unavailable {
                endpoint,
                reason: format!("{doing}: {e}; free space on the disk holding the file"),
            },
            _ => StoreError::Unavailable {
                endpoint,
                reason: format!("{doing}: {e}; check the disk and retry"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bumps_the_last_code_point() {
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("ab\u{10FFFF}").as_deref(), Some("ac"));
        assert_eq!(prefix_end("\u{10FFFF}\u{10FFFF}").as_deref(), None);
        assert_eq!(prefix_end("日").as_deref(), Some("旦"));
    }
}
