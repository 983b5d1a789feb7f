//! `tessera ipam migrate`: moving a pool's workloads to another pool, or changing its block
//! size, one datastore write at a time (the steps and their order live in
//! `tessera_core::migrate`). Unlike the other commands it prints as it goes, so that a long
//! wait shows its progress and an interrupted run shows how far it got.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use tessera_core::catalog::format_rfc3339;
use tessera_core::drain::DrainStatus;
use tessera_core::ipam::{AssignRequest, Holder, Ipam};
use tessera_core::migrate::{
    count, execute, next_block_size_step, next_move_step, BlockSizeRequest, DrainSettings,
    MoveRequest, Step, Target, Waiting,
};
use tessera_core::resources::Resource;
use tessera_core::store::{MemoryStore, Op, Read, Store};

use crate::cli::MigrateArgs;
use crate::table::Columns;

/// Exit status when addresses of the source are still held and the command stops waiting
/// (`--no-wait`, `--timeout`): running it again continues.
const STILL_HELD: u8 = 2;

/// Time between two looks at who holds the source's addresses.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one migration makes at most in one run (a block-size change makes 8): a plan that
/// keeps asking for writes past this is not converging.
const MAX_WRITES: usize = 32;

/// Which migration the flags ask for.
enum Migration {
    Move(MoveRequest),
    BlockSize(BlockSizeRequest),
}

impl Migration {
    fn next_step(&self, store: &dyn Store) -> anyhow::Result<Step> {
        Ok(match self {
            Migration::Move(req) => next_move_step(store, req)?,
            Migration::BlockSize(req) => next_block_size_step(store, req)?,
        })
    }

    /// Dates the drain request of the next step now: a block-size change's second move asks
    /// for restarts after those of its first.
    fn stamp(&mut self, now: String) {
        match self {
            Migration::Move(req) => req.drain.now = now,
            Migration::BlockSize(req) => req.drain.now = now,
        }
    }

    /// The message to end with when `step` was the last one.
    fn done_after(&self, step: &Step) -> Option<String> {
        match self {
            Migration::Move(_) => None,
            Migration::BlockSize(req) => req.done_after(step),
        }
    }
}

