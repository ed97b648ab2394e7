//! HTTP basic authentication for the registry, as Confluent's clients send it
//! (`basic.auth.user.info = user:password`).
//!
//! Users and roles come from a TOML file whose values may name `${ENV}` variables:
//!
//! ```toml
//! [users.producer]
//! password = "pbkdf2-sha256$600000$…$…"   # tributary hash-password
//! role = "read-write"
//!
//! [users.dashboard]
//! password = "${DASHBOARD_PASSWORD_HASH}"
//! role = "read-only"
//! ```
//!
//! Passwords are stored only as PBKDF2-HMAC-SHA256 hashes with a random salt.
//! Checking one costs hundreds of milliseconds by design, so a password accepted once
//! is remembered for the life of the process as an HMAC under a key that never leaves
//! memory; later requests cost one HMAC. `read-only` users may read and ask questions
//! (lookups, compatibility checks); only `read-write` users register, delete or change
//! levels. A failed login is logged with the user name, never the password, and
//! answered 401 with Confluent's body; an unknown user costs the same hash check as a
//! wrong password, so timing does not tell which names exist.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{hmac, pbkdf2, rand};
use serde::Deserialize;

use crate::config::values::expand_env;

/// Iterations `hash-password` uses: OWASP's figure for PBKDF2-HMAC-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
const SCHEME: &str = "pbkdf2-sha256";
const ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ReadOnly,
    ReadWrite,
}

/// A stored password: `pbkdf2-sha256$<iterations>$<salt>$<hash>` (standard base64).
#[derive(Clone)]
struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({SCHEME}, {} iterations)", self.iterations)
    }
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [scheme, iterations, salt, hash] = parts[..] else {
            return Err(format!(
                "not a password hash: expected {SCHEME}$<iterations>$<salt>$<hash> (make one with `tributary hash-password`; plain passwords are not accepted)"
            ));
        };
        if scheme != SCHEME {
            return Err(format!("hash scheme \"{scheme}\" is not supported; use {SCHEME}"));
        }
        let iterations = iterations
            .parse::<NonZeroU32>()
            .map_err(|_| format!("\"{iterations}\" is not an iteration count"))?;
        let decode = |what: &str, v: &str| B64.decode(v).map_err(|e| format!("{what}: {e}"));
        let (salt, hash) = (decode("salt", salt)?, decode("hash", hash)?);
        if salt.len() < 8 || hash.len() < 16 {
            return Err("salt or hash too short".into());
        }
        Ok(Hash {
            iterations,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            ALGORITHM,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// Hashes `password` for a users file, with a fresh random salt.
pub fn hash_password(password: &str, iterations: u32) -> Result<String, String> {
    let iterations = NonZeroU32::new(iterations).ok_or("iterations must be at least 1")?;
    let mut salt = [0u8; 16];
    rand::SecureRandom::fill(&rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system's random source failed")?;
    let mut hash = [0u8; 32];
    pbkdf2::derive(ALGORITHM, iterations, &salt, password.as_bytes(), &mut hash);
    Ok(format!(
        "{SCHEME}${iterations}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    ))
}

#[derive(Debug)]
struct User {
    hash: Hash,
    role: Role,
}

/// The users a registry accepts.
#[derive(Debug)]
pub struct Users {
    users: HashMap<String, User>,
    /// Checked for a user who does not exist, so that a refusal takes as long either
    /// way and does not tell which user names exist.
    decoy: Hash,
    /// Keys memory of accepted passwords; random per process.
    key: hmac::Key,
    /// User → HMAC of the password last accepted for them.
    accepted: Mutex<HashMap<String, hmac::Tag>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: HashMap<String, UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password: String,
    role: Role,
}

impl Users {
    /// Reads a users file; errors name the file and the user.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("users file {}: {e}", path.display()))?;
        Self::parse(&text, |name| std::env::var(name).ok())
            .map_err(|e| format!("users file {}: {e}", path.display()))
    }

    fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Users, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.users.is_empty() {
            return Err("[users] names no user".into());
        }
        let mut users = HashMap::new();
        for (name, entry) in file.users {
            let bad = |e: String| format!("users.{name}.password: {e}");
            let text = expand_env(&entry.password, &env).map_err(bad)?;
            let hash = Hash::parse(&text).map_err(bad)?;
            users.insert(
                name,
                User {
                    hash,
                    role: entry.role,
                },
            );
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
            .map_err(|_| "the system's random source failed".to_string())?;
        let iterations = users.values().map(|u| u.hash.iterations.get()).max().unwrap_or(1);
        let decoy = Hash::parse(&hash_password("no such user", iterations)?)?;
        Ok(Users {
            users,
            decoy,
            key,
            accepted: Mutex::new(HashMap::new()),
        })
    }

    /// The role of `user` when `password` is theirs.
    pub fn check(&self, user: &str, password: &str) -> Option<Role> {
        let Some(u) = self.users.get(user) else {
            // As long as a wrong password of a user who exists.
            self.decoy.verify(password);
            return None;
        };
        let remembered = self.accepted.lock().ok()?.get(user).cloned();
        if let Some(tag) = remembered
            && hmac::verify(&self.key, password.as_bytes(), tag.as_ref()).is_ok()
        {
            return Some(u.role);
        }
        if !u.hash.verify(password) {
            return None;
        }
        let tag = hmac::sign(&self.key, password.as_bytes());
        if let Ok(mut accepted) = self.accepted.lock() {
            accepted.insert(user.to_string(), tag);
        }
        Some(u.role)
    }
}

/// Whether a request only reads: GETs, and the POSTs that ask without changing
/// anything (a lookup under a subject, compatibility checks).
fn reads_only(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => true,
        Method::POST => {
            path.starts_with("/compatibility/")
                || (path.starts_with("/subjects/") && path[10..].trim_end_matches('/').find('/').is_none())
        }
        _ => false,
    }
}

fn refuse(status: StatusCode, code: u32, message: &str) -> Response {
    let body = serde_json::json!({ "error_code": code, "message": message }).to_string();
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/vnd.schemaregistry.v1+json")],
        body,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"SchemaRegistry\""),
        );
    }
    resp
}

