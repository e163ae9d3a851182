//! The Markdown report of a `rookery-bench run`.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::machine::Machine;
use crate::scenarios::Outcome;

/// Settings that are random per run (fresh object names) and would only clutter the table.
const VOLATILE_SETTINGS: &[&str] = &["prefix", "name", "room", "namespace"];
/// Figures that have their own columns.
const COLUMN_FIGURES: &[&str] = &["throughput", "throughput_unit", "latency"];
/// Figures of the storage table, left out of the main table's other figures.
const STORAGE_FIGURES: &[&str] = &[
    "commits",
    "sync_rounds",
    "file_syncs",
    "fsyncs_per_s",
    "commits_per_sync_round",
];
/// Figures of the alarms table, left out of the main table's other figures for `alarms`.
const ALARM_FIGURES: &[&str] = &[
    "drain_ms",
    "alarm_runs",
    "deliveries",
    "lateness",
    "activations",
    "live_objects_peak",
    "rss_before_kib",
    "rss_peak_kib",
    "rss_end_kib",
];

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
    /// Markdown appended as the report's last section (`run --notes FILE`).
    pub notes: Option<String>,
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
        let mut row_notes: Vec<&str> = Vec::new();
        for o in &section.outcomes {
            let first = row_notes.len() + 1;
            row_notes.extend(o.notes.iter().map(String::as_str));
            let _ = writeln!(out, "{}", row(o, first));
        }
        storage_table(&mut out, section);
        alarms_table(&mut out, section);
        if !row_notes.is_empty() {
            let _ = writeln!(out, "\nNotes on the rows:\n");
            for (i, note) in row_notes.iter().enumerate() {
                let _ = writeln!(out, "{}. {}", i + 1, note.trim());
            }
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
    if let Some(notes) = meta
        .notes
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        // A file that brings its own heading keeps it.
        if notes.starts_with('#') {
            let _ = writeln!(out, "\n{notes}");
        } else {
            let _ = writeln!(out, "\n## Notes\n\n{notes}");
        }
    }
    out
}

/// The storage figures of the measured phase, for the scenarios that have them.
fn storage_table(out: &mut String, section: &Section) {
    let rows: Vec<&Outcome> = section
        .outcomes
        .iter()
        .filter(|o| o.figures.contains_key("commits"))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Storage syncs, durability `{}`\n\nWhat the server's `/_rookery/stats` counted \
         during the measured phase (the counter scenarios: the increments; `alarms`: the \
         drain).\n",
        section.durability
    );
    let _ = writeln!(
        out,
        "| Scenario | Settings | Commits | Sync rounds | File syncs | fsyncs/s | Commits per \
         round |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for o in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&o.scenario),
            cell(&pairs(&o.settings, VOLATILE_SETTINGS)),
            number(o, "commits", 0),
            number(o, "sync_rounds", 0),
            number(o, "file_syncs", 0),
            number(o, "fsyncs_per_s", 1),
            number(o, "commits_per_sync_round", 2),
        );
    }
}

/// The figures of the `alarms` rows.
fn alarms_table(out: &mut String, section: &Section) {
    let rows: Vec<&Outcome> = section
        .outcomes
        .iter()
        .filter(|o| o.scenario == "alarms")
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### Alarms, durability `{}`\n", section.durability);
    let _ = writeln!(
        out,
        "| Settings | Drain ms | Alarm runs | Runs/s | Deliveries | Lateness p50 / p99 / max ms \
         | Activations | Live objects peak | RSS before / peak / end MiB | Verdict |\n| --- | \
         ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for o in rows {
        let lateness = o.figures.get("lateness").and_then(Value::as_object);
        let late = |key: &str| {
            lateness
                .and_then(|l| l.get(key))
                .and_then(Value::as_u64)
                .map_or_else(|| "–".to_owned(), |v| v.to_string())
        };
        let mib = |key: &str| {
            o.figures
                .get(key)
                .and_then(Value::as_f64)
                .map_or_else(|| "–".to_owned(), |kib| format!("{:.1}", kib / 1024.0))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} / {} / {} | {} |",
            cell(&pairs(&o.settings, VOLATILE_SETTINGS)),
            number(o, "drain_ms", 0),
            number(o, "alarm_runs", 0),
            number(o, "throughput", 0),
            number(o, "deliveries", 0),
            late("p50_ms"),
            late("p99_ms"),
            late("max_ms"),
            number(o, "activations", 0),
            number(o, "live_objects_peak", 0),
            mib("rss_before_kib"),
            mib("rss_peak_kib"),
            mib("rss_end_kib"),
            if o.ok { "ok" } else { "**FAIL**" },
        );
    }
}

