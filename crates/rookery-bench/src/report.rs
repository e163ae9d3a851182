//! The Markdown report of a `rookery-bench run`.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::machine::Machine;
use crate::scenarios::Outcome;

/// Settings that are random per run (fresh object names) and would only clutter the table.
const VOLATILE_SETTINGS: &[&str] = &["prefix", "name", "room"];
/// Figures that have their own columns.
const COLUMN_FIGURES: &[&str] = &["throughput", "throughput_unit", "latency"];

/// Everything the report says about the run besides the results.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Where it ran.
    pub machine: Machine,
    /// `git rev-parse --short HEAD`, maybe `-dirty`.
    pub commit: String,
    /// When it ran.
    pub date: String,
    /// How the load generator ran (runtime flavour).
    pub load_generator: String,
    /// The `rookery-bench run ...` command line of this run.
    pub run_command: String,
    /// One command per scenario to repeat it against a running server.
    pub scenario_commands: Vec<String>,
}

/// The results of one durability setting.
#[derive(Debug, Clone)]
pub struct Section {
    /// `strict` or `relaxed`.
    pub durability: String,
    /// One outcome per scenario, in run order.
    pub outcomes: Vec<Outcome>,
}

/// Renders the whole report.
pub fn render(meta: &Meta, sections: &[Section]) -> String {
    let mut out = String::new();
    let m = &meta.machine;
    let durabilities: Vec<&str> = sections.iter().map(|s| s.durability.as_str()).collect();
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "# Rookery benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `rookery-bench run`: each scenario runs against a freshly started release \
         `rookery serve` with a new data directory, over loopback sockets, with the load \
         generator on the same machine. Every row carries its correctness verdict: a fast wrong \
         answer is a failure.\n"
    );
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(
        out,
        "| Machine | {}, {} cores, {} GiB RAM, {} |",
        cell(&m.cpu),
        m.cores,
        m.ram_gib,
        cell(&m.kernel)
    );
    let _ = writeln!(out, "| Commit | `{}` |", cell(&meta.commit));
    let _ = writeln!(out, "| Date | {} |", cell(&meta.date));
    let _ = writeln!(out, "| Durability | {} |", durabilities.join(", "));
    let _ = writeln!(out, "| Load generator | {} |", cell(&meta.load_generator));
    for section in sections {
        let failed = section.outcomes.iter().filter(|o| !o.ok).count();
        let _ = writeln!(out, "\n## Results: durability `{}`\n", section.durability);
        let _ = writeln!(
            out,
            "{} scenarios, {} passed, {failed} failed.\n",
            section.outcomes.len(),
            section.outcomes.len() - failed
        );
        let _ = writeln!(
            out,
            "| Scenario | Settings | Throughput | p50 ms | p99 ms | max ms | Other figures | \
             Verdict |\n| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"
        );
        for o in &section.outcomes {
            let _ = writeln!(out, "{}", row(o));
        }
    }
    let _ = writeln!(out, "\n{LEGEND}");
    let _ = writeln!(out, "## How to reproduce\n\n```sh");
    let _ = writeln!(
        out,
        "cargo build --release -p rookery-server -p rookery-bench"
    );
    let _ = writeln!(out, "{}\n```\n", meta.run_command);
    let _ = writeln!(
        out,
        "One scenario at a time, against a server started by hand (the runner restarts it with \
         a fresh data directory before each scenario):\n\n```sh"
    );
    let _ = writeln!(
        out,
        "target/release/rookery serve --listen 127.0.0.1:8787 --data-dir \"$(mktemp -d)\" \
         --durability {} &",
        durabilities.first().copied().unwrap_or("strict")
    );
    for command in &meta.scenario_commands {
        let _ = writeln!(out, "{command}");
    }
    let _ = writeln!(out, "```");
    out
}

/// What the figures mean.
const LEGEND: &str = "Latencies are measured by the client, per request (`ws-fanout`: from \
sending a message until the last client has it). Other figures: `errors` requests without a \
200; `connect_ms` time to open every WebSocket; `ready_ms` time until every client had drained \
the join notices; `join_messages` join notices received in all; `kib_per_socket` growth of the \
server's resident memory per open WebSocket (including the rooms' objects); `rss_settled` \
whether that memory stopped changing before it was read.\n";

