//! Helpers shared by the process tests: each test gets its own SQLite store in a temporary
//! directory and runs the real `tessera` binary against it.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status code (-1 when killed by a signal).
    pub code: i32,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code().unwrap_or(-1),
        }
    }
}

/// A private datastore and the means to run `tessera` against it.
pub struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Env {
    /// A fresh, empty store.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("t.db");
        Self { dir, db }
    }

    /// Path of the store file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The temporary directory holding the store (and anything else a test writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tessera --datastore <db> ARGS`, with no datastore inherited from the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.arg("--datastore")
            .arg(&self.db)
            .args(args)
            .env_remove("TESSERA_DATASTORE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `tessera ARGS` with `stdin` as standard input.
    pub fn run_with_input(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera");
        child
            .stdin
            .take()
            .expect("stdin pipe")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait for tessera").into()
    }

    /// Runs `tessera ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run tessera").into()
    }

    /// Runs `tessera ARGS`, expects success and no error output, returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "tessera {args:?} failed; stdout:\n{}",
            run.stdout
        );
        run.stdout
    }

    /// Like [`Env::ok`] with standard input.
    pub fn ok_with_input(&self, args: &[&str], stdin: &str) -> String {
        let run = self.run_with_input(args, stdin);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "tessera {args:?} failed; stdout:\n{}",
            run.stdout
        );
        run.stdout
    }

    /// Runs `tessera ARGS`, expects exit status 1 and no output, returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (1, ""),
            "tessera {args:?} should have failed; stderr:\n{}",
            run.stderr
        );
        run.stderr
    }

    /// Writes `text` to a file in the test's directory and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write test file");
        path.to_string_lossy().into_owned()
    }
}

/// Replaces the values of the fields the catalog generates (uid, creationTimestamp,
/// resourceVersion) with placeholders, so whole documents can be compared.
pub fn normalize_generated(text: &str) -> String {
    text.lines()
        .map(|line| {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                let yaml = format!("{field}: ");
                if let Some(pos) = line.find(&yaml) {
                    return format!("{}{yaml}<{field}>", &line[..pos]);
                }
                let json = format!("\"{field}\": ");
                if let Some(pos) = line.find(&json) {
                    let comma = if line.ends_with(',') { "," } else { "" };
                    return format!("{}{json}\"<{field}>\"{comma}", &line[..pos]);
                }
            }
            line.to_string()
        })
        .map(|l| l + "\n")
        .collect()
}
