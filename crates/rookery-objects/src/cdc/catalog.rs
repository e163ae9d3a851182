//! The catalog (seed 003's `CatalogDO`): one `Catalog` object per namespace keeps Iceberg-style
//! metadata of the namespace's tables, one table per collection. Each delta file a
//! [`CdcProcessor`](super::CdcProcessor) writes is committed here as the table's next
//! **snapshot**: id 1, 2, … (its parent the one before), when, the file and its sequence range,
//! the changes it holds by op, the table's row count after it, and the schema version it was
//! written under. The table at snapshot N is made of the files of snapshots 1 to N, replayed in
//! order.
//!
//! A commit is idempotent by file: committing a file the table already has answers the snapshot
//! it made, so a processor that lost the answer can simply commit again. Anything else that
//! does not continue the table (a sequence range that does not start right after the table's
//! last, counts that do not add up) is refused as a bad request.
//!
//! **The events table.** Besides one table per collection, a namespace has the table
//! [`EVENTS_TABLE`] (`.events`): each file the namespace's
//! [`EventWriter`](crate::event_writer::EventWriter) writes is committed to it, and its rows
//! are the archived events, by event id. Its name starts with `.`, which
//! [`check_name`] refuses, so no collection can take it. Two rules differ from a collection's
//! ([`TableKind`]), because a writer archives only the events published while it was bound
//! and takes a late event (an append overtaken by a later one) into a later file: the first
//! snapshot may start at any sequence, and a snapshot holds inserts only, at most one per
//! sequence of its range (sequences never archived are in no file). Ranges still leave no
//! hole: each snapshot starts at most right after the table's last sequence, and a late
//! event's file may overlap earlier ones (the writer never writes an event twice).
//!
//! The tables, in the object's SQLite database:
//!
//! | table | holds |
//! | --- | --- |
//! | `cat_tables (name, created, snapshot, schema_version, last_seq, rows, updated)` | each table's current snapshot and schema version |
//! | `cat_schemas (tbl, version, fields, created, snapshot)` | every schema version (fields as JSON) and the snapshot that introduced it |
//! | `cat_snapshots (tbl, id, parent, ts, schema_version, file, first_seq, last_seq, inserts, updates, deletes, rows)` | every snapshot; a unique index on `(tbl, file)` |

use rookery::prelude::*;
use serde::{Deserialize, Serialize};

use super::CATALOG_BINDING;
use super::delta;
use super::names::check_name;
use super::schema::{FieldTypes, Fields};
use super::settings::Settings;
use crate::input::{method_not_allowed, not_found};
use crate::sql_tables::Tables;

/// The tables (see the module's documentation).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cat_tables (
  name TEXT PRIMARY KEY,
  created INTEGER NOT NULL,
  snapshot INTEGER NOT NULL,
  schema_version INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cat_schemas (
  tbl TEXT NOT NULL,
  version INTEGER NOT NULL,
  fields TEXT NOT NULL,
  created INTEGER NOT NULL,
  snapshot INTEGER NOT NULL,
  PRIMARY KEY (tbl, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cat_snapshots (
  tbl TEXT NOT NULL,
  id INTEGER NOT NULL,
  parent INTEGER,
  ts INTEGER NOT NULL,
  schema_version INTEGER NOT NULL,
  file TEXT NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  inserts INTEGER NOT NULL,
  updates INTEGER NOT NULL,
  deletes INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  PRIMARY KEY (tbl, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS cat_snapshots_file ON cat_snapshots (tbl, file);
";

/// The table of a namespace's archived events, the event writer's files. No collection can
/// take the name: [`check_name`] refuses a leading `.`.
pub const EVENTS_TABLE: &str = ".events";

/// What a table's files are and how its snapshots follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A CDC collection's delta files (in `CDC_BUCKET`): every change of the collection, in
    /// ranges from 1 without gaps or overlaps.
    Collection,
    /// The event writer's files (in `EVENTS_BUCKET`), [`EVENTS_TABLE`]: inserts only, from any
    /// sequence, ranges without holes.
    Events,
}

impl TableKind {
    /// The kind of table `name`: one name is the events table, every other a collection.
    pub fn of(name: &str) -> Self {
        if name == EVENTS_TABLE {
            Self::Events
        } else {
            Self::Collection
        }
    }

    /// The binding of the bucket the table's files are in.
    pub fn bucket(self) -> &'static str {
        match self {
            Self::Collection => delta::BUCKET_BINDING,
            Self::Events => crate::event_writer::BUCKET_BINDING,
        }
    }
}

/// A delta file to record as a table's next snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaCommit {
    /// The table (the collection, or [`EVENTS_TABLE`]).
    pub table: String,
    /// The file's key in the bucket.
    pub file: String,
    /// The sequence number of its first change: one more than the table's last (for the events
    /// table, at most that; see [`TableKind`]).
    pub first_seq: i64,
    /// The sequence number of its last change.
    pub last_seq: i64,
    /// Its inserts.
    pub inserts: i64,
    /// Its updates.
    pub updates: i64,
    /// Its deletes.
    pub deletes: i64,
    /// The top-level fields of its documents and their types.
    pub fields: Vec<FieldTypes>,
}

/// A snapshot of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// 1, 2, … per table.
    pub snapshot_id: i64,
    /// The snapshot before it (none for the first).
    pub parent_id: Option<i64>,
    /// When it was committed, ms since the epoch.
    pub timestamp: i64,
    /// The schema version of the table at this snapshot.
    pub schema_version: i64,
    /// The delta file it added.
    pub file: String,
    /// The file's first change.
    pub first_seq: i64,
    /// The file's last change.
    pub last_seq: i64,
    /// Inserts in the file.
    pub inserts: i64,
    /// Updates in the file.
    pub updates: i64,
    /// Deletes in the file.
    pub deletes: i64,
    /// Documents in the table at this snapshot.
    pub rows: i64,
}

