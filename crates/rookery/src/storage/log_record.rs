//! The records of the node log and their encoding.
//!
//! A record is `len: u32 | crc: u32 | body`, little-endian, where `crc` is the CRC-32 of the
//! body and `len` its length. The body starts with its kind, the time it was appended and the
//! object it is about:
//!
//! ```text
//! kind: u8 | time_ms: i64 | class_uid_len: u16 | class_uid | id: [u8; 32] | value: u64 | ...
//! ```
//!
//! - **Commit** (`value` = the object's commit sequence): `db_pages: u32 | frames: u32`, then per
//!   frame `pgno: u32 | page: [u8; 4096]`: the pages the turn's commit wrote to the object's
//!   WAL, in order, and the database's size in pages after it.
//! - **Checkpoint** (`value` = an LSN): the object's own database file holds, durably, every
//!   commit of the object up to that LSN.
//! - **Removed** (`value` = an LSN): the object stored nothing any more and its file was removed.
//!
//! A record's LSN is the byte offset of its start in the log, counted from the first record ever
//! written. A torn or unsynced tail fails its length or checksum and ends the log.

use std::sync::Arc;

use crate::addr::AlarmKey;
use crate::id::ID_BYTES;

/// The page size of object databases; frames carry whole pages.
pub(crate) const PAGE_BYTES: usize = 4096;
/// Bytes before a record's body.
pub(crate) const RECORD_HEADER: usize = 8;
/// The largest body the log accepts (a turn that writes more pages is refused at commit).
pub(crate) const MAX_BODY: usize = 256 * 1024 * 1024;

/// A position in the node log: the byte offset of a record's start.
pub(crate) type Lsn = u64;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Commit = 1,
    Checkpoint = 2,
    Removed = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Commit),
            2 => Some(Kind::Checkpoint),
            3 => Some(Kind::Removed),
            _ => None,
        }
    }
}

/// One page a commit wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub(crate) pgno: u32,
    pub(crate) page: &'a [u8],
}

