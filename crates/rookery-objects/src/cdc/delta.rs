//! Delta files: a run of a collection's changes, one JSON line each (`{seq, op, id, doc, ts}`,
//! in `seq` order), gzip-compressed, stored in the bucket bound as [`BUCKET_BINDING`] under
//! `cdc/<namespace>/<collection>/<first seq>-<last seq>.ndjson.gz` with both sequence numbers
//! written as 12 digits, so names sort in sequence order.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use rookery::prelude::*;
use serde::de::DeserializeOwned;

use super::change::Change;

/// The binding of the bucket delta files are written to.
pub const BUCKET_BINDING: &str = "CDC_BUCKET";

/// The file name's ending.
pub const EXTENSION: &str = ".ndjson.gz";

/// The key of the delta file holding changes `first..=last` of `namespace/collection`.
pub fn file_key(namespace: &str, collection: &str, first: i64, last: i64) -> String {
    format!("cdc/{namespace}/{collection}/{first:012}-{last:012}{EXTENSION}")
}

/// The file's bytes: each change as a JSON line, gzip-compressed.
pub fn encode(changes: &[Change]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for c in changes {
        serde_json::to_writer(&mut gz, c).map_err(Error::msg)?;
        gz.write_all(b"\n").map_err(Error::msg)?;
    }
    gz.finish().map_err(Error::msg)
}

/// The changes in a file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<Change>> {
    decode_lines(bytes)
}

/// Each line of a gzip NDJSON file (a delta file, or an event writer's file) as a `T`.
pub fn decode_lines<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>> {
    let mut text = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut text)
        .map_err(|e| Error::msg(format!("a file is not gzip: {e}")))?;
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_slice(line)
                .map_err(|e| Error::msg(format!("line {} of a file: {e}", n + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::super::change::Op;
    use super::*;

    fn encode_text(text: &str) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn files_round_trip_and_their_names_sort_by_sequence() {
        let changes = vec![
            Change {
                seq: 1,
                op: Op::Insert,
                id: "a".into(),
                doc: Some(RawValue::from_string(r#"{"x": 1}"#.into()).unwrap()),
                ts: 10,
            },
            Change {
                seq: 2,
                op: Op::Delete,
                id: "a".into(),
                doc: None,
                ts: 11,
            },
        ];
        let bytes = encode(&changes).unwrap();
        let mut text = String::new();
        GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(
            text,
            "{\"seq\":1,\"op\":\"insert\",\"id\":\"a\",\"doc\":{\"x\": 1},\"ts\":10}\n\
             {\"seq\":2,\"op\":\"delete\",\"id\":\"a\",\"doc\":null,\"ts\":11}\n"
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].doc.as_ref().unwrap().get(), r#"{"x": 1}"#);
        assert_eq!((back[1].seq, back[1].op), (2, Op::Delete));
        assert!(decode(b"{\"seq\":1}\n").is_err(), "not gzip");
        assert!(
            decode(&encode_text("{\"seq\":1}\n")).is_err(),
            "not a change"
        );
        assert_eq!(
            file_key("shop", "orders", 1, 1000),
            "cdc/shop/orders/000000000001-000000001000.ndjson.gz"
        );
        assert!(file_key("s", "o", 999, 1000) < file_key("s", "o", 1001, 1001));
    }
}
