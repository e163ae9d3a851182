//! Blob storage for objects and workers: buckets bound like Cloudflare's `[[r2_buckets]]`, each
//! backed by a local directory. `Env::bucket("EVENTS_BUCKET")` gives a [`Bucket`]; its keys are
//! `/`-separated paths under the directory.
//!
//! A `put` is atomic and durable: the bytes go to a temporary file (in the bucket's
//! [`TEMP_DIR`], which no key can name and `list` never shows), which is synced, renamed into
//! place, and the directory synced; a reader sees the old object or the new one, never part of
//! either, and once `put` returns the object survives a crash. Bucket I/O is not part of an
//! object's turn: it is neither rolled back with a failed turn nor held by the output gate.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::durable_dir::{create_dir_durable, sync_dir};
use crate::error::Error;

/// The longest key, in bytes.
pub const MAX_BUCKET_KEY_BYTES: usize = 1024;

/// The directory, at the bucket's root, that holds files being written. No key may start with
/// it.
pub const TEMP_DIR: &str = ".rookery-tmp";

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BucketError {
    /// A key (or list prefix) that is not valid; nothing was read or written.
    #[error("invalid bucket key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given (cut to 100 bytes).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file system refused.
    #[error("bucket {bucket:?}: {op} {key:?} failed: {source}")]
    Io {
        /// The bucket's name.
        bucket: String,
        /// What was being done (`put`, `get`, ...).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<BucketError> for Error {
    fn from(e: BucketError) -> Self {
        match e {
            BucketError::InvalidKey { .. } => Error::BadRequest(e.to_string()),
            other => Error::internal("bucket operation failed", other),
        }
    }
}

/// One object of a bucket as `list` sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketEntry {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The buckets of a runtime, by binding name: `(bucket name, directory)`.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    bound: BTreeMap<String, (String, PathBuf)>,
}

impl Buckets {
    /// No buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds bucket `bucket_name`, stored in directory `dir` (made on the first `put`), as
    /// `binding`.
    pub fn bind(
        &mut self,
        binding: impl Into<String>,
        bucket_name: impl Into<String>,
        dir: impl Into<PathBuf>,
    ) {
        self.bound
            .insert(binding.into(), (bucket_name.into(), dir.into()));
    }

    /// The bucket bound as `binding`.
    pub fn get(&self, binding: &str) -> Option<Bucket> {
        self.bound.get(binding).map(|(name, dir)| Bucket {
            inner: Arc::new(Inner {
                name: name.clone(),
                dir: dir.clone(),
            }),
        })
    }

    /// The binding names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.bound.keys().map(String::as_str)
    }
}

struct Inner {
    name: String,
    dir: PathBuf,
}

/// A bucket: objects (bytes) under `/`-separated keys, in a local directory.
#[derive(Clone)]
pub struct Bucket {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.inner.name)
            .finish()
    }
}

fn invalid(key: &str, reason: &'static str) -> BucketError {
    let mut end = key.len().min(100);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    BucketError::InvalidKey {
        key: key[..end].to_string(),
        reason,
    }
}

/// Checks the characters and length of a key or prefix.
fn check_text(key: &str) -> Result<(), BucketError> {
    if key.len() > MAX_BUCKET_KEY_BYTES {
        return Err(invalid(key, "longer than 1024 bytes"));
    }
    if key.contains('\0') {
        return Err(invalid(key, "contains a NUL byte"));
    }
    if key.contains('\\') {
        return Err(invalid(key, "contains a backslash"));
    }
    if key.starts_with('/') {
        return Err(invalid(key, "starts with '/'"));
    }
    if key == TEMP_DIR || key.starts_with(&format!("{TEMP_DIR}/")) {
        return Err(invalid(
            key,
            "names the bucket's directory of temporary files",
        ));
    }
    Ok(())
}

