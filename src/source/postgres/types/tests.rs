use deltalake::arrow::array::{Array, AsArray, Int32Array};
use deltalake::arrow::datatypes::{Date32Type, Decimal128Type, TimestampMicrosecondType};

use super::*;

fn none(_: u32) -> Option<TypeRow> {
    None
}

#[test]
fn numeric_modifiers_pick_decimal_or_text() {
    // numeric(12,2): typmod = (12 << 16 | 2) + 4
    assert_eq!(
        PgType::resolve(1700, (12 << 16 | 2) + 4, &none),
        PgType::Decimal {
            precision: 12,
            scale: 2
        }
    );
    assert_eq!(PgType::resolve(1700, -1, &none), PgType::Text);
    assert_eq!(PgType::resolve(1700, (60 << 16) + 4, &none), PgType::Text);
    assert_eq!(
        PgType::resolve(1007, -1, &none),
        PgType::Array(Box::new(PgType::Int4))
    );
    let domain = |oid| {
        (oid == 90_000).then_some(TypeRow {
            category: b'N',
            kind: b'd',
            element: 0,
            base: 20,
            base_modifier: -1,
        })
    };
    assert_eq!(PgType::resolve(90_000, -1, &domain), PgType::Int8);
    assert_eq!(PgType::resolve(91_000, -1, &domain), PgType::Text);
}

#[test]
fn text_values_become_arrow_values() {
    let mut d = Builder::new(
        &PgType::Decimal {
            precision: 10,
            scale: 3,
        },
        4,
    );
    d.append_text(b"-12.5").unwrap();
    d.append_text(b"0.001").unwrap();
    assert!(d.append_text(b"NaN").is_err());
    assert!(d.append_text(b"12345678.1").is_err(), "over precision");
    let a = d.finish();
    let a = a.as_primitive::<Decimal128Type>();
    assert_eq!((a.value(0), a.value(1)), (-12_500, 1));
    assert!(a.is_null(2) && a.is_null(3), "a failed value is a null");

    let mut t = Builder::new(&PgType::Timestamp, 4);
    t.append_text(b"2024-02-29 12:34:56.789+00").unwrap();
    t.append_text(b"2024-02-29 14:34:56.789+02").unwrap();
    t.append_text(b"1970-01-01 00:00:00").unwrap();
    t.append_text(b"0044-03-15 12:00:00 BC").unwrap();
    let a = t.finish();
    let a = a.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(a.value(0), 1_709_210_096_789_000);
    assert_eq!(a.value(0), a.value(1));
    assert_eq!(a.value(2), 0);
    assert!(a.value(3) < -62_000_000_000_000_000);

    let mut dt = Builder::new(&PgType::Date, 2);
    dt.append_text(b"1970-01-02").unwrap();
    dt.append_text(b"infinity").unwrap();
    let a = dt.finish();
    let a = a.as_primitive::<Date32Type>();
    assert_eq!((a.value(0), a.value(1)), (1, i32::MAX));

    let mut b = Builder::new(&PgType::Bytea, 1);
    b.append_text(b"\\x00ff10").unwrap();
    assert_eq!(b.finish().as_binary::<i32>().value(0), &[0, 255, 16]);
}

#[test]
fn arrays_with_quotes_and_nulls() {
    let mut l = Builder::new(&PgType::Array(Box::new(PgType::Text)), 4);
    l.append_text(br#"{a,"b c","d\"e",NULL,"NULL"}"#).unwrap();
    l.append_null();
    l.append_text(b"{}").unwrap();
    assert!(l.append_text(b"{{1,2},{3,4}}").is_err());
    let a = l.finish();
    let a = a.as_list::<i32>();
    assert_eq!(a.len(), 4);
    let first = a.value(0);
    let first = first.as_string::<i32>();
    assert_eq!(first.value(1), "b c");
    assert_eq!(first.value(2), "d\"e");
    assert!(first.is_null(3));
    assert_eq!(first.value(4), "NULL");
    assert!(a.is_null(1) && a.value(2).is_empty() && a.is_null(3));

    let mut ints = Builder::new(&PgType::Array(Box::new(PgType::Int4)), 1);
    ints.append_text(b"[0:1]={7,8}").unwrap();
    let a = ints.finish();
    let v = a.as_list::<i32>().value(0);
    assert_eq!(v.as_any().downcast_ref::<Int32Array>().unwrap().values(), &[7, 8]);
}

#[test]
fn copy_lines_unescape() {
    let mut scratch = Vec::new();
    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    let n = copy_fields(b"1\t\\N\ta\\tb\\\\c\\nd\t\\x41\\101", &mut scratch, |_, v| {
        got.push(v.map(<[u8]>::to_vec));
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(got[0].as_deref(), Some(&b"1"[..]));
    assert_eq!(got[1], None);
    assert_eq!(got[2].as_deref(), Some(&b"a\tb\\c\nd"[..]));
    assert_eq!(got[3].as_deref(), Some(&b"AA"[..]));
}
