use std::sync::Arc;

use deltalake::arrow::array::{ListBuilder, StringBuilder};
use deltalake::arrow::datatypes::Int64Type;

use super::*;

/// Changes (op, id, name, position) with optional unsent columns per row.
fn changes(rows: &[(&str, i64, Option<&str>, i64)], unsent: Option<&[&[&str]]>) -> RecordBatch {
    let mut fields = vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new(POSITION, DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
    ];
    if let Some(unsent) = unsent {
        let mut b = ListBuilder::new(StringBuilder::new());
        for cols in unsent {
            if cols.is_empty() {
                b.append_null();
            } else {
                for c in *cols {
                    b.values().append_value(c);
                }
                b.append(true);
            }
        }
        let list = b.finish();
        fields.push(Field::new(UNCHANGED, list.data_type().clone(), true));
        columns.push(Arc::new(list));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn rows_of(c: &Collapsed) -> Vec<(String, i64, Option<String>)> {
    let ops = c.batch.column_by_name(OP).unwrap().as_string::<i32>();
    let ids = c.batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    let names = c.batch.column_by_name("name").unwrap().as_string::<i32>();
    (0..c.batch.num_rows())
        .map(|i| {
            (
                ops.value(i).to_string(),
                ids.value(i),
                names.is_valid(i).then(|| names.value(i).to_string()),
            )
        })
        .collect()
}

#[test]
fn the_last_change_per_key_wins_in_source_order() {
    let b = changes(
        &[
            ("c", 1, Some("a"), 10),
            ("c", 2, Some("b"), 11),
            ("u", 1, Some("a2"), 12),
            ("d", 2, Some("b"), 13),
            ("u", 1, Some("a3"), 14),
            ("c", 3, Some("c"), 15),
        ],
        None,
    );
    let c = collapse(&b, &["id".to_string()]).unwrap();
    assert_eq!(
        rows_of(&c),
        vec![
            ("d".into(), 2, Some("b".into())),
            ("u".into(), 1, Some("a3".into())),
            ("c".into(), 3, Some("c".into())),
        ]
    );
    assert_eq!(c.deletes, 1);
    assert!(c.unchanged.is_empty());
}

#[test]
fn an_unsent_value_comes_from_an_earlier_change_or_is_flagged() {
    let b = changes(
        &[
            ("u", 1, Some("full"), 10),
            ("u", 1, None, 11),
            ("u", 2, None, 12),
            ("d", 3, None, 13),
            ("c", 3, Some("x"), 14),
            ("u", 3, None, 15),
        ],
        Some(&[&[], &["name"], &["name"], &[], &[], &["name"]]),
    );
    let c = collapse(&b, &["id".to_string()]).unwrap();
    assert_eq!(
        rows_of(&c),
        vec![
            ("u".into(), 1, Some("full".into())),
            ("u".into(), 2, None),
            ("u".into(), 3, Some("x".into())),
        ]
    );
    // Only key 2 must keep the table's value.
    assert_eq!(c.unchanged, vec!["name".to_string()]);
    let flags = c
        .batch
        .column_by_name(&format!("{UNCHANGED_FLAG_PREFIX}name"))
        .unwrap()
        .as_boolean();
    assert_eq!(
        flags.iter().collect::<Vec<_>>(),
        vec![Some(false), Some(true), Some(false)]
    );
}

#[test]
fn bad_changes_name_the_record() {
    let b = changes(&[("c", 1, None, 10), ("x", 2, None, 11)], None);
    assert_eq!(
        collapse(&b, &["id".to_string()]).unwrap_err(),
        ChangeError::BadOp {
            position: 11,
            op: "x".into()
        }
    );
    assert_eq!(
        collapse(&b, &["nope".to_string()]).unwrap_err(),
        ChangeError::Missing("nope".into())
    );
    let nulls = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(OP, DataType::Utf8, false),
            Field::new("id", DataType::Int64, true),
            Field::new(POSITION, DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["c", "c"])),
            Arc::new(Int64Array::from(vec![Some(1), None])),
            Arc::new(Int64Array::from(vec![5, 6])),
        ],
    )
    .unwrap();
    assert_eq!(
        collapse(&nulls, &["id".to_string()]).unwrap_err(),
        ChangeError::NullKey {
            position: 6,
            column: "id".into()
        }
    );
}
