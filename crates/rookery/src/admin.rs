//! The operator's handle on a running runtime ([`Runtime::admin`](crate::Runtime::admin)):
//! its classes and their objects, one object's storage, deleting an object, running its alarm
//! now, and backing every object up.
//!
//! Everything that touches an object's storage runs as one of the object's own turns (a job
//! without its instance), so it sees whole commits only, waits its turn like any event, and
//! what it changes goes through the node log like the object's own writes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::addr::{ClassInfo, ObjectAddr};
use crate::admin_error::{AdminError, AdminResult};
use crate::backup;
use crate::error::Error;
use crate::host::Host;
use crate::host::alarm_event::AlarmOutcome;
use crate::id::{ID_BYTES, ObjectId};
use crate::socket::close_code;
use crate::storage::{ListOptions, SqlCursor, TableInfo};
use crate::stub::Stub;

/// Longest an operator's query, or the count of an object's rows, may run.
pub const QUERY_TIME_LIMIT: Duration = Duration::from_secs(2);
/// Most objects or keys one page lists.
pub const MAX_PAGE: usize = 1000;
/// Objects or keys a page lists when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;

/// One hosted class.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassSummary {
    /// The class's name.
    pub name: String,
    /// Its stable uid (the name of its directory under `objects/`).
    pub uid: String,
    /// The bindings that reach it, sorted.
    pub bindings: Vec<String>,
}

/// One object, as the listing sees it (without waking it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSummary {
    /// Its id, 64 hex characters.
    pub id: String,
    /// The name it was first addressed by, if its database file records it yet.
    pub name: Option<String>,
    /// Bytes its database file takes on disk (its WAL is in memory, and not counted).
    pub size_bytes: u64,
    /// When its file last changed (ms since the Unix epoch): its last checkpoint, which is
    /// at the latest when it last left memory.
    pub last_modified_ms: Option<i64>,
    /// Whether it is in memory now.
    pub live: bool,
    /// Its alarm time (ms since the Unix epoch) as the node's alarm index holds it.
    pub alarm_ms: Option<i64>,
    /// WebSockets open to it now.
    pub sockets: usize,
}

/// How to page through a class's objects.
#[derive(Debug, Clone, Default)]
pub struct ObjectQuery {
    /// Only objects whose recorded name starts with this.
    pub prefix: Option<String>,
    /// Only objects after this id (the `cursor` of the previous page).
    pub cursor: Option<String>,
    /// Most objects on the page (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
}

/// A page of a class's objects, in id order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectPage {
    /// The objects.
    pub objects: Vec<ObjectSummary>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

/// One object with the shape of its storage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDetail {
    /// What the listing shows.
    #[serde(flatten)]
    pub summary: ObjectSummary,
    /// The tables and views of its own SQL.
    pub tables: Vec<TableInfo>,
}

/// One key-value entry.
#[derive(Debug, Clone, Serialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value (JSON, as stored).
    pub value: serde_json::Value,
}

/// A page of an object's key-value entries, in key order.
#[derive(Debug, Clone, Serialize)]
pub struct KvPage {
    /// The entries.
    pub entries: Vec<KvEntry>,
    /// Where the next page starts (the last key of this one); `None` on the last page.
    pub cursor: Option<String>,
}

/// The rows of an operator's read-only query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRows {
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, as JSON values.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// What running an alarm now came to.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmRun {
    /// `notSet`, `succeeded`, `retrying`, `givenUp` or `failedAfterChange`.
    pub outcome: &'static str,
}

/// What a backup copied.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// Where it is.
    pub dir: PathBuf,
    /// Object databases copied.
    pub objects: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// When it began (ms since the Unix epoch): every write acknowledged before is in it.
    pub started_ms: i64,
    /// When it ended: no write acknowledged after is in it.
    pub finished_ms: i64,
}

