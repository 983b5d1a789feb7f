//! The node cache in a directory on the node's disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CachedKv, NodeCache, NodeView, FORMAT};

/// A cache in a directory on the node's disk: one file per node view and per handle, each
/// replaced atomically (write, then rename), so concurrent plugin processes of one node
/// never read a torn file. Files are private to the owner (0600 in a 0700 directory).
pub struct DirNodeCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct HandleFile {
    format: u32,
    id: String,
    kv: CachedKv,
}

impl DirNodeCache {
    /// A cache under `base`, in a subdirectory of its own for the datastore `identity` (e.g.
    /// its endpoints and key prefix), so two datastores never share entries.
    pub fn open(base: &Path, identity: &str) -> std::io::Result<Self> {
        let dir = base.join(format!("{:016x}", fnv1a(identity.as_bytes())));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&dir)?;
        Ok(Self { dir })
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}-{:016x}.json", fnv1a(name.as_bytes())))
    }

    fn read<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Option<T> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) {
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), unique_suffix()));
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(&bytes)?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

impl NodeCache for DirNodeCache {
    fn load_view(&self, node: &str) -> Option<NodeView> {
        let view: NodeView = self.read(&self.path("node", node))?;
        (view.node == node && view.format == FORMAT).then_some(view)
    }
    fn save_view(&self, view: &NodeView) {
        self.write(&self.path("node", &view.node), view);
    }
    fn load_handle(&self, id: &str) -> Option<CachedKv> {
        let file: HandleFile = self.read(&self.path("handle", id))?;
        (file.id == id && file.format == FORMAT).then_some(file.kv)
    }
    fn save_handle(&self, id: &str, kv: &CachedKv) {
        let file = HandleFile {
            format: FORMAT,
            id: id.to_string(),
            kv: kv.clone(),
        };
        self.write(&self.path("handle", id), &file);
    }
    fn forget_handle(&self, id: &str) {
        let _ = std::fs::remove_file(self.path("handle", id));
    }
}

/// FNV-1a, 64 bits: stable across builds, unlike the standard library's hasher, so file
/// names stay the same between plugin versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use crate::store::KeyValue;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn view() -> NodeView {
        NodeView::from_snapshot(
            "n1",
            &[kv(keys::CONFIG_GUARD, "{\"nonce\":\"a\"}", 3)],
            Some(&kv("nodes/n1", "{}", 4)),
            Some(("ns", None)),
            &[kv("blocks/n1/10.0.0.0-26", "{}", 5)],
        )
        .expect("a guarded snapshot makes a view")
    }

    #[test]
    fn directory_cache_round_trips_and_separates_datastores() {
        let base = tempfile::tempdir().unwrap();
        let a = DirNodeCache::open(base.path(), "etcd://a").unwrap();
        let b = DirNodeCache::open(base.path(), "etcd://b").unwrap();
        let v = view();
        a.save_view(&v);
        assert_eq!(a.load_view("n1"), Some(v));
        assert_eq!(b.load_view("n1"), None);
        assert_eq!(a.load_view("n2"), None);
        let h = CachedKv::from_kv(&kv("handles/h", "{}", 7)).unwrap();
        a.save_handle("h", &h);
        assert_eq!(a.load_handle("h"), Some(h));
        a.forget_handle("h");
        assert_eq!(a.load_handle("h"), None);
        // A damaged file is a miss, not an error.
        std::fs::write(a.path("node", "n1"), b"{not json").unwrap();
        assert_eq!(a.load_view("n1"), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.dir()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let leftovers: Vec<_> = std::fs::read_dir(a.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
