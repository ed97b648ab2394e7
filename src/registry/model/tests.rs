use super::*;

const V1: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"long"}]}"#;
/// V1 plus a field with a default: BACKWARD and FORWARD compatible.
const V2: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"long"},{"name":"page","type":"string","default":""}]}"#;
/// A new field without a default: a new reader cannot read old data.
const V3_BAD: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"long"},{"name":"url","type":"string"}]}"#;
/// `user` narrowed from long to int.
const NARROW: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"int"}]}"#;

fn register(m: &mut Model, subject: &str, schema: &str) -> Result<Registered, RegistryError> {
    let (event, reg) = m.plan_register(subject, schema)?;
    if let Some(e) = event {
        m.apply(&e);
    }
    Ok(reg)
}

#[test]
fn the_same_schema_gets_the_same_id_under_every_subject() {
    let mut m = Model::default();
    let a = register(&mut m, "a-value", V1).unwrap();
    // Whitespace and key order do not make a different schema.
    let spaced = r#"{ "name": "Click", "type": "record", "fields": [ {"type": "long", "name": "user"} ] }"#;
    let again = register(&mut m, "a-value", spaced).unwrap();
    assert_eq!((again.id, again.version), (a.id, a.version));
    let b = register(&mut m, "b-value", V1).unwrap();
    assert_eq!((b.id, b.version), (a.id, 1));
    let v2 = register(&mut m, "a-value", V2).unwrap();
    assert_eq!((v2.id, v2.version), (a.id + 1, 2));
    assert_eq!(m.versions("a-value", Seen::Live).unwrap(), [1, 2]);
    assert_eq!(m.lookup("b-value", V1, false).unwrap().version, 1);
    assert_eq!(m.lookup("b-value", V2, false).unwrap_err().codes(), (404, 40403));
    assert_eq!(
        m.version("zzz", VersionRef::Latest, false).unwrap_err().codes(),
        (404, 40401)
    );
    assert_eq!(
        m.version("a-value", VersionRef::Number(9), false)
            .unwrap_err()
            .codes(),
        (404, 40402)
    );
}

#[test]
fn each_level_accepts_and_refuses_what_it_should() {
    let mut m = Model::default();
    register(&mut m, "s", V1).unwrap();
    // BACKWARD (default): the narrowed field cannot read old longs, the new field
    // without default cannot be filled from old data.
    assert_eq!(register(&mut m, "s", V3_BAD).unwrap_err().codes(), (409, 409));
    assert_eq!(register(&mut m, "s", NARROW).unwrap_err().codes(), (409, 409));
    // FORWARD: the old schema must read new data; V3_BAD's extra field is ignored by
    // it, so it is accepted; NARROW too (an int is read as a long).
    m.apply(&Event::Config {
        subject: Some("s".into()),
        level: Some(Level::Forward),
    });
    register(&mut m, "s", NARROW).unwrap();
    // FULL against the latest (NARROW): V1 widens NARROW's int, but NARROW cannot
    // read V1's long.
    m.apply(&Event::Config {
        subject: Some("s".into()),
        level: Some(Level::Full),
    });
    let e = register(&mut m, "s", V1);
    assert!(
        e.is_ok(),
        "V1 is already registered, so it is not checked again: {e:?}"
    );
    assert_eq!(register(&mut m, "s", V3_BAD).unwrap_err().codes(), (409, 409));
    // NONE accepts anything.
    m.apply(&Event::Config {
        subject: Some("s".into()),
        level: Some(Level::None),
    });
    register(&mut m, "s", V3_BAD).unwrap();
}

#[test]
fn transitive_levels_check_every_live_version() {
    let mut m = Model::default();
    m.apply(&Event::Config {
        subject: None,
        level: Some(Level::Forward),
    });
    // FORWARD allows adding a required field (old readers ignore it).
    register(&mut m, "t", V1).unwrap();
    register(&mut m, "t", V3_BAD).unwrap();
    // Going forward, V3_BAD's readers need `url`, which V2 data lacks.
    let v2 = parse_schema(V2).unwrap();
    assert_eq!(m.incompatibilities("t", &v2, None).unwrap().len(), 1);
    m.apply(&Event::Config {
        subject: None,
        level: Some(Level::BackwardTransitive),
    });
    // BACKWARD_TRANSITIVE: V2 must read V1 data (ok) and V3_BAD data (ok: it ignores
    // url and defaults page). A schema requiring `url` cannot read V1 data.
    assert!(m.incompatibilities("t", &v2, None).unwrap().is_empty());
    let needs_url = parse_schema(V3_BAD).unwrap();
    let reasons = m.incompatibilities("t", &needs_url, None).unwrap();
    assert_eq!(reasons.len(), 1, "only version 1 lacks url: {reasons:?}");
    assert!(reasons[0].contains("version 1"), "{reasons:?}");
}

