//! A small line logger. Logs never go to stdout: stdout carries the CNI result.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_core::catalog::format_rfc3339;

use crate::config::LogLevel;

/// Where log lines go.
enum Sink {
    Stderr,
    File(File),
}

/// Writes `<time> tessera-ipam[<pid>] <LEVEL> <context>: <message>` lines.
pub struct Logger {
    level: LogLevel,
    sink: Sink,
    context: String,
}

impl Logger {
    /// Logs warnings and errors to stderr (before the configuration says otherwise).
    pub fn stderr() -> Self {
        Self {
            level: LogLevel::Warning,
            sink: Sink::Stderr,
            context: String::new(),
        }
    }

    /// Switches to the configured level and file. A file that cannot be opened is reported
    /// on stderr and logging stays there: a broken log path must not fail the pod.
    pub fn configure(&mut self, level: LogLevel, file: Option<&Path>) {
        self.level = level;
        if let Some(path) = file {
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path);
            match opened {
                Ok(f) => self.sink = Sink::File(f),
                Err(e) => self.warn(format!(
                    "cannot open ipam.log_file {}: {e}; logging to stderr instead",
                    path.display()
                )),
            }
        }
    }

    /// Sets what every following line is about (verb, network, attachment).
    pub fn set_context(&mut self, context: String) {
        self.context = context;
    }

    /// Whether lines of `level` are written.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level != LogLevel::None && level <= self.level
    }

    /// Logs a failure.
    pub fn error(&self, msg: impl Display) {
        self.write(LogLevel::Error, "ERROR", msg);
    }

    /// Logs something that needs attention.
    pub fn warn(&self, msg: impl Display) {
        self.write(LogLevel::Warning, "WARN", msg);
    }

    /// Logs an operation.
    pub fn info(&self, msg: impl Display) {
        self.write(LogLevel::Info, "INFO", msg);
    }

    /// Logs detail.
    pub fn debug(&self, msg: impl Display) {
        self.write(LogLevel::Debug, "DEBUG", msg);
    }

    fn write(&self, level: LogLevel, tag: &str, msg: impl Display) {
        if !self.enabled(level) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = format_rfc3339(now.as_secs() as i64);
        let stamp = format!(
            "{}.{:03}Z",
            stamp.trim_end_matches('Z'),
            now.subsec_millis()
        );
        let sep = if self.context.is_empty() { "" } else { ": " };
        let line = format!(
            "{stamp} tessera-ipam[{}] {tag} {}{sep}{msg}\n",
            std::process::id(),
            self.context
        );
        // One write per line keeps lines of concurrent processes whole in an append-mode file.
        let _ = match &self.sink {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::File(f) => (&*f).write_all(line.as_bytes()),
        };
    }
}
