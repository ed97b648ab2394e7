//! The REST surface: Confluent's paths, bodies, error codes and content type.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Registry;
use super::model::{Event, Level, Model, RegistryError, Seen, VersionRef, parse_schema};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Reg = State<Arc<Registry>>;
type Params = Query<HashMap<String, String>>;

/// The registry's routes.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        // One context, the default: what clients that list contexts expect.
        .route("/contexts", get(|| async { ok(json!(["."])) }))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route("/config", get(global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found".into()) })
        .with_state(registry)
}

fn ok(body: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({ "error_code": code, "message": message });
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.codes();
        if code == 50001 {
            tracing::error!(error = %self, "registry store failed");
        }
        error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            self.to_string(),
        )
    }
}

type Answer = Result<Response, RegistryError>;

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `deleted` and `deletedOnly`, as list reads take them.
fn seen(q: &HashMap<String, String>) -> Seen {
    Seen::from_flags(flag(q, "deleted"), flag(q, "deletedOnly"))
}

/// The body of a register, lookup or compatibility request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_body(body: &Bytes) -> Result<SchemaBody, RegistryError> {
    let b: SchemaBody = serde_json::from_slice(body).map_err(|e| {
        RegistryError::InvalidSchema(format!("the request body is not a schema request: {e}"))
    })?;
    if let Some(t) = &b.schema_type
        && !t.eq_ignore_ascii_case("AVRO")
    {
        return Err(RegistryError::InvalidSchema(format!(
            "schemaType {t} is not supported; this registry holds AVRO schemas"
        )));
    }
    if !b.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "schema references are not supported; inline the referenced types".into(),
        ));
    }
    Ok(b)
}

