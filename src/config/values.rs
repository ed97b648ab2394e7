//! Small value types shared by the pipeline spec: durations, secrets and `${ENV}`
//! expansion. Each parses from the text a user writes and says what it expected when
//! it cannot.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A duration written as a number and a unit: `500ms`, `20s`, `1m`, `2h`, `7d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// Whole microseconds, the unit of every event-time computation.
    pub fn as_micros(self) -> i64 {
        i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX)
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// As a pipeline file writes it: the largest unit that holds it whole (`90s`, `5m`).
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let unit = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")]
            .into_iter()
            .find(|(u, _)| ms > 0 && ms.is_multiple_of(*u));
        match unit {
            Some((u, name)) => write!(f, "{}{name}", ms / u),
            None => write!(f, "{ms}ms"),
        }
    }
}

/// Parses `"<integer><unit>"` with unit one of ms, s, m, h, d.
pub fn parse_span(text: &str) -> Result<Span, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = || format!("\"{text}\" is not a duration (try \"500ms\", \"20s\", \"5m\", \"1h\" or \"7d\")");
    let n: u64 = digits.parse().map_err(|_| hint())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(hint()),
    };
    n.checked_mul(millis_per_unit)
        .map(Span::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too long a duration"))
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_span(&text).map_err(de::Error::custom)
    }
}

/// An amount of bytes written as a number and an optional binary unit: `1048576`,
/// `512KiB`, `64MiB`, `1GiB`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
}

/// The largest binary unit that divides the amount exactly, so it reads back the same.
impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses `"<integer>[B|KiB|MiB|GiB]"`.
pub fn parse_bytes(text: &str) -> Result<ByteSize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = || format!("\"{text}\" is not a size (try \"512KiB\", \"64MiB\" or \"1GiB\")");
    let n: u64 = digits.parse().map_err(|_| hint())?;
    let per_unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(hint()),
    };
    n.checked_mul(per_unit)
        .map(ByteSize)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_bytes(&t).map_err(de::Error::custom),
        }
    }
}

/// A value that must never be printed: passwords, secret keys, DSNs with credentials.
/// `Debug` and `Display` show a placeholder; only [`Secret::expose`] gives the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Decodes the `%XX` escapes of a URL part (user, password); `None` when an escape
/// is not hex or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
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

/// Replaces every `${NAME}` in `text` with the value `lookup` gives for NAME.
/// `$${` escapes a literal `${`. Returns the name of the first variable that is unset.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in \"{text}\""))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"${{{name}}}\" is not an environment variable name"));
            }
            let value = lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_with_units() {
        assert_eq!(parse_span("500ms").unwrap(), Span::from_millis(500));
        assert_eq!(parse_span("20s").unwrap(), Span::from_secs(20));
        assert_eq!(parse_span("1m").unwrap(), Span::from_secs(60));
        assert_eq!(parse_span("2h").unwrap(), Span::from_secs(7200));
        assert_eq!(parse_span("7d").unwrap(), Span::from_secs(7 * 86_400));
    }

    #[test]
    fn spans_reject_prose_with_a_hint() {
        let err = parse_span("5 minutes").unwrap_err();
        assert!(err.contains("\"5 minutes\" is not a duration"), "{err}");
        assert!(err.contains("\"5m\""), "{err}");
        assert!(parse_span("m").is_err());
        assert!(parse_span("").is_err());
        assert!(parse_span("-1s").is_err());
    }

    #[test]
    fn env_expansion_substitutes_and_names_missing_vars() {
        let lookup = |n: &str| (n == "HOST").then(|| "db".to_string());
        assert_eq!(expand_env("h=${HOST}:1", lookup).unwrap(), "h=db:1");
        assert_eq!(expand_env("cost $5 $${HOST}", lookup).unwrap(), "cost $5 ${HOST}");
        let err = expand_env("${NOPE}", lookup).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(expand_env("${HOST", lookup).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
