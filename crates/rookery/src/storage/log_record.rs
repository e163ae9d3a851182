//! The records of the node log and their encoding.
//!
//! A record is `len: u32 | crc: u32 | body`, little-endian, where `crc` is the CRC-32 of the
//! body and `len` its length. The body starts with the record's own LSN (so that a record left
//! in a recycled segment by an earlier use can never pass for a new one), its kind, the time it
//! was appended and the object it is about:
//!
//! ```text
//! lsn: u64 | kind: u8 | time_ms: i64 | class_uid_len: u16 | class_uid | id: [u8; 32] | value: u64 | ...
//! ```
//!
//! - **Commit** (`value` = the object's commit sequence): `db_pages: u32 | frames: u32`, then per
//!   frame `pgno: u32 | stored: u16 | bytes`: the pages the turn's commit wrote to the object's
//!   WAL, in order, and the database's size in pages after it. A page is stored as an LZ4 block
//!   of `stored` bytes, or whole when `stored` is 4096 (it did not get smaller). Kind byte 4;
//!   kind 1 is the earlier form, every page whole (`pgno: u32 | page: [u8; 4096]`), still read.
//! - **Checkpoint** (`value` = an LSN): the object's own database file holds, durably, every
//!   commit of the object up to that LSN.
//! - **Removed** (`value` = an LSN): the object stored nothing any more and its file was removed.
//!
//! Pages are compressed because a commit usually changes a few bytes of a mostly empty page:
//! a counter increment logs about 100 bytes instead of 4 KiB, and the bytes each sync round
//! writes (and the zeros written ahead of them) shrink with it.
//!
//! A record's LSN is the byte offset of its start in the log, counted from the first record ever
//! written. A torn or unsynced tail fails its length or checksum and ends the log.

use std::io;
use std::sync::Arc;

pub(crate) use super::packed_pages::{
    Frame, PAGE_BYTES, Packed, PackedPages, Page, pack, pack_image,
};
use crate::addr::AlarmKey;
use crate::id::ID_BYTES;

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

/// The kind byte of a commit whose pages are packed (the form written now).
const PACKED_COMMIT: u8 = 4;

impl Kind {
    /// The kind a byte names, and whether a commit's pages are packed.
    fn from_u8(b: u8) -> Option<(Self, bool)> {
        match b {
            1 => Some((Kind::Commit, false)),
            2 => Some((Kind::Checkpoint, false)),
            3 => Some((Kind::Removed, false)),
            PACKED_COMMIT => Some((Kind::Commit, true)),
            _ => None,
        }
    }
}

/// Appends a commit record for `key` to `out`, at log position `lsn`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_commit(
    out: &mut Vec<u8>,
    lsn: Lsn,
    time_ms: i64,
    key: &AlarmKey,
    seq: u64,
    db_pages: u32,
    packed: &Packed,
) {
    let start = begin(out, lsn, PACKED_COMMIT, time_ms, key, seq);
    out.extend_from_slice(&db_pages.to_le_bytes());
    out.extend_from_slice(&packed.count().to_le_bytes());
    out.extend_from_slice(packed.bytes());
    finish(out, start);
}

/// Appends a checkpoint or removal record for `key` at `lsn`, covering its commits up to
/// `through`.
pub(crate) fn encode_cover(
    out: &mut Vec<u8>,
    lsn: Lsn,
    kind: Kind,
    time_ms: i64,
    key: &AlarmKey,
    through: Lsn,
) {
    let start = begin(out, lsn, kind as u8, time_ms, key, through);
    finish(out, start);
}

fn begin(out: &mut Vec<u8>, lsn: Lsn, kind: u8, time_ms: i64, key: &AlarmKey, value: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
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
    /// Whether the frames are packed (`pgno | stored | bytes`) or whole pages.
    packed: bool,
}

impl<'a> Record<'a> {
    /// Whether the object's whole state follows from this record alone: a removal (nothing),
    /// or a commit that wrote every page of the database (a new object's first commit, a
    /// restore). History can be rebuilt from such a record on.
    pub(crate) fn is_base(&self) -> bool {
        match self.kind {
            Kind::Removed => true,
            Kind::Checkpoint => false,
            Kind::Commit => {
                let pages = self.db_pages as usize;
                if self.frame_count < pages {
                    return false;
                }
                let mut seen = vec![false; pages];
                for pgno in self.pgnos() {
                    if let Some(slot) = (pgno as usize).checked_sub(1).and_then(|i| seen.get_mut(i))
                    {
                        *slot = true;
                    }
                }
                seen.iter().all(|s| *s)
            }
        }
    }

