//! The registry's state and rules, with no I/O: subjects, versions, global schema ids,
//! compatibility levels. Every change is an [`Event`]; the state is the fold of the
//! events, so the durable store only has to keep the events in order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

pub use crate::decode::avro_check::can_read;

/// Compatibility levels, with Confluent's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    /// A new schema reads data written with the latest one.
    Backward,
    BackwardTransitive,
    /// The latest schema reads data written with a new one.
    Forward,
    ForwardTransitive,
    /// Both.
    Full,
    FullTransitive,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// The default level, as in Confluent's registry.
pub const DEFAULT_LEVEL: Level = Level::Backward;

/// One change to the registry, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A schema registered under a subject (a new global id when `schema` is new).
    Register {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
    },
    /// A version deleted: soft (hidden, id kept) or permanent (gone).
    Delete {
        subject: String,
        version: u32,
        permanent: bool,
    },
    /// The global level (`subject` none) or a subject's; `level` none removes it.
    Config {
        subject: Option<String>,
        level: Option<Level>,
    },
}

/// Why a request cannot be served, with Confluent's HTTP status and error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Version {version} of subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error(
        "Version {version} of subject '{subject}' was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level: {0}. Valid values are none, backward, forward, full, backward_transitive, forward_transitive and full_transitive"
    )]
    InvalidLevel(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{details}]"
    )]
    Incompatible { subject: String, details: String },
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl RegistryError {
    /// HTTP status and Confluent `error_code`.
    pub fn codes(&self) -> (u16, u32) {
        use RegistryError as E;
        match self {
            E::SubjectNotFound(_) => (404, 40401),
            E::VersionNotFound(_) => (404, 40402),
            E::SchemaNotFound(_) => (404, 40403),
            E::SubjectSoftDeleted(_) => (404, 40404),
            E::SubjectNotSoftDeleted(_) => (404, 40405),
            E::VersionSoftDeleted { .. } => (404, 40406),
            E::VersionNotSoftDeleted { .. } => (404, 40407),
            E::SubjectLevelNotConfigured(_) => (404, 40408),
            E::InvalidSchema(_) => (422, 42201),
            E::InvalidVersion(_) => (422, 42202),
            E::InvalidLevel(_) => (422, 42203),
            E::Incompatible { .. } => (409, 409),
            E::Store(_) => (500, 50001),
        }
    }
}

/// Which versions a read sees: Confluent's `deleted=true` adds soft-deleted ones,
/// `deletedOnly=true` (which wins over `deleted`) shows only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    #[default]
    Live,
    WithDeleted,
    DeletedOnly,
}

impl Seen {
    pub fn from_flags(deleted: bool, deleted_only: bool) -> Seen {
        match (deleted, deleted_only) {
            (_, true) => Seen::DeletedOnly,
            (true, false) => Seen::WithDeleted,
            (false, false) => Seen::Live,
        }
    }

    fn sees(self, v: &Version) -> bool {
        match self {
            Seen::Live => !v.deleted,
            Seen::WithDeleted => true,
            Seen::DeletedOnly => v.deleted,
        }
    }

    /// Whether a subject exists for this read: any version it sees, or (as Confluent's
    /// `hasSubjects(subject, lookupDeleted)`) any version at all once deleted ones count.
    fn finds(self, s: &Subject) -> bool {
        match self {
            Seen::Live => s.live().next().is_some(),
            Seen::WithDeleted | Seen::DeletedOnly => !s.versions.is_empty(),
        }
    }
}

/// A version selector: a number or `latest` (`-1` is Confluent's alias for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(u32),
    Latest,
}

impl VersionRef {
    pub fn parse(s: &str) -> Result<VersionRef, RegistryError> {
        match s {
            "latest" | "-1" => Ok(VersionRef::Latest),
            _ => match s.parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
                _ => Err(RegistryError::InvalidVersion(s.to_string())),
            },
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Number(n) => write!(f, "{n}"),
            VersionRef::Latest => f.write_str("latest"),
        }
    }
}

#[derive(Debug, Clone)]
struct Version {
    version: u32,
    id: u32,
    deleted: bool,
}

#[derive(Debug, Clone, Default)]
struct Subject {
    versions: Vec<Version>,
    level: Option<Level>,
}

impl Subject {
    fn live(&self) -> impl DoubleEndedIterator<Item = &Version> {
        self.versions.iter().filter(|v| !v.deleted)
    }
}

#[derive(Debug)]
struct Stored {
    text: String,
    parsed: Schema,
}

/// A registered schema as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// The registry's state: the fold of its events.
#[derive(Debug, Default)]
pub struct Model {
    schemas: BTreeMap<u32, Stored>,
    /// Normalised schema text → id: the same schema always gets the same id.
    ids: HashMap<String, u32>,
    subjects: BTreeMap<String, Subject>,
    level: Option<Level>,
}

