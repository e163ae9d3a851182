//! Random sequences of KV operations against the real storage and a `BTreeMap` model: every
//! result, every list option, and what survives the turn must agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use proptest::prelude::*;
use rookery::prelude::*;
use rookery::testing::{Blank, TestHarness};

#[derive(Debug, Clone)]
enum Op {
    Put(String, i64),
    Delete(String),
    PutMany(Vec<(String, i64)>),
    DeleteMany(Vec<String>),
    GetMany(Vec<String>),
    List(ListOptions),
    Txn(Vec<Op>, bool),
}

type Model = BTreeMap<String, i64>;

fn key() -> impl Strategy<Value = String> {
    // Few characters, some multi-byte, so keys collide, share prefixes and sort by UTF-8 bytes.
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("é"),
            Just("\u{1D11E}"),
            Just("~")
        ],
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

fn list_options() -> impl Strategy<Value = ListOptions> {
    (
        proptest::option::of(key()),
        proptest::option::of(key()),
        proptest::option::of(key()),
        proptest::option::of(key()),
        any::<bool>(),
        proptest::option::of(0usize..6),
    )
        .prop_map(
            |(start, start_after, end, prefix, reverse, limit)| ListOptions {
                start,
                start_after,
                end,
                prefix,
                reverse,
                limit,
            },
        )
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), any::<i64>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key().prop_map(Op::Delete),
        1 => proptest::collection::vec((key(), any::<i64>()), 0..4).prop_map(Op::PutMany),
        1 => proptest::collection::vec(key(), 0..4).prop_map(Op::DeleteMany),
        1 => proptest::collection::vec(key(), 0..4).prop_map(Op::GetMany),
        3 => list_options().prop_map(Op::List),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    leaf_op().prop_recursive(2, 16, 5, |inner| {
        (proptest::collection::vec(inner, 0..5), any::<bool>())
            .prop_map(|(ops, fail)| Op::Txn(ops, fail))
    })
}

/// What `list` must return according to the model.
fn expected_list(model: &Model, o: &ListOptions) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = model
        .iter()
        .filter(|(k, _)| {
            o.start.as_ref().is_none_or(|s| k.as_str() >= s.as_str())
                && o.start_after
                    .as_ref()
                    .is_none_or(|s| k.as_str() > s.as_str())
                && o.end.as_ref().is_none_or(|e| k.as_str() < e.as_str())
                && o.prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str()))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if o.reverse {
        out.reverse();
    }
    if let Some(limit) = o.limit {
        out.truncate(limit);
    }
    out
}

/// Applies `ops` to storage and model; records every disagreement in `bad`.
fn apply(storage: &Storage, model: &mut Model, ops: &[Op], bad: &mut Vec<String>) -> Result<()> {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                storage.put(k, v)?;
                model.insert(k.clone(), *v);
            }
            Op::Delete(k) => {
                let existed = storage.delete(k)?;
                if existed != model.remove(k).is_some() {
                    bad.push(format!("delete({k:?}) said {existed}"));
                }
            }
            Op::PutMany(entries) => {
                storage.put_many(entries)?;
                for (k, v) in entries {
                    model.insert(k.clone(), *v);
                }
            }
            Op::DeleteMany(keys) => {
                let n = storage.delete_many(keys)?;
                let mut expected = 0;
                for k in keys {
                    expected += usize::from(model.remove(k).is_some());
                }
                if n != expected {
                    bad.push(format!("delete_many({keys:?}) = {n}, expected {expected}"));
                }
            }
            Op::GetMany(keys) => {
                let got: BTreeMap<String, i64> = storage.get_many(keys)?;
                let want: BTreeMap<String, i64> = keys
                    .iter()
                    .filter_map(|k| model.get(k).map(|v| (k.clone(), *v)))
                    .collect();
                if got != want {
                    bad.push(format!("get_many({keys:?}) = {got:?}, expected {want:?}"));
                }
            }
            Op::List(o) => {
                let got: Vec<(String, i64)> = storage.list(o)?;
                let want = expected_list(model, o);
                if got != want {
                    bad.push(format!("list({o:?}) = {got:?}, expected {want:?}"));
                }
            }
            Op::Txn(inner, fail) => {
                let mut scratch = model.clone();
                let result = storage.transaction(|txn| {
                    apply(txn, &mut scratch, inner, bad)?;
                    if *fail {
                        Err(Error::msg(TXN_ON_PURPOSE))
                    } else {
                        Ok(())
                    }
                });
                match (result, fail) {
                    (Ok(()), false) => *model = scratch,
                    // Only its own deliberate error: any other is a disagreement.
                    (Err(Error::Other(m)), true) if m == TXN_ON_PURPOSE => {}
                    (r, _) => bad.push(format!("transaction(fail={fail}) returned {r:?}")),
                }
            }
        }
    }
    Ok(())
}

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});
static HARNESS: LazyLock<TestHarness> = LazyLock::new(|| {
    let _guard = RT.enter();
    TestHarness::new::<Blank>().unwrap()
});
static CASE: AtomicU64 = AtomicU64::new(0);
/// The errors of a turn and of a transaction that fail on purpose.
const ON_PURPOSE: &str = "turn fails on purpose";
const TXN_ON_PURPOSE: &str = "rolled back on purpose";

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn storage_agrees_with_a_btreemap(
        first in proptest::collection::vec(op(), 0..24),
        second in proptest::collection::vec(op(), 0..24),
        second_fails in any::<bool>(),
    ) {
        let name = format!("case-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let committed: Model = RT.block_on(async {
            // First turn: commits.
            let (b, ops) = (bad.clone(), first.clone());
            let model = HARNESS.run(&name, move |state| {
                let mut model = Model::new();
                let mut bad = b.lock().unwrap();
                apply(state.storage(), &mut model, &ops, &mut bad)?;
                Ok(model)
            }).await.unwrap();
            // Second turn: may fail on purpose, and then none of it counts. Any other error
            // is a disagreement with the model, which never fails.
            let (b, ops, start) = (bad.clone(), second.clone(), model.clone());
            let result = HARNESS.run(&name, move |state| {
                let mut model = start;
                let mut bad = b.lock().unwrap();
                apply(state.storage(), &mut model, &ops, &mut bad)?;
                if second_fails { Err(Error::msg(ON_PURPOSE)) } else { Ok(model) }
            }).await;
            match (result, second_fails) {
                (Ok(after), false) => after,
                (Err(Error::Other(m)), true) if m == ON_PURPOSE => model,
                (r, _) => {
                    bad.lock().unwrap().push(format!(
                        "second turn (fails on purpose: {second_fails}) ended with {r:?}"
                    ));
                    model
                }
            }
        });
        let stored: Vec<(String, i64)> = RT.block_on(
            HARNESS.run(&name, |state| state.storage().list(&ListOptions::new()))
        ).unwrap();
        let bad = bad.lock().unwrap();
        prop_assert!(bad.is_empty(), "{:#?}", *bad);
        prop_assert_eq!(stored, committed.into_iter().collect::<Vec<_>>());
    }
}
