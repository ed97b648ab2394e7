//! `[source] kind = "postgres"`: the resolved settings and the connection string.

use std::time::Duration;

use super::values::Secret;

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
}

/// A parsed connection string. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresDsn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Server settings for the session (`-c name=value …`), as libpq's `options`.
    pub options: Option<String>,
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
        port: 5432,
        user: "postgres".into(),
        password: None,
        dbname: String::new(),
        application_name: "tributary".into(),
        connect_timeout: Duration::from_secs(10),
        options: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "host" | "hostaddr" => dsn.host = v,
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
            "sslmode" => match v.as_str() {
                "disable" | "allow" | "prefer" => {}
                _ => {
                    return Err(format!(
                        "sslmode={v} is not supported: Tributary connects without TLS \
                         (use sslmode=disable, or a TLS tunnel)"
                    ));
                }
            },
            other => return Err(format!("unknown connection parameter \"{other}\"")),
        }
    }
    if dsn.host.starts_with('/') {
        return Err("Unix-socket hosts are not supported: give a TCP host".into());
    }
    if dsn.dbname.is_empty() {
        dsn.dbname = dsn.user.clone();
    }
    Ok(dsn)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
        let e = parse_dsn("host=x password=hunter2 sslmode=require").unwrap_err();
        assert!(e.contains("sslmode=require") && !e.contains("hunter2"), "{e}");
        assert!(parse_dsn("host=x port=eighty").unwrap_err().contains("port"));
        assert!(parse_dsn("host=x bogus=1").unwrap_err().contains("bogus"));
        assert!(parse_dsn("password='open").unwrap_err().contains("closing quote"));
        assert_eq!(parse_dsn("user=u").unwrap().dbname, "u");
    }
}
