//! Bounds and timings the built-in classes read from `[vars]`.
//!
//! A var that is not a number in its range is ignored with a warning, and the default applies:
//! a typo must not turn a bound off.

use std::str::FromStr;

use rookery::prelude::*;

/// `name` as a number from `min` to `max`, or `default` (with a warning when it is set but out
/// of range or not a number).
pub(crate) fn var<T>(env: &Env, name: &str, default: T, min: T, max: T) -> T
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let Some(raw) = env.var(name) else {
        return default;
    };
    match raw.trim_matches('"').parse::<T>() {
        Ok(v) if v >= min && v <= max => v,
        _ => {
            tracing::warn!(
                var = name,
                value = raw,
                %min,
                %max,
                %default,
                "ignoring a var out of range"
            );
            default
        }
    }
}
