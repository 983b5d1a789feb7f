//! `tessera-ipam`: the Tessera CNI IPAM plugin.
//!
//! A container runtime (or the main plugin it runs: bridge, macvlan, ipvlan, ptp) executes
//! this binary with `CNI_COMMAND` and friends in the environment and the network
//! configuration on stdin. The result or error JSON goes to stdout; logs go to
//! `ipam.log_file` or stderr. Every failure passes through [`main`], which prints the
//! spec's error object and exits non-zero.

mod autopool;
mod config;
mod env;
mod error;
mod kubernetes;
mod log;
mod plugin;
mod result;
mod spider_annotations;
mod version;

use std::io::{Read, Write};

use error::CniError;
use log::Logger;

fn main() {
    let mut log = Logger::stderr();
    let mut reply_version = version::LATEST.to_string();
    let outcome = run(&mut log, &mut reply_version);
    let (text, status) = match outcome {
        Ok(None) => return,
        Ok(Some(value)) => (value.to_string(), 0),
        Err(e) => {
            log.error(&e);
            (e.to_json(&reply_version).to_string(), 1)
        }
    };
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    if written.is_err() {
        // The runtime went away; nobody is left to read the answer.
        std::process::exit(1);
    }
    std::process::exit(status);
}

/// Reads the invocation and runs it. `reply_version` is set as soon as the configuration's
/// `cniVersion` is known, so that errors answer in the caller's version.
fn run(
    log: &mut Logger,
    reply_version: &mut String,
) -> Result<Option<serde_json::Value>, CniError> {
    let getenv = |name: &str| std::env::var(name).ok();
    let Some(command) = env::command(&getenv)? else {
        eprintln!(
            "tessera-ipam {}: the Tessera CNI IPAM plugin. Container runtimes run it with \
             CNI_COMMAND set (ADD, DEL, CHECK, GC, STATUS, VERSION) and the network \
             configuration on stdin.\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            version::SUPPORTED.join(", ")
        );
        return Ok(None);
    };
    if command == env::Command::Version {
        return Ok(Some(version::version_info()));
    }
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(config::MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::decode(format!("cannot read the network configuration: {e}")))?;
    if stdin.len() as u64 > config::MAX_CONFIG_BYTES {
        return Err(CniError::decode(format!(
            "the network configuration on stdin is larger than {} bytes",
            config::MAX_CONFIG_BYTES
        )));
    }
    let map = config::parse_json(&stdin)?;
    if let Some(v) = config::version_text(&map) {
        *reply_version = v.to_string();
    }
    let conf = config::parse(&map)?;
    let env = env::read(command, &getenv)?;
    log.configure(conf.ipam.log_level, conf.ipam.log_file.as_deref());
    log.set_context(if command.is_per_attachment() {
        format!(
            "{} {} {}/{}",
            command.as_str(),
            conf.name,
            env.container_id,
            env.ifname
        )
    } else {
        format!("{} {}", command.as_str(), conf.name)
    });
    if !conf.unknown_ipam_keys.is_empty() {
        log.warn(format_args!(
            "ignoring unknown ipam keys: {}",
            conf.unknown_ipam_keys.join(", ")
        ));
    }
    let allowed = match command {
        env::Command::Check => conf.version.has_check(),
        env::Command::Gc | env::Command::Status => conf.version.has_gc_status(),
        _ => true,
    };
    if !allowed {
        return Err(CniError::new(
            error::code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} does not allow {} (it needs {} or later)",
                conf.version.as_str(),
                command.as_str(),
                if command == env::Command::Check {
                    "0.4.0"
                } else {
                    "1.1.0"
                }
            ),
        ));
    }
    let invocation = plugin::Invocation {
        command,
        env,
        conf,
        log,
        pod_from_api: None,
    };
    invocation.run()
}
