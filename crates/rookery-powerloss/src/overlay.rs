//! The volatile data layer of one regular file: what has been written since the last fsync.
//!
//! The durable bytes live in the backing file; an [`Overlay`] records only the difference, so a
//! read combines both and an fsync writes the difference out. It works like a page cache that
//! never writes back on its own.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Unsynced changes to one file, on top of its durable content.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// The file's current (volatile) length.
    size: u64,
    /// The smallest length the file had since the last sync: durable bytes at or past it were
    /// cut off by a truncate, so they read as zeros unless written again.
    floor: u64,
    /// Written ranges, keyed by start offset; never overlapping nor touching each other.
    extents: BTreeMap<u64, Vec<u8>>,
}

/// What an fsync has to do to the backing file to make it equal to the current view.
pub(crate) struct Flush<'a> {
    /// Cut the backing file to this length first (durable bytes past it are gone).
    pub(crate) keep: u64,
    /// Then write these ranges.
    pub(crate) extents: &'a BTreeMap<u64, Vec<u8>>,
    /// Then set the length to this.
    pub(crate) size: u64,
}

impl Overlay {
    /// An overlay with no changes over durable content of `durable_len` bytes.
    pub(crate) fn clean(durable_len: u64) -> Self {
        Self {
            size: durable_len,
            floor: durable_len,
            extents: BTreeMap::new(),
        }
    }

    /// The file's current length.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether anything differs from the durable content.
    pub(crate) fn is_dirty(&self, durable_len: u64) -> bool {
        !self.extents.is_empty() || self.size != durable_len || self.floor != durable_len
    }

    /// Bytes held in memory (for logs).
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.extents.values().map(Vec::len).sum()
    }

    /// Reads `[offset, offset + len)` clipped to the file length; `read_durable(offset, buf)`
    /// fills `buf` from the backing file (zeros past its end).
    pub(crate) fn read<E>(
        &self,
        offset: u64,
        len: u64,
        durable_len: u64,
        read_durable: impl FnOnce(u64, &mut [u8]) -> Result<(), E>,
    ) -> Result<Vec<u8>, E> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; to_usize(end - offset)];
        // Durable bytes count only below the truncation floor: past it they were cut off.
        let base_end = end.min(self.floor).min(durable_len);
        if offset < base_end {
            read_durable(offset, &mut buf[..to_usize(base_end - offset)])?;
        }
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .map(|(start, _)| *start)
            .unwrap_or(offset);
        for (&start, data) in self.extents.range(first..end) {
            let ext_end = start + data.len() as u64;
            let from = start.max(offset);
            let to = ext_end.min(end);
            if from < to {
                buf[to_usize(from - offset)..to_usize(to - offset)]
                    .copy_from_slice(&data[to_usize(from - start)..to_usize(to - start)]);
            }
        }
        Ok(buf)
    }

    /// Records a write of `data` at `offset`.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Merge with every extent that overlaps or touches [offset, end], so extents stay few
        // and an append extends one buffer in place instead of copying it.
        let mut start = offset;
        let mut new_end = end;
        let mut base: Option<Vec<u8>> = None;
        if let Some((&s, d)) = self.extents.range(..=offset).next_back()
            && s + d.len() as u64 >= offset
        {
            start = s;
            new_end = new_end.max(s + d.len() as u64);
            base = self.extents.remove(&s);
        }
        let later: Vec<u64> = self
            .extents
            .range((Bound::Excluded(offset), Bound::Included(end)))
            .map(|(s, _)| *s)
            .collect();
        let mut others = Vec::with_capacity(later.len());
        for s in later {
            if let Some(d) = self.extents.remove(&s) {
                new_end = new_end.max(s + d.len() as u64);
                others.push((s, d));
            }
        }
        let mut buf = base.unwrap_or_default();
        buf.resize(to_usize(new_end - start), 0);
        for (s, d) in others {
            let at = to_usize(s - start);
            buf[at..at + d.len()].copy_from_slice(&d);
        }
        let at = to_usize(offset - start);
        buf[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(start, buf);
        self.size = self.size.max(end);
    }

    /// Sets the length to `new_size` (cutting or zero-extending).
    pub(crate) fn truncate(&mut self, new_size: u64) {
        if new_size < self.size {
            let cut: Vec<u64> = self.extents.range(new_size..).map(|(s, _)| *s).collect();
            for s in cut {
                self.extents.remove(&s);
            }
            if let Some((&s, d)) = self.extents.range_mut(..new_size).next_back()
                && s + d.len() as u64 > new_size
            {
                d.truncate(to_usize(new_size - s));
            }
            self.floor = self.floor.min(new_size);
        }
        self.size = new_size;
    }

    /// The steps that make the backing file equal to the current view.
    pub(crate) fn flush(&self, durable_len: u64) -> Flush<'_> {
        Flush {
            keep: self.floor.min(durable_len),
            extents: &self.extents,
            size: self.size,
        }
    }

    /// Forgets all changes after they were written to the backing file.
    pub(crate) fn mark_clean(&mut self) {
        self.extents.clear();
        self.floor = self.size;
    }
}

