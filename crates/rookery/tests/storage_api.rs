//! The storage API through the test harness: transactions, limits, SQL and its refusals.

use rookery::prelude::*;
use rookery::testing::{Blank, TestHarness};
use rookery::{Runtime, RuntimeOptions, StorageLimits};
use serde_json::json;

fn harness() -> TestHarness {
    TestHarness::new::<Blank>().unwrap()
}

#[tokio::test]
async fn a_failed_transaction_rolls_back_and_a_failed_turn_rolls_back_everything() {
    let h = harness();
    // Turn 1 commits: the failed nested transaction leaves only its own writes undone.
    let seen = h
        .run("o", |state| {
            let s = state.storage();
            s.put("a", &1)?;
            let failed = s.transaction(|t| {
                t.put("b", &2)?;
                t.transaction(|inner| inner.put("c", &3))?;
                Err::<(), _>(Error::msg("no"))
            });
            assert!(failed.is_err());
            s.transaction(|t| t.put("d", &4))?;
            s.list::<i64>(&ListOptions::new())
        })
        .await
        .unwrap();
    assert_eq!(seen, vec![("a".to_string(), 1), ("d".to_string(), 4)]);
    // Turn 2 writes inside a successful transaction, then fails: all of it is undone.
    let failed = h
        .run("o", |state| {
            let s = state.storage();
            s.put("e", &5)?;
            s.transaction(|t| t.put("f", &6))?;
            s.delete("a")?;
            Err::<(), _>(Error::msg("the turn fails after its transaction succeeded"))
        })
        .await;
    assert!(failed.is_err());
    let after = h
        .run("o", |state| {
            state.storage().list::<i64>(&ListOptions::new())
        })
        .await
        .unwrap();
    assert_eq!(after, vec![("a".to_string(), 1), ("d".to_string(), 4)]);
}

#[tokio::test]
async fn values_are_serde_types_and_readable_as_raw_json() {
    let h = harness();
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Point {
        x: i32,
        label: String,
    }
    let (point, raw) = h
        .run("o", |state| {
            let s = state.storage();
            s.put(
                "p",
                &Point {
                    x: 3,
                    label: "ü".into(),
                },
            )?;
            Ok((s.get::<Point>("p")?, s.get_raw("p")?))
        })
        .await
        .unwrap();
    assert_eq!(
        point,
        Some(Point {
            x: 3,
            label: "ü".into()
        })
    );
    let raw: serde_json::Value = serde_json::from_slice(&raw.unwrap()).unwrap();
    assert_eq!(raw, json!({"x": 3, "label": "ü"}));
    // Reading a value as the wrong type is an error, not a panic.
    let wrong = h.run("o", |state| state.storage().get::<i64>("p")).await;
    assert!(wrong.is_err());
}

