//! Any byte strings given to the JSON message decoder are kept or rejected, never a
//! panic: every message ends up in exactly one of the two, the batch holds one row per
//! kept message, and a kept message decodes alone to the same row.
#![no_main]

// The decoders build without deltalake: only arrow and Avro crates.
#[path = "../../src/decode"]
mod decode {
    #[allow(dead_code)]
    pub mod avro_check;
    #[allow(dead_code)]
    pub mod confluent;
    pub mod json;
}

use decode::confluent::{ConfluentDecoder, Frames};
use decode::json::{JsonDecoder, json_schema};

/// Every kind of field a schema file maps to: unions, arrays, maps, enums, fixed,
/// uuid, decimal, timestamps, dates and nested records.
const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
  {"name":"id","type":"long"},
  {"name":"name","type":["null","string"]},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"long"}},
  {"name":"kind","type":{"type":"enum","name":"K","symbols":["a","b","c"]}},
  {"name":"hash","type":["null",{"type":"fixed","name":"H","size":4}]},
  {"name":"u","type":["null",{"type":"string","logicalType":"uuid"}]},
  {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}]},
  {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-millis"}]},
  {"name":"day","type":["null",{"type":"int","logicalType":"date"}]},
  {"name":"inner","type":["null",{"type":"record","name":"I","fields":[{"name":"x","type":"double"},{"name":"b","type":"boolean"}]}]}]}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Messages: the input split at 0xff bytes (which is never valid UTF-8 itself).
    let mut frames = Frames::default();
    for part in data.split(|b| *b == 0xff) {
        frames.push(part);
    }
    let schema = ConfluentDecoder::new(SCHEMA, 1).expect("the schema is valid").schema();
    let strict = data.first().is_some_and(|b| b & 1 == 1);
    let d = JsonDecoder::new(json_schema(&schema), strict, 4).expect("arrow-json reads the schema");
    let which: Vec<usize> = (0..frames.len()).collect();
    let out = d.decode(&frames, &which).expect("the schema decodes");
    assert_eq!(out.kept.len() + out.rejected.len(), frames.len());
    assert_eq!(out.batch.num_rows(), out.kept.len());
    for (row, &i) in out.kept.iter().enumerate() {
        let alone = d.decode(&frames, &[i]).expect("the schema decodes");
        assert_eq!(alone.kept, [i]);
        assert_eq!(alone.batch, out.batch.slice(row, 1));
    }
});
