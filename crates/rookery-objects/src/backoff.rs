//! Retry delays of the built-in classes' background work (webhook delivery, flushes to a bucket).

/// The delay before the attempt after `failures` failed ones: `base_ms` doubled per failure
/// after the first, at most `cap_ms` (`base_ms` for zero or one failure).
pub(crate) fn doubling_ms(base_ms: i64, cap_ms: i64, failures: i64) -> i64 {
    let shift = u32::try_from(failures.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
    base_ms.saturating_mul(1_i64 << shift).min(cap_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_to_the_cap() {
        let delays: Vec<i64> = (0..=6).map(|n| doubling_ms(100, 1_000, n)).collect();
        assert_eq!(delays, [100, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(doubling_ms(100, 1_000, i64::MAX), 1_000);
    }
}
