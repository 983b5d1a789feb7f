//! The etcd v3 backend: the store contract on a real cluster.
//!
//! Every [`Store::read`] is one etcd `Txn` whose success branch holds only range requests, so
//! the whole batch is answered at one revision in one round trip, linearizably (the member
//! confirms with the leader before answering). Every [`Store::txn`] is one etcd `Txn` comparing
//! `mod_revision`; etcd treats a missing key's `mod_revision` as 0, so "absent" maps 1:1.
//!
//! The backend owns a current-thread tokio runtime and blocks on it, so callers see the same
//! synchronous contract as SQLite. Several threads may share one [`EtcdStore`]; they then share
//! its connections (HTTP/2 multiplexes the requests). Throughput-minded callers with many
//! threads do better with one store per thread (see `docs/BENCHMARKS.md`).
//!
//! It speaks etcd's gRPC API through the tonic clients of the `tessera-etcd-proto` crate
//! (built without protoc): one connection per member, opened on first use, with a user's
//! token when a user name is set. A token etcd no longer accepts (expired, or issued before
//! users or roles changed) is replaced once per request: the request authenticates again and
//! is sent a second time.
//!
//! Every call is bounded by the request timeout: a stopped, unreachable or frozen cluster turns
//! into [`StoreError::Unavailable`] naming the endpoints, never into a hang.
//!
//! # Failing over, and the one ambiguous case
//!
//! The endpoints are tried in turn, starting with the last one that answered. A read moves on
//! to the next endpoint after any failure. A txn moves on only when the failed endpoint
//! certainly did not apply it (the connection could not be made, the member had no leader, the
//! request was refused). When a txn was sent and no answer came back (timeout, connection lost
//! mid-request), etcd may or may not have applied it, and the error says so. The allocator
//! copes: every txn it sends compares the revisions of the records it read, and its next
//! attempt reads again, so an attempt that did commit makes the retry see the new records
//! instead of handing the same address out twice.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tessera_etcd_proto::etcdserverpb::{
    auth_client::AuthClient, compare, kv_client::KvClient, request_op, response_op,
    AuthenticateRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    TxnResponse,
};
use tessera_etcd_proto::mvccpb;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    Compare, KeyValue, Op, OpenError, OpenOptions, Read, ReadResult, Snapshot, Store, StoreError,
    TxnLimits, TxnOutcome,
};

/// Key prefix used when none is configured. The version segment lets a future incompatible
/// layout live next to this one in the same cluster.
pub const DEFAULT_PREFIX: &str = "/tessera/v1/";

/// Default time allowed for one request (and the fail-over attempts it needs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time allowed for opening a connection to one endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd's default client port, used when an endpoint names no port.
pub const DEFAULT_PORT: u16 = 2379;

/// Responses larger than tonic's 4 MiB default are normal for admin scans (`ipam check` reads
/// every block), and etcd itself sends up to 2 GiB.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// How often an idle connection is probed (HTTP/2 ping), so a member that vanished without
/// closing the connection is noticed before a request is sent into the void.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// An `etcd://` or `etcds://` datastore value, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `etcds://`: connect with TLS.
    pub tls: bool,
    /// `host:port` of every member, in the order given (IPv6 hosts in brackets).
    pub endpoints: Vec<String>,
}

impl EtcdUrl {
    /// Parses `etcd://HOST[:PORT][,HOST[:PORT]...]` or `etcds://...`. A port defaults to 2379;
    /// a trailing `/` is accepted. Paths, queries and credentials in the URL are refused: the
    /// key prefix and credentials have their own options, so they never end up in logs or in
    /// `ps` output by way of the URL.
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let bad = |reason: String| OpenError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else {
            return Err(bad("it does not start with etcd:// or etcds://".into()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(i) = rest.find(['/', '?', '#']) {
            return Err(bad(format!(
                "{:?} after the endpoints is not understood; give only HOST:PORT[,HOST:PORT], \
                 and set the key prefix with --etcd-prefix (etcd_prefix in a CNI config)",
                &rest[i..]
            )));
        }
        if rest.contains('@') {
            return Err(bad(
                "credentials do not belong in the URL; use --etcd-username and \
                 --etcd-password (etcd_username and etcd_password in a CNI config)"
                    .into(),
            ));
        }
        let mut endpoints = Vec::new();
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(
                    "it names an empty endpoint; write etcd://HOST:PORT[,HOST:PORT]".into(),
                ));
            }
            endpoints
                .push(parse_endpoint(part).map_err(|r| bad(format!("endpoint {part:?}: {r}")))?);
        }
        Ok(Self { tls, endpoints })
    }

    /// The URL in canonical form, e.g. `etcd://127.0.0.1:2379,127.0.0.1:22379`.
    pub fn canonical(&self) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}", self.endpoints.join(","))
    }
}