#[test]
fn deletes_are_soft_first_and_ids_survive_them() {
    let mut m = Model::default();
    let a = register(&mut m, "d", V1).unwrap();
    register(&mut m, "d", V2).unwrap();
    let e = m
        .plan_delete_version("d", VersionRef::Number(2), true)
        .unwrap_err();
    assert_eq!(e.codes(), (404, 40407));
    let (event, v) = m.plan_delete_version("d", VersionRef::Latest, false).unwrap();
    assert_eq!(v, 2);
    m.apply(&event);
    assert_eq!(m.versions("d", Seen::Live).unwrap(), [1]);
    assert_eq!(m.versions("d", Seen::WithDeleted).unwrap(), [1, 2]);
    assert_eq!(
        m.plan_delete_subject("d", true).unwrap_err().codes(),
        (404, 40405)
    );
    let (events, versions) = m.plan_delete_subject("d", false).unwrap();
    assert_eq!(versions, [1]);
    events.iter().for_each(|e| m.apply(e));
    assert!(m.subjects(Seen::Live).is_empty());
    assert_eq!(m.subjects(Seen::WithDeleted), ["d"]);
    assert_eq!(
        m.plan_delete_subject("d", false).unwrap_err().codes(),
        (404, 40404)
    );
    // The id still resolves (consumers may hold records written with it).
    assert_eq!(m.schema_by_id(a.id).unwrap(), V1);
    let (events, _) = m.plan_delete_subject("d", true).unwrap();
    events.iter().for_each(|e| m.apply(e));
    assert!(m.subjects(Seen::WithDeleted).is_empty());
    // Registering again gets the same id and the next version number.
    let again = register(&mut m, "d", V1).unwrap();
    assert_eq!((again.id, again.version), (a.id, 1));
}

