//! The sequences a writer has accepted, as sorted, disjoint, inclusive ranges: one range
//! while appends arrive in order, a few more while concurrent appends overtake each other.
//!
//! An event is a repeat exactly when its sequence is in a range, so an append that overtook
//! an earlier one (sequence 6 before 5) does not make the earlier one look like a repeat.
//! Gaps that never fill (a sequence stamped but never appended) would grow the list forever:
//! beyond [`MAX_RANGES`] the lowest gap is closed, and a sequence in it arriving after that is
//! taken for a repeat (counted in `late`).

use serde::{Deserialize, Serialize};

/// Most ranges kept; beyond it the lowest gap is closed.
pub const MAX_RANGES: usize = 256;

/// Accepted sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Accepted {
    ranges: Vec<(i64, i64)>,
}

impl Accepted {
    /// The highest accepted sequence (0 before any).
    pub(crate) fn highest(&self) -> i64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// Whether `seq` was accepted.
    pub(crate) fn contains(&self, seq: i64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        self.ranges.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Accepts `seq`; false if it already was. Returns whether a gap had to be closed too
    /// (in the second value).
    pub(crate) fn insert(&mut self, seq: i64) -> (bool, bool) {
        if self.contains(seq) {
            return (false, false);
        }
        let i = self.ranges.partition_point(|r| r.1 < seq);
        let joins_left = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(seq);
        let joins_right = self
            .ranges
            .get(i)
            .is_some_and(|r| seq.checked_add(1) == Some(r.0));
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = seq,
            (false, true) => self.ranges[i].0 = seq,
            (false, false) => self.ranges.insert(i, (seq, seq)),
        }
        let closed = self.ranges.len() > MAX_RANGES;
        if closed {
            self.ranges[0].1 = self.ranges[1].1;
            self.ranges.remove(1);
        }
        (true, closed)
    }

    /// The ranges, lowest first.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[(i64, i64)] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_one_range_and_overtaking_fills_its_gap() {
        let mut a = Accepted::default();
        assert_eq!(a.highest(), 0);
        for s in 1..=5 {
            assert_eq!(a.insert(s), (true, false));
        }
        assert_eq!(a.ranges(), [(1, 5)]);
        assert_eq!(a.insert(3), (false, false));
        assert_eq!(a.insert(8), (true, false));
        assert_eq!(a.insert(7), (true, false));
        assert_eq!(a.ranges(), [(1, 5), (7, 8)]);
        assert!(!a.contains(6) && a.contains(7) && !a.contains(9) && !a.contains(0));
        assert_eq!(a.highest(), 8);
        assert_eq!(a.insert(6), (true, false));
        assert_eq!(a.ranges(), [(1, 8)]);
        assert_eq!(a.insert(i64::MAX), (true, false));
        assert_eq!(a.insert(i64::MAX), (false, false));
    }

    #[test]
    fn never_filled_gaps_are_bounded() {
        let mut a = Accepted::default();
        for s in 0..=i64::try_from(MAX_RANGES).unwrap() {
            a.insert(s * 2 + 1);
        }
        assert_eq!(a.ranges().len(), MAX_RANGES);
        assert_eq!(a.ranges()[0], (1, 3), "the lowest gap (2) was closed");
        assert!(a.contains(2), "a late 2 is now a repeat");
        assert!(!a.contains(4));
    }
}