/// Checks one `HOST[:PORT]` and returns it with the port filled in.
fn parse_endpoint(part: &str) -> Result<String, String> {
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address opened with '[' is not closed with ']'")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?),
        };
        (format!("[{host}]"), port)
    } else {
        if part.matches(':').count() > 1 {
            return Err("an IPv6 address must be written in brackets, e.g. [::1]:2379".into());
        }
        let (host, port) = match part.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (part, None),
        };
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_host {
            return Err(format!("{host:?} is not a host name or IPv4 address"));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok(format!("{host}:{port}"))
}

/// One cluster member and its session, opened on first use.
struct Member {
    /// `host:port`, as shown in messages.
    name: String,
    /// Where and how to connect: the URI, TLS settings, timeouts and keep-alive.
    endpoint: Endpoint,
    session: Mutex<Option<Session>>,
}

/// An open connection to one member, and the token it issued to the configured user.
#[derive(Clone)]
struct Session {
    channel: Channel,
    /// `None` without a user name, for a cluster with authentication disabled.
    token: Option<AsciiMetadataValue>,
}

/// The etcd user a store authenticates as.
struct Credentials {
    user: String,
    password: String,
}

/// A [`Store`] on an etcd v3 cluster.
pub struct EtcdStore {
    runtime: tokio::runtime::Runtime,
    members: Vec<Member>,
    /// Index of the member that answered last; calls start there.
    preferred: AtomicUsize,
    credentials: Option<Credentials>,
    prefix: String,
    timeout: Duration,
    describe: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// A member's answer to [`EtcdStore::call`].
struct Answer {
    resp: TxnResponse,
    /// An earlier attempt of the same request went unanswered and may have been applied.
    ambiguous: bool,
}

/// Why one attempt against one member failed.
enum Failure {
    /// The member certainly did not apply the request; another member may be tried.
    NotApplied(String),
    /// The request may have been applied (sent, then no answer).
    Unknown(String),
    /// The cluster answered and refused (authentication, permissions, limits).
    Refused(String),
}

impl EtcdStore {
    /// Opens a store on the cluster named by `url` (`etcd://...` or `etcds://...`).
    ///
    /// Nothing is sent yet: connections are made by the first request, so opening costs no
    /// round trip. Fails when the URL or options are invalid or the TLS files cannot be read.
    pub fn open(url: &str, options: &OpenOptions) -> Result<Self, OpenError> {
        let parsed = EtcdUrl::parse(url)?;
        let invalid = |reason: String| OpenError::InvalidOptions { reason };
        let mut prefix = options
            .etcd_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if prefix.is_empty() {
            return Err(invalid(
                "the etcd key prefix is empty; Tessera keeps its keys under a prefix of \
                 their own (the default is /tessera/v1/)"
                    .into(),
            ));
        }
        // A prefix names a directory of keys: `/tessera` means `/tessera/`, never a sibling
        // such as `/tesseraconfig/`.
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let timeout = options
            .etcd_timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        if timeout.is_zero() {
            return Err(invalid(
                "the etcd request timeout must be above 0 ms".into(),
            ));
        }
        let credentials = match (&options.etcd_username, &options.etcd_password) {
            (Some(user), Some(password)) => Some(Credentials {
                user: user.clone(),
                password: password.clone(),
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "an etcd user name was given without a password; set --etcd-password \
                     (etcd_password in a CNI config)"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "an etcd password was given without a user name; set --etcd-username \
                     (etcd_username in a CNI config)"
                        .into(),
                ))
            }
            (None, None) => None,
        };
        let tls = tls_config(&parsed, options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                invalid(format!(
                    "cannot start the etcd client's I/O runtime: {e}; the process may be out \
                     of file descriptors or threads"
                ))
            })?;
        let members = parsed
            .endpoints
            .iter()
            .map(|e| {
                Ok(Member {
                    name: e.clone(),
                    endpoint: endpoint(e, tls.clone(), timeout)?,
                    session: Mutex::new(None),
                })
            })
            .collect::<Result<_, OpenError>>()?;
        let describe = if prefix == DEFAULT_PREFIX {
            parsed.canonical()
        } else {
            format!("{} (key prefix {prefix})", parsed.canonical())
        };
        Ok(Self {
            runtime,
            members,
            preferred: AtomicUsize::new(0),
            credentials,
            prefix,
            timeout,
            describe,
        })
    }

    /// The key prefix every relative key is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The time allowed for one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            endpoint: self.describe.clone(),
            reason,
        }
    }

    /// The session with member `i`, connecting first if needed (which, with a user name,
    /// includes one authentication round trip).
    /// The flag says whether the connection was made just now.
    async fn session(&self, i: usize, deadline: Instant) -> Result<(Session, bool), Failure> {
        let member = &self.members[i];
        if let Some(s) = lock(&member.session).as_ref() {
            return Ok((s.clone(), false));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let opening = async {
            let channel = member
                .endpoint
                .connect()
                .await
                .map_err(|e| classify_transport(&e))?;
            let token = self.authenticate(&channel).await?;
            Ok(Session { channel, token })
        };
        let session = match tokio::time::timeout(remaining, opening).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure::NotApplied(format!(
                    "no answer to the connection attempt within {}",
                    secs(self.timeout)
                )))
            }
        };
        *lock(&member.session) = Some(session.clone());
        Ok((session, true))
    }

    /// A new token for the configured user, or `None` when no user name is set.
    async fn authenticate(&self, channel: &Channel) -> Result<Option<AsciiMetadataValue>, Failure> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        let request = tonic::Request::new(AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        });
        let answer = AuthClient::new(channel.clone())
            .authenticate(require_leader(request))
            .await
            .map_err(|status| classify_status(&status))?;
        let token = answer.into_inner().token.parse().map_err(|_| {
            Failure::Refused(
                "etcd answered the authentication with a token that cannot be sent back (not \
                 printable ASCII)"
                    .into(),
            )
        })?;
        Ok(Some(token))
    }

    /// Sends `txn` to member `i` on `session`. A token the member no longer accepts is
    /// replaced, and the txn sent once more: etcd checks the token before it applies
    /// anything, so the refused attempt changed nothing.
    async fn txn_on(
        &self,
        i: usize,
        session: Session,
        txn: &TxnRequest,
    ) -> Result<TxnResponse, Failure> {
        match send_txn(&session, txn).await {
            Err(status) if session.token.is_some() && is_stale_token(&status) => {
                let session = self.renew_token(i, session).await?;
                send_txn(&session, txn)
                    .await
                    .map_err(|status| classify_status(&status))
            }
            answer => answer.map_err(|status| classify_status(&status)),
        }
    }

    /// `stale` with a new token, unless another request already renewed it (then its session
    /// is used, so concurrent requests that meet the expiry authenticate once).
    async fn renew_token(&self, i: usize, stale: Session) -> Result<Session, Failure> {
        let member = &self.members[i];
        if let Some(current) = lock(&member.session).as_ref() {
            if current.token != stale.token {
                return Ok(current.clone());
            }
        }
        let token = self.authenticate(&stale.channel).await?;
        let renewed = Session {
            channel: stale.channel,
            token,
        };
        *lock(&member.session) = Some(renewed.clone());
        Ok(renewed)
    }

    /// Runs one etcd `Txn` on the first member that takes it, going round the members until
    /// one answers or the timeout is spent.
    ///
    /// A read is repeated on the next member after any failure. A write is repeated after a
    /// failure that certainly left it unapplied; after one whose outcome is unknown it is
    /// repeated too (its compares make a second application impossible), and the answer says
    /// `ambiguous` so that [`EtcdStore::txn`] can tell a conflict caused by the first attempt
    /// from a real one. `writes` holds the writes of a write (`None` for a read), so that an
    /// error can name the record that made the request too large.
    fn call(&self, txn: TxnRequest, writes: Option<&[Op]>) -> Result<Answer, StoreError> {
        let write = writes.is_some();
        let what = if write { "writing" } else { "reading" };
        let deadline = Instant::now() + self.timeout;
        let n = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut reasons: Vec<String> = Vec::new();
        let mut ambiguous = false;
        let outcome = self.runtime.block_on(async {
            let mut step = 0;
            let mut reconnected = false;
            loop {
                let i = (first + step) % n;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(None);
                }
                // With several members, one frozen member or one waiting for a lost leader
                // must not use up the whole budget: the others get their turn.
                let budget = if n == 1 {
                    remaining
                } else {
                    remaining.min((self.timeout / 3).max(Duration::from_millis(500)))
                };
                let mut fresh = false;
                let attempt = async {
                    let (session, new) = self.session(i, deadline).await?;
                    fresh = new;
                    self.txn_on(i, session, &txn).await
                };
                let failure = match tokio::time::timeout(budget, attempt).await {
                    Ok(Ok(resp)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp);
                    }
                    // tonic's own deadline says only "Timeout expired".
                    Ok(Err(Failure::Unknown(r))) if r.contains("Timeout expired") => {
                        Failure::Unknown(format!(
                            "no answer within {} (is etcd stopped, frozen or overloaded?)",
                            secs(budget)
                        ))
                    }
                    Ok(Err(f)) => f,
                    Err(_) => Failure::Unknown(format!(
                        "no answer within {} (is etcd stopped, frozen or overloaded?)",
                        secs(budget)
                    )),
                };
                let name = &self.members[i].name;
                let reason = match failure {
                    Failure::Refused(r) => return Err(Some(format!("{name}: {r}"))),
                    Failure::Unknown(r) => {
                        ambiguous = true;
                        format!("{name}: {r}")
                    }
                    Failure::NotApplied(r) => format!("{name}: {r}"),
                };
                // A broken connection is rebuilt from scratch next time rather than trusted
                // to heal.
                lock(&self.members[i].session).take();
                if !fresh && !reconnected && is_stale_connection(&reason) {
                    // The member went away since the connection was made (it was restarted,
                    // or a proxy dropped the connection): the same member gets one more try
                    // on a new connection before the call moves on.
                    reconnected = true;
                    continue;
                }
                let electing = is_electing(&reason);
                reasons.push(reason);
                step += 1;
                if step.is_multiple_of(n) {
                    // Every member failed once. Only a cluster busy electing a leader is worth
                    // another round; refused connections are reported at once.
                    let round = &reasons[reasons.len().saturating_sub(n)..];
                    if !electing && !round.iter().any(|r| is_electing(r)) {
                        return Err(None);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        match outcome {
            Ok(resp) => Ok(Answer { resp, ambiguous }),
            Err(Some(refusal)) => Err(self.refusal(refusal, writes.unwrap_or_default())),
            Err(None) => {
                if reasons.is_empty() {
                    reasons.push(format!("no answer within {}", secs(self.timeout)));
                }
                // Rounds repeat the same complaints; each is worth saying once.
                let mut seen = std::collections::HashSet::new();
                reasons.retain(|r| seen.insert(r.clone()));
                let mut reason = format!(
                    "{what} failed on every endpoint ({}); check that etcd is running and \
                     reachable, then try again",
                    reasons.join("; ")
                );
                if write && ambiguous {
                    reason.push_str(
                        "; the change may or may not have been applied (Tessera re-reads \
                         before it tries again, so no address is handed out twice)",
                    );
                }
                Err(self.unavailable(reason))
            }
        }
    }

    /// The error for a request the cluster answered with a refusal: a full database and a
    /// request over the size limit have variants of their own, since only an operator can
    /// fix them and each needs its own remedy.
    fn refusal(&self, refusal: String, writes: &[Op]) -> StoreError {
        let endpoint = self.describe.clone();
        if is_no_space(&refusal) {
            StoreError::Full {
                endpoint,
                reason: format!(
                    "the etcd database reached its space quota and raised the NOSPACE alarm, \
                     so it refuses writes ({refusal}); free space by compacting the history \
                     (etcdctl compact REVISION, with the current revision from etcdctl \
                     endpoint status -w json), defragmenting every member (etcdctl defrag), \
                     then clearing the alarm (etcdctl alarm disarm); if it fills up again, \
                     raise --quota-backend-bytes (etcd's default is 2 GiB) on every member"
                ),
            }
        } else if is_too_large(&refusal) {
            StoreError::TooLarge {
                endpoint,
                reason: format!(
                    "{} exceeds what the cluster accepts ({refusal}); etcd takes requests up \
                     to its --max-request-bytes (1.5 MiB by default): make the record \
                     smaller, or raise --max-request-bytes on every member",
                    describe_writes(writes)
                ),
            }
        } else {
            StoreError::Refused {
                endpoint,
                reason: refused_hint(&refusal),
            }
        }
    }

    /// After a write whose first attempt had no answer and whose repetition met a conflict:
    /// the revision at which the first attempt was applied, if the store shows every put of
    /// the txn with its value, all at one revision, and every deleted key gone. A txn without
    /// puts cannot be recognised, and counts as not applied.
    fn applied_at(&self, ops: &[Op]) -> Result<Option<i64>, StoreError> {
        let reads: Vec<Read> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, _) | Op::Delete(k) => Read::Get(k.clone()),
            })
            .collect();
        if !ops.iter().any(|op| matches!(op, Op::Put(..))) {
            return Ok(None);
        }
        let snap = self.read(&reads)?;
        let mut revision = None;
        for (i, op) in ops.iter().enumerate() {
            match (op, snap.get(i)) {
                (Op::Delete(_), None) => {}
                (Op::Put(_, value), Some(kv)) if kv.value == *value => {
                    if *revision.get_or_insert(kv.mod_revision) != kv.mod_revision {
                        return Ok(None);
                    }
                }
                _ => return Ok(None),
            }
        }
        Ok(revision)
    }

    fn convert(&self, kv: mvccpb::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv
            .key
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| StoreError::Corrupt {
                endpoint: self.describe.clone(),
                reason: format!(
                    "key {:?} under the prefix is not UTF-8 text; something other than \
                     Tessera writes under {}",
                    String::from_utf8_lossy(&kv.key),
                    self.prefix
                ),
            })?;
        Ok(KeyValue {
            key: key.to_string(),
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    }
}

