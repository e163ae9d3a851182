//! The catalog's HTTP reads: its tables, a table's metadata (schema versions and snapshots),
//! the table as of snapshot N (its schema and files), and its documents as of snapshot N (for
//! the events table, the events archived by then, by event id).

use std::collections::BTreeMap;

use rookery::prelude::*;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::catalog::{Catalog, Snapshot, TableKind};
use super::change::{Change, Op};
use super::delta;
use super::schema::Field;
use crate::events::limit_error;
use crate::input::{InputError, not_found};

/// Snapshots a metadata answer lists unless `limit` says otherwise (at most this many).
const MAX_LISTED: i64 = 1_000;
/// Most bytes of documents "the table as of snapshot N" returns.
pub const MAX_ROWS_BYTES: usize = 32 * 1024 * 1024;

/// A schema version as answered.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaVersion {
    version: i64,
    fields: Vec<Field>,
    created_at: i64,
    /// The snapshot that introduced it.
    snapshot_id: i64,
}

/// A document as of a snapshot.
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    doc: &'a RawValue,
}

/// The documents as of a snapshot (a struct, not `json!`, so each is written as it was sent).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rows<'a> {
    table: &'a str,
    snapshot_id: i64,
    count: usize,
    rows: Vec<Row<'a>>,
}

/// Why a replay stopped.
enum Replay {
    /// A bound was reached: the status and the answer.
    Refused(Response),
    /// The documents by id.
    Rows(BTreeMap<String, Box<RawValue>>),
}

impl Catalog {
    /// `GET /catalog`.
    pub(super) fn list_tables(&self) -> Result<Response> {
        let cursor = self.state.storage().sql().exec(
            "SELECT name, created, snapshot, schema_version, last_seq, rows, updated
               FROM cat_tables ORDER BY name",
            &[],
        )?;
        let mut tables = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            tables.push(json!({
                "name": row.get::<String>("name")?,
                "currentSnapshotId": row.get::<i64>("snapshot")?,
                "currentSchemaVersion": row.get::<i64>("schema_version")?,
                "lastSeq": row.get::<i64>("last_seq")?,
                "rows": row.get::<i64>("rows")?,
                "createdAt": row.get::<i64>("created")?,
                "updatedAt": row.get::<i64>("updated")?,
            }));
        }
        Response::json(&json!({ "namespace": self.namespace(), "tables": tables }))
    }

    /// `GET /catalog/:table?after=&limit=`: the schema versions and the snapshots after
    /// `after` (0), oldest first, at most `limit` (1 000).
    pub(super) fn table_metadata(&self, table: &str, req: &Request) -> Result<Response> {
        let Some(t) = self.table(table)? else {
            return Ok(not_found());
        };
        let after = req.query::<i64>("after")?.unwrap_or(0);
        let limit = req.query::<i64>("limit")?.unwrap_or(MAX_LISTED);
        if !(1..=MAX_LISTED).contains(&limit) {
            return Ok(
                InputError::invalid("limit", "must be an integer from 1 to 1000").response(),
            );
        }
        let cursor = self.state.storage().sql().exec(
            "SELECT version, fields, created, snapshot FROM cat_schemas WHERE tbl = ?
              ORDER BY version",
            &[table.into()],
        )?;
        let mut schemas = Vec::with_capacity(cursor.len());
        for row in cursor.rows() {
            let fields: String = row.get("fields")?;
            schemas.push(SchemaVersion {
                version: row.get("version")?,
                fields: serde_json::from_str::<super::schema::Fields>(&fields)
                    .map_err(Error::msg)?
                    .0,
                created_at: row.get("created")?,
                snapshot_id: row.get("snapshot")?,
            });
        }
        let snapshots = self.snapshots(table, after.max(0), t.snapshot, limit)?;
        Response::json(&json!({
            "namespace": self.namespace(),
            "name": table,
            "currentSnapshotId": t.snapshot,
            "currentSchemaVersion": t.schema_version,
            "lastSeq": t.last_seq,
            "rows": t.rows,
            "schemas": schemas,
            "snapshots": snapshots,
        }))
    }

    /// Snapshot `n` of `table`, or the answer saying why there is none.
    fn find_snapshot(&self, table: &str, n: &str) -> Result<Result<Snapshot, Response>> {
        let Ok(id) = n.parse::<i64>() else {
            return Ok(Err(InputError::invalid(
                "snapshot",
                "must be a snapshot id (an integer from 1)",
            )
            .response()));
        };
        Ok(self.snapshot(table, id)?.ok_or_else(not_found))
    }

    /// `GET /catalog/:table/snapshots/:n`: the snapshot, the schema it names and the files that
    /// make up the table at it, oldest first.
    pub(super) fn snapshot_http(&self, table: &str, n: &str) -> Result<Response> {
        let s = match self.find_snapshot(table, n)? {
            Ok(s) => s,
            Err(answer) => return Ok(answer),
        };
        let fields = self.fields(table, s.schema_version)?.0;
        let files = self.snapshots(table, 0, s.snapshot_id, i64::MAX)?;
        let files: Vec<_> = files
            .iter()
            .map(|f| {
                json!({
                    "file": f.file,
                    "snapshotId": f.snapshot_id,
                    "firstSeq": f.first_seq,
                    "lastSeq": f.last_seq,
                    "changes": f.inserts + f.updates + f.deletes,
                })
            })
            .collect();
        let mut body = serde_json::to_value(&s).map_err(Error::msg)?;
        body["table"] = json!(table);
        body["schema"] = json!({ "version": s.schema_version, "fields": fields });
        body["files"] = json!(files);
        Response::json(&body)
    }

    /// `GET /catalog/:table/snapshots/:n/rows`: the documents as of snapshot `n`, by id, made by
    /// replaying the files of snapshots 1 to `n` from the table's bucket ([`TableKind::bucket`]).
    /// Refused with 413 when the table has more than `CATALOG_MAX_ROWS` documents then, or they
    /// hold more than [`MAX_ROWS_BYTES`].
    pub(super) async fn rows_http(&self, table: &str, n: &str) -> Result<Response> {
        let s = match self.find_snapshot(table, n)? {
            Ok(s) => s,
            Err(answer) => return Ok(answer),
        };
        let max_rows = self.settings.max_rows;
        if s.rows > max_rows {
            return Ok(too_many_rows(s.rows, max_rows));
        }
        let files = self.snapshots(table, 0, s.snapshot_id, i64::MAX)?;
        let kind = TableKind::of(table);
        let bucket = self.env.bucket(kind.bucket())?;
        let rows = match replay(&bucket, kind, &files, max_rows).await? {
            Replay::Rows(rows) => rows,
            Replay::Refused(answer) => return Ok(answer),
        };
        let listed: Vec<Row<'_>> = rows
            .iter()
            .map(|(id, doc)| Row {
                id,
                doc: doc.as_ref(),
            })
            .collect();
        Response::json(&Rows {
            table,
            snapshot_id: s.snapshot_id,
            count: listed.len(),
            rows: listed,
        })
    }
}

