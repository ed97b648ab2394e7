use std::collections::HashSet;

use super::*;

#[test]
fn cursor_values_order_chunks_and_generations() {
    assert!(value(1, 5) < value(1, 6));
    assert!(value(1, DONE) < value(2, 0));
    assert_eq!(chunk(value(3, 7)), 7);
    assert_eq!(generation(value(3, 7)), 3);
    assert_eq!(chunk(value(1, DONE)), DONE);
}

#[test]
fn a_stream_resumes_at_its_least_cursor_and_reads_up_to_each_further_one() {
    let at = |v: i64, k: &str| {
        Part::At(
            v,
            Progress {
                key: Some(vec![Some(k.to_string())]),
                ..Progress::default()
            },
        )
    };
    assert!(start(&[Part::Whole, Part::Done(value(1, DONE))]).is_none());
    let s = start(&[Part::New]).unwrap();
    assert_eq!((s.value, s.progress.key, s.further.len()), (value(1, 0), None, 0));
    let s = start(&[
        at(value(1, 5), "50"),
        at(value(1, 3), "30"),
        at(value(1, 5), "50"),
        Part::Whole,
    ])
    .unwrap();
    assert_eq!(s.value, value(1, 3));
    assert_eq!(s.progress.key, Some(vec![Some("30".into())]));
    assert_eq!(s.further.len(), 1);
    assert_eq!(s.further[0].0, value(1, 5));
    // A table added beside a copied one starts over, in the copied one's
    // generation: the copied one skips every chunk.
    let s = start(&[Part::Done(value(2, DONE)), Part::New]).unwrap();
    assert_eq!(s.value, value(2, 0));
    assert!(s.further.is_empty());
}

#[test]
fn a_table_reads_its_part_from_its_progress() {
    let mut held = crate::progress::Progress::new();
    assert_eq!(Part::of(&held, "s", None).unwrap(), Part::New);
    held.advance("s", 5);
    // An interrupted copy in one piece (positions below the WAL space).
    assert_eq!(Part::of(&held, "s", None).unwrap(), Part::New);
    held.advance("s", 0x200_0000);
    assert_eq!(Part::of(&held, "s", None).unwrap(), Part::Whole);
    held.advance("s#snapshot", value(1, 0));
    assert_eq!(
        Part::of(&held, "s", None).unwrap(),
        Part::At(value(1, 0), Progress::default())
    );
    held.advance("s#snapshot", value(1, 3));
    assert!(
        Part::of(&held, "s", None).is_err(),
        "a cursor past chunk 0 needs its state"
    );
    let state = Bytes::from_static(br#"{"key":["7"],"rows":3,"estimate":9}"#);
    let Part::At(v, p) = Part::of(&held, "s", Some(&state)).unwrap() else {
        panic!("in progress");
    };
    assert_eq!(
        (v, p.key, p.rows),
        (value(1, 3), Some(vec![Some("7".to_string())]), 3)
    );
    held.advance("s#snapshot", value(1, DONE));
    assert_eq!(Part::of(&held, "s", None).unwrap(), Part::Done(value(1, DONE)));
}

#[test]
fn snapshot_in_progress_lists_read_as_32_bit_ids() {
    assert_eq!(in_progress("10:20:"), HashSet::new());
    assert_eq!(in_progress("10:20:12,15"), HashSet::from([12, 15]));
    // xid8 values carry an epoch above 32 bits; the stream's ids do not.
    assert_eq!(
        in_progress("4294967306:4294967310:4294967307"),
        HashSet::from([11])
    );
}

#[test]
fn keys_are_read_from_copy_text() {
    assert_eq!(
        key_of(b"7\tab\\tc\t\\N", &[1, 2]).unwrap(),
        vec![Some("ab\tc".to_string()), None]
    );
}