impl Store for EtcdStore {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        let success = reads
            .iter()
            .map(|r| {
                let range = match r {
                    Read::Get(k) => RangeRequest {
                        key: self.full_key(k),
                        range_end: Vec::new(),
                    },
                    Read::Prefix(p) => {
                        let key = self.full_key(p);
                        let range_end = prefix_end(&key);
                        RangeRequest { key, range_end }
                    }
                };
                operation(request_op::Request::RequestRange(range))
            })
            .collect();
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        let resp = self.call(txn, None)?.resp;
        let revision = resp.header.map_or(0, |h| h.revision);
        let mut results = Vec::with_capacity(reads.len());
        for op in resp.responses {
            let Some(response_op::Response::ResponseRange(range)) = op.response else {
                return Err(StoreError::Corrupt {
                    endpoint: self.describe.clone(),
                    reason: "etcd answered a read with something other than range results".into(),
                });
            };
            let result: ReadResult = range
                .kvs
                .into_iter()
                .map(|kv| self.convert(kv))
                .collect::<Result<_, _>>()?;
            results.push(result);
        }
        if results.len() != reads.len() {
            return Err(StoreError::Corrupt {
                endpoint: self.describe.clone(),
                reason: format!("etcd answered {} of {} reads", results.len(), reads.len()),
            });
        }
        Ok(Snapshot { revision, results })
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let compare = compares
            .iter()
            .map(|c| {
                let (key, target, value) = match c {
                    Compare::ModRevision(key, rev) => (
                        key,
                        compare::CompareTarget::Mod,
                        compare::TargetUnion::ModRevision(*rev),
                    ),
                    Compare::Value(key, value) => (
                        key,
                        compare::CompareTarget::Value,
                        compare::TargetUnion::Value(value.clone()),
                    ),
                };
                tessera_etcd_proto::etcdserverpb::Compare {
                    result: compare::CompareResult::Equal.into(),
                    target: target.into(),
                    key: self.full_key(key),
                    target_union: Some(value),
                }
            })
            .collect();
        // etcd rejects a txn that writes one key twice; applying the writes in order means the
        // last write of a key wins, so only that one is sent.
        let mut seen = std::collections::HashSet::new();
        let mut last_ops: Vec<Op> = Vec::with_capacity(ops.len());
        for op in ops.iter().rev() {
            let (Op::Put(key, _) | Op::Delete(key)) = op;
            if seen.insert(key.as_str()) {
                last_ops.push(op.clone());
            }
        }
        last_ops.reverse();
        let success = last_ops
            .iter()
            .map(|op| {
                operation(match op {
                    Op::Put(k, v) => request_op::Request::RequestPut(PutRequest {
                        key: self.full_key(k),
                        value: v.clone(),
                    }),
                    Op::Delete(k) => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: self.full_key(k),
                        range_end: Vec::new(),
                    }),
                })
            })
            .collect();
        let txn = TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let Answer { resp, ambiguous } = self.call(txn, Some(&last_ops))?;
        if !resp.succeeded {
            if ambiguous {
                if let Some(revision) = self.applied_at(&last_ops)? {
                    return Ok(TxnOutcome::Committed(revision));
                }
            }
            return Ok(TxnOutcome::Conflict);
        }
        Ok(TxnOutcome::Committed(resp.header.map_or(0, |h| h.revision)))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// etcd's defaults: a cluster that raised them still takes requests split to these.
    fn txn_limits(&self) -> Option<TxnLimits> {
        Some(TxnLimits {
            max_ops: 128,
            max_bytes: 1536 * 1024,
        })
    }
}

