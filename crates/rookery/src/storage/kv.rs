//! The key-value API: serde values under UTF-8 keys, ordered by their bytes.
//!
//! Keys live in `_rookery_kv` as BLOBs so that SQLite compares them with `memcmp`, which is the
//! order of their UTF-8 bytes, and so that range bounds need not be valid UTF-8 themselves.

use std::collections::BTreeMap;
use std::ops::Bound;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Storage;
use super::database::map_sqlite;
use crate::error::{Error, Result};

/// Which keys `list` returns, and in what order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// First key to include.
    pub start: Option<String>,
    /// Key after which to begin (exclusive); combined with `start`, the later bound wins.
    pub start_after: Option<String>,
    /// Key at which to stop (exclusive).
    pub end: Option<String>,
    /// Only keys that begin with this.
    pub prefix: Option<String>,
    /// Descending order.
    pub reverse: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Options that list everything in ascending order.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only keys that begin with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Keys from `start` on.
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }

    /// Keys after `key`.
    pub fn start_after(mut self, key: impl Into<String>) -> Self {
        self.start_after = Some(key.into());
        self
    }

    /// Keys before `end`.
    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
    }

    /// Descending order if `reverse`.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// At most `limit` entries.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The key range these options select, as byte bounds.
    fn range(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let mut lower: Bound<Vec<u8>> = Bound::Unbounded;
        let mut upper: Bound<Vec<u8>> = Bound::Unbounded;
        let mut raise = |b: Bound<Vec<u8>>| {
            lower = later_lower(std::mem::replace(&mut lower, Bound::Unbounded), b)
        };
        if let Some(s) = &self.start {
            raise(Bound::Included(s.as_bytes().to_vec()));
        }
        if let Some(s) = &self.start_after {
            raise(Bound::Excluded(s.as_bytes().to_vec()));
        }
        if let Some(p) = &self.prefix {
            raise(Bound::Included(p.as_bytes().to_vec()));
        }
        let mut cap = |b: Vec<u8>| {
            upper = match std::mem::replace(&mut upper, Bound::Unbounded) {
                Bound::Excluded(u) if u <= b => Bound::Excluded(u),
                _ => Bound::Excluded(b),
            }
        };
        if let Some(e) = &self.end {
            cap(e.as_bytes().to_vec());
        }
        if let Some(p) = &self.prefix
            && let Some(after) = prefix_successor(p.as_bytes())
        {
            cap(after);
        }
        (lower, upper)
    }
}

/// The stricter of two lower bounds.
fn later_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (a, b) {
        (Bound::Unbounded, x) | (x, Bound::Unbounded) => x,
        (Bound::Included(x), Bound::Included(y)) => Bound::Included(x.max(y)),
        (Bound::Excluded(x), Bound::Excluded(y)) => Bound::Excluded(x.max(y)),
        (Bound::Included(i), Bound::Excluded(e)) | (Bound::Excluded(e), Bound::Included(i)) => {
            if i > e {
                Bound::Included(i)
            } else {
                Bound::Excluded(e)
            }
        }
    }
}

/// The smallest byte string greater than every string that starts with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

