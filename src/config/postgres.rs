//! `[source] kind = "postgres"`: the resolved settings and the connection string.

use std::path::PathBuf;
use std::time::Duration;

use super::values::{Secret, percent_decode};

/// Settings of a Postgres logical-replication source.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub dsn: PostgresDsn,
    /// Publication to stream (created `FOR TABLE tables` when missing).
    pub publication: String,
    /// Permanent `pgoutput` replication slot (created when missing); also the shard.
    pub slot: String,
    /// Tables to capture, as `schema.table`; `None` = every table of the publication.
    pub tables: Option<Vec<String>>,
    /// Copy the tables' current rows (as `_op = 'r'`) before streaming changes.
    pub snapshot: bool,
    /// How often a standby status update is sent even when nothing changed, so that
    /// `wal_sender_timeout` never fires while a commit is slow.
    pub status_interval: Duration,
    /// Bytes of an open transaction held in memory before the rest is spilled to local
    /// files; `None`: the runtime's default (see `source::open`).
    pub spill_after: Option<u64>,
    /// Rows per chunk of an incremental snapshot (see `source::postgres::incremental`).
    pub snapshot_chunk_rows: usize,
}

/// A parsed connection string. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresDsn {
    /// The server's name: what is connected to, and what `verify-full` checks the
    /// certificate against.
    pub host: String,
    /// `hostaddr`: the address to connect to instead of resolving `host` (which is
    /// then used only to verify the certificate), as libpq.
    pub hostaddr: Option<String>,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Server settings for the session (`-c name=value …`), as libpq's `options`.
    pub options: Option<String>,
    pub tls: TlsSettings,
}

/// `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Connect without TLS; retry with TLS (unverified) only when the server refuses.
    Allow,
    /// Encrypt when the server offers TLS (unverified); otherwise, or when the TLS
    /// session is refused, connect without. libpq's default.
    Prefer,
    /// Encrypt or fail; the certificate is not checked unless a root certificate is
    /// set (then as `verify-ca`).
    Require,
    /// Encrypt, and the server's certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`, or libpq's default `~/.postgresql/root.crt` when that file exists.
    pub root_cert: Option<RootCert>,
    /// `sslcert` and `sslkey` (PEM): a client certificate, for `hostssl … cert`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Parses a libpq connection string, either `key=value …` or
/// `postgres://user:password@host:port/dbname?key=value`. Errors never quote the
/// password.
pub fn parse_dsn(text: &str) -> Result<PostgresDsn, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let text = text.trim();
    if let Some(rest) = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
    {
        let url =
            url::Url::parse(&format!("postgres://{rest}")).map_err(|e| format!("not a valid URL ({e})"))?;
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| "a percent-escape in the URL is not valid UTF-8".to_string())
        };
        if !url.username().is_empty() {
            pairs.push(("user".into(), decode(url.username())?));
        }
        if let Some(p) = url.password() {
            pairs.push(("password".into(), decode(p)?));
        }
        if let Some(h) = url.host_str() {
            pairs.push(("host".into(), h.trim_matches(['[', ']']).to_string()));
        }
        if let Some(p) = url.port() {
            pairs.push(("port".into(), p.to_string()));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() {
            pairs.push(("dbname".into(), decode(db)?));
        }
        pairs.extend(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())));
    } else {
        pairs = parse_key_values(text)?;
    }
    let mut dsn = PostgresDsn {
        host: "localhost".into(),
        hostaddr: None,
        port: 5432,
        user: "postgres".into(),
        password: None,
        dbname: String::new(),
        application_name: "tributary".into(),
        connect_timeout: Duration::from_secs(10),
        options: None,
        tls: TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
        },
    };
    let (mut root_cert, mut cert, mut key) = (None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "host" => dsn.host = v,
            "hostaddr" => dsn.hostaddr = Some(v),
            "port" => {
                dsn.port = v
                    .parse()
                    .map_err(|_| format!("port \"{v}\" is not a port number"))?
            }
            "user" => dsn.user = v,
            "password" => dsn.password = Some(Secret::new(v)),
            "dbname" => dsn.dbname = v,
            "application_name" => dsn.application_name = v,
            "options" => dsn.options = Some(v),
            "connect_timeout" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("connect_timeout \"{v}\" is not seconds"))?;
                dsn.connect_timeout = Duration::from_secs(secs.max(1));
            }
            "sslmode" => {
                dsn.tls.mode = match v.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" => SslMode::Allow,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(format!(
                            "sslmode={v} is not a mode (disable, allow, prefer, require, verify-ca, \
                             verify-full)"
                        ));
                    }
                }
            }
            "sslrootcert" => root_cert = Some(v),
            "sslcert" => cert = Some(v),
            "sslkey" => key = Some(v),
            // libpq's default; SNI is sent whenever the host is a name.
            "sslsni" if v == "1" => {}
            other => return Err(format!("unknown connection parameter \"{other}\"")),
        }
    }
    if dsn.host.starts_with('/') {
        return Err("Unix-socket hosts are not supported: give a TCP host".into());
    }
    if dsn.dbname.is_empty() {
        dsn.dbname = dsn.user.clone();
    }
    resolve_tls(&mut dsn.tls, root_cert, cert, key, default_ssl_dir())?;
    Ok(dsn)
}