/// The TLS settings when the URL asks for TLS (`None` for a plain URL, which refuses TLS
/// files).
fn tls_config(url: &EtcdUrl, options: &OpenOptions) -> Result<Option<ClientTlsConfig>, OpenError> {
    let invalid = |reason: String| OpenError::InvalidOptions { reason };
    let given = [
        ("--etcd-ca (etcd_ca)", &options.etcd_ca),
        ("--etcd-cert (etcd_cert)", &options.etcd_cert),
        ("--etcd-key (etcd_key)", &options.etcd_key),
    ];
    if !url.tls {
        if let Some((flag, _)) = given.iter().find(|(_, v)| v.is_some()) {
            return Err(invalid(format!(
                "{flag} is set, but the datastore URL {} does not use TLS; write etcds:// to \
                 connect with TLS",
                url.canonical()
            )));
        }
        return Ok(None);
    }
    let Some(ca) = &options.etcd_ca else {
        return Err(invalid(format!(
            "{} uses TLS, so the certificate authority that signed the etcd server \
             certificates is needed: set --etcd-ca FILE (etcd_ca in a CNI config)",
            url.canonical()
        )));
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca, "CA")?));
    match (&options.etcd_cert, &options.etcd_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                "--etcd-cert (etcd_cert) is set without --etcd-key (etcd_key); a client \
                 certificate needs its private key"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "--etcd-key (etcd_key) is set without --etcd-cert (etcd_cert); a private key \
                 needs its client certificate"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    Ok(Some(tls))
}

