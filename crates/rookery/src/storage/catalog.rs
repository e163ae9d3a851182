//! The node's catalog: which classes exist, their secrets and data directories, and which
//! migrations have been applied. Kept in `rookery.sqlite` in the data directory.
//!
//! A class's objects live under `objects/<uid>/`, where `uid` is fixed when the class is created.
//! Renaming a class changes only its name in the catalog, so its objects and ids stay valid;
//! deleting a class removes its catalog row and then its directory. A directory with no row
//! (a delete interrupted by a crash) is removed at the next start.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

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
}

/// The catalog database.
pub(crate) struct Catalog {
    conn: Connection,
    /// Where object databases live (unused in memory).
    pub(crate) objects_dir: PathBuf,
    in_memory: bool,
}

impl Catalog {
    /// Opens or creates the catalog of `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> Result<Self> {
        let objects_dir = data_dir.join("objects");
        fs::create_dir_all(&objects_dir)?;
        let conn = Connection::open(data_dir.join("rookery.sqlite"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        Self::init(conn, objects_dir, false)
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
             );",
        )?;
        Ok(Self {
            conn,
            objects_dir,
            in_memory,
        })
    }

    /// Applies the migrations of `migrations` not yet applied, in order. The already applied ones
    /// must come first, in the order they were applied.
    pub(crate) fn migrate(&mut self, migrations: &[Migration]) -> Result<Vec<String>> {
        let applied: Vec<String> = self
            .conn
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
            let doomed = self.apply(position, m)?;
            if !self.in_memory {
                for dir in doomed {
                    remove_dir(&dir);
                }
            }
            tracing::info!(tag = %m.tag, "applied migration");
            done.push(m.tag.clone());
        }
        Ok(done)
    }

    /// Applies one migration in one transaction; returns the directories to remove.
    fn apply(&mut self, position: usize, m: &Migration) -> Result<Vec<PathBuf>> {
        let fail = |message: String| StartError::Migration {
            tag: m.tag.clone(),
            message,
        };
        let tx = self.conn.transaction()?;
        let uid_of = |name: &str| -> Result<Option<String>> {
            Ok(tx
                .query_row("SELECT uid FROM classes WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let mut doomed = Vec::new();
        for name in &m.deleted_classes {
            let uid = uid_of(name)?
                .ok_or_else(|| fail(format!("cannot delete class {name:?}: it does not exist")))?;
            tx.execute("DELETE FROM classes WHERE uid = ?1", [&uid])?;
            doomed.push(self.objects_dir.join(uid));
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
            let uid = hex::encode(&IdMinter::random_secret()?[..16]);
            let secret = IdMinter::random_secret()?;
            tx.execute(
                "INSERT INTO classes (uid, name, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![uid, name, secret.as_slice(), now_ms()],
            )?;
        }
        tx.execute(
            "INSERT INTO migrations (position, tag, applied_at) VALUES (?1, ?2, ?3)",
            params![position as i64, m.tag, now_ms()],
        )?;
        tx.commit()?;
        Ok(doomed)
    }

    /// Every class that exists, with its directory and secret.
    pub(crate) fn classes(&self) -> Result<Vec<ClassRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT uid, name, secret FROM classes ORDER BY name")?;
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
                StartError::Config(format!("the catalog's secret of class {name:?} is damaged"))
            })?;
            classes.push(ClassRecord {
                dir: self.objects_dir.join(&uid),
                uid,
                name,
                minter: IdMinter::new(secret),
            });
        }
        Ok(classes)
    }

    /// Removes object directories that belong to no class (left by an interrupted delete).
    pub(crate) fn sweep(&self) -> Result<()> {
        if self.in_memory {
            return Ok(());
        }
        let known: HashSet<PathBuf> = self.classes()?.into_iter().map(|c| c.dir).collect();
        for entry in fs::read_dir(&self.objects_dir)? {
            let path = entry?.path();
            if path.is_dir() && !known.contains(&path) {
                tracing::info!(dir = %path.display(), "removing the data of a deleted class");
                remove_dir(&path);
            }
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Left for the next start's sweep.
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted class's data")
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
        assert_eq!(cat.migrate(std::slice::from_ref(&v1)).unwrap(), vec!["v1"]);
        let a_dir = cat.classes().unwrap()[0].dir.clone();
        fs::create_dir_all(&a_dir).unwrap();
        let v2 = Migration {
            renamed_classes: vec![("A".into(), "A2".into())],
            deleted_classes: vec!["B".into()],
            ..m("v2")
        };
        // Applying again is a no-op for v1.
        assert_eq!(cat.migrate(&[v1.clone(), v2.clone()]).unwrap(), vec!["v2"]);
        let classes = cat.classes().unwrap();
        assert_eq!(classes.len(), 1);
        assert_eq!(classes[0].name, "A2");
        assert_eq!(classes[0].dir, a_dir, "a rename keeps the data directory");
        // Reordering applied migrations is refused.
        assert!(cat.migrate(&[v2, v1]).is_err());
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
        match cat.migrate(&[bad]) {
            Err(StartError::Migration { tag, message }) => {
                assert_eq!(tag, "v1");
                assert!(message.contains("Nope"), "{message}");
            }
            other => panic!("expected a migration error, got {other:?}"),
        }
        assert!(cat.classes().unwrap().is_empty());
    }
}
