//! Which datastore a command uses, and opening it.

use anyhow::Context as _;
use tessera_core::store::Store;

/// Where the datastore value came from; `status` reports it so users know why a store is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--datastore` on the command line.
    Flag,
    /// The `TESSERA_DATASTORE` environment variable.
    Env,
    /// Neither was given.
    Default,
}

/// An open datastore and how it was chosen.
pub struct Datastore {
    /// How it was chosen.
    pub origin: Origin,
    /// The open store.
    pub store: Box<dyn Store>,
}

impl Datastore {
    /// Resolves and opens the datastore. `given` is the value clap collected from the flag or
    /// the environment, `origin` says which one it was; `options` are the etcd connection
    /// settings.
    pub fn open(
        given: Option<&str>,
        origin: Origin,
        options: &tessera_store::OpenOptions,
    ) -> anyhow::Result<Self> {
        let url = tessera_store::resolve_datastore(given);
        let origin = if given.is_some_and(|g| !g.is_empty()) {
            origin
        } else {
            Origin::Default
        };
        if origin == Origin::Default {
            create_parent_dir(&url)?;
        }
        let store = tessera_store::open_with(&url, options)?;
        Ok(Self { origin, store })
    }

    /// How `status` names the store, e.g. `sqlite:/home/u/.local/share/tessera/tessera.db`.
    pub fn describe(&self) -> String {
        self.store.describe()
    }
}

/// A newcomer's first command must work without preparing directories, so the default
/// store's directory is created on demand. Explicitly given paths are left alone: a typo there
/// should fail rather than create a tree somewhere unexpected.
fn create_parent_dir(url: &str) -> anyhow::Result<()> {
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create directory {} for the default datastore; create it, or choose \
                     another store with --datastore or TESSERA_DATASTORE",
                    dir.display()
                )
            })?;
        }
    }
    Ok(())
}