/// A schema's identity: its JSON with insignificant whitespace and key order removed.
/// Unlike Avro's parsing canonical form it keeps docs, defaults and aliases, which
/// change how data resolves, so schemas differing in them get different ids.
fn normalise(text: &str) -> Result<String, RegistryError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    Ok(v.to_string())
}

/// Parses an Avro schema, or says why it is not one.
pub fn parse_schema(text: &str) -> Result<Schema, RegistryError> {
    Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

impl Model {
    /// Applies one event; events come from [`Model::plan_register`] and friends, or the
    /// store, so they are trusted to be consistent.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Register {
                subject,
                version,
                id,
                schema,
            } => {
                if !self.schemas.contains_key(id)
                    && let (Ok(norm), Ok(parsed)) = (normalise(schema), parse_schema(schema))
                {
                    self.ids.insert(norm, *id);
                    self.schemas.insert(
                        *id,
                        Stored {
                            text: schema.clone(),
                            parsed,
                        },
                    );
                }
                let s = self.subjects.entry(subject.clone()).or_default();
                s.versions.push(Version {
                    version: *version,
                    id: *id,
                    deleted: false,
                });
            }
            Event::Delete {
                subject,
                version,
                permanent,
            } => {
                if let Some(s) = self.subjects.get_mut(subject) {
                    if *permanent {
                        s.versions.retain(|v| v.version != *version);
                        if s.versions.is_empty() && s.level.is_none() {
                            self.subjects.remove(subject);
                        }
                    } else if let Some(v) = s.versions.iter_mut().find(|v| v.version == *version) {
                        v.deleted = true;
                    }
                }
            }
            Event::Config { subject: None, level } => self.level = *level,
            Event::Config {
                subject: Some(subject),
                level,
            } => {
                self.subjects.entry(subject.clone()).or_default().level = *level;
            }
        }
    }

    fn subject(&self, subject: &str, seen: Seen) -> Result<&Subject, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|s| seen.finds(s))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))
    }

    /// The level that applies to `subject`.
    pub fn level_of(&self, subject: &str) -> Level {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .or(self.level)
            .unwrap_or(DEFAULT_LEVEL)
    }

    pub fn global_level(&self) -> Level {
        self.level.unwrap_or(DEFAULT_LEVEL)
    }

    /// A subject's own level, if it has one.
    pub fn subject_level(&self, subject: &str) -> Result<Level, RegistryError> {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .ok_or_else(|| RegistryError::SubjectLevelNotConfigured(subject.to_string()))
    }

    /// Subjects with a version `seen` sees.
    pub fn subjects(&self, seen: Seen) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, s)| s.versions.iter().any(|v| seen.sees(v)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The versions of `subject` that `seen` sees.
    pub fn versions(&self, subject: &str, seen: Seen) -> Result<Vec<u32>, RegistryError> {
        let s = self.subject(subject, seen)?;
        Ok(s.versions
            .iter()
            .filter(|v| seen.sees(v))
            .map(|v| v.version)
            .collect())
    }

    fn registered(&self, subject: &str, v: &Version) -> Registered {
        Registered {
            subject: subject.to_string(),
            version: v.version,
            id: v.id,
            schema: self
                .schemas
                .get(&v.id)
                .map(|s| s.text.clone())
                .unwrap_or_default(),
        }
    }

    /// One version of `subject`; a soft-deleted one only when `deleted` (`latest` is
    /// always the latest live version, as in Confluent).
    pub fn version(
        &self,
        subject: &str,
        which: VersionRef,
        deleted: bool,
    ) -> Result<Registered, RegistryError> {
        let seen = if deleted { Seen::WithDeleted } else { Seen::Live };
        let s = self.subject(subject, seen)?;
        let v = match which {
            VersionRef::Latest => s.live().next_back(),
            VersionRef::Number(n) => s.versions.iter().find(|v| v.version == n && seen.sees(v)),
        };
        let v = v.ok_or_else(|| RegistryError::VersionNotFound(which.to_string()))?;
        Ok(self.registered(subject, v))
    }

    pub fn schema_by_id(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// Subject and version pairs that hold schema `id` (soft-deleted ones too when
    /// `deleted`).
    pub fn uses_of(&self, id: u32, deleted: bool) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema_by_id(id)?;
        Ok(self
            .subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .filter(move |v| v.id == id && (deleted || !v.deleted))
                    .map(move |v| (name.clone(), v.version))
            })
            .collect())
    }

    /// The version of `subject` holding `schema`, if any: the latest live one, else
    /// (with `deleted`) the latest soft-deleted one.
    pub fn lookup(&self, subject: &str, schema: &str, deleted: bool) -> Result<Registered, RegistryError> {
        let seen = if deleted { Seen::WithDeleted } else { Seen::Live };
        let s = self.subject(subject, seen)?;
        parse_schema(schema)?;
        let not_found = || RegistryError::SchemaNotFound(format!("under subject {subject}"));
        let id = self.ids.get(&normalise(schema)?).ok_or_else(not_found)?;
        let holding = |v: &&Version| v.id == *id;
        s.live()
            .rev()
            .find(holding)
            .or_else(|| s.versions.iter().rev().filter(|v| seen.sees(v)).find(holding))
            .map(|v| self.registered(subject, v))
            .ok_or_else(not_found)
    }

    /// Checks `schema` against the versions of `subject` its level names (all live
    /// versions for `_TRANSITIVE`, else the latest), or against one `against` version.
    /// Returns the reasons it is incompatible; empty when compatible.
    pub fn incompatibilities(
        &self,
        subject: &str,
        schema: &Schema,
        against: Option<VersionRef>,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.level_of(subject);
        let live: Vec<&Version> = self
            .subjects
            .get(subject)
            .map(|s| s.live().collect())
            .unwrap_or_default();
        // As Confluent (6.0+): `latest` of a subject with no live version is compatible
        // with anything; a version number that is not there is not found.
        let existing: Vec<&Version> = match against {
            Some(VersionRef::Latest) => live.last().copied().into_iter().collect(),
            Some(which @ VersionRef::Number(n)) => vec![
                live.iter()
                    .copied()
                    .find(|v| v.version == n)
                    .ok_or_else(|| RegistryError::VersionNotFound(which.to_string()))?,
            ],
            None => match level {
                Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive => live,
                _ => live.last().copied().into_iter().collect(),
            },
        };
        let (backward, forward) = match level {
            Level::None => (false, false),
            Level::Backward | Level::BackwardTransitive => (true, false),
            Level::Forward | Level::ForwardTransitive => (false, true),
            Level::Full | Level::FullTransitive => (true, true),
        };
        let mut reasons = Vec::new();
        for v in existing {
            let Some(old) = self.schemas.get(&v.id) else {
                continue;
            };
            if backward && let Err(e) = can_read(&old.parsed, schema) {
                reasons.push(format!(
                    "{level}: the new schema cannot read data written with version {}: {e}",
                    v.version
                ));
            }
            if forward && let Err(e) = can_read(schema, &old.parsed) {
                reasons.push(format!(
                    "{level}: version {} cannot read data written with the new schema: {e}",
                    v.version
                ));
            }
        }
        Ok(reasons)
    }

    /// What registering `schema` under `subject` means: the event of a new version (none
    /// when it is there already: registering is idempotent), and what it answers.
    pub fn plan_register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<(Option<Event>, Registered), RegistryError> {
        let parsed = parse_schema(schema)?;
        let norm = normalise(schema)?;
        let known = self.ids.get(&norm).copied();
        if let (Some(id), Some(s)) = (known, self.subjects.get(subject))
            && let Some(v) = s.live().rev().find(|v| v.id == id)
        {
            return Ok((None, self.registered(subject, v)));
        }
        let reasons = self.incompatibilities(subject, &parsed, None)?;
        if !reasons.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                details: reasons.join("; "),
            });
        }
        let id = known.unwrap_or_else(|| self.schemas.keys().next_back().map_or(1, |m| m + 1));
        let version = self
            .subjects
            .get(subject)
            .and_then(|s| s.versions.iter().map(|v| v.version).max())
            .map_or(1, |m| m + 1);
        let registered = Registered {
            subject: subject.to_string(),
            version,
            id,
            // Stored as sent: clients compare what they get back with what they sent.
            schema: schema.to_string(),
        };
        let event = Event::Register {
            subject: registered.subject.clone(),
            version,
            id,
            schema: registered.schema.clone(),
        };
        Ok((Some(event), registered))
    }

    /// The events that delete `subject` (every live version, or with `permanent`
    /// every soft-deleted one), and the versions concerned.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<Event>, Vec<u32>), RegistryError> {
        let s = self
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let live = s.live().count();
        if permanent && live > 0 {
            return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
        }
        if !permanent && live == 0 {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
        }
        let versions: Vec<u32> = s
            .versions
            .iter()
            .filter(|v| permanent || !v.deleted)
            .map(|v| v.version)
            .collect();
        let events = versions
            .iter()
            .map(|v| Event::Delete {
                subject: subject.to_string(),
                version: *v,
                permanent,
            })
            .collect();
        Ok((events, versions))
    }

    pub fn plan_delete_version(
        &self,
        subject: &str,
        which: VersionRef,
        permanent: bool,
    ) -> Result<(Event, u32), RegistryError> {
        let s = self
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let v = match which {
            VersionRef::Latest => s.live().next_back(),
            VersionRef::Number(n) => s.versions.iter().find(|v| v.version == n),
        }
        .ok_or_else(|| RegistryError::VersionNotFound(which.to_string()))?;
        if permanent && !v.deleted {
            return Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_string(),
                version: v.version,
            });
        }
        if !permanent && v.deleted {
            return Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_string(),
                version: v.version,
            });
        }
        let event = Event::Delete {
            subject: subject.to_string(),
            version: v.version,
            permanent,
        };
        Ok((event, v.version))
    }
}

mod image;
pub use image::Image;

#[cfg(test)]
mod tests;
