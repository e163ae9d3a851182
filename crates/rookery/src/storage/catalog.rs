//! The node's catalog: which classes exist, their secrets and data directories, and which
//! migrations have been applied. Kept in `rookery.sqlite` in the data directory.
//!
//! A class's objects live under `objects/<uid>/`, where `uid` is fixed when the class is created.
//! Renaming a class changes only its name in the catalog, so its objects and ids stay valid;
//! deleting a class moves its row to `deleted_classes` and then removes its directory; the row
//! goes once the directory is gone, so a delete interrupted by a crash is finished by the next
//! start. Nothing else is ever deleted: a directory the catalog does not know is reported and
//! left alone, and a data directory that holds objects but no catalog refuses to start.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::class_keys::{ClassKey, ClassKeys};
use crate::durable_dir::create_dir_durable;
use crate::error::StartError;

type Result<T, E = StartError> = std::result::Result<T, E>;
use crate::id::IdMinter;

/// A class change recorded under a tag, as in `wrangler.toml`'s `[[migrations]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// Unique name of the migration; applied migrations are recorded by tag.
    pub tag: String,
    /// Classes to create.
    pub new_classes: Vec<String>,
    /// Classes to rename, `(from, to)`; their objects keep their data and ids.
    pub renamed_classes: Vec<(String, String)>,
    /// Classes to delete, with all their objects' data.
    pub deleted_classes: Vec<String>,
}

/// A class that exists on this node.
#[derive(Debug, Clone)]
pub(crate) struct ClassRecord {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) minter: IdMinter,
    /// The secret `minter` uses.
    pub(crate) secret: [u8; 32],
}

/// The catalog's file in the data directory.
pub(crate) const CATALOG_FILE: &str = "rookery.sqlite";

/// The catalog database.
pub(crate) struct Catalog {
    conn: Connection,
    /// Where object databases live (unused in memory).
    pub(crate) objects_dir: PathBuf,
    in_memory: bool,
}

