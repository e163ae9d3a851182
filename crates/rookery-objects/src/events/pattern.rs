//! Event types and the subscription patterns that select them.
//!
//! **Types.** An event type is 1 to [`MAX_SEGMENTS`] segments separated by `.`, each made of
//! one or more of `A-Z a-z 0-9 _ -`, at most [`MAX_TYPE_BYTES`] bytes in all:
//! `user.created`, `order.item-added`, `billing.v2.invoice_paid`.
//!
//! **Patterns.** A pattern has the same shape, but a segment may also be a wildcard:
//! - `*` matches exactly one segment;
//! - `**` matches zero or more segments (as AMQP's `#`).
//!
//! Wildcards are whole segments (`us*` and `user.*ed` are refused). Matching is
//! case-sensitive and covers the whole type, segment by segment:
//!
//! | pattern | matches | does not match |
//! | --- | --- | --- |
//! | `user.created` | `user.created` | `user.created.v2`, `User.created` |
//! | `user.*` | `user.created`, `user.deleted` | `user`, `user.profile.updated` |
//! | `*.created` | `user.created`, `order.created` | `created`, `a.b.created` |
//! | `user.**` | `user`, `user.created`, `user.profile.updated` | `users.created` |
//! | `**.failed` | `failed`, `job.failed`, `a.b.failed` | `failed.job` |
//! | `**` | every type | |
//!
//! Matching is a dynamic programme over (pattern segment, type segment): at most
//! `MAX_SEGMENTS²` steps however many `**` a pattern has, so no pattern can be made slow.

/// Longest event type or pattern, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;
/// Most segments in an event type or pattern.
pub const MAX_SEGMENTS: usize = 32;

/// Why a type or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing at all.
    #[error("must not be empty")]
    Empty,
    /// Over [`MAX_TYPE_BYTES`].
    #[error("must be at most {MAX_TYPE_BYTES} bytes")]
    TooLong,
    /// Over [`MAX_SEGMENTS`].
    #[error("must have at most {MAX_SEGMENTS} dot-separated segments")]
    TooManySegments,
    /// `a..b`, `.a` or `a.`.
    #[error("has an empty segment (two dots in a row, or a dot at either end)")]
    EmptySegment,
    /// A character outside `A-Z a-z 0-9 _ -` (and, in patterns, outside whole `*`/`**`).
    #[error("segment {0:?} may only hold letters, digits, '_' and '-'")]
    BadSegment(String),
    /// A wildcard in an event type.
    #[error("an event type cannot hold wildcards (segment {0:?})")]
    WildcardInType(String),
}

fn literal_ok(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn segments(text: &str) -> Result<Vec<&str>, PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    if text.len() > MAX_TYPE_BYTES {
        return Err(PatternError::TooLong);
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(PatternError::TooManySegments);
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(PatternError::EmptySegment);
    }
    Ok(parts)
}

/// Checks that `event_type` is a valid event type (see the module's rules).
pub fn validate_type(event_type: &str) -> Result<(), PatternError> {
    for segment in segments(event_type)? {
        if segment == "*" || segment == "**" {
            return Err(PatternError::WildcardInType(segment.to_string()));
        }
        if !literal_ok(segment) {
            return Err(PatternError::BadSegment(segment.to_string()));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `**`
    Any,
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `text` by the module's rules.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let segments = segments(text)?
            .into_iter()
            .map(|s| match s {
                "*" => Ok(Segment::One),
                "**" => Ok(Segment::Any),
                s if literal_ok(s) => Ok(Segment::Literal(s.to_string())),
                s => Err(PatternError::BadSegment(s.to_string())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { segments })
    }

    /// Whether the (valid) event type `event_type` is selected by this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        let ty: Vec<&str> = event_type.split('.').collect();
        let n = ty.len();
        // next[j]: the pattern's segments after i match ty[j..].
        let mut next = vec![false; n + 1];
        next[n] = true;
        for segment in self.segments.iter().rev() {
            let mut here = vec![false; n + 1];
            for j in (0..=n).rev() {
                here[j] = match segment {
                    Segment::Literal(lit) => j < n && ty[j] == lit.as_str() && next[j + 1],
                    Segment::One => j < n && next[j + 1],
                    // Zero segments, or one more and still `**`.
                    Segment::Any => next[j] || (j < n && here[j + 1]),
                };
            }
            next = here;
        }
        next[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table_holds() {
        let table: &[(&str, &[&str], &[&str])] = &[
            (
                "user.created",
                &["user.created"],
                &["user.created.v2", "User.created", "user"],
            ),
            (
                "user.*",
                &["user.created", "user.deleted"],
                &["user", "user.profile.updated", "users.created"],
            ),
            (
                "*.created",
                &["user.created", "order.created"],
                &["created", "a.b.created", "user.deleted"],
            ),
            (
                "user.**",
                &["user", "user.created", "user.profile.updated"],
                &["users.created", "admin.user"],
            ),
            (
                "**.failed",
                &["failed", "job.failed", "a.b.failed"],
                &["failed.job", "job.failed.twice"],
            ),
            ("**", &["a", "a.b", "user.created.v2"], &[]),
            ("*", &["a", "user"], &["a.b"]),
            ("a.**.z", &["a.z", "a.b.z", "a.b.c.z"], &["a", "z", "a.z.y"]),
            ("*.*", &["a.b"], &["a", "a.b.c"]),
            ("**.**", &["a", "a.b.c"], &[]),
        ];
        for (pattern, yes, no) in table {
            let p = Pattern::parse(pattern).unwrap();
            for t in *yes {
                validate_type(t).unwrap();
                assert!(p.matches(t), "{pattern} should match {t}");
            }
            for t in *no {
                validate_type(t).unwrap();
                assert!(!p.matches(t), "{pattern} should not match {t}");
            }
        }
    }

    #[test]
    fn bad_types_and_patterns_are_refused_with_the_reason() {
        assert_eq!(validate_type(""), Err(PatternError::Empty));
        assert_eq!(validate_type("a..b"), Err(PatternError::EmptySegment));
        assert_eq!(validate_type(".a"), Err(PatternError::EmptySegment));
        assert_eq!(
            validate_type("user created"),
            Err(PatternError::BadSegment("user created".into()))
        );
        assert_eq!(
            validate_type("user.*"),
            Err(PatternError::WildcardInType("*".into()))
        );
        assert_eq!(
            validate_type(&"a".repeat(MAX_TYPE_BYTES + 1)),
            Err(PatternError::TooLong)
        );
        assert_eq!(
            validate_type(&vec!["a"; MAX_SEGMENTS + 1].join(".")),
            Err(PatternError::TooManySegments)
        );
        assert_eq!(
            Pattern::parse("us*"),
            Err(PatternError::BadSegment("us*".into()))
        );
        assert_eq!(
            Pattern::parse("user.***"),
            Err(PatternError::BadSegment("***".into()))
        );
        assert_eq!(Pattern::parse("user."), Err(PatternError::EmptySegment));
    }

    #[test]
    fn many_double_stars_stay_fast() {
        let p = Pattern::parse(
            &vec!["**"; MAX_SEGMENTS - 1]
                .join(".")
                .replace("**.**", "**.x"),
        )
        .unwrap();
        let t = vec!["y"; MAX_SEGMENTS].join(".");
        assert!(!p.matches(&t));
    }
}
