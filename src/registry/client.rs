//! A client for Confluent-compatible schema registries (this one included): the few
//! calls a consumer needs, with the registry's own error codes kept. It logs in with
//! HTTP basic auth when given credentials and trusts extra CAs for https.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::config::{RegistryEndpoint, Secret};

/// Why a registry call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The registry answered with an error (`error_code` as Confluent defines it).
    #[error("schema registry {url}: {message} (error code {code})")]
    Registry { url: String, code: u32, message: String },
    /// The registry could not be reached or did not answer with JSON.
    #[error("schema registry {url}: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// Whether the registry said the schema or subject does not exist (as opposed to
    /// being unreachable, which is worth retrying).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Registry { code, .. } if (40400..40500).contains(code))
    }
}

/// A registered schema as the registry returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub id: u32,
    #[serde(default)]
    pub version: u32,
    pub schema: String,
}

/// A registry client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    credentials: Option<(String, Secret)>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

#[derive(Deserialize)]
struct SchemaOnly {
    schema: String,
}

impl Client {
    /// A client without credentials or extra CAs.
    pub fn new(base: &str) -> Self {
        Self::connect(&RegistryEndpoint::plain(base)).unwrap_or_else(|_| Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::default(),
            credentials: None,
        })
    }

    /// A client for `endpoint`; fails when its CA file cannot be read or used.
    pub fn connect(endpoint: &RegistryEndpoint) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &endpoint.ca {
            let pem = std::fs::read(path)
                .map_err(|e| format!("source.schema_registry_ca {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("source.schema_registry_ca {}: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("source.schema_registry: cannot make an HTTP client: {e}"))?;
        Ok(Self {
            base: endpoint.url.trim_end_matches('/').to_string(),
            http,
            credentials: endpoint.credentials.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            message: e.to_string(),
        };
        let req = match &self.credentials {
            Some((user, password)) => req.basic_auth(user, Some(password.expose())),
            None => req,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Registry {
                    url: self.base.clone(),
                    code: e.error_code,
                    message: e.message,
                },
                Err(_) => ClientError::Transport {
                    url: self.base.clone(),
                    message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: format!("unexpected answer: {e}"),
        })
    }

    fn path(&self, segments: &[&str]) -> String {
        match url::Url::parse(&self.base) {
            Ok(mut url) => {
                if let Ok(mut p) = url.path_segments_mut() {
                    p.pop_if_empty().extend(segments);
                }
                url.to_string()
            }
            // Reported by the request itself.
            Err(_) => format!("{}/{}", self.base, segments.join("/")),
        }
    }

    /// The schema with global id `id`.
    pub async fn schema(&self, id: u32) -> Result<String, ClientError> {
        let url = self.path(&["schemas", "ids", &id.to_string()]);
        let s: SchemaOnly = self.call(self.http.get(url)).await?;
        Ok(s.schema)
    }

    /// The version of `subject` holding `schema`.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Registered, ClientError> {
        let url = self.path(&["subjects", subject]);
        self.call(self.http.post(url).json(&json!({ "schema": schema })))
            .await
    }

    /// The latest version of `subject`.
    pub async fn latest(&self, subject: &str) -> Result<Registered, ClientError> {
        let url = self.path(&["subjects", subject, "versions", "latest"]);
        self.call(self.http.get(url)).await
    }

    /// Registers `schema` under `subject` (idempotent), returning its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, ClientError> {
        let url = self.path(&["subjects", subject, "versions"]);
        #[derive(Deserialize)]
        struct IdOnly {
            id: u32,
        }
        let r: IdOnly = self
            .call(self.http.post(url).json(&json!({ "schema": schema })))
            .await?;
        Ok(r.id)
    }
}