fn too_many_rows(rows: i64, max: i64) -> Response {
    limit_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the table has {rows} documents at this snapshot; at most {max} are returned"),
        "CATALOG_MAX_ROWS",
    )
}

/// The fields of an archived event that key it and place it.
#[derive(serde::Deserialize)]
struct EventKey {
    id: String,
    sequence: i64,
    timestamp: i64,
}

/// The lines of an event writer's file as the changes they are to the events table: each event
/// an insert of its id, the document the event as written.
fn event_changes(bytes: &[u8]) -> Result<Vec<Change>> {
    delta::decode_lines::<Box<RawValue>>(bytes)?
        .into_iter()
        .map(|event| {
            let key: EventKey = serde_json::from_str(event.get())
                .map_err(|e| Error::msg(format!("an archived event: {e}")))?;
            Ok(Change {
                seq: key.sequence,
                op: Op::Insert,
                id: key.id,
                doc: Some(event),
                ts: key.timestamp,
            })
        })
        .collect()
}

/// Applies the changes of `files`, in order, to an empty table.
async fn replay(
    bucket: &rookery::Bucket,
    kind: TableKind,
    files: &[Snapshot],
    max_rows: i64,
) -> Result<Replay> {
    let mut rows: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    let mut bytes = 0_usize;
    let max_rows = usize::try_from(max_rows).unwrap_or(usize::MAX);
    for f in files {
        let Some(content) = bucket.get(&f.file).await? else {
            return Ok(Replay::Refused(Response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "delta file {} of snapshot {} is missing from the bucket",
                    f.file, f.snapshot_id
                ),
            )));
        };
        let changes = match kind {
            TableKind::Collection => delta::decode(&content)?,
            TableKind::Events => event_changes(&content)?,
        };
        let expected = f.first_seq..=f.last_seq;
        // The commit checked the counts against the range (all of it for a collection).
        let whole = i64::try_from(changes.len()).ok() == Some(f.inserts + f.updates + f.deletes);
        if !whole || changes.iter().any(|c| !expected.contains(&c.seq)) {
            return Ok(Replay::Refused(Response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "delta file {} does not hold changes {}..={} of snapshot {}",
                    f.file, f.first_seq, f.last_seq, f.snapshot_id
                ),
            )));
        }
        for c in changes {
            match (c.op, c.doc) {
                (Op::Delete, _) => {
                    if let Some(old) = rows.remove(&c.id) {
                        bytes -= old.get().len();
                    }
                }
                (_, Some(doc)) => {
                    bytes += doc.get().len();
                    if let Some(old) = rows.insert(c.id, doc) {
                        bytes -= old.get().len();
                    }
                }
                (_, None) => {
                    return Err(Error::msg(format!(
                        "change {} in {} has no document",
                        c.seq, f.file
                    )));
                }
            }
            if rows.len() > max_rows {
                return Ok(Replay::Refused(too_many_rows(
                    i64::try_from(rows.len()).unwrap_or(i64::MAX),
                    i64::try_from(max_rows).unwrap_or(i64::MAX),
                )));
            }
            if bytes > MAX_ROWS_BYTES {
                return Ok(Replay::Refused(Response::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "the documents at this snapshot hold more than {MAX_ROWS_BYTES} bytes"
                    ),
                )));
            }
        }
    }
    Ok(Replay::Rows(rows))
}