/// The catalog as a typed service.
#[rookery::service]
pub trait TableCatalog {
    /// Records `commit`'s file as the next snapshot of its table (creating the table with its
    /// first snapshot) and answers the snapshot; a file the table already has answers the
    /// snapshot it made. A commit that does not continue the table is a bad request.
    async fn commit_delta(&mut self, commit: DeltaCommit) -> rookery::Result<Snapshot>;
}

/// One namespace's tables.
pub struct Catalog {
    pub(super) state: ObjectState,
    pub(super) env: Env,
    pub(super) settings: Settings,
    /// The class's SQL tables, made once per instance.
    tables: Tables,
}

const SNAPSHOT_COLUMNS: &str =
    "id, parent, ts, schema_version, file, first_seq, last_seq, inserts, updates, deletes, rows";

/// A `cat_snapshots` row selected with [`SNAPSHOT_COLUMNS`].
pub(super) fn snapshot_of(row: &rookery::SqlRow<'_>) -> Result<Snapshot> {
    Ok(Snapshot {
        snapshot_id: row.get("id")?,
        parent_id: row.get("parent")?,
        timestamp: row.get("ts")?,
        schema_version: row.get("schema_version")?,
        file: row.get("file")?,
        first_seq: row.get("first_seq")?,
        last_seq: row.get("last_seq")?,
        inserts: row.get("inserts")?,
        updates: row.get("updates")?,
        deletes: row.get("deletes")?,
        rows: row.get("rows")?,
    })
}

/// A table's current state, as `cat_tables` holds it.
pub(super) struct TableRow {
    pub snapshot: i64,
    pub schema_version: i64,
    pub last_seq: i64,
    pub rows: i64,
}

impl Catalog {
    pub(super) fn ensure_schema(&mut self) -> Result<()> {
        self.tables.ensure(&self.state, SCHEMA)
    }

    /// The namespace: the object's name.
    pub(super) fn namespace(&self) -> &str {
        self.state.id().name().unwrap_or_default()
    }

    /// Table `name`'s current state, if it exists.
    pub(super) fn table(&self, name: &str) -> Result<Option<TableRow>> {
        let cursor = self.state.storage().sql().exec(
            "SELECT snapshot, schema_version, last_seq, rows FROM cat_tables WHERE name = ?",
            &[name.into()],
        )?;
        cursor
            .rows()
            .next()
            .map(|row| {
                Ok(TableRow {
                    snapshot: row.get("snapshot")?,
                    schema_version: row.get("schema_version")?,
                    last_seq: row.get("last_seq")?,
                    rows: row.get("rows")?,
                })
            })
            .transpose()
    }

