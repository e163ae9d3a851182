//! What an operator may do with one object's storage from outside its code: read its tables
//! and run a read-only query (bounded in time), and copy its database for a backup. Each runs
//! inside one of the object's turns, so it sees every commit and no half of one.

use std::path::Path;
use std::time::Duration;

use super::Storage;
use super::sql::{SqlCursor, run};
use crate::error::Result;

/// One table (or view) of an object's own SQL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableInfo {
    /// Its name.
    pub name: String,
    /// `table` or `view`.
    pub kind: String,
    /// The statement that created it.
    pub sql: Option<String>,
    /// Rows it holds (counted; `None` for a view).
    pub rows: Option<u64>,
}

impl Storage {
    /// The tables and views of the object's own SQL (not the runtime's), with their row
    /// counts; stopped once `limit` has passed.
    pub(crate) fn tables(&self, limit: Duration) -> Result<Vec<TableInfo>> {
        self.lock().db.read_only(limit, |conn| {
            let mut tables: Vec<TableInfo> = conn
                .prepare(
                    "SELECT name, type, sql FROM main.sqlite_schema
                     WHERE type IN ('table', 'view')
                       AND name NOT LIKE '\\_rookery\\_%' ESCAPE '\\'
                       AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                     ORDER BY name",
                )?
                .query_map([], |r| {
                    Ok(TableInfo {
                        name: r.get(0)?,
                        kind: r.get(1)?,
                        sql: r.get(2)?,
                        rows: None,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            for table in tables.iter_mut().filter(|t| t.kind == "table") {
                let quoted = table.name.replace('"', "\"\"");
                let rows: i64 = conn.query_row(
                    &format!("SELECT count(*) FROM main.\"{quoted}\""),
                    [],
                    |r| r.get(0),
                )?;
                table.rows = Some(u64::try_from(rows).unwrap_or(0));
            }
            Ok(tables)
        })
    }

    /// Runs an operator's `query` (one statement or several) without letting it write, under
    /// the object's SQL policy, stopped once `limit` has passed; the rows of its last statement.
    pub(crate) fn read_only_query(&self, query: &str, limit: Duration) -> Result<SqlCursor> {
        self.lock()
            .db
            .read_only(limit, |conn| run(conn, query, &[]))
    }

    /// Copies the object's database, as its last commit left it, into a new file at `dest`
    /// (synced). Returns whether the object has a file to copy.
    pub(crate) fn backup_to(&self, dest: &Path) -> Result<bool> {
        let copy = || self.lock().db.backup_to(dest);
        // The copy reads and writes a whole file: the other tasks of this worker thread move
        // to another one meanwhile (where the runtime has others).
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(copy),
            _ => copy(),
        }
    }
}
