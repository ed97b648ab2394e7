//! The registry's state as one document, for the store's snapshots: what a restart
//! loads instead of replaying every event since the first.

use serde::{Deserialize, Serialize};

use super::{Level, Model, Stored, Subject, Version, normalise, parse_schema};

/// Every schema, subject, version and level the model holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub(super) level: Option<Level>,
    pub(super) schemas: Vec<SchemaImage>,
    pub(super) subjects: Vec<SubjectImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SchemaImage {
    id: u32,
    schema: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SubjectImage {
    name: String,
    level: Option<Level>,
    versions: Vec<VersionImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct VersionImage {
    version: u32,
    id: u32,
    deleted: bool,
}

impl Model {
    /// The state as a document.
    pub fn image(&self) -> Image {
        Image {
            level: self.level,
            schemas: self
                .schemas
                .iter()
                .map(|(id, s)| SchemaImage {
                    id: *id,
                    schema: s.text.clone(),
                })
                .collect(),
            subjects: self
                .subjects
                .iter()
                .map(|(name, s)| SubjectImage {
                    name: name.clone(),
                    level: s.level,
                    versions: s
                        .versions
                        .iter()
                        .map(|v| VersionImage {
                            version: v.version,
                            id: v.id,
                            deleted: v.deleted,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The state a document describes; says which schema or version does not hold
    /// together when it is not one [`Model::image`] wrote.
    pub fn from_image(image: Image) -> Result<Model, String> {
        let mut m = Model {
            level: image.level,
            ..Model::default()
        };
        for s in image.schemas {
            let bad = |e: super::RegistryError| format!("schema id {}: {e}", s.id);
            let parsed = parse_schema(&s.schema).map_err(bad)?;
            m.ids.insert(normalise(&s.schema).map_err(bad)?, s.id);
            m.schemas.insert(
                s.id,
                Stored {
                    text: s.schema,
                    parsed,
                },
            );
        }
        for s in image.subjects {
            let mut versions = Vec::with_capacity(s.versions.len());
            for v in s.versions {
                if !m.schemas.contains_key(&v.id) {
                    return Err(format!(
                        "subject {} version {} names schema id {}, which the snapshot does not hold",
                        s.name, v.version, v.id
                    ));
                }
                versions.push(Version {
                    version: v.version,
                    id: v.id,
                    deleted: v.deleted,
                });
            }
            m.subjects.insert(
                s.name,
                Subject {
                    versions,
                    level: s.level,
                },
            );
        }
        Ok(m)
    }
}
