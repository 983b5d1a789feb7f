//! Writing a plan too large for one transaction in several, and undoing the parts written
//! when a later one fails (see `Catalog::commit_in_parts`).

use super::write::{new_guard, Plan};
use super::{Catalog, CatalogError, CONFIG_GUARD_KEY};
use crate::retry::{self, MAX_ATTEMPTS};
use crate::store::{Compare, Op, Read, Store, StoreError, TxnLimits, TxnOutcome};
use crate::text::quoted;

impl<S: Store + ?Sized> Catalog<'_, S> {
    /// Writes a plan too large for one transaction in several, all or nothing for the user.
    ///
    /// Everything was validated against one reading of the store. The parts then go in
    /// order: first the resources that are checked on their own (reservations, nodes,
    /// namespaces), packed to the store's limits, and last, in one transaction, every
    /// IPPool, SpiderIPPool, SpiderSubnet and the IPAMConfiguration, which are checked
    /// against one another (with the allocator's in-use answers). Each part compares the
    /// records it writes (unchanged since read) and `config/guard` (unchanged since the part
    /// before, or since the read), and writes a new nonce to the guard. So:
    /// - any configuration change by another writer in between fails the next part, and the
    ///   command undoes its earlier parts and starts over;
    /// - an allocator never plans from a configuration this command half wrote and keeps
    ///   using it: a node cache that read between two parts holds a nonce the next part
    ///   replaces, and an allocator that reads fresh in between sees only whole parts, where
    ///   the pools and the configuration are either all old or all new, and the records
    ///   written before them are ones valid in either;
    /// - when a part fails, the parts before it are undone ([`Catalog::undo`]) and the error
    ///   says so.
    pub(super) fn commit_in_parts(
        &self,
        plan: &Plan,
        limits: TxnLimits,
    ) -> Result<Option<Vec<i64>>, CatalogError> {
        let parts = plan.parts(limits)?;
        let mut revisions = vec![0; plan.items.len()];
        let mut guard = plan.guard;
        let mut written: Vec<(&[usize], Option<i64>)> = Vec::new();
        for (number, part) in parts.iter().enumerate() {
            let mut compares = vec![Compare::unchanged(CONFIG_GUARD_KEY, guard)];
            let mut ops = Vec::new();
            for &i in part {
                let item = &plan.items[i];
                compares.push(item.compare());
                ops.extend(item.op.clone());
            }
            if number + 1 == parts.len() {
                compares.extend(plan.extra.iter().cloned());
            }
            ops.push(new_guard());
            let failure = match self.store.txn(&compares, &ops) {
                Ok(TxnOutcome::Committed(rev)) => {
                    guard = rev;
                    for &i in part {
                        revisions[i] = rev;
                    }
                    written.push((part, Some(rev)));
                    continue;
                }
                Ok(TxnOutcome::Conflict) => None,
                Err(e) => Some(e),
            };
            let certain = written.len();
            if failure.as_ref().is_some_and(StoreError::is_transient) {
                // No answer: the part may have been applied. Undoing it is safe either way.
                written.push((part, None));
            }
            let undo = self.undo(plan, &written, limits);
            let restored = written[..certain].iter().map(|(p, _)| p.len()).sum();
            let told = undo.describe(plan, restored);
            let cause = match (failure, undo.failed) {
                (None, None) => return Ok(None),
                (Some(e), _) | (None, Some(e)) => e,
            };
            return Err(CatalogError::PartFailed {
                cause: Box::new(CatalogError::Store(cause)),
                parts: parts.len(),
                failed: number + 1,
                undo: told,
            });
        }
        Ok(Some(revisions))
    }

    /// Puts back what the `written` parts of `plan` changed, the last part first: each record
    /// as it was read, or deleted when it was absent. A record changed by another writer since
    /// is left with that writer's content. `written` holds each part's revision, or `None`
    /// for a part that may or may not have been applied.
    fn undo(&self, plan: &Plan, written: &[(&[usize], Option<i64>)], limits: TxnLimits) -> Undo {
        let mut undo = Undo::default();
        for (part, revision) in written.iter().rev() {
            let mut pending: Vec<usize> = part.to_vec();
            let undone = retry::on_conflict(MAX_ATTEMPTS, "undo", |_| {
                if pending.is_empty() {
                    return Ok(Some(()));
                }
                match self.try_undo(plan, &pending, *revision, limits)? {
                    None => pending.clear(),
                    Some(conflicted) => {
                        let (again, kept) = self.sort_conflicted(plan, &conflicted, *revision)?;
                        undo.kept.extend(kept);
                        pending = again;
                    }
                }
                Ok(None)
            });
            if let Err(e) = undone {
                undo.failed = Some(e);
                return undo;
            }
            undo.kept.extend(pending);
        }
        undo
    }

    /// Undoes `pending` items of one part, in as many transactions as the limits ask for.
    /// Returns the items of the transactions that met a conflict, if any: those were not
    /// undone.
    fn try_undo(
        &self,
        plan: &Plan,
        pending: &[usize],
        revision: Option<i64>,
        limits: TxnLimits,
    ) -> Result<Option<Vec<usize>>, StoreError> {
        let mut conflicted = Vec::new();
        let cost = |i: usize| {
            let item = &plan.items[i];
            Load::of_txn(&[item.written(revision)], &[item.restore()])
        };
        for (batch, _) in pack(pending.iter().copied(), cost, limits) {
            let compares: Vec<Compare> = batch
                .iter()
                .map(|&i| plan.items[i].written(revision))
                .collect();
            let mut ops: Vec<Op> = batch.iter().map(|&i| plan.items[i].restore()).collect();
            ops.push(new_guard());
            if self.store.txn(&compares, &ops)? == TxnOutcome::Conflict {
                conflicted.extend(batch);
            }
        }
        Ok((!conflicted.is_empty()).then_some(conflicted))
    }

    /// Reads the `conflicted` items again: those that still hold this command's write are
    /// undone again (first list), those back as they were need nothing, and the others were
    /// changed by another writer and are kept (second list).
    fn sort_conflicted(
        &self,
        plan: &Plan,
        conflicted: &[usize],
        revision: Option<i64>,
    ) -> Result<(Vec<usize>, Vec<usize>), StoreError> {
        let reads: Vec<Read> = conflicted
            .iter()
            .map(|&i| Read::Get(plan.items[i].key.clone()))
            .collect();
        let snap = self.read_in_parts(&reads)?;
        let (mut again, mut kept) = (Vec::new(), Vec::new());
        for (n, &i) in conflicted.iter().enumerate() {
            let item = &plan.items[i];
            let now = snap.get(n);
            if item.written(revision).holds(now) {
                again.push(i);
            } else if now.map(|kv| &kv.value) != item.before.as_ref().map(|kv| &kv.value) {
                kept.push(i);
            }
        }
        Ok((again, kept))
    }
}

