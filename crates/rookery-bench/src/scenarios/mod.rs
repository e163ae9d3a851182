//! The benchmark scenarios and the result every one of them produces.

pub mod alarms;
pub mod calls;
pub mod cold_start;
pub mod counter;
pub mod events;
pub mod limiters;
pub mod lock;
#[cfg(test)]
mod mock_chat;
pub mod objects_idle;
pub mod ws_client;
pub mod ws_fanout;
pub mod ws_idle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What one scenario run produced: its settings, its figures and the correctness verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Scenario name, as on the command line (`counter-one`, ...).
    pub scenario: String,
    /// The sizes the scenario ran with.
    pub settings: Map<String, Value>,
    /// Measured figures; `throughput` (+ `throughput_unit`) and `latency` are rendered in their
    /// own report columns, the rest as `key=value`.
    pub figures: Map<String, Value>,
    /// Whether every correctness check passed.
    pub ok: bool,
    /// What was checked and, on failure, what went wrong.
    pub detail: String,
    /// Remarks the report prints under the table, e.g. why a size was chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Outcome {
    /// An outcome with `settings` (a JSON object) and no figures yet.
    pub fn new(scenario: &str, settings: &impl Serialize) -> Self {
        let settings = match serde_json::to_value(settings) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Self {
            scenario: scenario.to_owned(),
            settings,
            figures: Map::new(),
            ok: false,
            detail: String::new(),
            notes: Vec::new(),
        }
    }

    /// Adds one figure.
    pub fn figure(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.figures.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Records the verdict.
    pub fn verdict(mut self, verdict: Verdict) -> Self {
        self.ok = verdict.ok;
        self.detail = verdict.detail;
        self
    }

    /// Marks the run failed with `detail`, keeping the figures gathered so far.
    pub fn failed(self, detail: impl Into<String>) -> Self {
        self.verdict(Verdict::fail(detail))
    }
}

/// A correctness verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every check passed.
    pub ok: bool,
    /// What was checked, or what failed.
    pub detail: String,
}

impl Verdict {
    /// A passed check described by `detail`.
    pub fn pass(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failed check described by `detail`.
    pub fn fail(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }

    /// Passes with `ok_detail` when `problems` is empty, else fails listing them.
    pub fn from_problems(problems: Vec<String>, ok_detail: impl Into<String>) -> Self {
        if problems.is_empty() {
            Self::pass(ok_detail)
        } else {
            Self::fail(problems.join("; "))
        }
    }
}

/// A name prefix no earlier run used: object names in a reused data directory must be fresh.
pub fn unique_prefix(tag: &str) -> String {
    // Time alone could repeat within one process (two scenarios in the same nanosecond tick on
    // a coarse clock); the sequence number cannot.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{tag}-{:x}{:x}{seq:x}", std::process::id(), nanos)
}

/// Shortens `text` to at most `max` characters for a one-line detail.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_serializes_as_one_object() {
        #[derive(Serialize)]
        struct S {
            conns: u32,
        }
        let mut o = Outcome::new("counter-one", &S { conns: 4 });
        o.figure("errors", 0);
        let o = o.verdict(Verdict::pass("fine"));
        let line = serde_json::to_string(&o).unwrap();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["scenario"], "counter-one");
        assert_eq!(back["settings"]["conns"], 4);
        assert_eq!(back["figures"]["errors"], 0);
        assert_eq!(back["ok"], true);
        assert_eq!(back["detail"], "fine");
    }

    #[test]
    fn verdict_from_problems() {
        assert_eq!(
            Verdict::from_problems(vec![], "all good"),
            Verdict::pass("all good")
        );
        assert_eq!(
            Verdict::from_problems(vec!["a".into(), "b".into()], "all good"),
            Verdict::fail("a; b")
        );
    }

    #[test]
    fn prefixes_differ() {
        let a = unique_prefix("c");
        let b = unique_prefix("c");
        assert_ne!(a, b);
        assert!(a.starts_with("c-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