#[tokio::test]
async fn limits_are_errors_to_the_handler_and_corrupt_nothing() {
    let options = RuntimeOptions {
        storage: StorageLimits {
            max_key_bytes: 8,
            max_value_bytes: 64,
            max_batch_keys: 3,
            max_object_bytes: 256 * 1024,
            ..StorageLimits::default()
        },
        ..RuntimeOptions::default()
    };
    let h =
        TestHarness::from_builder::<Blank>(Runtime::builder_in_memory().options(options)).unwrap();
    let outcome = h
        .run("o", |state| {
            let s = state.storage();
            s.put("ok", &1)?;
            let errors = [
                s.put("a-key-too-long", &1).err(),
                s.put("k", &"x".repeat(100)).err(),
                s.get_many(&["a", "b", "c", "d"])
                    .map(|_: std::collections::BTreeMap<String, i64>| ())
                    .err(),
                s.delete_many(&["a", "b", "c", "d"]).map(|_| ()).err(),
                s.put_many(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]).err(),
            ];
            Ok(errors.map(|e| e.map(|e| (e.status().as_u16(), e.to_string()))))
        })
        .await
        .unwrap();
    for (i, e) in outcome.iter().enumerate() {
        let (status, message) = e
            .as_ref()
            .unwrap_or_else(|| panic!("case {i} was accepted"));
        assert_eq!(*status, 413, "{message}");
        assert!(message.contains("limit"), "{message}");
    }
    // The object's size limit: turns of ~6 KiB each until one is refused with a clear error.
    let mut turns = 0;
    let refusal = loop {
        let n = turns;
        let r = h
            .run("big", move |state| {
                for i in 0..100 {
                    state.storage().put(&format!("{n}-{i}"), &"y".repeat(50))?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => turns += 1,
            Err(e) => break e.to_string(),
        }
        assert!(turns < 1000, "the size limit never bit");
    };
    assert!(refusal.contains("storage is full"), "{refusal}");
    assert!(turns > 0);
    // The refused turn is rolled back as a whole; earlier turns are intact; the object still
    // works and can make room.
    let (count, last_turn_keys) = h
        .run("big", move |state| {
            let s = state.storage();
            let all: Vec<(String, String)> = s.list(&ListOptions::new())?;
            let partial = s
                .list::<String>(&ListOptions::new().prefix(format!("{turns}-")))?
                .len();
            s.delete_many(&["0-0", "0-1"])?;
            s.put("small", &1)?;
            Ok((all.len(), partial))
        })
        .await
        .unwrap();
    assert_eq!(count, turns * 100);
    assert_eq!(last_turn_keys, 0, "nothing of the refused turn is left");
    let kept = h
        .run("o", |state| state.storage().get::<i64>("ok"))
        .await
        .unwrap();
    assert_eq!(kept, Some(1));
}

#[tokio::test]
async fn sql_tables_live_beside_the_kv_table() {
    let h = harness();
    let (rows, written, read) = h
        .run("o", |state| {
            let sql = state.storage().sql();
            sql.exec(
                "CREATE TABLE msgs (id INTEGER PRIMARY KEY, author TEXT, body TEXT, score REAL)",
                &[],
            )?;
            let ins = sql.exec(
                "INSERT INTO msgs (author, body, score) VALUES (?, ?, ?)",
                &["ann".into(), "hi'); DROP TABLE msgs; --".into(), 1.5.into()],
            )?;
            sql.exec(
                "INSERT INTO msgs (author, body, score) VALUES (?, ?, ?)",
                &["bob".into(), "yo".into(), SqlValue::Null],
            )?;
            let cur = sql.exec("SELECT id, author, body, score FROM msgs ORDER BY id", &[])?;
            Ok((cur.to_json(), ins.rows_written(), cur.rows_read()))
        })
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert!(read >= 2, "{read}");
    assert_eq!(
        rows,
        json!([
            {"id": 1, "author": "ann", "body": "hi'); DROP TABLE msgs; --", "score": 1.5},
            {"id": 2, "author": "bob", "body": "yo", "score": null},
        ])
    );
    let (n, author, names, size) = h
        .run("o", |state| {
            let sql = state.storage().sql();
            let cur = sql.exec("SELECT count(*) AS n, max(author) AS a FROM msgs", &[])?;
            let row = cur.one()?;
            let n: i64 = row.get("n")?;
            let a: String = row.get(1)?;
            let names = cur.column_names().to_vec();
            Ok((n, a, names, sql.database_size()?))
        })
        .await
        .unwrap();
    assert_eq!((n, author.as_str()), (2, "bob"));
    assert_eq!(names, vec!["n", "a"]);
    assert!(size >= 4096);
}

#[tokio::test]
async fn sql_that_would_take_the_runtimes_job_is_refused() {
    let h = harness();
    let refusals = h
        .run("o", |state| {
            let s = state.storage();
            s.put("k", &1)?;
            let sql = s.sql();
            let tries = [
                "BEGIN",
                "COMMIT",
                "ROLLBACK",
                "SAVEPOINT x",
                "ATTACH DATABASE '/tmp/x.db' AS x",
                "PRAGMA synchronous = OFF",
                "PRAGMA journal_mode = DELETE",
                "PRAGMA max_page_count = 1",
                "SELECT * FROM _rookery_kv",
                "DELETE FROM _rookery_kv",
                "CREATE TABLE _rookery_mine (x)",
                "CREATE TABLE _ROOKERY_MINE (x)",
                "DROP TABLE _rookery_kv",
                "CREATE TEMP TABLE shadow (key BLOB PRIMARY KEY, value BLOB NOT NULL)",
                "CREATE TABLE mine (x); ALTER TABLE mine RENAME TO _rookery_mine",
            ];
            let mut out = Vec::new();
            for q in tries {
                match sql.exec(q, &[]) {
                    Err(Error::SqlRefused(why)) => out.push((q, why)),
                    other => panic!("{q}: expected a refusal, got {other:?}"),
                }
            }
            // The refused rename left nothing behind: the whole call was undone.
            let left = sql.exec(
                "SELECT name FROM sqlite_schema WHERE name IN ('mine', '_rookery_mine')",
                &[],
            )?;
            assert!(left.is_empty(), "{:?}", left.raw());
            // A view over a runtime table can be made but never read.
            sql.exec("CREATE VIEW v AS SELECT * FROM _rookery_kv", &[])?;
            assert!(matches!(
                sql.exec("SELECT * FROM v", &[]),
                Err(Error::SqlRefused(_))
            ));
            // Reading pragmas is fine, and the KV data is untouched.
            sql.exec("PRAGMA table_info(sqlite_schema)", &[])?;
            sql.exec("PRAGMA page_size", &[])?;
            assert_eq!(s.get::<i64>("k")?, Some(1));
            Ok(out)
        })
        .await
        .unwrap();
    let why = |q: &str| refusals.iter().find(|(x, _)| *x == q).unwrap().1.clone();
    assert!(why("BEGIN").contains("transactions are managed by the runtime"));
    assert!(why("SELECT * FROM _rookery_kv").contains("belong to the runtime"));
    assert!(why("PRAGMA synchronous = OFF").contains("durability"));
    // A syntax error is an ordinary error and leaves the turn usable.
    let recovered = h
        .run("o", |state| {
            let s = state.storage();
            assert!(s.sql().exec("SELEC nonsense", &[]).is_err());
            assert!(s.sql().exec("SELECT ?", &[]).is_err(), "missing parameter");
            s.put("after", &2)?;
            s.get::<i64>("after")
        })
        .await
        .unwrap();
    assert_eq!(recovered, Some(2));
}

#[tokio::test]
async fn delete_all_clears_keys_and_tables() {
    let h = harness();
    let left = h
        .run("o", |state| {
            let s = state.storage();
            s.put("a", &1)?;
            s.sql().exec(
                "CREATE TABLE t (x); CREATE INDEX tx ON t(x); CREATE VIEW tv AS SELECT x FROM t",
                &[],
            )?;
            s.delete_all()?;
            let tables = s.sql().exec(
                "SELECT name FROM sqlite_schema WHERE name NOT LIKE '\\_rookery\\_%' ESCAPE '\\'",
                &[],
            )?;
            Ok((s.list::<i64>(&ListOptions::new())?, tables.len()))
        })
        .await
        .unwrap();
    assert_eq!(left, (vec![], 0));
}