    /// The pages of a commit, as stored.
    pub(crate) fn pages(&self) -> PackedPages<'a> {
        PackedPages::stored(self.frame_count, self.frames, self.packed)
    }

    /// The page numbers of a commit's frames, in the order they were written.
    pub(crate) fn pgnos(&self) -> impl Iterator<Item = u32> + 'a {
        self.pages().pgnos()
    }

    /// The pages of a commit, in the order they were written. A page that does not
    /// decompress to a whole page is an error (the record passed its checksum, so this is
    /// not a torn tail but a fault).
    pub(crate) fn frames(&self) -> impl Iterator<Item = io::Result<Page<'a>>> + 'a {
        self.pages().pages()
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

/// Decodes the record at the start of `bytes`, which must be the one at log position `lsn`;
/// `Err` says why there is none. Returns the record and its whole length.
pub(crate) fn decode(bytes: &[u8], lsn: Lsn) -> Result<(Record<'_>, usize), End> {
    // The end of what was written, or the zeros a new segment is filled with.
    if bytes.len() < RECORD_HEADER || bytes[..RECORD_HEADER] == [0u8; RECORD_HEADER] {
        return if bytes.iter().take(RECORD_HEADER).all(|b| *b == 0) {
            Err(End::Clean)
        } else {
            Err(End::Torn)
        };
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
    match parse(body) {
        Some((at, record)) if at == lsn => Ok((record, RECORD_HEADER + len)),
        // A record an earlier use of a recycled segment left: the log ends here.
        Some(_) => Err(End::Clean),
        None => Err(End::Torn),
    }
}

/// The records of a segment that starts at `start`, with their LSNs, up to where it ends.
pub(crate) fn records(bytes: &[u8], start: Lsn) -> impl Iterator<Item = (Lsn, Record<'_>)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let lsn = start + at as u64;
        let (record, len) = decode(bytes.get(at..)?, lsn).ok()?;
        at += len;
        Some((lsn, record))
    })
}

fn take4(bytes: &[u8], at: usize) -> [u8; 4] {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    b
}

