//! A commit's pages, packed: what the node log stores for a commit, and what a replicated
//! commit log receives ([`CommitRecord::pages`](super::CommitRecord::pages)) and keeps.
//!
//! Per page, `pgno: u32 | stored: u16 | bytes` (little-endian): the page as an LZ4 block of
//! `stored` bytes, or whole when `stored` is 4096 (compressing did not make it smaller). A
//! commit usually changes a few bytes of a mostly empty page, so a counter increment packs into
//! about 100 bytes instead of 4 KiB. The log's earlier form, every page whole
//! (`pgno: u32 | page`), is still read.

use std::borrow::Cow;
use std::io;

/// The page size of object databases; frames carry whole pages.
pub const PAGE_BYTES: usize = 4096;

/// One page a commit wrote, to be packed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub(crate) pgno: u32,
    pub(crate) page: &'a [u8],
}

/// Pages packed into bytes of their own (for the log, done before its lock is taken:
/// compressing is the costly part of appending).
#[derive(Debug, Default)]
pub struct Packed {
    count: u32,
    pub(crate) bytes: Vec<u8>,
}

impl Packed {
    /// Bytes the packed pages take.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no page is packed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many pages.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A view to read the pages back.
    pub fn view(&self) -> PackedPages<'_> {
        PackedPages::new(self.count, &self.bytes)
    }
}

/// The largest LZ4 block of one page (what `compress_into` needs room for).
const MAX_BLOCK: usize = lz4_flex::block::get_maximum_output_size(PAGE_BYTES);

/// Packs `frames`: each page compressed, or whole where compressing does not make it smaller.
pub(crate) fn pack(frames: &[Frame<'_>]) -> Packed {
    let mut bytes = Vec::with_capacity(frames.len() * 256);
    // On the stack: packing runs once per commit, and the worst case is a constant.
    let mut scratch = [0u8; MAX_BLOCK];
    for frame in frames {
        // Frames are whole pages (WAL frames, or a restored image cut into pages).
        debug_assert_eq!(frame.page.len(), PAGE_BYTES);
        bytes.extend_from_slice(&frame.pgno.to_le_bytes());
        match lz4_flex::block::compress_into(frame.page, &mut scratch) {
            Ok(n) if n < PAGE_BYTES && frame.page.len() == PAGE_BYTES => {
                bytes.extend_from_slice(&(n as u16).to_le_bytes());
                bytes.extend_from_slice(&scratch[..n]);
            }
            _ => {
                let page = frame.page.get(..PAGE_BYTES).unwrap_or(frame.page);
                bytes.extend_from_slice(&(PAGE_BYTES as u16).to_le_bytes());
                bytes.extend_from_slice(page);
                // A short page is stored padded: the record stays well formed.
                bytes.resize(bytes.len() + PAGE_BYTES - page.len(), 0);
            }
        }
    }
    Packed {
        count: u32::try_from(frames.len()).unwrap_or(u32::MAX),
        bytes,
    }
}

/// Packs a whole database image (its length a multiple of [`PAGE_BYTES`]) as one commit of
/// every page.
pub fn pack_image(image: &[u8]) -> Packed {
    let frames: Vec<Frame<'_>> = image
        .chunks_exact(PAGE_BYTES)
        .zip(1u32..)
        .map(|(page, pgno)| Frame { pgno, page })
        .collect();
    pack(&frames)
}

/// One page read back.
#[derive(Debug)]
pub struct Page<'a> {
    /// The page number, from 1.
    pub pgno: u32,
    /// The whole page: borrowed where it was stored whole, else decompressed.
    pub page: Cow<'a, [u8]>,
}

/// A read-only view of packed pages.
#[derive(Debug, Clone, Copy)]
pub struct PackedPages<'a> {
    count: usize,
    bytes: &'a [u8],
    /// Whether pages are packed (`pgno | stored | bytes`) or whole (the log's earlier form).
    compressed: bool,
}

impl<'a> PackedPages<'a> {
    /// The view of `count` pages packed into `bytes`.
    pub fn new(count: u32, bytes: &'a [u8]) -> Self {
        Self::stored(count as usize, bytes, true)
    }