    /// Snapshot `id` of `table`, if it exists.
    pub(super) fn snapshot(&self, table: &str, id: i64) -> Result<Option<Snapshot>> {
        let cursor = self.state.storage().sql().exec(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM cat_snapshots WHERE tbl = ? AND id = ?"),
            &[table.into(), id.into()],
        )?;
        cursor.rows().next().map(|r| snapshot_of(&r)).transpose()
    }

    /// The snapshots of `table` with ids in `after + 1 ..= until`, oldest first, at most `limit`.
    pub(super) fn snapshots(
        &self,
        table: &str,
        after: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<Snapshot>> {
        let cursor = self.state.storage().sql().exec(
            &format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM cat_snapshots WHERE tbl = ? AND id > ? AND id <= ?
                  ORDER BY id LIMIT ?"
            ),
            &[table.into(), after.into(), until.into(), limit.into()],
        )?;
        cursor.rows().map(|r| snapshot_of(&r)).collect()
    }

    /// The fields of schema version `version` of `table` (none for version 0).
    pub(super) fn fields(&self, table: &str, version: i64) -> Result<Fields> {
        let cursor = self.state.storage().sql().exec(
            "SELECT fields FROM cat_schemas WHERE tbl = ? AND version = ?",
            &[table.into(), version.into()],
        )?;
        match cursor.rows().next() {
            Some(row) => {
                let text: String = row.get("fields")?;
                serde_json::from_str(&text).map_err(Error::msg)
            }
            None => Ok(Fields::default()),
        }
    }