/// How to reach the member at `host_port`: over TLS when `tls` is set, each request bounded
/// by `timeout`, and connecting bounded by [`DEFAULT_CONNECT_TIMEOUT`] (or `timeout` if
/// shorter).
fn endpoint(
    host_port: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<Endpoint, OpenError> {
    let invalid = |reason: String| OpenError::InvalidOptions { reason };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = format!("{scheme}://{host_port}");
    let connect_timeout = DEFAULT_CONNECT_TIMEOUT.min(timeout);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| invalid(format!("the etcd endpoint {uri} is not a valid URI: {e}")))?
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(connect_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| {
            invalid(format!(
                "the etcd TLS files cannot be used for {uri}: {}; check --etcd-ca, \
                 --etcd-cert and --etcd-key (PEM certificates and a PEM private key)",
                transport_text(&e).trim_end_matches('.')
            ))
        })?;
    }
    Ok(endpoint)
}

/// One operation of a txn.
fn operation(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// Asks the member to refuse at once when it has no leader ("etcdserver: no leader") instead
/// of letting the request wait for one, so the next member can be tried within the same call.
fn require_leader<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("hasleader", AsciiMetadataValue::from_static("true"));
    request
}

/// Sends one txn on `session`, with its token if it has one.
async fn send_txn(session: &Session, txn: &TxnRequest) -> Result<TxnResponse, tonic::Status> {
    let mut request = require_leader(tonic::Request::new(txn.clone()));
    if let Some(token) = &session.token {
        request.metadata_mut().insert("token", token.clone());
    }
    KvClient::new(session.channel.clone())
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .txn(request)
        .await
        .map(tonic::Response::into_inner)
}