/// Checks `key`: 1 to 1024 bytes of `/`-separated non-empty segments, none `.` or `..`, no
/// NUL or backslash, not under [`TEMP_DIR`].
pub fn validate_key(key: &str) -> Result<(), BucketError> {
    if key.is_empty() {
        return Err(invalid(key, "empty"));
    }
    check_text(key)?;
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(invalid(
                    key,
                    "has an empty segment ('//' or a trailing '/')",
                ));
            }
            "." | ".." => return Err(invalid(key, "has a '.' or '..' segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a list prefix: like a key, but it may be empty, end with `/` or end in the middle
/// of a segment.
fn validate_prefix(prefix: &str) -> Result<(), BucketError> {
    check_text(prefix)?;
    let mut segments: Vec<&str> = prefix.split('/').collect();
    // The last segment may be partial or empty ("a/b/" lists under a/b).
    segments.pop();
    for segment in segments {
        match segment {
            "" => return Err(invalid(prefix, "has an empty segment ('//')")),
            "." | ".." => return Err(invalid(prefix, "has a '.' or '..' segment")),
            _ => {}
        }
    }
    Ok(())
}

/// A name for a temporary file no other writer in this process uses.
fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}.tmp", std::process::id())
}

impl Bucket {
    /// The bucket's name (`bucket_name` in the configuration).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `job` on the blocking pool with the bucket's directory.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        job: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T, BucketError> {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || job(&inner.dir))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("the I/O task failed: {e}"))));
        result.map_err(|source| BucketError::Io {
            bucket: self.inner.name.clone(),
            op,
            key: key.to_string(),
            source,
        })
    }

    /// Stores `bytes` under `key`, replacing what was there, atomically and durably (see the
    /// module's documentation). A key cannot be both an object and a "directory" of others:
    /// `a` and `a/b` cannot both exist.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), BucketError> {
        validate_key(key)?;
        let bytes: Bytes = bytes.into();
        let relative = key.to_string();
        self.blocking("put", key, move |root| {
            let target = root.join(&relative);
            let parent = target.parent().unwrap_or(root).to_path_buf();
            // New directories (a namespace's, a day's) must survive power loss with the file.
            create_dir_durable(&parent)?;
            let temp_dir = root.join(TEMP_DIR);
            create_dir_durable(&temp_dir)?;
            let temp = temp_dir.join(temp_name());
            let written = (|| {
                let mut file = File::create(&temp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                fs::rename(&temp, &target)
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
            sync_dir(&parent)
        })
        .await
    }

    /// The bytes stored under `key`, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BucketError> {
        validate_key(key)?;
        let relative = key.to_string();
        self.blocking("get", key, move |root| {
            match fs::read(root.join(&relative)) {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if absent(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// The size of the object under `key`, or `None`.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        validate_key(key)?;
        let relative = key.to_string();
        self.blocking("head", key, move |root| {
            match fs::metadata(root.join(&relative)) {
                Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
                Ok(_) => Ok(None),
                Err(e) if absent(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Removes the object under `key`; whether there was one. Directories left empty stay.
    pub async fn delete(&self, key: &str) -> Result<bool, BucketError> {
        validate_key(key)?;
        let relative = key.to_string();
        self.blocking("delete", key, move |root| {
            let target = root.join(&relative);
            match fs::metadata(&target) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Ok(false),
                Err(e) if absent(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
            fs::remove_file(&target)?;
            sync_dir(target.parent().unwrap_or(root))?;
            Ok(true)
        })
        .await
    }

    /// The objects whose keys start with `prefix`, sorted by key, at most `limit`.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<BucketEntry>, BucketError> {
        self.list_after(prefix, None, limit).await
    }

    /// Like [`Bucket::list`], but only keys after `start_after` (for paging: pass the last key
    /// of the previous page).
    pub async fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BucketEntry>, BucketError> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_string();
        let after = start_after.map(str::to_string);
        let shown = prefix.clone();
        self.blocking("list", &shown, move |root| {
            // Walk only the directory the prefix's complete segments name.
            let base = prefix.rfind('/').map_or("", |i| &prefix[..i]);
            let mut found = Vec::new();
            walk(root, base, &mut found)?;
            let mut entries: Vec<BucketEntry> = found
                .into_iter()
                .filter(|e| e.key.starts_with(prefix.as_str()))
                .filter(|e| after.as_deref().is_none_or(|a| e.key.as_str() > a))
                .collect();
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            entries.truncate(limit);
            Ok(entries)
        })
        .await
    }
}

fn absent(e: &io::Error) -> bool {
    // A key whose "directory" is an object (`a/b` when `a` is a file) is absent too.
    // A "directory" of other keys is no object either.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// Collects the files under `root/relative` as entries keyed by their path from `root`,
/// skipping the temporary directory and names that are not UTF-8.
fn walk(root: &Path, relative: &str, out: &mut Vec<BucketEntry>) -> io::Result<()> {
    let dir = if relative.is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    };
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if absent(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let key = if relative.is_empty() {
            if name == TEMP_DIR {
                continue;
            }
            name
        } else {
            format!("{relative}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(root, &key, out)?;
        } else if file_type.is_file() {
            out.push(BucketEntry {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(dir: &Path) -> Bucket {
        let mut buckets = Buckets::new();
        buckets.bind("B", "events", dir.join("events"));
        buckets.get("B").unwrap()
    }

    #[test]
    fn keys_are_checked() {
        for ok in [
            "a",
            "a/b",
            "shop/2026-11-30/000000000001-000000000002.ndjson.gz",
            ".x/y",
        ] {
            validate_key(ok).unwrap();
        }
        let long = "x".repeat(1025);
        for (bad, why) in [
            ("", "empty"),
            ("/a", "starts with '/'"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a/../b", "'..'"),
            ("./a", "'.'"),
            ("..", "'..'"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
            (long.as_str(), "1024"),
            (".rookery-tmp/x", "temporary"),
            (".rookery-tmp", "temporary"),
        ] {
            let e = validate_key(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        validate_key(&"x".repeat(1024)).unwrap();
        for ok in ["", "a", "a/", "a/b", "a/b/c-"] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["/", "a//", "../a", "a\\"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    /// On `rookery-powerloss` (root and `/dev/fuse`, as the other power-loss tests): a `put`
    /// that returned survives a power cut, even into directories it had to make; a file written
    /// into new directories without syncs, the control, does not, so the cut is real.
    #[tokio::test]
    async fn a_put_survives_power_loss_in_directories_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let fs = rookery_powerloss::PowerLossFs::mount(&backing, &mnt)
            .expect("mounts (needs root and /dev/fuse)");
        let root = fs.mountpoint().to_path_buf();
        let key = "shop/2026-12-01/000000000001-000000000002.ndjson.gz";
        bucket(&root)
            .put(key, Bytes::from_static(b"kept"))
            .await
            .unwrap();
        std::fs::create_dir_all(root.join("control/a")).unwrap();
        std::fs::write(root.join("control/a/f"), b"lost").unwrap();
        fs.power_cut().unwrap();
        assert!(
            !root.join("control/a/f").exists(),
            "the unsynced control survived: the cut dropped nothing"
        );
        let got = bucket(&root).get(key).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"kept"[..]));
        fs.unmount().unwrap();
    }

    #[tokio::test]
    async fn put_get_head_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path());
        assert_eq!(b.get("a/b").await.unwrap(), None);
        assert_eq!(b.list("", 10).await.unwrap(), vec![]);
        b.put("shop/2/x", &b"two"[..]).await.unwrap();
        b.put("shop/1/y", &b"one!"[..]).await.unwrap();
        b.put("shop/1/x", Vec::from(&b"1"[..])).await.unwrap();
        b.put("other", &b"o"[..]).await.unwrap();
        assert_eq!(b.get("shop/1/y").await.unwrap().unwrap(), &b"one!"[..]);
        assert_eq!(b.head("shop/1/y").await.unwrap(), Some(4));
        assert_eq!(
            b.head("shop/1").await.unwrap(),
            None,
            "a directory is no object"
        );
        assert_eq!(b.get("shop/1").await.unwrap(), None);
        assert_eq!(b.get("other/x").await.unwrap(), None);
        let keys = |l: Vec<BucketEntry>| l.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(
            keys(b.list("", 10).await.unwrap()),
            ["other", "shop/1/x", "shop/1/y", "shop/2/x"]
        );
        assert_eq!(
            keys(b.list("shop/", 2).await.unwrap()),
            ["shop/1/x", "shop/1/y"]
        );
        assert_eq!(
            keys(b.list("shop/1/", 10).await.unwrap()),
            ["shop/1/x", "shop/1/y"]
        );
        assert_eq!(
            keys(b.list("sh", 10).await.unwrap()),
            ["shop/1/x", "shop/1/y", "shop/2/x"]
        );
        assert_eq!(
            keys(b.list_after("shop/", Some("shop/1/y"), 10).await.unwrap()),
            ["shop/2/x"]
        );
        assert_eq!(b.list("shop/1/y", 10).await.unwrap()[0].size, 4);
        // Replacing.
        b.put("shop/1/y", &b"uno"[..]).await.unwrap();
        assert_eq!(b.get("shop/1/y").await.unwrap().unwrap(), &b"uno"[..]);
        assert!(b.delete("shop/1/y").await.unwrap());
        assert!(!b.delete("shop/1/y").await.unwrap());
        assert_eq!(b.get("shop/1/y").await.unwrap(), None);
        assert_eq!(keys(b.list("shop/1", 10).await.unwrap()), ["shop/1/x"]);
        // Invalid keys touch nothing.
        assert!(matches!(
            b.put("../escape", &b"x"[..]).await,
            Err(BucketError::InvalidKey { .. })
        ));
        assert!(!dir.path().join("escape").exists());
        // An object cannot be a directory of others.
        assert!(matches!(
            b.put("other/x", &b"x"[..]).await,
            Err(BucketError::Io { op: "put", .. })
        ));
    }

    #[tokio::test]
    async fn temporary_files_are_never_listed_and_a_failed_put_leaves_the_old_object() {
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(dir.path());
        b.put("k", &b"old"[..]).await.unwrap();
        let root = dir.path().join("events");
        // A leftover of a crashed put.
        fs::write(root.join(TEMP_DIR).join("1-1.tmp"), b"half").unwrap();
        assert_eq!(
            b.list("", 10).await.unwrap(),
            vec![BucketEntry {
                key: "k".into(),
                size: 3
            }]
        );
        // A put whose rename cannot happen (the target is a directory) fails, leaves the old
        // object alone and no temporary file behind.
        fs::create_dir_all(root.join("d/sub")).unwrap();
        assert!(b.put("d", &b"new"[..]).await.is_err());
        let temps: Vec<_> = fs::read_dir(root.join(TEMP_DIR)).unwrap().collect();
        assert_eq!(temps.len(), 1, "only the old leftover");
        assert_eq!(b.get("k").await.unwrap().unwrap(), &b"old"[..]);
    }

    #[tokio::test]
    async fn a_bucket_whose_directory_is_a_file_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("events"), b"not a directory").unwrap();
        let b = bucket(dir.path());
        let e = b.put("k", &b"x"[..]).await.unwrap_err();
        assert!(e.to_string().contains("put"), "{e}");
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(b.list("", 10).await.unwrap(), vec![]);
        let as_error: Error = e.into();
        assert_eq!(as_error.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn env_reaches_bound_buckets_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut buckets = Buckets::new();
        buckets.bind("EVENTS_BUCKET", "events", dir.path().join("events"));
        let runtime = crate::Runtime::builder_in_memory()
            .buckets(buckets)
            .build()
            .unwrap();
        let env = runtime.env();
        let b = env.bucket("EVENTS_BUCKET").unwrap();
        assert_eq!(b.name(), "events");
        b.put("a", &b"x"[..]).await.unwrap();
        assert!(dir.path().join("events/a").is_file());
        let e = env.bucket("OTHER").unwrap_err();
        assert!(
            matches!(e, Error::UnknownBucket(ref n) if n == "OTHER"),
            "{e}"
        );
        runtime.shutdown().await;
    }
}