impl Catalog {
    /// Opens or creates the catalog of `data_dir`.
    ///
    /// Refuses a data directory that holds object data but no catalog: the classes' secrets
    /// and names are only in the catalog, and starting afresh would orphan every object.
    pub(crate) fn open(data_dir: &Path) -> Result<Self> {
        let objects_dir = data_dir.join("objects");
        let path = data_dir.join(CATALOG_FILE);
        if !path.exists() && holds_objects(&objects_dir)? {
            return Err(StartError::DataDir(format!(
                "{} holds object data in {} but its catalog {CATALOG_FILE} is missing; \
                 restore {CATALOG_FILE} from a backup (docs/OPERATIONS.md). Rookery does not \
                 start without it, so that no object is orphaned or deleted",
                data_dir.display(),
                objects_dir.display(),
            )));
        }
        create_dir_durable(&objects_dir)?;
        let opened = Connection::open(&path).and_then(|conn| {
            // One process serves a data directory (its lock): an exclusive lock keeps the WAL
            // index in the heap, with no shared-memory file to map.
            conn.execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;",
            )?;
            Ok(conn)
        });
        let conn = opened.map_err(|e| unusable(&path, e))?;
        Self::init(conn, objects_dir, false).map_err(|e| match e {
            StartError::Storage(crate::error::Error::Sqlite(e)) => unusable(&path, e),
            e => e,
        })
    }

    /// A catalog that lives in memory only.
    pub(crate) fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, std::env::temp_dir(), true)
    }

    fn init(conn: Connection, objects_dir: PathBuf, in_memory: bool) -> Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS classes (
                 uid TEXT PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE,
                 secret BLOB NOT NULL,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS migrations (
                 position INTEGER PRIMARY KEY,
                 tag TEXT NOT NULL UNIQUE,
                 applied_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS deleted_classes (
                 uid TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 deleted_at INTEGER NOT NULL
             );",
        )?;
        Ok(Self {
            conn,
            objects_dir,
            in_memory,
        })
    }

    /// Applies the migrations of `migrations` not yet applied, in order, in one transaction,
    /// and commits it only if `check` accepts the classes that result; then removes the data of
    /// deleted classes. The already applied migrations must come first, in the order they were
    /// applied. New classes get the key `keys` agrees to, and every class's key must be the
    /// one `keys` agrees to. Returns the tags applied now.
    pub(crate) fn migrate(
        &mut self,
        migrations: &[Migration],
        keys: &dyn ClassKeys,
        check: impl FnOnce(&[ClassRecord]) -> Result<()>,
    ) -> Result<Vec<String>> {
        let tx = self.conn.transaction()?;
        let applied: Vec<String> = tx
            .prepare("SELECT tag FROM migrations ORDER BY position")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for (i, tag) in applied.iter().enumerate() {
            match migrations.get(i) {
                Some(m) if &m.tag == tag => {}
                Some(m) => {
                    return Err(StartError::Migration {
                        tag: m.tag.clone(),
                        message: format!(
                            "migration {:?} was applied in this position, not {:?}; applied migrations cannot be reordered or replaced",
                            tag, m.tag
                        ),
                    });
                }
                None => {
                    return Err(StartError::Config(format!(
                        "migration {tag:?} was applied to this data directory but is missing from the configuration"
                    )));
                }
            }
        }
        let mut done = Vec::new();
        for (position, m) in migrations.iter().enumerate().skip(applied.len()) {
            apply(&tx, position, m, keys)?;
            done.push(m.tag.clone());
        }
        let records = class_records(&tx, &self.objects_dir)?;
        for record in &records {
            let own = ClassKey {
                uid: record.uid.clone(),
                secret: record.secret,
            };
            if keys.agree(&record.name, own.clone())? != own {
                return Err(StartError::DataDir(format!(
                    "class {:?} has a different uid or secret here than the cluster records: this data directory was made outside the cluster (start it with an empty data directory)",
                    record.name
                )));
            }
        }
        check(&records)?;
        tx.commit()?;
        if !done.is_empty() && !self.in_memory {
            // The catalog changes only here: fold the change into the main file, so that a
            // copy of `rookery.sqlite` alone is a whole catalog.
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        for tag in &done {
            tracing::info!(tag = %tag, "applied migration");
        }
        self.sweep()?;
        Ok(done)
    }

    /// Every class that exists, with its directory and secret.
    pub(crate) fn classes(&self) -> Result<Vec<ClassRecord>> {
        class_records(&self.conn, &self.objects_dir)
    }

    /// Finishes the deletes of classes whose data is still on disk (an interrupted delete), and
    /// reports, without touching them, directories that belong to no class.
    fn sweep(&self) -> Result<()> {
        if self.in_memory {
            return Ok(());
        }
        let pending: Vec<(String, String)> = self
            .conn
            .prepare("SELECT uid, name FROM deleted_classes")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (uid, name) in pending {
            let dir = self.objects_dir.join(&uid);
            tracing::info!(class = %name, dir = %dir.display(), "removing the data of a deleted class");
            // The removal must be durable before its record goes, or a power cut could bring
            // back a directory that no record explains.
            if remove_dir(&dir) && crate::durable_dir::sync_dir(&self.objects_dir).is_ok() {
                self.conn
                    .execute("DELETE FROM deleted_classes WHERE uid = ?1", [&uid])?;
            }
        }
        let known: HashSet<PathBuf> = self.classes()?.into_iter().map(|c| c.dir).collect();
        for entry in fs::read_dir(&self.objects_dir)? {
            let path = entry?.path();
            if path.is_dir() && !known.contains(&path) {
                tracing::warn!(
                    dir = %path.display(),
                    "a directory of object data that belongs to no class in the catalog; left as it is"
                );
            }
        }
        Ok(())
    }
}