    /// The view of `count` pages stored in either form.
    pub(crate) fn stored(count: usize, bytes: &'a [u8], compressed: bool) -> Self {
        Self {
            count,
            bytes,
            compressed,
        }
    }

    /// How many pages.
    pub fn count(&self) -> u32 {
        u32::try_from(self.count).unwrap_or(u32::MAX)
    }

    /// The packed bytes (what [`PackedPages::new`] takes back).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Each page's number and stored bytes, in the order they were written (the bytes are
    /// whole pages, or LZ4 blocks where shorter than a page).
    fn raw(self) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
        let (bytes, compressed) = (self.bytes, self.compressed);
        let mut at = 0usize;
        (0..self.count).map_while(move |_| {
            let pgno = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            let len = if compressed {
                let len = u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
                at += 2;
                usize::from(len)
            } else {
                PAGE_BYTES
            };
            let stored = bytes.get(at..at + len)?;
            at += len;
            Some((pgno, stored))
        })
    }

    /// The page numbers, in the order they were written.
    pub fn pgnos(self) -> impl Iterator<Item = u32> + 'a {
        self.raw().map(|(pgno, _)| pgno)
    }

    /// The pages, in the order they were written. A page that does not decompress to a whole
    /// page is an error.
    pub fn pages(self) -> impl Iterator<Item = io::Result<Page<'a>>> + 'a {
        let whole = self.count;
        let mut seen = 0usize;
        let mut raw = self.raw();
        std::iter::from_fn(move || {
            let Some((pgno, stored)) = raw.next() else {
                // Fewer pages than counted: the bytes were cut short.
                if seen < whole {
                    seen = whole;
                    return Some(Err(io::Error::other("packed pages end before their count")));
                }
                return None;
            };
            seen += 1;
            if stored.len() == PAGE_BYTES {
                return Some(Ok(Page {
                    pgno,
                    page: Cow::Borrowed(stored),
                }));
            }
            let mut page = vec![0u8; PAGE_BYTES];
            Some(match lz4_flex::block::decompress_into(stored, &mut page) {
                Ok(PAGE_BYTES) => Ok(Page {
                    pgno,
                    page: Cow::Owned(page),
                }),
                _ => Err(io::Error::other(format!(
                    "page {pgno} does not decompress to a whole page"
                ))),
            })
        })
    }

    /// Writes the pages into `image` (a database held in memory) and sizes it to `db_pages`
    /// pages: the database as it was after the commit these pages came from.
    pub fn apply(&self, image: &mut Vec<u8>, db_pages: u32) -> io::Result<()> {
        let len = db_pages as usize * PAGE_BYTES;
        if image.len() < len {
            image.resize(len, 0);
        }
        for page in self.pages() {
            let page = page?;
            let at = (page.pgno.saturating_sub(1) as usize) * PAGE_BYTES;
            if let Some(slot) = image.get_mut(at..at + PAGE_BYTES) {
                slot.copy_from_slice(&page.page);
            }
        }
        image.truncate(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_packs_and_applies_back_whole() {
        let mut image = vec![0u8; 3 * PAGE_BYTES];
        image[10] = 7;
        image[PAGE_BYTES + 5] = 9;
        image[2 * PAGE_BYTES..].fill(0xAB);
        let packed = pack_image(&image);
        assert_eq!(packed.count(), 3);
        assert!(packed.len() < image.len(), "{} bytes", packed.len());
        let mut back = Vec::new();
        packed.view().apply(&mut back, 3).unwrap();
        assert_eq!(back, image);
        // Applying a commit that shrinks the database cuts the image.
        let one = pack(&[Frame {
            pgno: 1,
            page: &image[..PAGE_BYTES],
        }]);
        PackedPages::new(one.count(), one.bytes())
            .apply(&mut back, 1)
            .unwrap();
        assert_eq!(back, image[..PAGE_BYTES]);
    }

    #[test]
    fn cut_bytes_are_an_error_not_fewer_pages() {
        let image = vec![1u8; 2 * PAGE_BYTES];
        let packed = pack_image(&image);
        let cut = &packed.bytes()[..packed.len() - 3];
        let view = PackedPages::new(2, cut);
        assert!(view.pages().any(|p| p.is_err()));
        assert!(view.apply(&mut Vec::new(), 2).is_err());
    }
}
