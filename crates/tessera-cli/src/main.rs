//! `tessera`: the Tessera admin command line.
//!
//! Every command returns its output as text or an error; [`main`] is the single place that
//! prints them, so failures always look like `Error: <message>` on standard error with exit
//! status 1, and nothing half-printed precedes them.

mod cli;
mod datastore;
mod ipam_cmd;
mod manifest_input;
mod map_cmd;
mod migrate_cmd;
mod migrate_owners;
mod plan_cmd;
mod report_html;
mod res_cmd;
mod spider_counts;
mod status;
mod table;
mod yaml;

use std::io::Write as _;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command, IpamCommand};
use datastore::{Datastore, Origin};
use ipam_cmd::Report;
use res_cmd::{MetaTarget, WriteMode};

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (m, cli)));
    let (matches, cli) = match parsed {
        Ok(both) => both,
        Err(e) if e.use_stderr() => {
            // Usage errors look and exit like every other error (calicoctl and kubectl exit 1
            // on them too), with clap's usage hint kept below the message.
            let text = e.render().to_string();
            eprint!("Error: {}", text.strip_prefix("error: ").unwrap_or(&text));
            return ExitCode::FAILURE;
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    let origin = match matches.value_source("datastore") {
        Some(ValueSource::EnvVariable) => Origin::Env,
        Some(ValueSource::CommandLine) => Origin::Flag,
        _ => Origin::Default,
    };
    if let Command::Ipam {
        command: IpamCommand::Migrate(args),
    } = &cli.command
    {
        return migrate(&cli, origin, args);
    }
    match run(cli, origin) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`tessera get ippool | head -1`) is not worth a second error.
            let _ = stdout.write_all(report.stdout.as_bytes());
            let _ = stdout.flush();
            if report.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ipam migrate` prints as it goes and has an exit status of its own.
fn migrate(cli: &Cli, origin: Origin, args: &cli::MigrateArgs) -> ExitCode {
    match Datastore::open(cli.datastore.as_deref(), origin, &cli.etcd.options()) {
        Ok(ds) => migrate_cmd::main(&*ds.store, args),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, origin: Origin) -> anyhow::Result<Report> {
    if let Command::Version = cli.command {
        return Ok(format!("tessera {}\n", env!("CARGO_PKG_VERSION")).into());
    }
    if let Command::Plan(args) = &cli.command {
        if args.pool.is_none() {
            return Ok(plan_cmd::run(args)?.into());
        }
    }
    let ds = Datastore::open(cli.datastore.as_deref(), origin, &cli.etcd.options())?;
    let store = &*ds.store;
    let text = match &cli.command {
        Command::Apply(a) => res_cmd::write(store, WriteMode::Apply, &a.filename)?,
        Command::Create(a) => res_cmd::write(store, WriteMode::Create, &a.filename)?,
        Command::Replace(a) => res_cmd::write(store, WriteMode::Replace, &a.filename)?,
        Command::Delete(a) => res_cmd::delete(store, a)?,
        Command::Get(a) => res_cmd::get(store, a)?,
        Command::Patch(a) => res_cmd::patch(store, a)?,
        Command::Label(a) => res_cmd::edit_meta(store, MetaTarget::Labels, a)?,
        Command::Annotate(a) => res_cmd::edit_meta(store, MetaTarget::Annotations, a)?,
        Command::Ipam { command } => match command {
            IpamCommand::Show(a) => ipam_cmd::show(store, a)?,
            IpamCommand::Check => return ipam_cmd::check(store),
            IpamCommand::Configure(a) => ipam_cmd::configure(store, a)?,
            IpamCommand::Assign(a) => ipam_cmd::assign(store, a)?,
            IpamCommand::Release(a) => ipam_cmd::release(store, a)?,
            IpamCommand::Migrate(_) => unreachable!("run by migrate() before"),
            IpamCommand::Report(a) => report_html::write_report(store, a)?,
        },
        Command::Status => status::status(&ds)?,
        Command::Plan(a) => plan_cmd::run_live(store, a)?,
        Command::Version => {
            unreachable!("answered before opening the datastore")
        }
    };
    Ok(text.into())
}