#[test]
fn bad_input_names_what_is_wrong() {
    let mut m = Model::default();
    let e = register(&mut m, "x", r#"{"type":"record","name":"R"}"#).unwrap_err();
    assert_eq!(e.codes(), (422, 42201));
    assert_eq!(
        register(&mut m, "x", "not json").unwrap_err().codes(),
        (422, 42201)
    );
    assert_eq!(VersionRef::parse("0").unwrap_err().codes(), (422, 42202));
    assert_eq!(VersionRef::parse("-1").unwrap(), VersionRef::Latest);
    assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
    assert_eq!(Level::parse("sideways"), None);
    assert_eq!(Level::FullTransitive.to_string(), "FULL_TRANSITIVE");
}

#[test]
fn compatibility_with_a_subject_or_version_that_is_not_there_answers_as_confluent() {
    let mut m = Model::default();
    let v2 = parse_schema(V2).unwrap();
    // No such subject: `latest` (and every version) is compatible; a number is not found.
    assert!(
        m.incompatibilities("nobody", &v2, Some(VersionRef::Latest))
            .unwrap()
            .is_empty()
    );
    assert!(m.incompatibilities("nobody", &v2, None).unwrap().is_empty());
    let e = m
        .incompatibilities("nobody", &v2, Some(VersionRef::Number(1)))
        .unwrap_err();
    assert_eq!(e.codes(), (404, 40402));
    // A subject whose versions are all soft-deleted has no latest to check against.
    register(&mut m, "gone", V1).unwrap();
    assert!(
        m.incompatibilities("gone", &v2, Some(VersionRef::Number(1)))
            .unwrap()
            .is_empty()
    );
    m.apply(&Event::Delete {
        subject: "gone".into(),
        version: 1,
        permanent: false,
    });
    assert!(
        m.incompatibilities("gone", &v2, Some(VersionRef::Latest))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        m.incompatibilities("gone", &v2, Some(VersionRef::Number(1)))
            .unwrap_err()
            .codes(),
        (404, 40402)
    );
}

#[test]
fn deleted_reads_see_soft_deleted_versions_as_confluent() {
    let mut m = Model::default();
    let a = register(&mut m, "s", V1).unwrap();
    let b = register(&mut m, "s", V2).unwrap();
    register(&mut m, "other", V2).unwrap();
    m.apply(&Event::Delete {
        subject: "s".into(),
        version: 1,
        permanent: false,
    });
    // Versions and subjects: live, with deleted, deleted only.
    assert_eq!(m.versions("s", Seen::Live).unwrap(), [2]);
    assert_eq!(m.versions("s", Seen::WithDeleted).unwrap(), [1, 2]);
    assert_eq!(m.versions("s", Seen::DeletedOnly).unwrap(), [1]);
    assert_eq!(m.subjects(Seen::DeletedOnly), ["s"]);
    assert_eq!(m.subjects(Seen::Live), ["other", "s"]);
    // One version: hidden unless deleted=true; `latest` stays the latest live one.
    let hidden = m.version("s", VersionRef::Number(1), false).unwrap_err();
    assert_eq!(hidden.codes(), (404, 40402));
    let shown = m.version("s", VersionRef::Number(1), true).unwrap();
    assert_eq!((shown.id, shown.version, shown.schema.as_str()), (a.id, 1, V1));
    assert_eq!(m.version("s", VersionRef::Latest, true).unwrap().version, 2);
    // Lookup under the subject.
    assert_eq!(m.lookup("s", V1, false).unwrap_err().codes(), (404, 40403));
    assert_eq!(m.lookup("s", V1, true).unwrap().version, 1);
    assert_eq!(m.lookup("s", V2, true).unwrap().version, 2);
    // Where an id is used.
    assert!(m.uses_of(a.id, false).unwrap().is_empty());
    assert_eq!(m.uses_of(a.id, true).unwrap(), [("s".to_string(), 1)]);
    assert_eq!(
        m.uses_of(b.id, false).unwrap(),
        [("other".to_string(), 1), ("s".to_string(), 2)]
    );
    assert_eq!(m.uses_of(999, true).unwrap_err().codes(), (404, 40403));
    // A subject whose every version is soft-deleted: not found unless deleted=true,
    // and then a version it does not have is a missing version, not a missing subject.
    m.apply(&Event::Delete {
        subject: "s".into(),
        version: 2,
        permanent: false,
    });
    assert_eq!(m.versions("s", Seen::Live).unwrap_err().codes(), (404, 40401));
    assert_eq!(m.versions("s", Seen::DeletedOnly).unwrap(), [1, 2]);
    assert_eq!(
        m.version("s", VersionRef::Number(1), false).unwrap_err().codes(),
        (404, 40401)
    );
    assert_eq!(
        m.version("s", VersionRef::Number(7), true).unwrap_err().codes(),
        (404, 40402)
    );
    assert_eq!(m.lookup("s", V2, false).unwrap_err().codes(), (404, 40401));
    assert_eq!(m.lookup("s", V2, true).unwrap().version, 2);
}

#[test]
fn a_model_rebuilt_from_its_image_answers_the_same() {
    let mut m = Model::default();
    register(&mut m, "a", V1).unwrap();
    register(&mut m, "a", V2).unwrap();
    register(&mut m, "b", V2).unwrap();
    m.apply(&Event::Config {
        subject: None,
        level: Some(Level::Full),
    });
    m.apply(&Event::Config {
        subject: Some("c".into()),
        level: Some(Level::None),
    });
    m.apply(&Event::Delete {
        subject: "a".into(),
        version: 1,
        permanent: false,
    });
    let (events, _) = m.plan_delete_subject("b", false).unwrap();
    events.iter().for_each(|e| m.apply(e));
    let (events, _) = m.plan_delete_subject("b", true).unwrap();
    events.iter().for_each(|e| m.apply(e));

    let image = m.image();
    let text = serde_json::to_string(&image).unwrap();
    let back = Model::from_image(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back.image(), image);
    for seen in [Seen::Live, Seen::WithDeleted, Seen::DeletedOnly] {
        assert_eq!(back.subjects(seen), m.subjects(seen));
    }
    assert_eq!(
        back.versions("a", Seen::WithDeleted),
        m.versions("a", Seen::WithDeleted)
    );
    assert_eq!(back.lookup("a", V1, true), m.lookup("a", V1, true));
    assert_eq!(back.global_level(), Level::Full);
    assert_eq!(back.subject_level("c"), Ok(Level::None));
    // Ids keep counting where they were, and the same schema keeps its id.
    let mut back = back;
    let next = register(&mut back, "d", NARROW).unwrap();
    assert_eq!(next.id, register(&mut m, "d", NARROW).unwrap().id);
    assert_eq!(register(&mut back, "e", V1).unwrap().id, 1);

    let mut broken = image.clone();
    broken.schemas.clear();
    let e = Model::from_image(broken).unwrap_err();
    assert!(e.contains("subject a version 1 names schema id 1"), "{e}");
}