/// Appends a commit record for `key` to `out`.
pub(crate) fn encode_commit(
    out: &mut Vec<u8>,
    time_ms: i64,
    key: &AlarmKey,
    seq: u64,
    db_pages: u32,
    frames: &[Frame<'_>],
) {
    let start = begin(out, Kind::Commit, time_ms, key, seq);
    out.extend_from_slice(&db_pages.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(frames.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for frame in frames {
        out.extend_from_slice(&frame.pgno.to_le_bytes());
        out.extend_from_slice(frame.page);
    }
    finish(out, start);
}

/// Appends a checkpoint or removal record for `key`, covering its commits up to `through`.
pub(crate) fn encode_cover(
    out: &mut Vec<u8>,
    kind: Kind,
    time_ms: i64,
    key: &AlarmKey,
    through: Lsn,
) {
    let start = begin(out, kind, time_ms, key, through);
    finish(out, start);
}

fn begin(out: &mut Vec<u8>, kind: Kind, time_ms: i64, key: &AlarmKey, value: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(kind as u8);
    out.extend_from_slice(&time_ms.to_le_bytes());
    let uid = key.class_uid.as_bytes();
    out.extend_from_slice(&u16::try_from(uid.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(uid);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&value.to_le_bytes());
    start
}

fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + RECORD_HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back from the log.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub(crate) kind: Kind,
    pub(crate) time_ms: i64,
    pub(crate) key: AlarmKey,
    /// The commit sequence (commits) or the covered LSN (checkpoints, removals).
    pub(crate) value: u64,
    /// Commits: the database size in pages and the frames.
    pub(crate) db_pages: u32,
    frames: &'a [u8],
    frame_count: usize,
}

impl<'a> Record<'a> {
    /// The pages of a commit, in the order they were written.
    pub(crate) fn frames(&self) -> impl Iterator<Item = Frame<'a>> + 'a {
        let bytes = self.frames;
        (0..self.frame_count).map(move |i| {
            let at = i * (4 + PAGE_BYTES);
            let mut pgno = [0u8; 4];
            pgno.copy_from_slice(&bytes[at..at + 4]);
            Frame {
                pgno: u32::from_le_bytes(pgno),
                page: &bytes[at + 4..at + 4 + PAGE_BYTES],
            }
        })
    }
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The bytes ended exactly after a record.
    Clean,
    /// A record is cut short or fails its checksum: the unsynced tail of a crash.
    Torn,
}

/// Decodes the record at the start of `bytes`; `Err` says why there is none. Returns the record
/// and its whole length.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), End> {
    if bytes.is_empty() {
        return Err(End::Clean);
    }
    if bytes.len() < RECORD_HEADER {
        return Err(End::Torn);
    }
    let len = u32::from_le_bytes(take4(bytes, 0)) as usize;
    let crc = u32::from_le_bytes(take4(bytes, 4));
    if len > MAX_BODY || bytes.len() < RECORD_HEADER + len {
        return Err(End::Torn);
    }
    let body = &bytes[RECORD_HEADER..RECORD_HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err(End::Torn);
    }
    parse(body)
        .map(|record| (record, RECORD_HEADER + len))
        .ok_or(End::Torn)
}

fn take4(bytes: &[u8], at: usize) -> [u8; 4] {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    b
}

fn parse(body: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { bytes: body, at: 0 };
    let kind = Kind::from_u8(r.bytes(1)?[0])?;
    let time_ms = i64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    let uid_len = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?) as usize;
    let uid = std::str::from_utf8(r.bytes(uid_len)?).ok()?;
    let id: [u8; ID_BYTES] = r.bytes(ID_BYTES)?.try_into().ok()?;
    let value = u64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    let (db_pages, frame_count, frames) = match kind {
        Kind::Commit => {
            let db_pages = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?);
            let count = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?) as usize;
            let frames = r.bytes(count.checked_mul(4 + PAGE_BYTES)?)?;
            (db_pages, count, frames)
        }
        Kind::Checkpoint | Kind::Removed => (0, 0, &body[..0]),
    };
    if r.at != body.len() {
        return None;
    }
    Some(Record {
        kind,
        time_ms,
        key: AlarmKey {
            class_uid: Arc::from(uid),
            id,
        },
        value,
        db_pages,
        frames,
        frame_count,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AlarmKey {
        AlarmKey {
            class_uid: Arc::from("c1"),
            id: [7; ID_BYTES],
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let page_a = vec![1u8; PAGE_BYTES];
        let page_b = vec![2u8; PAGE_BYTES];
        let mut log = Vec::new();
        let frames = [
            Frame {
                pgno: 1,
                page: &page_a,
            },
            Frame {
                pgno: 3,
                page: &page_b,
            },
        ];
        encode_commit(&mut log, 1_000, &key(), 5, 3, &frames);
        encode_cover(&mut log, Kind::Checkpoint, 2_000, &key(), 0);
        let (commit, used) = decode(&log).unwrap();
        assert_eq!(commit.kind, Kind::Commit);
        assert_eq!(
            (commit.value, commit.db_pages, commit.time_ms),
            (5, 3, 1_000)
        );
        assert_eq!(commit.key, key());
        let pages: Vec<(u32, u8)> = commit.frames().map(|f| (f.pgno, f.page[0])).collect();
        assert_eq!(pages, [(1, 1), (3, 2)]);
        let (cover, used2) = decode(&log[used..]).unwrap();
        assert_eq!((cover.kind, cover.value), (Kind::Checkpoint, 0));
        assert_eq!(decode(&log[used + used2..]).unwrap_err(), End::Clean);
        // A record cut short, or with a flipped bit, is a torn tail.
        assert_eq!(decode(&log[..used - 1]).unwrap_err(), End::Torn);
        let mut flipped = log.clone();
        flipped[used / 2] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), End::Torn);
    }
}
