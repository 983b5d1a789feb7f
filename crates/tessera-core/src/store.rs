//! The datastore contract every backend implements, and the in-memory backend.
//!
//! The contract is etcd v3 in miniature: keys are UTF-8 strings, every write bumps one global
//! revision, and every key remembers the revision that last modified it (`mod_revision`).
//! A [`Store::read`] executes several gets and ranges at one revision in one round trip (an etcd
//! `Txn` holding only range requests); a [`Store::txn`] applies puts and deletes only if every
//! compare holds, atomically, in one round trip.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key, including the store prefix handled by the backend.
    pub key: String,
    /// Raw value bytes (JSON for every Tessera record).
    pub value: Vec<u8>,
    /// Revision at which the key was created.
    pub create_revision: i64,
    /// Revision at which the key was last written.
    pub mod_revision: i64,
}

/// One read inside a [`Store::read`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// The key, if present.
    Get(String),
    /// Every key starting with the prefix, in key order.
    Prefix(String),
}

/// A condition a [`Store::txn`] checks before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given revision; revision 0 means "the key is absent".
    ModRevision(String, i64),
    /// The key exists and holds exactly these bytes.
    Value(String, Vec<u8>),
}

impl Compare {
    /// The key must not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::ModRevision(key.into(), 0)
    }

    /// The key must still be at `revision` (0 = absent), as read earlier.
    pub fn unchanged(key: impl Into<String>, revision: i64) -> Self {
        Compare::ModRevision(key.into(), revision)
    }

    /// The key this compare looks at.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision(k, _) | Compare::Value(k, _) => k,
        }
    }

    /// Whether the compare holds for `current`, the key's present state (`None`: absent).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match self {
            Compare::ModRevision(_, want) => current.map_or(0, |kv| kv.mod_revision) == *want,
            Compare::Value(_, want) => current.is_some_and(|kv| kv.value == *want),
        }
    }
}

/// A write inside a [`Store::txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite the key.
    Put(String, Vec<u8>),
    /// Remove the key; removing an absent key is not an error.
    Delete(String),
}

/// The answer to one [`Read`]: the matching key-values, in key order.
pub type ReadResult = Vec<KeyValue>;

/// Result of [`Store::read`]: one result per read, plus the revision they were taken at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Store revision the reads observed.
    pub revision: i64,
    /// One entry per requested read, in request order.
    pub results: Vec<ReadResult>,
}

impl Snapshot {
    /// The single key-value of a `Get` at position `index`, if the key exists.
    pub fn get(&self, index: usize) -> Option<&KeyValue> {
        self.results.get(index).and_then(|r| r.first())
    }