impl Plan {
    /// The items written, split into transactions within `limits` (see
    /// [`Catalog::commit_in_parts`]): those checked on their own first, packed in order;
    /// then, in the last part, everything written together. Items left as they are need no
    /// part: the guard's compares cover the configuration they belong to.
    pub(super) fn parts(&self, limits: TxnLimits) -> Result<Vec<Vec<usize>>, CatalogError> {
        let written = |together: bool| {
            (0..self.items.len())
                .filter(move |&i| {
                    let item = &self.items[i];
                    item.op.is_some() && item.written_together() == together
                })
                .collect::<Vec<usize>>()
        };
        let together = written(true);
        let mut together_load = Load::of_txn(&self.extra, &[]);
        for &i in &together {
            together_load = together_load.plus(self.items[i].load());
        }
        let alone = Load::guard().plus(together_load);
        let needed = alone.compares.max(alone.ops);
        if needed > limits.max_ops {
            return Err(CatalogError::TooManyTogether {
                count: together.len(),
                needed,
                max_ops: limits.max_ops,
            });
        }
        let mut parts = pack(written(false), |i| self.items[i].load(), limits);
        match parts.last_mut() {
            Some((part, load)) if load.plus(together_load).fits(limits) => part.extend(together),
            _ => parts.push((together, alone)),
        }
        Ok(parts.into_iter().map(|(part, _)| part).collect())
    }
}

