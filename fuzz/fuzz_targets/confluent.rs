//! Any byte strings given to the Confluent Avro frame decoder are kept or rejected,
//! never a panic: every frame ends up in exactly one of the two, and the batch holds
//! one row per kept frame.
#![no_main]

// The decoder and its checker build without deltalake: only arrow and Avro crates.
#[path = "../../src/decode"]
mod decode {
    pub mod avro_check;
    #[allow(dead_code)]
    pub mod confluent;
}

use std::collections::HashMap;

use decode::confluent::{ConfluentDecoder, FixedSchemas, Frames};

/// A writer and a reader that resolve (an added field with a default, a widened int),
/// covering unions, arrays, maps, enums, fixed, uuid, decimal and nested records.
const WRITER: &str = r#"{"type":"record","name":"R","fields":[
  {"name":"id","type":"int"},
  {"name":"name","type":["null","string"]},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"long"}},
  {"name":"kind","type":{"type":"enum","name":"K","symbols":["a","b","c"]}},
  {"name":"hash","type":{"type":"fixed","name":"H","size":4}},
  {"name":"u","type":{"type":"string","logicalType":"uuid"}},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"double"},{"name":"b","type":"boolean"}]}}]}"#;
const READER: &str = r#"{"type":"record","name":"R","fields":[
  {"name":"id","type":"long"},
  {"name":"name","type":["null","string"]},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"long"}},
  {"name":"kind","type":{"type":"enum","name":"K","symbols":["a","b","c"]}},
  {"name":"hash","type":{"type":"fixed","name":"H","size":4}},
  {"name":"u","type":{"type":"string","logicalType":"uuid"}},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"double"},{"name":"b","type":"boolean"}]}},
  {"name":"extra","type":"string","default":"-"}]}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Frames: the input split at 0xff bytes; each gets the header of schema 1 unless it
    // starts with 0xfe (then it is taken raw, header and all).
    let mut frames = Frames::default();
    for part in data.split(|b| *b == 0xff) {
        match part.split_first() {
            Some((0xfe, raw)) => frames.push(raw),
            _ => {
                let mut f = vec![0, 0, 0, 0, 1];
                f.extend_from_slice(part);
                frames.push(&f);
            }
        }
    }
    let mut schemas = FixedSchemas(HashMap::from([(1, WRITER.to_string())]));
    let mut d = ConfluentDecoder::new(READER, 16).expect("the reader schema is valid");
    let out = d.decode(&frames, 0..frames.len(), &mut schemas).expect("fixed schemas always answer");
    assert_eq!(out.kept.len() + out.rejected.len(), frames.len());
    assert_eq!(out.batch.num_rows(), out.kept.len());
});