fn registered_json(r: &super::model::Registered) -> Value {
    json!({ "subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema })
}

async fn subjects(State(r): Reg, Query(q): Params) -> Answer {
    let seen = seen(&q);
    let mut names = r.read(|m| m.subjects(seen)).await;
    // Confluent's default prefix, ":*:", means every subject of every context.
    if let Some(prefix) = q.get("subjectPrefix").filter(|p| !p.is_empty() && *p != ":*:") {
        names.retain(|n| n.starts_with(prefix.as_str()));
    }
    Ok(ok(json!(names)))
}

async fn versions(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Answer {
    let seen = seen(&q);
    Ok(ok(json!(r.read(|m| m.versions(&subject, seen)).await?)))
}

async fn version(State(r): Reg, Path((subject, v)): Path<(String, String)>, Query(q): Params) -> Answer {
    let which = VersionRef::parse(&v)?;
    let deleted = flag(&q, "deleted");
    let reg = r.read(|m| m.version(&subject, which, deleted)).await?;
    Ok(ok(registered_json(&reg)))
}

async fn version_schema(
    State(r): Reg,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Answer {
    let which = VersionRef::parse(&v)?;
    let deleted = flag(&q, "deleted");
    let reg = r.read(|m| m.version(&subject, which, deleted)).await?;
    Ok(ok(
        serde_json::from_str(&reg.schema).unwrap_or(Value::String(reg.schema))
    ))
}

async fn register(State(r): Reg, Path(subject): Path<String>, body: Bytes) -> Answer {
    let b = schema_body(&body)?;
    let reg = r
        .write(|m| {
            let (event, reg) = m.plan_register(&subject, &b.schema)?;
            Ok((event.into_iter().collect(), reg))
        })
        .await?;
    Ok(ok(registered_json(&reg)))
}

async fn lookup(State(r): Reg, Path(subject): Path<String>, Query(q): Params, body: Bytes) -> Answer {
    let b = schema_body(&body)?;
    let deleted = flag(&q, "deleted");
    let reg = r.read(|m| m.lookup(&subject, &b.schema, deleted)).await?;
    Ok(ok(registered_json(&reg)))
}

async fn delete_subject(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Answer {
    let permanent = flag(&q, "permanent");
    let deleted = r.write(|m| m.plan_delete_subject(&subject, permanent)).await?;
    Ok(ok(json!(deleted)))
}

async fn delete_version(
    State(r): Reg,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Answer {
    let which = VersionRef::parse(&v)?;
    let permanent = flag(&q, "permanent");
    let version = r
        .write(|m| {
            let (e, version) = m.plan_delete_version(&subject, which, permanent)?;
            Ok((vec![e], version))
        })
        .await?;
    Ok(ok(json!(version)))
}

async fn schema_by_id(State(r): Reg, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let text = r.read(|m| m.schema_by_id(id).map(str::to_string)).await?;
    Ok(ok(json!({ "schema": text })))
}

async fn raw_schema_by_id(State(r): Reg, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let text = r.read(|m| m.schema_by_id(id).map(str::to_string)).await?;
    Ok(ok(serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

async fn id_versions(State(r): Reg, Path(id): Path<String>, Query(q): Params) -> Answer {
    let id = parse_id(&id)?;
    let deleted = flag(&q, "deleted");
    let uses = r.read(|m| m.uses_of(id, deleted)).await?;
    Ok(ok(Value::Array(
        uses.into_iter()
            .map(|(subject, version)| json!({ "subject": subject, "version": version }))
            .collect(),
    )))
}

async fn id_subjects(State(r): Reg, Path(id): Path<String>, Query(q): Params) -> Answer {
    let id = parse_id(&id)?;
    let deleted = flag(&q, "deleted");
    let mut subjects: Vec<String> = r
        .read(|m| m.uses_of(id, deleted))
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse()
        .map_err(|_| RegistryError::SchemaNotFound(id.to_string()))
}

fn compat_answer(reasons: Vec<String>, verbose: bool) -> Response {
    if verbose {
        ok(json!({ "is_compatible": reasons.is_empty(), "messages": reasons }))
    } else {
        ok(json!({ "is_compatible": reasons.is_empty() }))
    }
}

async fn compatibility(
    State(r): Reg,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> Answer {
    let which = VersionRef::parse(&v)?;
    let b = schema_body(&body)?;
    let schema = parse_schema(&b.schema)?;
    let reasons = r
        .read(|m| m.incompatibilities(&subject, &schema, Some(which)))
        .await?;
    Ok(compat_answer(reasons, flag(&q, "verbose")))
}

async fn compatibility_all(
    State(r): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Answer {
    let b = schema_body(&body)?;
    let schema = parse_schema(&b.schema)?;
    let reasons = r.read(|m| m.incompatibilities(&subject, &schema, None)).await?;
    Ok(compat_answer(reasons, flag(&q, "verbose")))
}

async fn global_config(State(r): Reg) -> Answer {
    let level = r.read(Model::global_level).await;
    Ok(ok(json!({ "compatibilityLevel": level.to_string() })))
}

async fn subject_config(State(r): Reg, Path(subject): Path<String>, Query(q): Params) -> Answer {
    let level = if flag(&q, "defaultToGlobal") {
        r.read(|m| m.level_of(&subject)).await
    } else {
        r.read(|m| m.subject_level(&subject)).await?
    };
    Ok(ok(json!({ "compatibilityLevel": level.to_string() })))
}

fn level_body(body: &Bytes) -> Result<Level, RegistryError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| RegistryError::InvalidLevel(e.to_string()))?;
    let text = v
        .get("compatibility")
        .or_else(|| v.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .ok_or_else(|| RegistryError::InvalidLevel(v.to_string()))?;
    Level::parse(text).ok_or_else(|| RegistryError::InvalidLevel(text.to_string()))
}

async fn put_global_config(State(r): Reg, body: Bytes) -> Answer {
    let level = level_body(&body)?;
    r.write(|_| {
        Ok((
            vec![Event::Config {
                subject: None,
                level: Some(level),
            }],
            (),
        ))
    })
    .await?;
    Ok(ok(json!({ "compatibility": level.to_string() })))
}

async fn put_subject_config(State(r): Reg, Path(subject): Path<String>, body: Bytes) -> Answer {
    let level = level_body(&body)?;
    r.write(|_| {
        Ok((
            vec![Event::Config {
                subject: Some(subject.clone()),
                level: Some(level),
            }],
            (),
        ))
    })
    .await?;
    Ok(ok(json!({ "compatibility": level.to_string() })))
}

async fn delete_subject_config(State(r): Reg, Path(subject): Path<String>) -> Answer {
    let level = r
        .write(|m| {
            let level = m.subject_level(&subject)?;
            Ok((
                vec![Event::Config {
                    subject: Some(subject.clone()),
                    level: None,
                }],
                level,
            ))
        })
        .await?;
    Ok(ok(json!({ "compatibilityLevel": level.to_string() })))
}