/// Offsets inside one in-memory buffer; they fit because the buffer exists.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain model: the current bytes and the durable bytes as vectors.
    struct Model {
        durable: Vec<u8>,
        current: Vec<u8>,
        overlay: Overlay,
    }

    impl Model {
        fn new(durable: Vec<u8>) -> Self {
            let len = durable.len() as u64;
            Self {
                current: durable.clone(),
                durable,
                overlay: Overlay::clean(len),
            }
        }

        fn read_all(&self) -> Vec<u8> {
            let durable = &self.durable;
            self.overlay
                .read(0, u64::MAX, durable.len() as u64, |off, buf| {
                    let off = off as usize;
                    buf.copy_from_slice(&durable[off..off + buf.len()]);
                    Ok::<(), ()>(())
                })
                .unwrap()
        }

        fn sync(&mut self) {
            let f = self.overlay.flush(self.durable.len() as u64);
            let mut d = self.durable.clone();
            d.truncate(f.keep as usize);
            for (s, data) in f.extents {
                let s = *s as usize;
                if d.len() < s + data.len() {
                    d.resize(s + data.len(), 0);
                }
                d[s..s + data.len()].copy_from_slice(data);
            }
            d.resize(f.size as usize, 0);
            self.durable = d;
            self.overlay.mark_clean();
        }
    }

    /// xorshift: deterministic pseudo-random steps without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_operations_match_a_plain_model() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let initial: Vec<u8> = (0..rng.below(64)).map(|i| i as u8 ^ 0x5a).collect();
            let mut m = Model::new(initial);
            for step in 0..60 {
                match rng.below(10) {
                    0..=5 => {
                        let off = rng.below(96);
                        let len = rng.below(24) as usize;
                        let byte = (round * 61 + step) as u8;
                        let data = vec![byte; len];
                        m.overlay.write(off, &data);
                        if len > 0 {
                            let end = off as usize + len;
                            if m.current.len() < end {
                                m.current.resize(end, 0);
                            }
                            m.current[off as usize..end].copy_from_slice(&data);
                        }
                    }
                    6..=7 => {
                        let size = rng.below(100);
                        m.overlay.truncate(size);
                        m.current.resize(size as usize, 0);
                    }
                    8 => m.sync(),
                    _ => {
                        let off = rng.below(110);
                        let len = rng.below(40);
                        let all = m.read_all();
                        let durable = &m.durable;
                        let part = m
                            .overlay
                            .read(off, len, durable.len() as u64, |o, buf| {
                                let o = o as usize;
                                buf.copy_from_slice(&durable[o..o + buf.len()]);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        let from = (off as usize).min(all.len());
                        let to = (off as usize + len as usize).min(all.len());
                        assert_eq!(part, &all[from..to]);
                    }
                }
                assert_eq!(m.read_all(), m.current, "round {round} step {step}");
                assert_eq!(m.overlay.size(), m.current.len() as u64);
                let mut extents = m.overlay.extents.iter().peekable();
                while let Some((s, d)) = extents.next() {
                    if let Some((next, _)) = extents.peek() {
                        assert!(s + (d.len() as u64) < **next, "extents touch or overlap");
                    }
                }
            }
            m.sync();
            assert_eq!(m.durable, m.current);
            assert!(!m.overlay.is_dirty(m.durable.len() as u64));
        }
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_durable_bytes() {
        let mut m = Model::new(vec![7u8; 16]);
        m.overlay.truncate(4);
        m.overlay.truncate(12);
        assert_eq!(m.read_all(), [&[7u8; 4][..], &[0u8; 8][..]].concat());
        m.sync();
        assert_eq!(m.durable, [&[7u8; 4][..], &[0u8; 8][..]].concat());
    }
}