    /// All key-values of the read at position `index`.
    pub fn list(&self, index: usize) -> &[KeyValue] {
        self.results.get(index).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Outcome of a transaction whose round trip succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held; the writes were applied at this revision.
    Committed(i64),
    /// A compare failed; nothing was written.
    Conflict,
}

/// How much one request may hold on a backend that limits it (etcd does; SQLite and memory
/// do not). Writers of changes too large for one transaction split them ([`crate::catalog`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// The most compares, and separately the most writes, in one [`Store::txn`], and the most
    /// reads in one [`Store::read`] (etcd's `--max-txn-ops`).
    pub max_ops: usize,
    /// The most bytes one request may carry, keys and values included (etcd's
    /// `--max-request-bytes`).
    pub max_bytes: usize,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered too late; retrying later may work.
    #[error("datastore {endpoint} is unavailable: {reason}")]
    Unavailable {
        /// File path or endpoint list of the store.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The store answered, but what it holds cannot be read (damaged file, wrong format).
    #[error("datastore {endpoint} is corrupt or not a Tessera store: {reason}")]
    Corrupt {
        /// File path or endpoint list of the store.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The store refused the request (permissions, authentication, limits on the number of
    /// operations).
    #[error("datastore {endpoint} refused the request: {reason}")]
    Refused {
        /// File path or endpoint list of the store.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The store is out of space and refuses writes until an operator frees some (etcd's
    /// NOSPACE alarm). Retrying does not help.
    #[error("datastore {endpoint} is full: {reason}")]
    Full {
        /// File path or endpoint list of the store.
        endpoint: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// One request, or one record in it, is larger than the store accepts. Retrying does
    /// not help.
    #[error("datastore {endpoint} refused a request as too large: {reason}")]
    TooLarge {
        /// File path or endpoint list of the store.
        endpoint: String,
        /// Which record, how large, the limit, and what to do.
        reason: String,
    },
}

impl StoreError {
    /// True when the failure is transient (the caller may try again later).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// The synchronous, etcd-shaped datastore contract. Implementations must be safe to share
/// between threads; each call is one round trip to the backend.
pub trait Store: Send + Sync {
    /// Executes every read at one consistent revision, in one round trip.
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError>;

    /// Applies `ops` atomically if every compare holds; otherwise writes nothing.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError>;

    /// Human-readable description, e.g. `sqlite:/var/lib/tessera/tessera.db`.
    fn describe(&self) -> String;

    /// What one request may hold; `None` (the default) when the backend sets no limit.
    fn txn_limits(&self) -> Option<TxnLimits> {
        None
    }

    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let snap = self.read(&[Read::Get(key.to_string())])?;
        Ok(snap.get(0).cloned())
    }

    /// Reads every key under a prefix.
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let mut snap = self.read(&[Read::Prefix(prefix.to_string())])?;
        Ok(snap.results.pop().unwrap_or_default())
    }
}

impl<S: Store + ?Sized> Store for &S {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        (**self).read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        (**self).txn(compares, ops)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn txn_limits(&self) -> Option<TxnLimits> {
        (**self).txn_limits()
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        (**self).read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        (**self).txn(compares, ops)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn txn_limits(&self) -> Option<TxnLimits> {
        (**self).txn_limits()
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        (**self).read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        (**self).txn(compares, ops)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn txn_limits(&self) -> Option<TxnLimits> {
        (**self).txn_limits()
    }
}

#[derive(Default)]
struct MemoryState {
    revision: i64,
    data: BTreeMap<String, KeyValue>,
}

/// A store held in process memory: for tests, simulations and benchmarks.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave a half-applied txn (writes happen after
        // all checks, without fallible steps), so the data is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a read batch against an ordered map; shared by backends that keep one in memory.
pub fn read_from_map(data: &BTreeMap<String, KeyValue>, reads: &[Read]) -> Vec<ReadResult> {
    reads
        .iter()
        .map(|r| match r {
            Read::Get(k) => data.get(k).cloned().into_iter().collect(),
            Read::Prefix(p) => data
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(p.as_str()))
                .map(|(_, v)| v.clone())
                .collect(),
        })
        .collect()
}

impl Store for MemoryStore {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        let st = self.lock();
        Ok(Snapshot {
            revision: st.revision,
            results: read_from_map(&st.data, reads),
        })
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let mut st = self.lock();
        if !compares.iter().all(|c| c.holds(st.data.get(c.key()))) {
            return Ok(TxnOutcome::Conflict);
        }
        if ops.is_empty() {
            return Ok(TxnOutcome::Committed(st.revision));
        }
        st.revision += 1;
        let rev = st.revision;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let create = st.data.get(k).map_or(rev, |kv| kv.create_revision);
                    st.data.insert(
                        k.clone(),
                        KeyValue {
                            key: k.clone(),
                            value: v.clone(),
                            create_revision: create,
                            mod_revision: rev,
                        },
                    );
                }
                Op::Delete(k) => {
                    st.data.remove(k);
                }
            }
        }
        Ok(TxnOutcome::Committed(rev))
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

/// Wraps a store and counts round trips, for benchmarks and tests of the hot path.
pub struct CountingStore<S> {
    inner: S,
    reads: AtomicU64,
    txns: AtomicU64,
    conflicts: AtomicU64,
}

impl<S: Store> CountingStore<S> {
    /// Wraps `inner` with zeroed counters.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            txns: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    /// Total round trips so far (reads + txns).
    pub fn round_trips(&self) -> u64 {
        self.reads.load(Ordering::Relaxed) + self.txns.load(Ordering::Relaxed)
    }

    /// Transactions that failed a compare so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Resets every counter to zero.
    pub fn reset(&self) {
        self.reads.store(0, Ordering::Relaxed);
        self.txns.store(0, Ordering::Relaxed);
        self.conflicts.store(0, Ordering::Relaxed);
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read(reads)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        self.txns.fetch_add(1, Ordering::Relaxed);
        let out = self.inner.txn(compares, ops)?;
        if out == TxnOutcome::Conflict {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn txn_limits(&self) -> Option<TxnLimits> {
        self.inner.txn_limits()
    }
}
