//! Any byte string given to the pgoutput decoder yields a message or an error, never a
//! panic, and every tuple of a decoded message walks exactly its column count.
#![no_main]

// The decoder depends on std only, so it is built here on its own.
#[path = "../../src/source/postgres/pgoutput.rs"]
#[allow(dead_code)]
mod pgoutput;

use pgoutput::{Message, parse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = parse(data) {
        let tuples = match msg {
            Message::Insert { new, .. } => vec![new],
            Message::Update { old, new, .. } => old.into_iter().chain([new]).collect(),
            Message::Delete { old, .. } => vec![old],
            _ => vec![],
        };
        for t in tuples {
            assert_eq!(t.columns().count(), t.len());
        }
    }
    let _ = pgoutput::parse_tuple(data);
});
