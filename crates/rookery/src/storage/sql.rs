//! The SQL API: the object's own tables beside the KV table, in the same turn transaction.

use fallible_iterator::FallibleIterator;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Batch, Connection, StatementStatus, ToSql};
use serde_json::{Map, Number, Value};

use super::Storage;
use super::database::PAGE_SIZE;
use crate::error::{Error, Result};

/// One SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self { SqlValue::Integer(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32, bool);

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}

impl From<&[u8]> for SqlValue {
    fn from(v: &[u8]) -> Self {
        SqlValue::Blob(v.to_vec())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl SqlValue {
    fn from_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }

    /// The value as JSON: blobs become arrays of bytes, non-finite floats `null`.
    pub fn to_json(&self) -> Value {
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::from(*i),
            SqlValue::Real(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            SqlValue::Text(s) => Value::String(s.clone()),
            SqlValue::Blob(b) => Value::from(b.as_slice()),
        }
    }
}

/// Conversion of a column value to a Rust type.
pub trait FromSqlValue: Sized {
    /// Converts `v`, or says why it cannot.
    fn from_sql_value(v: &SqlValue) -> Result<Self>;
}

fn wrong_type(want: &str, got: &SqlValue) -> Error {
    Error::msg(format!("expected {want}, found {got:?}"))
}

impl FromSqlValue for i64 {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        match v {
            SqlValue::Integer(i) => Ok(*i),
            other => Err(wrong_type("an integer", other)),
        }
    }
}

impl FromSqlValue for f64 {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        match v {
            SqlValue::Real(f) => Ok(*f),
            SqlValue::Integer(i) => Ok(*i as f64),
            other => Err(wrong_type("a number", other)),
        }
    }
}

impl FromSqlValue for bool {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        i64::from_sql_value(v).map(|i| i != 0)
    }
}

impl FromSqlValue for String {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        match v {
            SqlValue::Text(s) => Ok(s.clone()),
            other => Err(wrong_type("text", other)),
        }
    }
}

impl FromSqlValue for Vec<u8> {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        match v {
            SqlValue::Blob(b) => Ok(b.clone()),
            SqlValue::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(wrong_type("a blob", other)),
        }
    }
}

impl FromSqlValue for SqlValue {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        Ok(v.clone())
    }
}

impl FromSqlValue for Value {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        Ok(v.to_json())
    }
}

impl<T: FromSqlValue> FromSqlValue for Option<T> {
    fn from_sql_value(v: &SqlValue) -> Result<Self> {
        match v {
            SqlValue::Null => Ok(None),
            other => T::from_sql_value(other).map(Some),
        }
    }
}

/// A column, by position or by name.
pub trait ColumnIndex {
    /// The position of this column among `columns`.
    fn position(&self, columns: &[String]) -> Result<usize>;
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[String]) -> Result<usize> {
        if *self < columns.len() {
            Ok(*self)
        } else {
            Err(Error::msg(format!(
                "no column {self}; there are {}",
                columns.len()
            )))
        }
    }
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[String]) -> Result<usize> {
        columns
            .iter()
            .position(|c| c == self)
            .ok_or_else(|| Error::msg(format!("no column named {self:?}")))
    }
}

/// The result of [`Sql::exec`]: the rows of the last statement, with its column names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlCursor {
    columns: Vec<String>,
    rows: Vec<Vec<SqlValue>>,
    rows_read: u64,
    rows_written: u64,
}

/// One row of a [`SqlCursor`].
#[derive(Debug, Clone, Copy)]
pub struct SqlRow<'a> {
    columns: &'a [String],
    values: &'a [SqlValue],
}

impl<'a> SqlRow<'a> {
    /// The value of a column converted to `T`.
    pub fn get<T: FromSqlValue>(&self, column: impl ColumnIndex) -> Result<T> {
        T::from_sql_value(&self.values[column.position(self.columns)?])
    }

    /// The raw values, in column order.
    pub fn values(&self) -> &'a [SqlValue] {
        self.values
    }

    /// The row as a JSON object keyed by column name.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::with_capacity(self.columns.len());
        for (c, v) in self.columns.iter().zip(self.values) {
            obj.insert(c.clone(), v.to_json());
        }
        Value::Object(obj)
    }
}

impl SqlCursor {
    /// The column names of the result.
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = SqlRow<'_>> {
        self.rows.iter().map(|values| SqlRow {
            columns: &self.columns,
            values,
        })
    }

    /// The rows as arrays of values.
    pub fn raw(&self) -> &[Vec<SqlValue>] {
        &self.rows
    }

    /// The only row; an error unless there is exactly one.
    pub fn one(&self) -> Result<SqlRow<'_>> {
        match self.rows.as_slice() {
            [values] => Ok(SqlRow {
                columns: &self.columns,
                values,
            }),
            rows => Err(Error::msg(format!(
                "expected one row, found {}",
                rows.len()
            ))),
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows as a JSON array of objects keyed by column name.
    pub fn to_json(&self) -> Value {
        Value::Array(self.rows().map(|r| r.to_json()).collect())
    }

    /// Rows the statements read: rows returned plus rows stepped over by full scans.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows the statements inserted, updated or deleted.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }
}

/// The SQL interface of an object's storage.
pub struct Sql<'a> {
    storage: &'a Storage,
}

impl Storage {
    /// The SQL interface of this storage.
    pub fn sql(&self) -> Sql<'_> {
        Sql { storage: self }
    }
}

impl Sql<'_> {
    /// Runs `query` (one statement, or several separated by `;`) with `params` bound to its
    /// `?` placeholders; returns the rows of the last statement. Parameters are only allowed
    /// with a single statement. Part of the turn's transaction: rolled back if the turn fails.
    pub fn exec(&self, query: &str, params: &[SqlValue]) -> Result<SqlCursor> {
        let mut turn = self.storage.lock();
        turn.db.as_user(|conn| run(conn, query, params))
    }

    /// The size of the object's database in bytes.
    pub fn database_size(&self) -> Result<u64> {
        let mut turn = self.storage.lock();
        let conn = turn.db.txn()?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        Ok(u64::try_from(pages).unwrap_or(0) * PAGE_SIZE)
    }
}

pub(super) fn run(
    conn: &Connection,
    query: &str,
    params: &[SqlValue],
) -> rusqlite::Result<SqlCursor> {
    let before = conn.total_changes();
    let mut batch = Batch::new(conn, query);
    let mut cursor = SqlCursor::default();
    let mut statements = 0;
    let mut read = 0u64;
    while let Some(mut stmt) = batch.next()? {
        statements += 1;
        if statements > 1 && !params.is_empty() {
            return Err(rusqlite::Error::InvalidParameterCount(params.len(), 0));
        }
        if stmt.parameter_count() != params.len() {
            return Err(rusqlite::Error::InvalidParameterCount(
                params.len(),
                stmt.parameter_count(),
            ));
        }
        for (i, p) in params.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, p)?;
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let n = columns.len();
        let mut rows = Vec::new();
        let mut raw = stmt.raw_query();
        while let Some(row) = raw.next()? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(SqlValue::from_ref(row.get_ref(i)?));
            }
            rows.push(values);
        }
        drop(raw);
        read += rows.len() as u64 + stmt.get_status(StatementStatus::FullscanStep).max(0) as u64;
        cursor.columns = columns;
        cursor.rows = rows;
    }
    cursor.rows_read = read;
    cursor.rows_written = conn.total_changes() - before;
    Ok(cursor)
}