/// Figure `key` of `o` with `decimals` decimals, or `–`.
fn number(o: &Outcome, key: &str, decimals: usize) -> String {
    o.figures
        .get(key)
        .and_then(Value::as_f64)
        .map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// What the figures mean.
const LEGEND: &str = "Latencies are measured by the client, per request (`ws-fanout`: from \
sending a message until the last client has it). Other figures: `errors` requests without a \
200; `connect_ms` time to open every WebSocket; `ready_ms` time until every client had drained \
the join notices; `join_messages` join notices received in all; `kib_per_socket` growth of the \
server's resident memory per open WebSocket (including the rooms' objects); `rss_settled` \
whether that memory stopped changing before it was read.

Storage syncs come from the server's `/_rookery/stats`, read just before and just after the \
measured phase: `commits` turns that committed writes, `sync rounds` rounds of the group-commit \
syncer, `file syncs` fsync calls on files and directories, `fsyncs/s` file syncs per second of \
the measured phase, `commits per round` how many commits one round made durable.

`alarms`: N keys over K `KvStore` objects, each key with a TTL that makes it expire at its own \
moment, spread evenly over a one-second window that starts a few seconds after the (untimed) \
set-up; each object's alarm deletes its due keys and re-arms for the next expiry. `Drain ms` \
runs from the window start until the server had no alarm scheduled or running (read every \
100 ms, so to 100 ms), the window itself included; `alarm runs` alarm handler runs in that time \
(the count of the server's lateness histogram) and `runs/s` their rate over the drain; \
`deliveries` alarm events the scheduler delivered, including those the object found not due \
(an index entry older than the object's alarm); lateness is the server's own histogram of how \
late handlers started after their alarm's time (to the bucket's upper bound: 1 ms steps below \
100 ms, then 100 ms), since the server started (no handler runs before the window); \
`activations` objects activated during the drain (the server \
keeps only so many objects in memory and evicts idle ones); RSS is the server's resident memory \
read from /proc just before the window, at its highest during the drain and at the end. Other \
figures: `setup_ms` and `setup_writes_per_s` of the set-up writes, `slack_ms` the wait between \
the end of the set-up and the window start, `expiry_times` distinct (object, millisecond) \
expiries asked for (the most alarm runs needed; a late handler deletes several due keys in one \
run), `retried` and `given_up` failed handler runs.

`events`: N webhook subscriptions of one fresh namespace, all matching every event, and E events \
published over the connections; a receiver in the load generator acknowledges each delivery. \
Throughput is events/s published (answered); the latency columns run from sending an event's \
publish request to its arrival at a subscriber, over every (subscription, event) first arrival. \
`deliveries_per_s` are first arrivals from the first publish to the last arrival, \
`delivered_events_per_s` that divided by N; `publish_p50_ms` and `publish_p99_ms` the publish \
requests' own latency; `drain_ms` from the last publish answer to the last arrival; \
`delivered_during_publish` deliveries that arrived before publishing ended; `alarm_runs` the \
server's alarm handler runs and `deliveries_per_alarm_run` (at most 16); `duplicates` repeated \
arrivals (allowed: delivery is at least once); `unacknowledged_delivered` events delivered whose \
publish answer was lost; `loadavg_before` and `loadavg_after` the machine's load averages.\n";