    /// [`TableCatalog::commit_delta`].
    fn commit(&mut self, c: DeltaCommit) -> Result<Snapshot> {
        self.ensure_schema()?;
        let kind = TableKind::of(&c.table);
        if kind == TableKind::Collection {
            check_name(&c.table).map_err(|e| Error::bad_request(format!("table: {e}")))?;
        }
        if c.file.is_empty() || c.first_seq < 1 || c.last_seq < c.first_seq {
            return Err(Error::bad_request(
                "a delta needs a file and a sequence range first_seq <= last_seq from 1",
            ));
        }
        let changes = c.last_seq - c.first_seq + 1;
        if c.inserts < 0 || c.updates < 0 || c.deletes < 0 {
            return Err(Error::bad_request("negative change counts"));
        }
        match kind {
            TableKind::Collection if c.inserts + c.updates + c.deletes != changes => {
                return Err(Error::bad_request(format!(
                    "the delta's {changes} changes are not its inserts, updates and deletes ({} + {} + {})",
                    c.inserts, c.updates, c.deletes
                )));
            }
            TableKind::Events
                if c.updates != 0 || c.deletes != 0 || !(1..=changes).contains(&c.inserts) =>
            {
                return Err(Error::bad_request(format!(
                    "a file of {} holds inserts only, from 1 to one per sequence of its range ({changes})",
                    c.table
                )));
            }
            _ => {}
        }
        let sql = self.state.storage().sql();
        let known = sql.exec(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM cat_snapshots WHERE tbl = ? AND file = ?"),
            &[c.table.as_str().into(), c.file.as_str().into()],
        )?;
        if let Some(row) = known.rows().next() {
            let s = snapshot_of(&row)?;
            if (s.first_seq, s.last_seq) != (c.first_seq, c.last_seq) {
                return Err(Error::bad_request(format!(
                    "file {} is snapshot {} with changes {}..={}, not {}..={}",
                    c.file, s.snapshot_id, s.first_seq, s.last_seq, c.first_seq, c.last_seq
                )));
            }
            return Ok(s);
        }
        let now = self.state.now_ms();
        let current = self.table(&c.table)?;
        let (parent, version, last_seq, rows) = match &current {
            Some(t) => (t.snapshot, t.schema_version, t.last_seq, t.rows),
            None => (0, 0, 0, 0),
        };
        let continues = match (kind, &current) {
            (TableKind::Collection, _) => c.first_seq == last_seq + 1,
            // The writer's first file starts wherever archiving started.
            (TableKind::Events, None) => true,
            // A late event's file may overlap earlier ones; a hole would hide a lost file.
            (TableKind::Events, Some(_)) => c.first_seq <= last_seq + 1,
        };
        if !continues {
            return Err(Error::bad_request(format!(
                "table {} ends at change {last_seq}; a delta from {} does not continue it",
                c.table, c.first_seq
            )));
        }
        // An events table's overlapping file does not move its end back.
        let table_last = last_seq.max(c.last_seq);
        let rows = rows + c.inserts - c.deletes;
        if rows < 0 {
            return Err(Error::bad_request(format!(
                "the delta deletes more documents than table {} has",
                c.table
            )));
        }
        let id = parent + 1;
        let fields = self.fields(&c.table, version)?;
        let version = match fields.evolve(&c.fields) {
            Some(next) => {
                sql.exec(
                    "INSERT INTO cat_schemas (tbl, version, fields, created, snapshot)
                     VALUES (?, ?, ?, ?, ?)",
                    &[
                        c.table.as_str().into(),
                        (version + 1).into(),
                        serde_json::to_string(&next).map_err(Error::msg)?.into(),
                        now.into(),
                        id.into(),
                    ],
                )?;
                version + 1
            }
            // The first snapshot makes version 1, even of a schema with no fields.
            None if version == 0 => {
                sql.exec(
                    "INSERT INTO cat_schemas (tbl, version, fields, created, snapshot)
                     VALUES (?, 1, '[]', ?, ?)",
                    &[c.table.as_str().into(), now.into(), id.into()],
                )?;
                1
            }
            None => version,
        };
        let snapshot = Snapshot {
            snapshot_id: id,
            parent_id: (parent > 0).then_some(parent),
            timestamp: now,
            schema_version: version,
            file: c.file,
            first_seq: c.first_seq,
            last_seq: c.last_seq,
            inserts: c.inserts,
            updates: c.updates,
            deletes: c.deletes,
            rows,
        };
        sql.exec(
            &format!(
                "INSERT INTO cat_snapshots (tbl, {SNAPSHOT_COLUMNS})
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            &[
                c.table.as_str().into(),
                id.into(),
                snapshot.parent_id.into(),
                now.into(),
                version.into(),
                snapshot.file.as_str().into(),
                c.first_seq.into(),
                c.last_seq.into(),
                c.inserts.into(),
                c.updates.into(),
                c.deletes.into(),
                rows.into(),
            ],
        )?;
        sql.exec(
            "INSERT INTO cat_tables (name, created, snapshot, schema_version, last_seq, rows, updated)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot,
               schema_version = excluded.schema_version, last_seq = excluded.last_seq,
               rows = excluded.rows, updated = excluded.updated",
            &[
                c.table.as_str().into(),
                now.into(),
                id.into(),
                version.into(),
                table_last.into(),
                rows.into(),
                now.into(),
            ],
        )?;
        tracing::debug!(namespace = %self.namespace(), table = %c.table, snapshot = id, file = %snapshot.file, "Catalog: committed a delta");
        Ok(snapshot)
    }
}

/// Commits a written file to `namespace`'s catalog (binding [`CATALOG_BINDING`]): the step
/// after the write that the CDC processor and the event writer share. `Err` says why it
/// failed, as the committer's `lastError` shows it.
pub(crate) async fn commit_file(
    env: &Env,
    namespace: &str,
    commit: DeltaCommit,
) -> Result<Snapshot, String> {
    let catalog = env
        .namespace(CATALOG_BINDING)
        .map_err(|e| e.to_string())?
        .typed::<TableCatalogStub>()
        .get_by_name(namespace);
    let file = commit.file.clone();
    catalog
        .commit_delta(commit)
        .await
        .map_err(|e| format!("committing {file} to the catalog: {e}"))
}

impl TableCatalog for Catalog {
    async fn commit_delta(&mut self, commit: DeltaCommit) -> Result<Snapshot> {
        self.commit(commit)
    }
}

impl DurableObject for Catalog {
    fn new(state: ObjectState, env: Env) -> Self {
        let settings = Settings::from_env(&env);
        Self {
            state,
            env,
            settings,
            tables: Tables::default(),
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        self.ensure_schema()?;
        if req.method() != Method::GET {
            return Ok(method_not_allowed("GET"));
        }
        let path = req.path().trim_end_matches('/');
        let Some(rest) = path.strip_prefix("/catalog") else {
            return Ok(not_found());
        };
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        match parts.as_slice() {
            [] => self.list_tables(),
            [table] => self.table_metadata(table, &req),
            [table, "snapshots", n] => self.snapshot_http(table, n),
            [table, "snapshots", n, "rows"] => self.rows_http(table, n).await,
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        TableCatalog::serve(self, call).await
    }
}