/// The operator's handle on a runtime; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    host: Host,
    data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Admin {
    /// The handle of the runtime whose host is `host`.
    pub(crate) fn new(host: Host, data_dir: Option<PathBuf>) -> Self {
        Self { host, data_dir }
    }

    /// The hosted classes, by name.
    pub fn classes(&self) -> Vec<ClassSummary> {
        let mut classes: Vec<ClassSummary> = self
            .host
            .hosted_classes()
            .map(|c| ClassSummary {
                name: c.name.to_string(),
                uid: c.uid.to_string(),
                bindings: self
                    .host
                    .bindings_of(c)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            })
            .collect();
        classes.sort_by(|a, b| a.name.cmp(&b.name));
        classes
    }

    /// The class called `class`, or bound as `class`.
    fn class(&self, class: &str) -> AdminResult<std::sync::Arc<ClassInfo>> {
        if let Some(info) = self.host.hosted_classes().find(|c| &*c.name == class) {
            return Ok(info.clone());
        }
        self.host
            .binding(class)
            .cloned()
            .map_err(|_| AdminError::UnknownClass(class.to_string()))
    }

    /// The object `object` of `class`: its id (64 lowercase hex characters this class minted)
    /// or else its name. Refused if it stores nothing (it has no database file).
    fn object(&self, class: &str, object: &str) -> AdminResult<ObjectAddr> {
        let info = self.class(class)?;
        if object.is_empty() {
            return Err(AdminError::BadInput("the object name is empty".into()));
        }
        let id = match info.minter.id_from_string(object) {
            Ok(id) => id,
            Err(_) => info.minter.id_from_name(object),
        };
        let addr = ObjectAddr::new(info, id);
        let stores = match addr.location() {
            crate::addr::Location::File(path) => path.exists(),
            // A runtime without a data directory: what is in memory is all there is.
            crate::addr::Location::Memory => self.host.is_live(&addr.key()),
        };
        if !stores {
            return Err(AdminError::UnknownObject(addr.describe()));
        }
        Ok(addr)
    }

    fn stub(&self, addr: &ObjectAddr) -> Stub {
        Stub::new(self.host.clone(), addr.clone())
    }

    /// A page of the objects of `class` that have a database file, in id order, without waking
    /// any of them.
    pub async fn list_objects(&self, class: &str, query: &ObjectQuery) -> AdminResult<ObjectPage> {
        let info = self.class(class)?;
        let limit = page_limit(query.limit)?;
        if let Some(cursor) = &query.cursor
            && !is_hex_id(cursor)
        {
            return Err(AdminError::BadInput(
                "the cursor is an object id (64 lowercase hex characters)".into(),
            ));
        }
        let Some(dir) = info.dir.clone() else {
            return Ok(ObjectPage {
                objects: Vec::new(),
                cursor: None,
            });
        };
        let query = query.clone();
        let live = self.host.live_names(info.idx);
        let found = tokio::task::spawn_blocking(move || {
            backup::list_files(&dir).map(|files| page_of_files(&dir, &live, files, &query, limit))
        })
        .await
        .map_err(|e| Error::internal("listing the objects failed", e))?
        .map_err(Error::from)?;
        let (files, cursor) = found;
        let objects = files
            .into_iter()
            .map(|file| self.summary(&info, file))
            .collect::<AdminResult<Vec<_>>>()?;
        Ok(ObjectPage { objects, cursor })
    }

    /// What the listing shows of one object found on disk.
    fn summary(
        &self,
        info: &std::sync::Arc<ClassInfo>,
        file: backup::ObjectFile,
    ) -> AdminResult<ObjectSummary> {
        let addr = ObjectAddr::new(info.clone(), ObjectId::from_verified_bytes(file.id));
        let alarm_ms = self.host.storage().alarms.get(&addr.alarm_key())?;
        Ok(ObjectSummary {
            id: addr.id.to_hex(),
            name: file.name,
            size_bytes: file.bytes,
            last_modified_ms: file.modified_ms,
            live: self.host.is_live(&addr.key()),
            alarm_ms,
            sockets: self.host.socket_count(&addr),
        })
    }

    /// One object: what the listing shows and the tables of its own SQL.
    pub async fn object_detail(&self, class: &str, object: &str) -> AdminResult<ObjectDetail> {
        let addr = self.object(class, object)?;
        let tables = self
            .stub(&addr)
            .run_reading(|state| state.storage().tables(QUERY_TIME_LIMIT))
            .await?;
        let file = match addr.location() {
            crate::addr::Location::File(path) => {
                backup::describe_file(&path).map_err(Error::from)?
            }
            crate::addr::Location::Memory => None,
        };
        let file = file.unwrap_or(backup::ObjectFile {
            id: *addr.id.as_bytes(),
            name: addr.id.name().map(str::to_string),
            bytes: 0,
            modified_ms: None,
        });
        let mut summary = self.summary(&addr.class, file)?;
        if summary.name.is_none() {
            summary.name = addr.id.name().map(str::to_string);
        }
        Ok(ObjectDetail { summary, tables })
    }

    /// A page of one object's key-value entries: keys after `cursor`, starting with `prefix`.
    pub async fn kv_entries(
        &self,
        class: &str,
        object: &str,
        prefix: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> AdminResult<KvPage> {
        let addr = self.object(class, object)?;
        let limit = page_limit(limit)?;
        let mut options = ListOptions::new().limit(limit + 1);
        if let Some(prefix) = prefix {
            options = options.prefix(prefix);
        }
        if let Some(cursor) = cursor {
            options = options.start_after(cursor);
        }
        let mut raw = self
            .stub(&addr)
            .run_reading(move |state| state.storage().list_raw(&options))
            .await?;
        let more = raw.len() > limit;
        raw.truncate(limit);
        let cursor = more.then(|| raw.last().map(|(k, _)| k.clone())).flatten();
        let entries = raw
            .into_iter()
            .map(|(key, value)| KvEntry {
                value: serde_json::from_slice(&value).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
                }),
                key,
            })
            .collect();
        Ok(KvPage { entries, cursor })
    }

    /// Runs `sql` against one object's database without letting it write (SQLite's
    /// `query_only`, and the object's SQL policy), stopped after [`QUERY_TIME_LIMIT`].
    pub async fn query(&self, class: &str, object: &str, sql: &str) -> AdminResult<QueryRows> {
        let addr = self.object(class, object)?;
        if sql.trim().is_empty() {
            return Err(AdminError::BadInput("the query is empty".into()));
        }
        let sql = sql.to_string();
        let cursor: SqlCursor = self
            .stub(&addr)
            .run_reading(move |state| state.storage().read_only_query(&sql, QUERY_TIME_LIMIT))
            .await
            .map_err(|e| match e {
                Error::BadRequest(m) => AdminError::BadInput(m),
                Error::SqlRefused(m) => AdminError::BadInput(format!("refused: {m}")),
                e => AdminError::Runtime(e),
            })?;
        Ok(QueryRows {
            columns: cursor.column_names().to_vec(),
            rows: cursor
                .rows()
                .map(|row| row.values().iter().map(|v| v.to_json()).collect())
                .collect(),
        })
    }

    /// Deletes one object: closes its WebSockets, then deletes its keys, tables and alarm in
    /// one of its turns, and restarts it. The commit goes through the node log like any other,
    /// and the emptied file is removed (and that recorded in the log) as the object closes, so
    /// the deletion survives a restart or a crash.
    pub async fn delete_object(&self, class: &str, object: &str) -> AdminResult<()> {
        let addr = self.object(class, object)?;
        let stub = self.stub(&addr);
        stub.run(|state| {
            state
                .sockets()
                .close_all(close_code::GOING_AWAY, "the object was deleted", false);
            state.storage().delete_all()?;
            // Leaving memory now closes the database, which removes the emptied file.
            state.abort();
            Ok(())
        })
        .await?;
        // The restart closed the old database (removing its file) before this turn runs.
        stub.run_reading(|_| Ok(())).await?;
        tracing::info!(object = %addr.describe(), "deleted by the admin API");
        Ok(())
    }

    /// Runs one object's alarm now if it has one set, whatever its time.
    pub async fn run_alarm(&self, class: &str, object: &str) -> AdminResult<AlarmRun> {
        let addr = self.object(class, object)?;
        let report = self.stub(&addr).alarm(true).await?;
        let outcome = match report.outcome {
            AlarmOutcome::NotDue => "notSet",
            AlarmOutcome::Succeeded => "succeeded",
            AlarmOutcome::Retrying => "retrying",
            AlarmOutcome::GivenUp => "givenUp",
            AlarmOutcome::FailedAfterChange => "failedAfterChange",
        };
        Ok(AlarmRun { outcome })
    }

    /// Copies the catalog and every object's database into `dest` (absent or empty), one
    /// object at a time, each in one of its turns: the object's writes wait for its own copy
    /// only. Every write acknowledged before the call is in the copy. The node log's history
    /// and the alarm index (rebuilt from the objects) are not copied. Restore it with
    /// [`restore_backup`](crate::restore_backup).
    pub async fn backup(&self, dest: &Path) -> AdminResult<BackupReport> {
        let Some(data_dir) = self.data_dir.clone() else {
            return Err(AdminError::BadInput(
                "this runtime keeps everything in memory: nothing to back up".into(),
            ));
        };
        let started_ms = now_ms();
        let dest = dest.to_path_buf();
        {
            let (data_dir, dest) = (data_dir.clone(), dest.clone());
            tokio::task::spawn_blocking(move || backup::begin(&data_dir, &dest))
                .await
                .map_err(|e| Error::internal("starting the backup failed", e))??;
        }
        let mut objects = 0;
        let mut bytes = 0u64;
        for info in self.host.hosted_classes() {
            let Some(dir) = info.dir.clone() else {
                continue;
            };
            let uid = info.uid.to_string();
            let files = tokio::task::spawn_blocking(move || backup::list_ids(&dir))
                .await
                .map_err(|e| Error::internal("listing the objects failed", e))?
                .map_err(Error::from)?;
            for id in files {
                let addr = ObjectAddr::new(info.clone(), ObjectId::from_verified_bytes(id));
                let hex = addr.id.to_hex();
                let target = backup::object_path(&dest, &uid, &hex).map_err(Error::from)?;
                let copy = target.clone();
                let copied = self
                    .stub(&addr)
                    .run_reading(move |state| state.storage().backup_to(&copy))
                    .await?;
                if copied {
                    objects += 1;
                    bytes += std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        let finished_ms = now_ms();
        let report = BackupReport {
            dir: dest.clone(),
            objects,
            bytes,
            started_ms,
            finished_ms,
        };
        let manifest = serde_json::to_vec_pretty(&report).map_err(Error::from)?;
        tokio::task::spawn_blocking(move || backup::finish(&dest, &manifest))
            .await
            .map_err(|e| Error::internal("finishing the backup failed", e))??;
        tracing::info!(objects, bytes, dir = %report.dir.display(), "backup taken");
        Ok(report)
    }
}

/// The page size asked for, checked.
fn page_limit(limit: Option<usize>) -> AdminResult<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(AdminError::BadInput("limit must be at least 1".into())),
        Some(n) if n > MAX_PAGE => Err(AdminError::BadInput(format!(
            "limit must be at most {MAX_PAGE}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Whether `s` is written like an object id.
fn is_hex_id(s: &str) -> bool {
    s.len() == ID_BYTES * 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The files of one page: after the cursor, matching the prefix, at most `limit`; and the
/// cursor of the next page.
fn page_of_files(
    dir: &Path,
    live: &std::collections::HashMap<[u8; ID_BYTES], String>,
    files: Vec<backup::ObjectFile>,
    query: &ObjectQuery,
    limit: usize,
) -> (Vec<backup::ObjectFile>, Option<String>) {
    let after = query.cursor.as_deref().unwrap_or("");
    let mut page = Vec::new();
    let mut more = false;
    for mut file in files {
        if hex::encode(file.id).as_str() <= after {
            continue;
        }
        if let Some(prefix) = &query.prefix {
            file.name = name_of(dir, live, &file.id);
            if !file
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix.as_str()))
            {
                continue;
            }
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(file);
    }
    if query.prefix.is_none() {
        for file in &mut page {
            file.name = name_of(dir, live, &file.id);
        }
    }
    let cursor = more
        .then(|| page.last().map(|f: &backup::ObjectFile| hex::encode(f.id)))
        .flatten();
    (page, cursor)
}

/// The name of object `id`: as a live object was addressed, or as its file records it.
fn name_of(
    dir: &Path,
    live: &std::collections::HashMap<[u8; ID_BYTES], String>,
    id: &[u8; ID_BYTES],
) -> Option<String> {
    live.get(id)
        .cloned()
        .or_else(|| backup::read_name(&backup::path_in(dir, id)))
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