fn parse(body: &[u8]) -> Option<(Lsn, Record<'_>)> {
    let mut r = Reader { bytes: body, at: 0 };
    let lsn = u64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    let (kind, packed) = Kind::from_u8(r.bytes(1)?[0])?;
    let time_ms = i64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    let uid_len = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?) as usize;
    let uid = std::str::from_utf8(r.bytes(uid_len)?).ok()?;
    let id: [u8; ID_BYTES] = r.bytes(ID_BYTES)?.try_into().ok()?;
    let value = u64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    let (db_pages, frame_count, frames) = match kind {
        Kind::Commit => {
            let db_pages = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?);
            let count = u32::from_le_bytes(r.bytes(4)?.try_into().ok()?) as usize;
            let frames = if packed {
                // Every frame's length must fit: the iterators then never stop early.
                let start = r.at;
                for _ in 0..count {
                    r.bytes(4)?;
                    let len = u16::from_le_bytes(r.bytes(2)?.try_into().ok()?);
                    if usize::from(len) > PAGE_BYTES {
                        return None;
                    }
                    r.bytes(usize::from(len))?;
                }
                &body[start..r.at]
            } else {
                r.bytes(count.checked_mul(4 + PAGE_BYTES)?)?
            };
            (db_pages, count, frames)
        }
        Kind::Checkpoint | Kind::Removed => (0, 0, &body[..0]),
    };
    if r.at != body.len() {
        return None;
    }
    Some((
        lsn,
        Record {
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
            packed,
        },
    ))
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
        encode_commit(&mut log, 100, 1_000, &key(), 5, 3, &pack(&frames));
        let second = 100 + log.len() as u64;
        encode_cover(&mut log, second, Kind::Checkpoint, 2_000, &key(), 0);
        let (commit, used) = decode(&log, 100).unwrap();
        assert_eq!(commit.kind, Kind::Commit);
        assert_eq!(
            (commit.value, commit.db_pages, commit.time_ms),
            (5, 3, 1_000)
        );
        assert_eq!(commit.key, key());
        let pages: Vec<(u32, Vec<u8>)> = commit
            .frames()
            .map(|f| f.map(|f| (f.pgno, f.page.into_owned())).unwrap())
            .collect();
        assert_eq!(pages, [(1, page_a.clone()), (3, page_b.clone())]);
        let (cover, used2) = decode(&log[used..], second).unwrap();
        assert_eq!((cover.kind, cover.value), (Kind::Checkpoint, 0));
        assert_eq!(
            decode(&log[used + used2..], second + used2 as u64).unwrap_err(),
            End::Clean
        );
        // Zeros (a new segment's filling) end the log cleanly.
        assert_eq!(decode(&[0u8; 64], 0).unwrap_err(), End::Clean);
        // A record cut short, or with a flipped bit, is a torn tail.
        assert_eq!(decode(&log[..used - 1], 100).unwrap_err(), End::Torn);
        let mut flipped = log.clone();
        flipped[used / 2] ^= 1;
        assert_eq!(decode(&flipped, 100).unwrap_err(), End::Torn);
        // A valid record at another position is one an earlier use of the segment left.
        assert_eq!(decode(&log, 200).unwrap_err(), End::Clean);
    }

    /// A page of `len` pseudo-random bytes followed by zeros (what a mostly empty SQLite page
    /// looks like).
    fn page(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut page = vec![0u8; PAGE_BYTES];
        for b in &mut page[..len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        page
    }

    #[test]
    fn pages_are_packed_small_and_read_back_whole() {
        let sparse = page(1, 100);
        let noise = page(2, PAGE_BYTES);
        let frames = [
            Frame {
                pgno: 2,
                page: &sparse,
            },
            Frame {
                pgno: 9,
                page: &noise,
            },
        ];
        let packed = pack(&frames);
        // The sparse page shrinks to about its content; the random one is stored whole.
        assert!(packed.len() < PAGE_BYTES + 400, "{} bytes", packed.len());
        assert!(packed.len() > PAGE_BYTES, "{} bytes", packed.len());
        let mut log = Vec::new();
        encode_commit(&mut log, 0, 1, &key(), 1, 9, &packed);
        let (commit, used) = decode(&log, 0).unwrap();
        assert_eq!(used, log.len());
        assert_eq!(commit.pgnos().collect::<Vec<_>>(), [2, 9]);
        let pages: Vec<(u32, Vec<u8>)> = commit
            .frames()
            .map(|f| f.map(|f| (f.pgno, f.page.into_owned())).unwrap())
            .collect();
        assert_eq!(pages, [(2, sparse), (9, noise)]);
    }

    #[test]
    fn commits_written_with_whole_pages_are_still_read() {
        // The earlier form: kind 1, every page whole.
        let page_a = page(3, 50);
        let mut log = Vec::new();
        let start = begin(&mut log, 40, Kind::Commit as u8, 7, &key(), 2);
        log.extend_from_slice(&1u32.to_le_bytes());
        log.extend_from_slice(&1u32.to_le_bytes());
        log.extend_from_slice(&1u32.to_le_bytes());
        log.extend_from_slice(&page_a);
        finish(&mut log, start);
        let (commit, _) = decode(&log, 40).unwrap();
        assert_eq!(
            (commit.kind, commit.value, commit.db_pages),
            (Kind::Commit, 2, 1)
        );
        assert!(commit.is_base());
        let frames: Vec<Page<'_>> = commit.frames().map(|f| f.unwrap()).collect();
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].pgno, &*frames[0].page), (1, &page_a[..]));
    }

    #[test]
    fn a_page_that_does_not_decompress_is_an_error_not_a_page() {
        let sparse = page(4, 64);
        let frames = [Frame {
            pgno: 1,
            page: &sparse,
        }];
        let mut packed = pack(&frames);
        // Cut the end off the LZ4 block (and say so in its length), then seal the record with
        // a valid checksum: the checksum cannot catch it, decompression must.
        let stored = u16::from_le_bytes([packed.bytes[4], packed.bytes[5]]);
        assert!(usize::from(stored) < PAGE_BYTES);
        packed.bytes.truncate(packed.bytes.len() - 10);
        packed.bytes[4..6].copy_from_slice(&(stored - 10).to_le_bytes());
        let mut log = Vec::new();
        encode_commit(&mut log, 0, 1, &key(), 1, 1, &packed);
        let (commit, _) = decode(&log, 0).unwrap();
        assert!(commit.frames().all(|f| f.is_err()));
    }
}