/// etcd refused the token the request carried, though the user's credentials may still be
/// good: the token expired ("invalid auth token", also after a member restart, which forgets
/// the simple tokens it issued), or users or roles changed since it was issued ("revision of
/// auth store is old").
fn is_stale_token(status: &tonic::Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::Unauthenticated
        || message.contains("invalid auth token")
        || message.contains("token is expired")
        || message.contains("revision of auth store is old")
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, OpenError> {
    let data = std::fs::read(path).map_err(|e| OpenError::InvalidOptions {
        reason: format!("cannot read the etcd {what} file {}: {e}", path.display()),
    })?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(OpenError::InvalidOptions {
            reason: format!(
                "the etcd {what} file {} is not in PEM format (no -----BEGIN line)",
                path.display()
            ),
        });
    }
    Ok(data)
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from the prefix on ("\0" means "to the end" in etcd).
    vec![0]
}

/// Sorts an error answer, or a request that failed on its way, into what the caller may do
/// about it.
fn classify_status(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let text = status_text(status);
    match status.code() {
        Code::Unavailable if is_connect_failure(&text) => Failure::NotApplied(text),
        // etcd rejects these before proposing anything to raft.
        Code::Unavailable if text.contains("no leader") || text.contains("not capable") => {
            Failure::NotApplied(text)
        }
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Unimplemented => Failure::Refused(text),
        _ if is_tls_failure(&text) => Failure::Refused(text),
        _ => Failure::Unknown(text),
    }
}