/// The credentials of a `Basic` authorization header.
fn credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The middleware: 401 without valid credentials, 403 for a write by a read-only user.
pub async fn authenticate(State(users): State<Arc<Users>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some((user, password)) = credentials(&req) else {
        tracing::warn!(path = %path, "registry request without credentials refused");
        return refuse(StatusCode::UNAUTHORIZED, 401, "Unauthorized");
    };
    // PBKDF2 takes a while by design: off the async workers.
    let check = {
        let (users, user) = (users.clone(), user.clone());
        tokio::task::spawn_blocking(move || users.check(&user, &password)).await
    };
    let Ok(Some(role)) = check else {
        tracing::warn!(user = %user, path = %path, "registry login failed");
        return refuse(StatusCode::UNAUTHORIZED, 401, "Unauthorized");
    };
    if role == Role::ReadOnly && !reads_only(req.method(), &path) {
        tracing::warn!(user = %user, method = %req.method(), path = %path, "registry write by a read-only user refused");
        return refuse(
            StatusCode::FORBIDDEN,
            40301,
            &format!("User '{user}' is read-only and cannot {} {path}", req.method()),
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_accepts_its_password_only_and_files_name_what_is_wrong() {
        let h = hash_password("s3cret", 1000).unwrap();
        assert!(h.starts_with("pbkdf2-sha256$1000$"), "{h}");
        assert_ne!(h, hash_password("s3cret", 1000).unwrap(), "salted");
        let file = format!(
            "[users.w]\npassword = \"{h}\"\nrole = \"read-write\"\n[users.r]\npassword = \"${{R_HASH}}\"\nrole = \"read-only\"\n"
        );
        let r_hash = hash_password("look", 1000).unwrap();
        let users = Users::parse(&file, |n| (n == "R_HASH").then(|| r_hash.clone())).unwrap();
        assert_eq!(users.check("w", "s3cret"), Some(Role::ReadWrite));
        // Remembered, and still only for the right password.
        assert_eq!(users.check("w", "s3cret"), Some(Role::ReadWrite));
        assert_eq!(users.check("w", "s3cret "), None);
        assert_eq!(users.check("w", "look"), None);
        assert_eq!(users.check("r", "look"), Some(Role::ReadOnly));
        assert_eq!(users.check("nobody", "look"), None);

        let e = Users::parse(&file, |_| None).unwrap_err();
        assert!(e.contains("users.r.password") && e.contains("R_HASH"), "{e}");
        let plain = "[users.x]\npassword = \"hunter2\"\nrole = \"read-only\"\n";
        let e = Users::parse(plain, |_| None).unwrap_err();
        assert!(
            e.contains("users.x.password") && e.contains("hash-password"),
            "{e}"
        );
        let e = Users::parse("[users.x]\npassword = \"a\"\nrole = \"admin\"\n", |_| None).unwrap_err();
        assert!(e.contains("admin"), "{e}");
    }

    #[test]
    fn read_only_users_may_read_look_up_and_check_compatibility() {
        assert!(reads_only(&Method::GET, "/subjects/a/versions"));
        assert!(reads_only(&Method::POST, "/subjects/a-value"));
        assert!(reads_only(
            &Method::POST,
            "/compatibility/subjects/a/versions/latest"
        ));
        assert!(!reads_only(&Method::POST, "/subjects/a-value/versions"));
        assert!(!reads_only(&Method::DELETE, "/subjects/a-value"));
        assert!(!reads_only(&Method::PUT, "/config"));
    }
}