/// One table row; its notes, if any, are numbered from `first_note`.
fn row(o: &Outcome, first_note: usize) -> String {
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
    let scenario = match o.notes.len() {
        0 => o.scenario.clone(),
        1 => format!("{} (note {first_note})", o.scenario),
        n => format!("{} (notes {first_note}–{})", o.scenario, first_note + n - 1),
    };
    let mut skip: Vec<&str> = COLUMN_FIGURES
        .iter()
        .chain(STORAGE_FIGURES)
        .copied()
        .collect();
    if o.scenario == "alarms" {
        skip.extend(ALARM_FIGURES);
    }
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        cell(&scenario),
        cell(&pairs(&o.settings, VOLATILE_SETTINGS)),
        cell(&throughput),
        lat("p50_ms"),
        lat("p99_ms"),
        lat("max_ms"),
        cell(&pairs(&o.figures, &skip)),
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
            notes: None,
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

    fn with_storage(mut o: Outcome) -> Outcome {
        o.figure("commits", 5000)
            .figure("sync_rounds", 400)
            .figure("file_syncs", 800)
            .figure("fsyncs_per_s", 1234.56)
            .figure("commits_per_sync_round", 12.5);
        o
    }

    fn alarms_outcome() -> Outcome {
        let mut o = Outcome::new(
            "alarms",
            &json!({"objects": 1000, "alarms": 10000, "conns": 32, "window_ms": 1000,
                    "prefix": "ttl-1"}),
        );
        o.figure("throughput", 4321.0)
            .figure("throughput_unit", "alarm runs/s")
            .figure("drain_ms", 2300)
            .figure("alarm_runs", 9990)
            .figure("deliveries", 12000)
            .figure(
                "lateness",
                json!({"count": 9990, "p50_ms": 12, "p99_ms": 700, "max_ms": 950}),
            )
            .figure("activations", 12)
            .figure("live_objects_peak", 1000)
            .figure("rss_before_kib", 102_400)
            .figure("rss_peak_kib", 153_600)
            .figure("rss_end_kib", 148_480)
            .figure("setup_ms", 4000)
            .figure("given_up", 0);
        with_storage(o).verdict(Verdict::pass("all keys gone"))
    }

    #[test]
    fn storage_and_alarm_tables() {
        let report = render(
            &meta(),
            &[Section {
                durability: "relaxed".into(),
                outcomes: vec![with_storage(counter_outcome()), alarms_outcome()],
            }],
        );
        assert!(report.contains("### Storage syncs, durability `relaxed`"));
        assert!(report.contains(
            "| counter-one | conns=32, requests=5000 | 5000 | 400 | 800 | 1234.6 | 12.50 |"
        ));
        assert!(report.contains(
            "| alarms | alarms=10000, conns=32, objects=1000, window_ms=1000 | 5000 | 400 | 800 \
             | 1234.6 | 12.50 |"
        ));
        // The main table keeps only what the other tables do not show.
        assert!(report.contains(
            "| counter-one | conns=32, requests=5000 | 12346 req/s | 1.23 | 5.60 | 12.00 | \
             errors=0 | ok:"
        ));
        assert!(report.contains(
            "| alarms | alarms=10000, conns=32, objects=1000, window_ms=1000 | 4321 alarm runs/s \
             | – | – | – | given_up=0, setup_ms=4000 | ok: all keys gone |"
        ));
        assert!(report.contains("### Alarms, durability `relaxed`"));
        assert!(report.contains(
            "| alarms=10000, conns=32, objects=1000, window_ms=1000 | 2300 | 9990 | 4321 | \
             12000 | 12 / 700 / 950 | 12 | 1000 | 100.0 / 150.0 / 145.0 | ok |"
        ));
        assert!(!report.contains("ttl-1"));
        assert!(!report.contains("Notes on the rows"));
    }

    #[test]
    fn no_extra_tables_without_their_figures() {
        let report = render(
            &meta(),
            &[Section {
                durability: "strict".into(),
                outcomes: vec![counter_outcome()],
            }],
        );
        assert!(!report.contains("### Storage syncs"));
        assert!(!report.contains("### Alarms"));
        assert!(!report.contains("## Notes"));
    }

    #[test]
    fn row_notes_are_numbered_under_the_table() {
        let mut a = Outcome::new("ws-idle", &json!({"clients": 10}));
        a.notes.push("first note".into());
        let mut b = Outcome::new("ws-idle", &json!({"clients": 18}));
        b.notes.push("second note".into());
        b.notes.push("third note\n".into());
        let report = render(
            &meta(),
            &[Section {
                durability: "strict".into(),
                outcomes: vec![a, counter_outcome(), b],
            }],
        );
        assert!(report.contains("| ws-idle (note 1) | clients=10 |"));
        assert!(report.contains("| ws-idle (notes 2–3) | clients=18 |"));
        assert!(
            report.contains("Notes on the rows:\n\n1. first note\n2. second note\n3. third note\n")
        );
    }

    #[test]
    fn notes_file_is_appended_last() {
        let mut m = meta();
        m.notes = Some("\nThe fsync rate is bounded by the disk.\n\n- point\n".into());
        let report = render(&m, &[]);
        assert!(
            report.ends_with(
                "```\n\n## Notes\n\nThe fsync rate is bounded by the disk.\n\n- point\n"
            ),
            "{report}"
        );
        m.notes = Some("## Analysis\n\ntext".into());
        let report = render(&m, &[]);
        assert!(report.ends_with("```\n\n## Analysis\n\ntext\n"), "{report}");
        assert!(!report.contains("## Notes"));
        m.notes = Some("  \n".into());
        assert!(render(&m, &[]).ends_with("```\n"));
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
