//! The node cache in a directory on the node's disk.
//!
//! A view planted by another user would be planned from, and every compare of its commit can
//! hold while the configuration it carries is forged (a reservation moved, say), so the
//! plugin would hand out addresses that are in use. Only the process's own user may therefore
//! be able to change what the cache holds: the cache directory, the datastore's subdirectory
//! and every file must be owned by the process's effective user and writable by nobody else;
//! every directory above them must be owned by that user or root and writable by nobody
//! else, unless it has the sticky bit (as `/tmp` does). Symbolic links are refused for the
//! two directories and never followed for files.

use std::fs::{self, File, Metadata};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CachedKv, NodeCache, NodeView, FORMAT};
use crate::ownership::{effective_uid, others_who_may_write};

/// A cache in a directory on the node's disk: one file per node view and per handle, each
/// replaced atomically (write, then rename), so concurrent plugin processes of one node
/// never read a torn file. Files are private to the owner (0600 in a 0700 directory).
pub struct DirNodeCache {
    dir: PathBuf,
    /// The effective user of this process: the only owner of entries that are read.
    owner: u32,
}

/// Why a cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheDirError {
    /// A directory could not be looked at or created.
    #[error("cannot use {}: {doing}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What was being done.
        doing: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A directory that another user could change, or that is not a plain directory.
    #[error("{} is not safe for the node cache: {problem}; {fix}", path.display())]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        fix: &'static str,
    },
}

const FIX_OWN: &str = "remove it (it is then created again, with mode 0700)";
const FIX_ABOVE: &str = "make it owned by root or this user and writable only by its owner \
                         (or sticky, as /tmp is)";

#[derive(Serialize, Deserialize)]
struct HandleFile {
    format: u32,
    id: String,
    kv: CachedKv,
}

impl DirNodeCache {
    /// A cache under `base`, in a subdirectory of its own for the datastore `identity` (e.g.
    /// its endpoints and key prefix), so two datastores never share entries.
    ///
    /// Missing directories are created with mode 0700. Fails with
    /// [`CacheDirError::Unsafe`] when another user could change the cache (see the module
    /// documentation); the caller should then run without a cache.
    pub fn open(base: &Path, identity: &str) -> Result<Self, CacheDirError> {
        let owner = effective_uid();
        let base = std::path::absolute(base).map_err(|source| CacheDirError::Io {
            path: base.to_path_buf(),
            doing: "resolving the path",
            source,
        })?;
        let dir = base.join(format!("{:016x}", fnv1a(identity.as_bytes())));
        // Before creating anything below a directory another user controls, and again after,
        // since a sticky directory lets others create the missing ones in between.
        check_above(&base, owner)?;
        create_private_dirs(&base)?;
        check_above(&base, owner)?;
        check_own_dir(&base, owner)?;
        create_private_dirs(&dir)?;
        check_own_dir(&dir, owner)?;
        Ok(Self { dir, owner })
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
        let bytes = read_private_file(path, self.owner)?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) {
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), unique_suffix()));
        let written = (|| {
            // create_new never follows a link, and rename replaces one rather than writing
            // through it.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// The contents of a regular file owned by `owner` and writable by nobody else; `None` for
/// anything else, symbolic links included.
fn read_private_file(path: &Path, owner: u32) -> Option<Vec<u8>> {
    let seen = fs::symlink_metadata(path).ok()?;
    if !seen.is_file() || exposure(&seen, owner).is_some() {
        return None;
    }
    let mut file = File::open(path).ok()?;
    // The file opened must be the one looked at, not something put in its place since.
    let opened = file.metadata().ok()?;
    if (opened.dev(), opened.ino()) != (seen.dev(), seen.ino()) {
        return None;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Creates `dir` and its missing parents with mode 0700.
fn create_private_dirs(dir: &Path) -> Result<(), CacheDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CacheDirError::Io {
            path: dir.to_path_buf(),
            doing: "creating the directory",
            source,
        })
}

/// Checks a directory of the cache itself: a real directory (not a link), owned by `owner`
/// and writable by nobody else.
fn check_own_dir(dir: &Path, owner: u32) -> Result<(), CacheDirError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| CacheDirError::Io {
        path: dir.to_path_buf(),
        doing: "looking at the directory",
        source,
    })?;
    let problem = if meta.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("it is not a directory".to_string())
    } else {
        exposure(&meta, owner)
    };
    match problem {
        Some(problem) => Err(CacheDirError::Unsafe {
            path: dir.to_path_buf(),
            problem,
            fix: FIX_OWN,
        }),
        None => Ok(()),
    }
}

/// Checks every existing directory above `base`, from the root down: owned by root or
/// `owner`, and writable by nobody else unless sticky. A link among them must be owned by
/// root or `owner` too, and its target is checked.
fn check_above(base: &Path, owner: u32) -> Result<(), CacheDirError> {
    let mut above: Vec<&Path> = base.ancestors().skip(1).collect();
    above.reverse();
    for dir in above {
        let (link, target) = match (fs::symlink_metadata(dir), fs::metadata(dir)) {
            (Ok(link), Ok(target)) => (link, target),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            (Err(source), _) | (_, Err(source)) => {
                return Err(CacheDirError::Io {
                    path: dir.to_path_buf(),
                    doing: "looking at a directory above the cache",
                    source,
                })
            }
        };
        if !target.is_dir() {
            // Nothing can be created below it; creating the cache says so.
            return Ok(());
        }
        let trusted = |uid: u32| uid == owner || uid == 0;
        let problem = if link.file_type().is_symlink() && !trusted(link.uid()) {
            Some(format!(
                "it is a link owned by uid {}, so that user could point it elsewhere",
                link.uid()
            ))
        } else if !trusted(target.uid()) {
            Some(format!(
                "it belongs to uid {}, neither root nor this process's user (uid {owner}), so \
                 that user could replace the cache",
                target.uid()
            ))
        } else if target.mode() & 0o1000 == 0 {
            others_who_may_write(target.mode()).map(|who| {
                format!(
                    "it is writable by {who} (mode {:04o}) without the sticky bit, so other \
                     users could replace the cache",
                    target.mode() & 0o7777
                )
            })
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(CacheDirError::Unsafe {
                path: dir.to_path_buf(),
                problem,
                fix: FIX_ABOVE,
            });
        }
    }
    Ok(())
}