/// Runs `tessera ipam migrate` and prints its errors as every command does.
pub fn main(store: &dyn Store, args: &MigrateArgs) -> ExitCode {
    match run(store, args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(STILL_HELD),
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(true)` when the migration is done, `Ok(false)` when it stopped waiting.
fn run(store: &dyn Store, args: &MigrateArgs) -> anyhow::Result<bool> {
    let mut migration = migration(args)?;
    if args.dry_run {
        dry_run(store, &migration, args)?;
        return Ok(true);
    }
    let mut writes = 0;
    let mut wait = WaitDisplay::new(args);
    loop {
        migration.stamp(format_rfc3339(unix_now()));
        let step = migration.next_step(store)?;
        match &step {
            Step::Done(message) => {
                wait.finish();
                say(&format!("Done: {message}."));
                return Ok(true);
            }
            Step::Wait(waiting) => {
                if !wait.show(waiting) {
                    return Ok(false);
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            _ => {
                wait.finish();
                writes += 1;
                if writes > MAX_WRITES {
                    bail!("the migration made {MAX_WRITES} writes without finishing; check the pools with `tessera get ippool -o yaml` and run the command again");
                }
                say(&format!("{step}"));
                execute(store, &step)?;
                if let Some(message) = migration.done_after(&step) {
                    say(&format!("Done: {message}."));
                    return Ok(true);
                }
            }
        }
    }
}

/// The request the flags make.
fn migration(args: &MigrateArgs) -> anyhow::Result<Migration> {
    let drain = DrainSettings {
        max_parallel: args.max_parallel,
        ready_timeout_seconds: args.ready_timeout.as_secs().max(1),
        now: format_rfc3339(unix_now()),
    };
    if let (Some(pool), Some(block_size)) = (&args.pool, args.block_size) {
        return Ok(Migration::BlockSize(BlockSizeRequest {
            pool: pool.clone(),
            block_size,
            temporary_cidr: args.temporary_cidr.map(|n| n.trunc()),
            temporary_name: args.temporary_pool.clone(),
            drain,
        }));
    }
    let Some(from) = &args.from else {
        bail!(
            "give --from POOL with --to POOL or --to-file FILE, or --pool POOL with --block-size N"
        );
    };
    let to = match (&args.to, &args.to_file) {
        (Some(name), _) => Target::Pool(name.clone()),
        (None, Some(file)) => Target::Manifest(Box::new(target_manifest(file)?)),
        (None, None) => bail!("give the target pool with --to POOL or --to-file FILE"),
    };
    Ok(Migration::Move(MoveRequest {
        from: from.clone(),
        to,
        drain,
    }))
}

/// The one IPPool of the `--to-file` manifest.
fn target_manifest(file: &str) -> anyhow::Result<tessera_core::resources::calico::IPPool> {
    let mut resources = crate::res_cmd::read_resources(file)?;
    match (resources.pop(), resources.is_empty()) {
        (Some(Resource::IPPool(pool)), true) => Ok(pool),
        (Some(other), true) => bail!(
            "{file}: --to-file takes the manifest of one IPPool; this one is of kind {}",
            other.kind()
        ),
        _ => bail!("{file}: --to-file takes a manifest of exactly one IPPool"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Prints one line on standard output at once (a killed run has shown all it did).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What the wait shows, and when it gives up.
struct WaitDisplay {
    no_wait: bool,
    deadline: Option<Instant>,
    tty: bool,
    /// Addresses held when this run started waiting: the progress bar's whole.
    total: Option<usize>,
    /// Whether the wait was announced.
    announced: bool,
    /// What was shown last, so that only changes are shown.
    last_list: Option<String>,
    last_status: Option<DrainStatus>,
    last_progress: String,
    bar_drawn: bool,
    command: String,
}

impl WaitDisplay {
    fn new(args: &MigrateArgs) -> Self {
        Self {
            no_wait: args.no_wait,
            deadline: args.timeout.map(|t| Instant::now() + t),
            tty: std::io::stderr().is_terminal(),
            total: None,
            announced: false,
            last_list: None,
            last_status: None,
            last_progress: String::new(),
            bar_drawn: false,
            command: rerun_command(std::env::args().skip(1)),
        }
    }

    /// Shows `waiting`; `false` when the command should stop waiting now.
    fn show(&mut self, waiting: &Waiting) -> bool {
        let held: usize = waiting.holders.iter().map(|h| h.addresses.len()).sum();
        let total = self.total.map_or(held, |t| t.max(held));
        self.total = Some(total);
        if !self.announced {
            self.announced = true;
            say(&format!(
                "Waiting until nothing holds an address of IPPool {} ({}): {} held.",
                waiting.pool,
                waiting.cidr,
                count(held, "address")
            ));
        }
        if let Some(status) = waiting
            .status
            .as_ref()
            .filter(|s| self.last_status.as_ref() != Some(*s))
        {
            self.clear_bar();
            say(&status_lines(status));
            self.last_status = Some(status.clone());
        }
        let stop = self.no_wait || self.deadline.is_some_and(|d| Instant::now() >= d);
        // Without the controller's report the list is all there is to see; when stopping,
        // it is what is left to do.
        let list = holders_table(&waiting.holders);
        let changed = self.last_list.as_deref() != Some(list.as_str());
        if changed && (waiting.status.is_none() || stop) {
            self.clear_bar();
            say(&format!("Still held:\n{}", list.trim_end()));
            self.last_list = Some(list);
        }
        if stop {
            say(&format!(
                "Run the same command again to continue: {}",
                self.command
            ));
            return false;
        }
        let line = progress_line(total, held, waiting.status.as_ref());
        if self.tty {
            self.progress(&format!("{} {line}", bar(total - held.min(total), total)));
        } else {
            self.progress(&line);
        }
        true
    }

    /// The progress line: redrawn in place on a terminal, a plain line when it changes
    /// otherwise.
    fn progress(&mut self, line: &str) {
        if line == self.last_progress && (self.bar_drawn || !self.tty) {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.bar_drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last_progress = line.to_string();
    }

    fn clear_bar(&mut self) {
        if self.bar_drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.bar_drawn = false;
        }
    }

    /// Ends the wait: the progress line stays, on its own line.
    fn finish(&mut self) {
        if self.bar_drawn {
            let _ = writeln!(std::io::stderr());
            self.bar_drawn = false;
        }
        self.total = None;
        self.announced = false;
        self.last_list = None;
        self.last_status = None;
        self.last_progress.clear();
    }
}

/// `[#####---------------]`: `done` of `total`, 20 characters wide.
fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

/// `moved 12/40 addresses, 3 workloads restarted, 1 restarting, 2 stranded pods`.
fn progress_line(total: usize, held: usize, status: Option<&DrainStatus>) -> String {
    let mut line = format!(
        "moved {}/{total} {}",
        total.saturating_sub(held),
        if total == 1 { "address" } else { "addresses" }
    );
    if let Some(s) = status {
        line.push_str(&format!(
            ", {} restarted, {} restarting, {}",
            count(s.restarted.len(), "workload"),
            s.restarting.len(),
            count(s.stranded.len(), "stranded pod")
        ));
    }
    line
}

/// The controller's report, one line per part that is not empty.
fn status_lines(s: &DrainStatus) -> String {
    let names = |list: &[tessera_core::drain::WorkloadRef]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![format!("Controller report of {}:", s.updated_at)];
    if let Some(error) = &s.error {
        lines.push(format!("  restarting nothing: {error}"));
    }
    for (what, list) in [
        ("restarted", &s.restarted),
        ("restarting", &s.restarting),
        ("pending", &s.pending),
    ] {
        if !list.is_empty() {
            lines.push(format!("  {what}: {}", names(list)));
        }
    }
    for n in &s.not_ready {
        lines.push(format!(
            "  not ready in time: {} ({}); the drain stopped restarting: fix it and run the \
             command again",
            n.workload, n.message
        ));
    }
    for p in &s.stranded {
        lines.push(format!(
            "  stranded: pod {}/{} ({}): delete or recreate it yourself",
            p.namespace, p.name, p.reason
        ));
    }
    lines.join("\n")
}

/// Who holds addresses: `NAMESPACE/POD  NODE  ADDRESSES  HANDLE`.
fn holders_table(holders: &[Holder]) -> String {
    let mut table = Columns::new(&["POD", "NODE", "ADDRESSES", "HANDLE"]);
    for h in holders {
        table.push(vec![
            h.pod().unwrap_or_else(|| "-".into()),
            h.attrs.node.clone().unwrap_or_else(|| "-".into()),
            h.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            h.handle.clone(),
        ]);
    }
    table.render()
}

/// This command line as the user can paste it back, without an etcd password given on it.
fn rerun_command(args: impl Iterator<Item = String>) -> String {
    let mut words = vec!["tessera".to_string()];
    let mut secret_next = false;
    for arg in args {
        let word = if secret_next {
            "<password>".to_string()
        } else if arg.starts_with("--etcd-password=") {
            "--etcd-password=<password>".to_string()
        } else {
            shell_quoted(&arg)
        };
        secret_next = arg == "--etcd-password";
        words.push(word);
    }
    words.join(" ")
}

fn shell_quoted(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `--dry-run`: the same planner, run on a copy of the datastore in memory where every
/// holder is released when the plan waits, prints every step; the datastore is not written.
fn dry_run(store: &dyn Store, migration: &Migration, args: &MigrateArgs) -> anyhow::Result<()> {
    let copy = copy_of(store)?;
    let owners = crate::migrate_owners::Resolver::new(args.kubeconfig.as_deref())?;
    let mut number = 0;
    for _ in 0..=MAX_WRITES {
        let step = migration.next_step(&copy)?;
        if let Step::Done(message) = &step {
            say(&format!("Then: {message}."));
            say("Dry run: nothing was changed.");
            return Ok(());
        }
        number += 1;
        say(&format!("{number}. {step}"));
        if let Step::Wait(waiting) = &step {
            say(&owners.grouped(&waiting.holders));
            restart_in_copy(&copy, &waiting.holders)?;
        } else {
            execute(&copy, &step)?;
        }
        if let Some(message) = migration.done_after(&step) {
            say(&format!("Then: {message}."));
            say("Dry run: nothing was changed.");
            return Ok(());
        }
    }
    bail!("the migration plan did not finish within {MAX_WRITES} steps")
}

/// What restarting the holders' pods does, in the copy: each handle gives its addresses back
/// and asks for as many again on the same node, from the pools that are enabled now. A pod
/// that would get no address just leaves (the real run's safety checks name such nodes).
fn restart_in_copy(copy: &MemoryStore, holders: &[Holder]) -> anyhow::Result<()> {
    let ipam = Ipam::new(copy);
    for h in holders {
        ipam.release_handle(&h.handle)
            .context("dry run: cannot release a handle in the copy")?;
        let Some(node) = h.attrs.node.clone() else {
            continue;
        };
        let v4 = h.addresses.iter().filter(|a| a.is_ipv4()).count();
        let request = AssignRequest {
            handle: h.handle.clone(),
            node,
            attrs: h.attrs.clone(),
            num_v4: v4 as u32,
            num_v6: (h.addresses.len() - v4) as u32,
            ..Default::default()
        };
        let _ = ipam.assign(&request);
    }
    Ok(())
}

/// Every record of `store`, in a store in memory.
fn copy_of(store: &dyn Store) -> anyhow::Result<MemoryStore> {
    let snapshot = store
        .read(&[Read::Prefix(String::new())])
        .context("cannot read the datastore")?;
    let ops: Vec<Op> = snapshot
        .list(0)
        .iter()
        .map(|kv| Op::Put(kv.key.clone(), kv.value.clone()))
        .collect();
    let copy = MemoryStore::new();
    copy.txn(&[], &ops).context("cannot copy the datastore")?;
    Ok(copy)
}

/// Parses `15m`, `90s`, `1h30m` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let signed: jiff::SignedDuration = text.parse().map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like 90s, 15m or 1h30m")
    })?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_to_run_again_is_quoted_and_hides_an_etcd_password() {
        let args = [
            "--etcd-password",
            "s3cret",
            "--etcd-password=x",
            "ipam",
            "migrate",
            "--to-file",
            "my pool.yaml",
        ];
        assert_eq!(
            rerun_command(args.iter().map(|a| a.to_string())),
            "tessera --etcd-password <password> --etcd-password=<password> ipam migrate \
             --to-file 'my pool.yaml'"
        );
    }

    #[test]
    fn a_report_with_an_error_says_why_nothing_is_restarted() {
        let status = DrainStatus {
            updated_at: "2026-12-01T10:01:00Z".into(),
            error: Some("the pool is not disabled".into()),
            ..DrainStatus::default()
        };
        assert_eq!(
            status_lines(&status),
            "Controller report of 2026-12-01T10:01:00Z:\n  restarting nothing: the pool is not \
             disabled"
        );
    }

    #[test]
    fn the_bar_fills_with_the_addresses_moved() {
        assert_eq!(bar(0, 4), "[--------------------]");
        assert_eq!(bar(1, 4), "[#####---------------]");
        assert_eq!(bar(0, 0), "[####################]");
    }
}