/// Packs `items`, in order, into transactions whose loads (with the guard's) fit `limits`;
/// an item too large even alone gets one of its own, for the store to refuse by name.
/// Returns each transaction's items and load.
fn pack(
    items: impl IntoIterator<Item = usize>,
    cost: impl Fn(usize) -> Load,
    limits: TxnLimits,
) -> Vec<(Vec<usize>, Load)> {
    let mut packed: Vec<(Vec<usize>, Load)> = Vec::new();
    for i in items {
        let load = cost(i);
        match packed.last_mut() {
            Some((part, sum)) if sum.plus(load).fits(limits) => {
                part.push(i);
                *sum = sum.plus(load);
            }
            _ => packed.push((vec![i], Load::guard().plus(load))),
        }
    }
    packed
}

/// What one request carries, to compare with a store's [`TxnLimits`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    compares: usize,
    ops: usize,
    bytes: usize,
}

/// Bytes counted per compare or write beyond its key and value: the store's key prefix and
/// the request's framing.
const ENTRY_OVERHEAD: usize = 96;

/// Bytes of a request's limit kept free for what [`Load`] does not count.
const REQUEST_MARGIN: usize = 16 * 1024;

impl Load {
    pub(super) fn of_txn(compares: &[Compare], ops: &[Op]) -> Self {
        let compare_bytes = compares.iter().map(|c| match c {
            Compare::ModRevision(key, _) => key.len(),
            Compare::Value(key, value) => key.len() + value.len(),
        });
        let op_bytes = ops.iter().map(|op| match op {
            Op::Put(key, value) => key.len() + value.len(),
            Op::Delete(key) => key.len(),
        });
        Self {
            compares: compares.len(),
            ops: ops.len(),
            bytes: compare_bytes
                .chain(op_bytes)
                .map(|b| b + ENTRY_OVERHEAD)
                .sum(),
        }
    }

    /// The guard's compare and new nonce, which every part carries.
    fn guard() -> Self {
        Self::of_txn(&[Compare::unchanged(CONFIG_GUARD_KEY, 0)], &[new_guard()])
    }

    fn plus(self, other: Self) -> Self {
        Self {
            compares: self.compares + other.compares,
            ops: self.ops + other.ops,
            bytes: self.bytes + other.bytes,
        }
    }

    pub(super) fn fits(self, limits: TxnLimits) -> bool {
        self.compares <= limits.max_ops
            && self.ops <= limits.max_ops
            && self.bytes <= limits.max_bytes.saturating_sub(REQUEST_MARGIN)
    }
}

/// What undoing the parts written before a failure did.
#[derive(Default)]
struct Undo {
    /// Items another writer changed since this command wrote them: left as they are.
    kept: Vec<usize>,
    /// Why undoing stopped, if it did.
    failed: Option<StoreError>,
}

impl Undo {
    /// How the undo ended, for the error message; `restored` counts the items the parts
    /// certainly wrote.
    fn describe(&self, plan: &Plan, restored: usize) -> String {
        let name = |&i: &usize| {
            let item = &plan.items[i];
            format!("{} {}", item.kind, quoted(&item.name))
        };
        let list = |items: &[usize]| {
            let mut names: Vec<String> = items.iter().take(10).map(name).collect();
            if items.len() > 10 {
                names.push(format!("and {} more", items.len() - 10));
            }
            names.join(", ")
        };
        let resources = if restored == 1 {
            "resource"
        } else {
            "resources"
        };
        if let Some(e) = &self.failed {
            return format!(
                "putting back the {restored} {resources} written before it failed too ({e}); \
                 some may keep the content this command gave them: run the command again once \
                 the datastore answers, or check them with `tessera get`"
            );
        }
        let mut text =
            format!("the {restored} {resources} written before it were put back as they were");
        match self.kept.len() {
            0 => text.push_str(", so nothing was changed"),
            1 => text.push_str(&format!(
                ", except {}, which another writer changed since (it keeps that writer's \
                 content)",
                list(&self.kept)
            )),
            _ => text.push_str(&format!(
                ", except {}, which other writers changed since (they keep those writers' \
                 content)",
                list(&self.kept)
            )),
        }
        text
    }
}