/// Why an entry of the cache could have been written by another user: it belongs to someone
/// else, or its group or others may write it.
fn exposure(meta: &Metadata, owner: u32) -> Option<String> {
    if meta.uid() != owner {
        Some(format!(
            "it belongs to uid {}, not to this process's user (uid {owner}), so that user \
             could plant entries in it",
            meta.uid()
        ))
    } else {
        others_who_may_write(meta.mode()).map(|who| {
            format!(
                "it is writable by {who} (mode {:04o}), so other users could plant entries in it",
                meta.mode() & 0o7777
            )
        })
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
        let _ = fs::remove_file(self.path("handle", id));
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
    use crate::ipam::cache::tests::{kv, view};

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
        assert_eq!(fs::metadata(a.dir()).unwrap().mode() & 0o777, 0o700);
        let leftovers: Vec<_> = std::fs::read_dir(a.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[track_caller]
    fn refused(base: &Path, at: &Path, problem: &str) {
        match DirNodeCache::open(base, "etcd://a") {
            Err(CacheDirError::Unsafe {
                path, problem: p, ..
            }) => {
                assert_eq!(path, at);
                assert!(p.contains(problem), "{p}");
            }
            Err(e) => panic!("expected an unsafe directory, got {e}"),
            Ok(_) => panic!("{} must be refused", at.display()),
        }
    }

    #[test]
    fn a_cache_directory_others_may_write_is_refused() {
        let top = tempfile::tempdir().unwrap();
        let base = top.path().join("cache");
        fs::create_dir(&base).unwrap();
        chmod(&base, 0o777);
        refused(&base, &base, "writable by its group and others (mode 0777)");
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0, "nothing created");
        chmod(&base, 0o720);
        refused(&base, &base, "writable by its group (mode 0720)");
        // Readable by others is fine: nobody else can plant anything.
        chmod(&base, 0o755);
        let cache = DirNodeCache::open(&base, "etcd://a").unwrap();
        assert_eq!(fs::metadata(cache.dir()).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_datastore_directory_others_may_write_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = DirNodeCache::open(base.path(), "etcd://a").unwrap().dir;
        chmod(&dir, 0o777);
        refused(base.path(), &dir, "writable by its group and others");
    }

    #[test]
    fn directories_that_are_links_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let real = top.path().join("real");
        fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        refused(&link, &link, "it is a symbolic link");

        let dir = DirNodeCache::open(&real, "etcd://a").unwrap().dir;
        fs::remove_dir(&dir).unwrap();
        let elsewhere = top.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        refused(&real, &dir, "it is a symbolic link");
    }

    #[test]
    fn a_directory_above_that_others_may_write_is_refused_unless_sticky() {
        let top = tempfile::tempdir().unwrap();
        let shared = top.path().join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o777);
        let base = shared.join("cache");
        refused(
            &base,
            &shared,
            "writable by its group and others (mode 0777) without",
        );
        assert!(!base.exists(), "nothing created below it");
        chmod(&shared, 0o1777);
        let cache = DirNodeCache::open(&base, "etcd://a").unwrap();
        assert_eq!(fs::metadata(&base).unwrap().mode() & 0o777, 0o700);
        assert!(cache.dir().starts_with(&base));
    }

    #[test]
    fn directories_of_another_user_are_refused() {
        if effective_uid() != 0 {
            // Only root can give a directory away; the CNI tests cover this as root too.
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let base = top.path().join("cache");
        fs::create_dir(&base).unwrap();
        chmod(&base, 0o700);
        std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
        refused(
            &base,
            &base,
            "it belongs to uid 65534, not to this process's user (uid 0)",
        );
        chmod(top.path(), 0o755);
        std::os::unix::fs::chown(top.path(), Some(65534), Some(65534)).unwrap();
        refused(
            &base,
            top.path(),
            "it belongs to uid 65534, neither root nor",
        );
    }

    #[test]
    fn files_that_are_links_or_writable_by_others_are_never_read() {
        let base = tempfile::tempdir().unwrap();
        let cache = DirNodeCache::open(base.path(), "etcd://a").unwrap();
        let v = view();
        cache.save_view(&v);
        let file = cache.path("node", "n1");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(cache.load_view("n1"), Some(v.clone()));

        chmod(&file, 0o666);
        assert_eq!(cache.load_view("n1"), None, "writable by others");
        chmod(&file, 0o644);
        assert_eq!(cache.load_view("n1"), Some(v.clone()), "readable by others");

        // A link to a well-formed view elsewhere is a miss, and saving replaces the link
        // instead of writing through it.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("planted.json");
        fs::rename(&file, &target).unwrap();
        let planted = fs::read(&target).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        assert_eq!(cache.load_view("n1"), None, "a link is not followed");
        cache.save_view(&v);
        assert!(!fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), planted);
        assert_eq!(cache.load_view("n1"), Some(v));
    }
}