/// Applies one migration inside `tx`.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    position: usize,
    m: &Migration,
    keys: &dyn ClassKeys,
) -> Result<()> {
    let fail = |message: String| StartError::Migration {
        tag: m.tag.clone(),
        message,
    };
    let uid_of = |name: &str| -> Result<Option<String>> {
        Ok(tx
            .query_row("SELECT uid FROM classes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    };
    for name in &m.deleted_classes {
        let uid = uid_of(name)?
            .ok_or_else(|| fail(format!("cannot delete class {name:?}: it does not exist")))?;
        tx.execute("DELETE FROM classes WHERE uid = ?1", [&uid])?;
        tx.execute(
            "INSERT INTO deleted_classes (uid, name, deleted_at) VALUES (?1, ?2, ?3)",
            params![uid, name, now_ms()],
        )?;
    }
    for (from, to) in &m.renamed_classes {
        let uid = uid_of(from)?
            .ok_or_else(|| fail(format!("cannot rename class {from:?}: it does not exist")))?;
        if uid_of(to)?.is_some() {
            return Err(fail(format!(
                "cannot rename class {from:?} to {to:?}: {to:?} exists already"
            )));
        }
        tx.execute("UPDATE classes SET name = ?1 WHERE uid = ?2", [to, &uid])?;
    }
    for name in &m.new_classes {
        if uid_of(name)?.is_some() {
            return Err(fail(format!(
                "cannot create class {name:?}: it exists already"
            )));
        }
        let proposed = ClassKey {
            uid: hex::encode(&IdMinter::random_secret()?[..16]),
            secret: IdMinter::random_secret()?,
        };
        let key = keys.agree(name, proposed)?;
        if key.uid.len() != 32 || !key.uid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!(
                "the uid {:?} agreed for class {name:?} is not 32 hex digits",
                key.uid
            )));
        }
        tx.execute(
            "INSERT INTO classes (uid, name, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![key.uid, name, key.secret.as_slice(), now_ms()],
        )?;
    }
    tx.execute(
        "INSERT INTO migrations (position, tag, applied_at) VALUES (?1, ?2, ?3)",
        params![position as i64, m.tag, now_ms()],
    )?;
    Ok(())
}

/// Every class recorded in `conn`, with its directory under `objects_dir` and its secret.
fn class_records(conn: &Connection, objects_dir: &Path) -> Result<Vec<ClassRecord>> {
    let mut stmt = conn.prepare("SELECT uid, name, secret FROM classes ORDER BY name")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut classes = Vec::new();
    for row in rows {
        let (uid, name, secret) = row?;
        let secret: [u8; 32] = secret.try_into().map_err(|_| {
            StartError::DataDir(format!("the catalog's secret of class {name:?} is damaged"))
        })?;
        classes.push(ClassRecord {
            dir: objects_dir.join(&uid),
            uid,
            name,
            minter: IdMinter::new(secret),
            secret,
        });
    }
    Ok(classes)
}