impl Storage {
    fn check_key(&self, key: &str) -> Result<()> {
        if key.len() > self.ctx.limits.max_key_bytes {
            return Err(Error::LimitExceeded(format!(
                "key of {} bytes is over the {}-byte limit",
                key.len(),
                self.ctx.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_batch(&self, n: usize) -> Result<()> {
        if n > self.ctx.limits.max_batch_keys {
            return Err(Error::LimitExceeded(format!(
                "{n} keys in one call; the limit is {}",
                self.ctx.limits.max_batch_keys
            )));
        }
        Ok(())
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value)?;
        if bytes.len() > self.ctx.limits.max_value_bytes {
            return Err(Error::LimitExceeded(format!(
                "value of {} bytes is over the {}-byte limit",
                bytes.len(),
                self.ctx.limits.max_value_bytes
            )));
        }
        Ok(bytes)
    }

    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_raw(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The value under `key` as its stored JSON bytes, if any.
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check_key(key)?;
        let mut turn = self.lock();
        let conn = turn.db.txn()?;
        let mut stmt = conn.prepare_cached("SELECT value FROM main._rookery_kv WHERE key = ?1")?;
        Ok(stmt
            .query_row([key.as_bytes()], |row| row.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    /// The values under `keys` (at most the batch limit); missing keys are absent from the map.
    pub fn get_many<T: DeserializeOwned, S: AsRef<str>>(
        &self,
        keys: &[S],
    ) -> Result<BTreeMap<String, T>> {
        self.check_batch(keys.len())?;
        for key in keys {
            self.check_key(key.as_ref())?;
        }
        let mut turn = self.lock();
        let conn = turn.db.txn()?;
        let mut stmt = conn.prepare_cached("SELECT value FROM main._rookery_kv WHERE key = ?1")?;
        let mut out = BTreeMap::new();
        for key in keys {
            let key = key.as_ref();
            if let Some(bytes) = stmt
                .query_row([key.as_bytes()], |row| row.get::<_, Vec<u8>>(0))
                .optional()?
            {
                out.insert(key.to_string(), serde_json::from_slice(&bytes)?);
            }
        }
        Ok(out)
    }

    /// Stores every `(key, value)` of `entries` (at most the batch limit), all or none.
    pub fn put_many<K: AsRef<str>, T: Serialize>(&self, entries: &[(K, T)]) -> Result<()> {
        self.check_batch(entries.len())?;
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            self.check_key(key.as_ref())?;
            encoded.push((key.as_ref(), self.encode(value)?));
        }
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        let mut stmt = conn.prepare_cached(
            "INSERT OR REPLACE INTO main._rookery_kv (key, value) VALUES (?1, ?2)",
        )?;
        for (key, bytes) in encoded {
            stmt.execute(params![key.as_bytes(), bytes])
                .map_err(|e| map_sqlite(conn, e))?;
        }
        Ok(())
    }

    /// Stores `value` under `key`.
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.check_key(key)?;
        let bytes = self.encode(value)?;
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        let mut stmt = conn.prepare_cached(
            "INSERT OR REPLACE INTO main._rookery_kv (key, value) VALUES (?1, ?2)",
        )?;
        stmt.execute(params![key.as_bytes(), bytes])
            .map_err(|e| map_sqlite(conn, e))?;
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        self.check_key(key)?;
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        let mut stmt = conn.prepare_cached("DELETE FROM main._rookery_kv WHERE key = ?1")?;
        Ok(stmt
            .execute([key.as_bytes()])
            .map_err(|e| map_sqlite(conn, e))?
            > 0)
    }

    /// Deletes `keys` (at most the batch limit); returns how many existed.
    pub fn delete_many<S: AsRef<str>>(&self, keys: &[S]) -> Result<usize> {
        self.check_batch(keys.len())?;
        for key in keys {
            self.check_key(key.as_ref())?;
        }
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        let mut stmt = conn.prepare_cached("DELETE FROM main._rookery_kv WHERE key = ?1")?;
        let mut deleted = 0;
        for key in keys {
            deleted += stmt
                .execute([key.as_ref().as_bytes()])
                .map_err(|e| map_sqlite(conn, e))?;
        }
        Ok(deleted)
    }

    /// The entries selected by `options`, in key order (descending if `reverse`).
    pub fn list<T: DeserializeOwned>(&self, options: &ListOptions) -> Result<Vec<(String, T)>> {
        self.list_raw(options)?
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_slice(&v)?)))
            .collect()
    }

    /// Like [`Storage::list`], with values as their stored JSON bytes.
    pub fn list_raw(&self, options: &ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        if options.limit == Some(0) {
            return Ok(Vec::new());
        }
        let (lower, upper) = options.range();
        let mut sql = String::from("SELECT key, value FROM main._rookery_kv WHERE 1");
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(2);
        match lower {
            Bound::Included(k) => {
                sql.push_str(" AND key >= ?");
                args.push(k);
            }
            Bound::Excluded(k) => {
                sql.push_str(" AND key > ?");
                args.push(k);
            }
            Bound::Unbounded => {}
        }
        if let Bound::Excluded(k) = upper {
            sql.push_str(" AND key < ?");
            args.push(k);
        }
        sql.push_str(if options.reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key"
        });
        let limit = options
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        sql.push_str(" LIMIT ?");
        let mut turn = self.lock();
        let conn = turn.db.txn()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut params: Vec<&dyn rusqlite::ToSql> =
            args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
        params.push(&limit);
        let rows = stmt.query_map(params.as_slice(), |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, value) = row?;
            let key = String::from_utf8(key)
                .map_err(|_| Error::msg("a stored key is not valid UTF-8"))?;
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }

    #[test]
    fn range_combines_the_tightest_bounds() {
        let o = ListOptions::new().prefix("m:").start("m:5").end("z");
        assert_eq!(
            o.range(),
            (
                Bound::Included(b"m:5".to_vec()),
                Bound::Excluded(b"m;".to_vec())
            )
        );
        let o = ListOptions::new().start("b").start_after("b");
        assert_eq!(o.range().0, Bound::Excluded(b"b".to_vec()));
    }
}