/// Sorts a failure to connect: nothing was sent, so nothing was applied; a TLS failure will
/// not go away by trying again.
fn classify_transport(e: &tonic::transport::Error) -> Failure {
    let text = transport_text(e);
    if is_tls_failure(&text) {
        Failure::Refused(text)
    } else {
        Failure::NotApplied(text)
    }
}

/// The cluster is reachable but has no leader for the moment (a member was lost, an election
/// is under way): worth another round of attempts.
fn is_electing(text: &str) -> bool {
    text.contains("no leader")
        || text.contains("no answer within")
        || text.contains("Timeout expired")
        || text.contains("leader changed")
        || text.contains("request timed out")
        || text.contains("not capable")
}

/// A connection that worked before and broke under the request.
fn is_stale_connection(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("broken pipe")
        || t.contains("connection reset")
        || t.contains("stream closed")
        || t.contains("connection error")
        || t.contains("goaway")
}

fn is_connect_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("connect") || t.contains("dns error") || t.contains("refused")
}

fn is_tls_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("certificate") || t.contains("handshake") || t.contains("tls")
}

/// A gRPC status as one line: its message and every distinct cause below it.
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let m = s.to_string();
        if !text.contains(&m) {
            text = format!("{text}: {m}");
        }
        source = s.source();
    }
    if text.is_empty() {
        format!("{:?}", status.code())
    } else {
        text
    }
}

/// What went wrong below a transport error, which itself says only "transport error".
fn transport_text(e: &tonic::transport::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => error_chain(cause),
        None => e.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !text.contains(&m) {
            text = format!("{text}: {m}");
        }
        source = s.source();
    }
    text
}

/// etcd's NOSPACE refusal ("etcdserver: mvcc: database space exceeded").
fn is_no_space(text: &str) -> bool {
    text.contains("database space exceeded")
}

/// A request over etcd's --max-request-bytes ("etcdserver: request is too large"), or over
/// that plus gRPC's 512 KiB allowance, which the gRPC layer refuses before etcd sees it
/// ("grpc: received message larger than max").
fn is_too_large(text: &str) -> bool {
    text.contains("request is too large") || text.contains("message larger than max")
}

/// Names a write refused for its size: how many records, how many bytes, and the largest
/// record, which is the one to shrink.
fn describe_writes(writes: &[Op]) -> String {
    let puts = writes.iter().filter_map(|op| match op {
        Op::Put(key, value) => Some((key, value.len())),
        Op::Delete(_) => None,
    });
    let total: usize = puts.clone().map(|(key, len)| key.len() + len).sum();
    match puts.max_by_key(|(_, len)| *len) {
        None => "the request".to_string(),
        Some((key, len)) if writes.len() == 1 => {
            format!("writing the record {key} ({len} bytes)")
        }
        Some((key, len)) => format!(
            "writing {} records ({total} bytes in all), the largest {key} ({len} bytes),",
            writes.len()
        ),
    }
}

/// Adds what to do to a refusal whose cause is recognisable.
fn refused_hint(reason: &str) -> String {
    let hint = if reason.contains("too many operations in txn") {
        "; a single change touched more keys than the cluster's --max-txn-ops allows (etcd's \
         default is 128): split the manifest, or raise --max-txn-ops on every member"
    } else if reason.contains("authentication failed") || reason.contains("invalid auth token") {
        "; check --etcd-username and --etcd-password"
    } else if reason.contains("permission denied") {
        "; the etcd user needs read and write permission on the key prefix"
    } else if reason.contains("user name is empty") || reason.contains("user name not found") {
        "; this cluster has authentication enabled: set --etcd-username and --etcd-password"
    } else if reason.contains("authentication is not enabled") {
        "; this cluster has authentication disabled: drop --etcd-username and --etcd-password"
    } else if is_tls_failure(reason) {
        "; check --etcd-ca (the CA that signed the server certificate), that the server \
         certificate names the host used in the URL, and --etcd-cert/--etcd-key"
    } else {
        ""
    };
    format!("{reason}{hint}")
}