/// One table row.
fn row(o: &Outcome) -> String {
    let latency = o.figures.get("latency").and_then(Value::as_object);
    let lat = |key: &str| {
        latency
            .and_then(|l| l.get(key))
            .and_then(Value::as_f64)
            .map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"))
    };
    let throughput = match o.figures.get("throughput").and_then(Value::as_f64) {
        Some(t) => {
            let unit = o
                .figures
                .get("throughput_unit")
                .and_then(Value::as_str)
                .unwrap_or("/s");
            format!("{t:.0} {unit}")
        }
        None => "–".to_owned(),
    };
    let verdict = if o.ok {
        format!("ok: {}", o.detail)
    } else {
        format!("**FAIL**: {}", o.detail)
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        cell(&o.scenario),
        cell(&pairs(&o.settings, VOLATILE_SETTINGS)),
        cell(&throughput),
        lat("p50_ms"),
        lat("p99_ms"),
        lat("max_ms"),
        cell(&pairs(&o.figures, COLUMN_FIGURES)),
        cell(&verdict)
    )
}

/// `key=value, ...` of `map` without the `skip` keys and nulls.
fn pairs(map: &Map<String, Value>, skip: &[&str]) -> String {
    map.iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` made safe for one table cell: no pipes, no line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scenarios::Verdict;

    fn meta() -> Meta {
        Meta {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                ram_gib: 23.5,
                kernel: "Linux 6.1.0".into(),
            },
            commit: "abc1234-dirty".into(),
            date: "2025-01-02 03:04 UTC".into(),
            load_generator: "tokio current-thread".into(),
            run_command: "target/release/rookery-bench run --quick".into(),
            scenario_commands: vec!["target/release/rookery-bench cold-start --objects 200".into()],
        }
    }

    fn counter_outcome() -> Outcome {
        let mut o = Outcome::new(
            "counter-one",
            &json!({"conns": 32, "requests": 5000, "name": "one-abc"}),
        );
        o.figure("throughput", 12345.67)
            .figure("throughput_unit", "req/s")
            .figure(
                "latency",
                json!({"count": 5000, "p50_ms": 1.234, "p99_ms": 5.6, "max_ms": 12.0, "mean_ms": 2.0}),
            )
            .figure("errors", 0);
        o.verdict(Verdict::pass("all 5000 increments answered 200"))
    }

    #[test]
    fn renders_header_rows_and_reproduction() {
        let failed = Outcome::new("ws-fanout", &json!({"clients": 100, "messages": 10}))
            .failed("client 0: refused: HTTP 400 | Bad Request\nExpected WebSocket");
        let report = render(
            &meta(),
            &[Section {
                durability: "strict".into(),
                outcomes: vec![counter_outcome(), failed],
            }],
        );
        assert!(report.starts_with("# Rookery benchmarks\n"));
        assert!(report.contains("| Machine | Test CPU, 2 cores, 23.5 GiB RAM, Linux 6.1.0 |"));
        assert!(report.contains("| Commit | `abc1234-dirty` |"));
        assert!(report.contains("| Durability | strict |"));
        assert!(report.contains("## Results: durability `strict`"));
        assert!(report.contains("2 scenarios, 1 passed, 1 failed."));
        assert!(report.contains(
            "| counter-one | conns=32, requests=5000 | 12346 req/s | 1.23 | 5.60 | 12.00 | \
             errors=0 | ok: all 5000 increments answered 200 |"
        ));
        // The random name stays out of the table; pipes and newlines cannot break the row.
        assert!(!report.contains("one-abc"));
        assert!(report.contains(
            "| ws-fanout | clients=100, messages=10 | – | – | – | – |  | **FAIL**: client 0: \
             refused: HTTP 400 \\| Bad Request Expected WebSocket |"
        ));
        assert!(report.contains("## How to reproduce"));
        assert!(report.contains("target/release/rookery-bench run --quick\n"));
        assert!(report.contains("target/release/rookery-bench cold-start --objects 200\n"));
        assert!(report.contains("--durability strict &"));
    }

    #[test]
    fn one_section_per_durability() {
        let sections = [
            Section {
                durability: "strict".into(),
                outcomes: vec![counter_outcome()],
            },
            Section {
                durability: "relaxed".into(),
                outcomes: vec![counter_outcome()],
            },
        ];
        let report = render(&meta(), &sections);
        assert!(report.contains("| Durability | strict, relaxed |"));
        assert!(report.contains("## Results: durability `strict`"));
        assert!(report.contains("## Results: durability `relaxed`"));
    }
}