/// libpq's `~/.postgresql`, where default certificates are looked for.
fn default_ssl_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql"))
}

/// Fills in root and client certificates as libpq does: explicit settings win, else
/// the default files count when they exist; a verifying mode without a root
/// certificate is refused here rather than at the first connection.
fn resolve_tls(
    tls: &mut TlsSettings,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    defaults: Option<PathBuf>,
) -> Result<(), String> {
    let default = |name: &str| defaults.as_ref().map(|d| d.join(name)).filter(|p| p.is_file());
    tls.root_cert = match root_cert.as_deref() {
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(path.into())),
        None => default("root.crt").map(RootCert::File),
    };
    if tls.root_cert.is_none() && matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err(format!(
            "sslmode={} needs the CA to trust: set sslrootcert to a PEM file (or \
             sslrootcert=system for the system's trust store)",
            tls.mode.name()
        ));
    }
    tls.client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (Some(_), None) => return Err("sslcert is set without sslkey".into()),
        (None, Some(_)) => return Err("sslkey is set without sslcert".into()),
        (None, None) => default("postgresql.crt").zip(default("postgresql.key")),
    };
    Ok(())
}

/// `key=value` pairs separated by whitespace; values may be single-quoted with `\'`
/// and `\\` escapes, as libpq accepts them.
fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("\"{key}\" has no value (expected key=value)"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of \"{key}\" has no closing quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

/// `schema.table` for a configured table name; an unqualified name is in `public`.
pub fn qualify(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_and_url_forms_agree() {
        let a = parse_dsn("host=127.0.0.1 port=15432 user=app password='p w\\'d' dbname=shop").unwrap();
        let b = parse_dsn("postgres://app:p%20w'd@127.0.0.1:15432/shop").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.password.as_ref().unwrap().expose(), "p w'd");
        assert!(!format!("{a:?}").contains("p w"));
    }

    #[test]
    fn bad_parameters_are_named_and_passwords_never_quoted() {
        let e = parse_dsn("host=x password=hunter2 sslmode=verify-full").unwrap_err();
        assert!(
            e.contains("sslmode=verify-full") && e.contains("sslrootcert") && !e.contains("hunter2"),
            "{e}"
        );
        let e = parse_dsn("host=x password=hunter2 sslmode=strict").unwrap_err();
        assert!(e.contains("sslmode=strict") && !e.contains("hunter2"), "{e}");
        assert!(parse_dsn("host=x sslcert=/c.pem").unwrap_err().contains("sslkey"));
        assert!(parse_dsn("host=x port=eighty").unwrap_err().contains("port"));
        assert!(parse_dsn("host=x bogus=1").unwrap_err().contains("bogus"));
        assert!(parse_dsn("password='open").unwrap_err().contains("closing quote"));
        assert_eq!(parse_dsn("user=u").unwrap().dbname, "u");
    }

    #[test]
    fn tls_settings_follow_libpq() {
        let d = parse_dsn("host=db.example hostaddr=10.0.0.5 user=u").unwrap();
        assert_eq!(
            (d.host.as_str(), d.hostaddr.as_deref()),
            ("db.example", Some("10.0.0.5"))
        );
        let d = parse_dsn(
            "postgres://u@db.example/app?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(d.tls.mode, SslMode::VerifyFull);
        assert_eq!(d.tls.root_cert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(d.tls.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(
            parse_dsn("host=x sslmode=verify-ca sslrootcert=system")
                .unwrap()
                .tls
                .root_cert,
            Some(RootCert::System)
        );

        // Default files count only where they exist.
        let dir = tempfile::tempdir().unwrap();
        let mut tls = TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: None,
            client_cert: None,
        };
        assert!(resolve_tls(&mut tls, None, None, None, Some(dir.path().into())).is_err());
        std::fs::write(dir.path().join("root.crt"), "").unwrap();
        std::fs::write(dir.path().join("postgresql.crt"), "").unwrap();
        std::fs::write(dir.path().join("postgresql.key"), "").unwrap();
        resolve_tls(&mut tls, None, None, None, Some(dir.path().into())).unwrap();
        assert_eq!(tls.root_cert, Some(RootCert::File(dir.path().join("root.crt"))));
        assert!(tls.client_cert.is_some());
    }
}