fn secs(d: Duration) -> String {
    // A budget a few microseconds short of 5 s still reads "5 s".
    let text = format!("{:.1}", d.as_secs_f64());
    format!("{} s", text.strip_suffix(".0").unwrap_or(&text))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is an Option<Session> that is only ever replaced whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<EtcdUrl, String> {
        EtcdUrl::parse(url).map_err(|e| e.to_string())
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse("etcd://127.0.0.1:2379").unwrap(),
            EtcdUrl {
                tls: false,
                endpoints: vec!["127.0.0.1:2379".into()]
            }
        );
        assert_eq!(
            parse("etcds://a.example, b:22379,[::1]:3/").unwrap(),
            EtcdUrl {
                tls: true,
                endpoints: vec!["a.example:2379".into(), "b:22379".into(), "[::1]:3".into()]
            }
        );
        assert_eq!(
            parse("etcd://[fe80::1]").unwrap().endpoints,
            ["[fe80::1]:2379"]
        );
        for (url, needle) in [
            ("etcd://", "empty endpoint"),
            ("etcd://a,,b", "empty endpoint"),
            ("etcd://a:0", "port \"0\""),
            ("etcd://a:99999", "port \"99999\""),
            ("etcd://a:x", "port \"x\""),
            ("etcd://::1", "brackets"),
            ("etcd://[::1", "not closed"),
            ("etcd://[zz]:1", "not an IPv6"),
            ("etcd://a:1/prefix", "--etcd-prefix"),
            ("etcd://a:1?x=y", "--etcd-prefix"),
            ("etcd://u:p@a:1", "--etcd-username"),
            ("etcd://a b", "not a host name"),
            ("etcdx://a", "etcd://"),
        ] {
            let err = parse(url).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(err.contains(&format!("{url:?}")), "{url}: {err}");
        }
    }

    #[test]
    fn stale_tokens_are_told_from_bad_credentials() {
        use tonic::{Code, Status};
        for (code, message, stale) in [
            (
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
                true,
            ),
            (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
                true,
            ),
            (Code::Unknown, "auth: token is expired", true),
            (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
                false,
            ),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied",
                false,
            ),
            (
                Code::InvalidArgument,
                "etcdserver: user name is empty",
                false,
            ),
        ] {
            assert_eq!(
                is_stale_token(&Status::new(code, message)),
                stale,
                "{message}"
            );
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/t/"), b"/t0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    fn open_err(url: &str, options: OpenOptions) -> String {
        EtcdStore::open(url, &options).unwrap_err().to_string()
    }

    #[test]
    fn option_errors() {
        let dir = std::env::temp_dir();
        let e = open_err(
            "etcd://127.0.0.1:1",
            OpenOptions {
                etcd_ca: Some(dir.join("ca.pem")),
                ..Default::default()
            },
        );
        assert!(e.contains("does not use TLS; write etcds://"), "{e}");
        let e = open_err("etcds://127.0.0.1:1", OpenOptions::default());
        assert!(e.contains("set --etcd-ca FILE"), "{e}");
        let garbled = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            garbled.path(),
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = open_err(
            "etcds://127.0.0.1:1",
            OpenOptions {
                etcd_ca: Some(garbled.path().into()),
                ..Default::default()
            },
        );
        assert!(
            e.contains("TLS files cannot be used for https://127.0.0.1:1: Error parsing TLS"),
            "{e}"
        );
        let e = open_err(
            "etcds://127.0.0.1:1",
            OpenOptions {
                etcd_ca: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
        );
        assert!(
            e.contains("cannot read the etcd CA file /nonexistent/ca.pem"),
            "{e}"
        );
        let e = open_err(
            "etcd://127.0.0.1:1",
            OpenOptions {
                etcd_username: Some("u".into()),
                ..Default::default()
            },
        );
        assert!(e.contains("without a password"), "{e}");
        let e = open_err(
            "etcd://127.0.0.1:1",
            OpenOptions {
                etcd_prefix: Some(String::new()),
                ..Default::default()
            },
        );
        assert!(e.contains("prefix is empty"), "{e}");
    }

    #[test]
    fn describe_names_endpoints_and_custom_prefix() {
        let s = EtcdStore::open("etcd://h1,h2:1", &OpenOptions::default()).unwrap();
        assert_eq!(s.describe(), "etcd://h1:2379,h2:1");
        let s = EtcdStore::open(
            "etcd://h1",
            &OpenOptions {
                etcd_prefix: Some("/x/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.describe(), "etcd://h1:2379 (key prefix /x/)");
        let s = EtcdStore::open(
            "etcd://h1",
            &OpenOptions {
                etcd_prefix: Some("/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.prefix(), "/x/");
    }
}