/// Whether `objects_dir` holds any class directory.
fn holds_objects(objects_dir: &Path) -> Result<bool> {
    match fs::read_dir(objects_dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The catalog at `path` cannot be opened or read.
fn unusable(path: &Path, e: rusqlite::Error) -> StartError {
    StartError::DataDir(format!(
        "the catalog {} cannot be used ({e}); restore it from a backup (docs/OPERATIONS.md)",
        path.display()
    ))
}

/// Removes a deleted class's data; whether it is gone.
fn remove_dir(dir: &Path) -> bool {
    match fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        // Left for the next start's sweep.
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted class's data");
            false
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalClassKeys;

    fn m(tag: &str) -> Migration {
        Migration {
            tag: tag.into(),
            ..Migration::default()
        }
    }

    #[test]
    fn migrations_create_rename_and_delete_classes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let v1 = Migration {
            new_classes: vec!["A".into(), "B".into()],
            ..m("v1")
        };
        assert_eq!(
            cat.migrate(std::slice::from_ref(&v1), &LocalClassKeys, |_| Ok(()))
                .unwrap(),
            vec!["v1"]
        );
        let a_dir = cat.classes().unwrap()[0].dir.clone();
        fs::create_dir_all(&a_dir).unwrap();
        let v2 = Migration {
            renamed_classes: vec![("A".into(), "A2".into())],
            deleted_classes: vec!["B".into()],
            ..m("v2")
        };
        // Applying again is a no-op for v1.
        assert_eq!(
            cat.migrate(&[v1.clone(), v2.clone()], &LocalClassKeys, |_| Ok(()))
                .unwrap(),
            vec!["v2"]
        );
        let classes = cat.classes().unwrap();
        assert_eq!(classes.len(), 1);
        assert_eq!(classes[0].name, "A2");
        assert_eq!(classes[0].dir, a_dir, "a rename keeps the data directory");
        // Reordering applied migrations is refused.
        assert!(cat.migrate(&[v2, v1], &LocalClassKeys, |_| Ok(())).is_err());
    }

    #[test]
    fn bad_migrations_name_their_tag_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let bad = Migration {
            new_classes: vec!["A".into()],
            deleted_classes: vec!["Nope".into()],
            ..m("v1")
        };
        match cat.migrate(&[bad], &LocalClassKeys, |_| Ok(())) {
            Err(StartError::Migration { tag, message }) => {
                assert_eq!(tag, "v1");
                assert!(message.contains("Nope"), "{message}");
            }
            other => panic!("expected a migration error, got {other:?}"),
        }
        assert!(cat.classes().unwrap().is_empty());
    }

    #[test]
    fn a_refused_check_applies_no_migration_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let v1 = Migration {
            new_classes: vec!["A".into()],
            ..m("v1")
        };
        cat.migrate(std::slice::from_ref(&v1), &LocalClassKeys, |_| Ok(()))
            .unwrap();
        let a_dir = cat.classes().unwrap()[0].dir.clone();
        fs::create_dir_all(a_dir.join("0")).unwrap();
        fs::write(a_dir.join("0").join("x.sqlite"), b"data").unwrap();
        let v2 = Migration {
            deleted_classes: vec!["A".into()],
            ..m("v2")
        };
        let refused = cat.migrate(&[v1.clone(), v2.clone()], &LocalClassKeys, |records| {
            assert!(records.is_empty(), "the check sees the classes after v2");
            Err(StartError::Config("a binding still names A".into()))
        });
        assert!(refused.is_err());
        assert_eq!(cat.classes().unwrap().len(), 1, "v2 was not recorded");
        assert!(a_dir.join("0").join("x.sqlite").exists(), "no data deleted");
        // Accepted, the delete goes through and takes the class's data with it.
        assert_eq!(
            cat.migrate(&[v1, v2], &LocalClassKeys, |_| Ok(())).unwrap(),
            vec!["v2"]
        );
        assert!(!a_dir.exists());
    }

    #[test]
    fn object_data_without_a_catalog_refuses_to_start_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let v1 = Migration {
            new_classes: vec!["A".into()],
            ..m("v1")
        };
        cat.migrate(std::slice::from_ref(&v1), &LocalClassKeys, |_| Ok(()))
            .unwrap();
        let a_dir = cat.classes().unwrap()[0].dir.clone();
        fs::create_dir_all(&a_dir).unwrap();
        fs::write(a_dir.join("x.sqlite"), b"data").unwrap();
        drop(cat);
        for f in ["rookery.sqlite", "rookery.sqlite-wal", "rookery.sqlite-shm"] {
            let _ = fs::remove_file(dir.path().join(f));
        }
        let e = Catalog::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("catalog rookery.sqlite is missing"), "{e}");
        assert!(a_dir.join("x.sqlite").exists());
        assert!(
            !dir.path().join("rookery.sqlite").exists(),
            "no new catalog made"
        );
    }

    #[test]
    fn directories_of_no_class_are_reported_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let stray = dir.path().join("objects").join("0123abcd");
        fs::create_dir_all(&stray).unwrap();
        cat.migrate(&[m("v1")], &LocalClassKeys, |_| Ok(()))
            .unwrap();
        drop(cat);
        let mut cat = Catalog::open(dir.path()).unwrap();
        cat.migrate(&[m("v1")], &LocalClassKeys, |_| Ok(()))
            .unwrap();
        assert!(stray.exists());
    }
}
