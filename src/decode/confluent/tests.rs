use super::*;
use apache_avro::types::Value;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;

const V1: &str = r#"{"type":"record","name":"Click","fields":[
    {"name":"user","type":"long"},{"name":"page","type":"string"}]}"#;
/// V1 plus a nullable field: what the reader reads.
const V2: &str = r#"{"type":"record","name":"Click","fields":[
    {"name":"user","type":"long"},{"name":"page","type":"string"},
    {"name":"ref","type":["null","string"],"default":null}]}"#;
/// `user` as a string: the reader cannot read it.
const ALIEN: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"}]}"#;

fn frame(id: u32, schema: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let record = Value::Record(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    let mut out = vec![MAGIC];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(record)
            .unwrap(),
    );
    out
}

fn schemas() -> FixedSchemas {
    FixedSchemas(HashMap::from([
        (1, V1.to_string()),
        (2, V2.to_string()),
        (3, ALIEN.to_string()),
    ]))
}

#[test]
fn good_frames_of_two_writers_decode_in_order_and_bad_ones_are_named() {
    let mut frames = Frames::default();
    let v1 = |u: i64| {
        frame(
            1,
            V1,
            vec![
                ("user", Value::Long(u)),
                ("page", Value::String(format!("/p{u}"))),
            ],
        )
    };
    let v2 = |u: i64| {
        frame(
            2,
            V2,
            vec![
                ("user", Value::Long(u)),
                ("page", Value::String("/x".into())),
                ("ref", Value::Union(1, Box::new(Value::String("r".into())))),
            ],
        )
    };
    frames.push(&v1(10)); // 0
    frames.push(&v2(11)); // 1
    frames.push(&[1, 0, 0, 0, 1, 2]); // 2: wrong magic
    frames.push(&[0, 0, 0]); // 3: short
    frames.push(&frame(3, ALIEN, vec![("user", Value::String("u".into()))])); // 4: incompatible
    let mut unknown = v1(12);
    unknown[4] = 9;
    frames.push(&unknown); // 5: unknown id
    let mut cut = v1(13);
    cut.pop();
    frames.push(&cut); // 6: truncated datum
    let mut long = v1(14);
    long.push(0);
    frames.push(&long); // 7: trailing byte
    frames.push(&v1(15)); // 8
    frames.push(&v2(16)); // 9

    let mut d = ConfluentDecoder::new(V2, 100).unwrap();
    let mut s = schemas();
    let out = d.decode(&frames, 0..frames.len(), &mut s).unwrap();
    assert_eq!(out.kept, [0, 1, 8, 9]);
    let users: Vec<i64> = out.batch.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(users, [10, 11, 15, 16]);
    let refs = out.batch.column(2).as_string::<i32>();
    assert_eq!(
        (0..4).map(|i| refs.is_null(i)).collect::<Vec<_>>(),
        [true, false, true, false],
        "a V1 record gets the reader's default"
    );
    let reasons: HashMap<usize, &str> = out.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(reasons[&2].contains("magic byte 0x01"), "{reasons:?}");
    assert!(reasons[&3].contains("shorter than the 5-byte"), "{reasons:?}");
    assert!(
        reasons[&4].contains("cannot be read with the reader schema"),
        "{reasons:?}"
    );
    assert!(reasons[&5].contains("not in the registry"), "{reasons:?}");
    assert!(reasons[&6].contains("field page"), "{reasons:?}");
    assert!(reasons[&7].contains("bytes left"), "{reasons:?}");
}

/// A registry that cannot be reached rejects nothing: the caller must wait.
#[test]
fn an_unreachable_registry_is_an_error_not_a_rejection() {
    struct Down;
    impl WriterSchemas for Down {
        fn writer(&mut self, _: u32) -> Result<Result<String, String>, String> {
            Err("connection refused".into())
        }
    }
    let mut frames = Frames::default();
    frames.push(&frame(
        1,
        V1,
        vec![("user", Value::Long(1)), ("page", Value::String("/".into()))],
    ));
    let mut d = ConfluentDecoder::new(V1, 10).unwrap();
    assert_eq!(
        d.decode(&frames, 0..1, &mut Down).unwrap_err(),
        "connection refused"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic mutation run; the fuzz target (fuzz/) goes further.
    let good = frame(
        2,
        V2,
        vec![
            ("user", Value::Long(7)),
            ("page", Value::String("/abc".into())),
            ("ref", Value::Union(1, Box::new(Value::String("r".into())))),
        ],
    );
    let mut d = ConfluentDecoder::new(V2, 64).unwrap();
    let mut s = schemas();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2_000 {
        let mut frames = Frames::default();
        for _ in 0..32 {
            let mut f = good.clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % f.len();
                f[at] = next() as u8;
            }
            if next() % 5 == 0 {
                f.truncate((next() as usize) % f.len());
            }
            frames.push(&f);
        }
        let out = d.decode(&frames, 0..frames.len(), &mut s).unwrap();
        assert_eq!(out.kept.len() + out.rejected.len(), frames.len());
        assert_eq!(out.batch.num_rows(), out.kept.len());
    }
}
