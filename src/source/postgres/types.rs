//! Postgres types to Arrow, and text-format values (as `pgoutput` and `COPY` send
//! them, under the session settings [`super::wire`] fixes) straight into Arrow
//! builders, without a per-value allocation.
//!
//! | Postgres | Arrow / Delta |
//! |---|---|
//! | bool, int2, int4, int8, float4, float8 | Boolean, Int16, Int32, Int64, Float32, Float64 |
//! | numeric(p,s), p ≤ 38 | Decimal128(p,s) |
//! | numeric (unbounded or p > 38) | Utf8, the exact decimal text |
//! | text, varchar, char, name, uuid, json, jsonb, enums, time, timetz, interval, others | Utf8 (Postgres's text form) |
//! | bytea | Binary |
//! | date | Date32 |
//! | timestamp, timestamptz | Timestamp(µs, UTC); a timestamp without zone is taken as UTC |
//! | one-dimensional arrays of the above | List |
//!
//! `±infinity` dates and timestamps become the type's largest/smallest value.

use std::sync::Arc;

use deltalake::arrow::array::builder::NullBufferBuilder;
use deltalake::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListArray, StringBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, Field, TimeUnit};

/// How a column's values are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Decimal { precision: u8, scale: i8 },
    Text,
    Bytea,
    Date,
    Timestamp,
    Array(Box<PgType>),
}

/// What the catalog says about a type the built-in table does not know.
#[derive(Debug, Clone)]
pub struct TypeRow {
    /// `pg_type.typcategory`: `A` for arrays.
    pub category: u8,
    /// `pg_type.typtype`: `d` for domains.
    pub kind: u8,
    pub element: u32,
    pub base: u32,
    pub base_modifier: i32,
}

impl PgType {
    /// The type of a column of type `oid` with modifier `typmod`; `lookup` answers
    /// for types that are not built in (arrays of user types, domains).
    pub fn resolve(oid: u32, typmod: i32, lookup: &dyn Fn(u32) -> Option<TypeRow>) -> PgType {
        Self::resolve_depth(oid, typmod, lookup, 0)
    }

    fn resolve_depth(oid: u32, typmod: i32, lookup: &dyn Fn(u32) -> Option<TypeRow>, depth: u8) -> PgType {
        let scalar = |oid| match oid {
            16 => Some(PgType::Bool),
            21 => Some(PgType::Int2),
            23 => Some(PgType::Int4),
            20 => Some(PgType::Int8),
            700 => Some(PgType::Float4),
            701 => Some(PgType::Float8),
            1700 => Some(numeric(typmod)),
            17 => Some(PgType::Bytea),
            1082 => Some(PgType::Date),
            1114 | 1184 => Some(PgType::Timestamp),
            // text, varchar, char, name, "char", uuid, json, jsonb, time, timetz, interval
            25 | 1043 | 1042 | 19 | 18 | 2950 | 114 | 3802 | 1083 | 1266 | 1186 => Some(PgType::Text),
            _ => None,
        };
        if let Some(t) = scalar(oid) {
            return t;
        }
        let element = match oid {
            1000 => Some(16),
            1005 => Some(21),
            1007 => Some(23),
            1016 => Some(20),
            1021 => Some(700),
            1022 => Some(701),
            1231 => Some(1700),
            1001 => Some(17),
            1182 => Some(1082),
            1115 => Some(1114),
            1185 => Some(1184),
            1009 | 1015 | 1014 | 2951 | 199 | 3807 => Some(25),
            _ => None,
        };
        if let Some(e) = element {
            return PgType::Array(Box::new(Self::resolve_depth(e, typmod, lookup, depth + 1)));
        }
        if depth > 8 {
            return PgType::Text;
        }
        match lookup(oid) {
            Some(row) if row.category == b'A' && row.element != 0 => {
                let e = Self::resolve_depth(row.element, typmod, lookup, depth + 1);
                // Arrays of arrays do not exist in Postgres; an array of a domain over
                // an array type is stored as text.
                if matches!(e, PgType::Array(_)) {
                    PgType::Text
                } else {
                    PgType::Array(Box::new(e))
                }
            }
            Some(row) if row.kind == b'd' && row.base != 0 => {
                let m = if row.base_modifier >= 0 {
                    row.base_modifier
                } else {
                    typmod
                };
                Self::resolve_depth(row.base, m, lookup, depth + 1)
            }
            _ => PgType::Text,
        }
    }

    pub fn arrow(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::Text => DataType::Utf8,
            PgType::Bytea => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Array(e) => DataType::List(Arc::new(Field::new("element", e.arrow(), true))),
        }
    }
}

/// numeric(p,s) as a decimal when Arrow can hold it exactly; text otherwise.
fn numeric(typmod: i32) -> PgType {
    if typmod < 4 {
        return PgType::Text;
    }
    let m = typmod - 4;
    let precision = (m >> 16) & 0xFFFF;
    // Postgres 15 allows a scale from -1000 to 1000, stored as 11 signed bits.
    let scale = ((m & 0x7FF) ^ 0x400) - 0x400;
    if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
        PgType::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        PgType::Text
    }
}

/// A column under construction.
#[derive(Debug)]
pub enum Builder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Bytea(BinaryBuilder, Vec<u8>),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    List {
        element: Box<Builder>,
        field: Arc<Field>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        scratch: Vec<u8>,
    },
}

impl Builder {
    pub fn new(t: &PgType, capacity: usize) -> Builder {
        match t {
            PgType::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Int2 => Builder::Int2(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => Builder::Int4(Int32Builder::with_capacity(capacity)),
            PgType::Int8 => Builder::Int8(Int64Builder::with_capacity(capacity)),
            PgType::Float4 => Builder::Float4(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Builder::Float8(Float64Builder::with_capacity(capacity)),
            PgType::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .unwrap_or_default(),
                *precision,
                *scale,
            ),
            PgType::Text => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 8)),
            PgType::Bytea => Builder::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 8), Vec::new()),
            PgType::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            PgType::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
            }
            PgType::Array(e) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Builder::List {
                    element: Box::new(Builder::new(e, capacity)),
                    field: Arc::new(Field::new("element", e.arrow(), true)),
                    offsets,
                    nulls: NullBufferBuilder::new(capacity),
                    scratch: Vec::new(),
                }
            }
        }
    }

    pub fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int2(b) => b.append_null(),
            Builder::Int4(b) => b.append_null(),
            Builder::Int8(b) => b.append_null(),
            Builder::Float4(b) => b.append_null(),
            Builder::Float8(b) => b.append_null(),
            Builder::Decimal(b, ..) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Bytea(b, _) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::List { offsets, nulls, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    /// Appends the value whose text form is `text`. On error a null takes its place
    /// (the caller decides whether that is acceptable) and the error says why.
    pub fn append_text(&mut self, text: &[u8]) -> Result<(), String> {
        if let Builder::List {
            element,
            offsets,
            nulls,
            scratch,
            ..
        } = self
        {
            let r = std::str::from_utf8(text)
                .map_err(|_| "the value is not UTF-8".to_string())
                .and_then(|s| append_array(s, element, scratch));
            // A failed array becomes a null entry; the elements it appended stay in
            // the child array, unreferenced by any valid entry.
            offsets.push(element.len() as i32);
            match r {
                Ok(()) => nulls.append_non_null(),
                Err(_) => nulls.append_null(),
            }
            return r;
        }
        let r = self.append_scalar(text);
        if r.is_err() {
            self.append_null();
        }
        r
    }

    fn append_scalar(&mut self, text: &[u8]) -> Result<(), String> {
        let s = std::str::from_utf8(text).map_err(|_| "the value is not UTF-8".to_string())?;
        let bad = |what: &str| format!("\"{}\" is not {what}", truncate(s));
        match self {
            Builder::Bool(b) => match s {
                "t" | "true" => b.append_value(true),
                "f" | "false" => b.append_value(false),
                _ => return Err(bad("a boolean")),
            },
            Builder::Int2(b) => b.append_value(s.parse().map_err(|_| bad("an int2"))?),
            Builder::Int4(b) => b.append_value(s.parse().map_err(|_| bad("an int4"))?),
            Builder::Int8(b) => b.append_value(s.parse().map_err(|_| bad("an int8"))?),
            Builder::Float4(b) => b.append_value(parse_float(s).ok_or_else(|| bad("a float4"))? as f32),
            Builder::Float8(b) => b.append_value(parse_float(s).ok_or_else(|| bad("a float8"))?),
            Builder::Decimal(b, precision, scale) => {
                let v = parse_decimal(s, *precision, *scale)
                    .ok_or_else(|| bad(&format!("a numeric({precision},{scale}) Arrow can hold")))?;
                b.append_value(v)
            }
            Builder::Text(b) => b.append_value(s),
            Builder::Bytea(b, scratch) => {
                scratch.clear();
                decode_hex_bytea(s, scratch).ok_or_else(|| bad("hex bytea"))?;
                b.append_value(&scratch[..])
            }
            Builder::Date(b) => b.append_value(parse_date(s).ok_or_else(|| bad("a date"))?),
            Builder::Timestamp(b) => b.append_value(parse_timestamp(s).ok_or_else(|| bad("a timestamp"))?),
            Builder::List { .. } => return Err("nested arrays are not supported".into()),
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        match self {
            Builder::Bool(b) => b.len(),
            Builder::Int2(b) => b.len(),
            Builder::Int4(b) => b.len(),
            Builder::Int8(b) => b.len(),
            Builder::Float4(b) => b.len(),
            Builder::Float8(b) => b.len(),
            Builder::Decimal(b, ..) => b.len(),
            Builder::Text(b) => b.len(),
            Builder::Bytea(b, _) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Timestamp(b) => b.len(),
            Builder::List { offsets, .. } => offsets.len() - 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int2(b) => Arc::new(b.finish()),
            Builder::Int4(b) => Arc::new(b.finish()),
            Builder::Int8(b) => Arc::new(b.finish()),
            Builder::Float4(b) => Arc::new(b.finish()),
            Builder::Float8(b) => Arc::new(b.finish()),
            Builder::Decimal(b, ..) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Bytea(b, _) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::List {
                element,
                field,
                offsets,
                nulls,
                ..
            } => {
                let values = element.finish();
                let offs = std::mem::replace(offsets, vec![0]);
                let list = ListArray::try_new(
                    field.clone(),
                    OffsetBuffer::new(offs.into()),
                    values,
                    nulls.finish(),
                );
                match list {
                    Ok(l) => Arc::new(l),
                    // Offsets are built monotone from the element count; unreachable.
                    Err(_) => deltalake::arrow::array::new_null_array(&DataType::List(field.clone()), 0),
                }
            }
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A one-dimensional array literal `{a,"b c",NULL}` into `element`.
fn append_array(s: &str, element: &mut Builder, scratch: &mut Vec<u8>) -> Result<(), String> {
    // Arrays with other lower bounds print them first: `[0:2]={…}`.
    let s = match s.strip_prefix('[') {
        Some(_) => s.split_once('=').map_or(s, |(_, v)| v),
        None => s,
    };
    let body = s
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("\"{}\" is not an array", truncate(s)))?;
    if body.is_empty() {
        return Ok(());
    }
    let bytes = body.as_bytes();
    let mut i = 0;
    loop {
        scratch.clear();
        if bytes.get(i) == Some(&b'{') {
            return Err("multi-dimensional arrays are not supported".into());
        }
        let quoted = bytes.get(i) == Some(&b'"');
        if quoted {
            i += 1;
            loop {
                match bytes.get(i) {
                    Some(b'\\') => {
                        if let Some(&c) = bytes.get(i + 1) {
                            scratch.push(c);
                        }
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        scratch.push(c);
                        i += 1;
                    }
                    None => return Err("an array element has no closing quote".into()),
                }
            }
        } else {
            while let Some(&c) = bytes.get(i) {
                if c == b',' {
                    break;
                }
                scratch.push(c);
                i += 1;
            }
        }
        if !quoted && scratch.eq_ignore_ascii_case(b"NULL") {
            element.append_null();
        } else {
            element.append_text(scratch)?;
        }
        match bytes.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err("malformed array literal".into()),
        }
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// `-123.4500` as an unscaled i128 at `scale`, if it fits `precision`.
fn parse_decimal(s: &str, precision: u8, scale: i8) -> Option<i128> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let scale = usize::try_from(scale).ok()?;
    if frac.len() > scale || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    for _ in frac.len()..scale {
        v = v.checked_mul(10)?;
    }
    if v >= 10i128.checked_pow(u32::from(precision))? {
        return None;
    }
    Some(if neg { -v } else { v })
}

fn decode_hex_bytea(s: &str, out: &mut Vec<u8>) -> Option<()> {
    let hex = s.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    out.reserve(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        let digit = |c: u8| (c as char).to_digit(16);
        out.push((digit(pair[0])? * 16 + digit(pair[1])?) as u8);
    }
    Some(())
}

/// Days from 1970-01-01 of `YYYY-MM-DD[ BC]`.
fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    };
    days(s, bc)
}

fn days(date: &str, bc: bool) -> Option<i32> {
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    // 1 BC is year 0 of the proleptic Gregorian calendar.
    let year = if bc { 1 - year } else { year };
    let d = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from(d.signed_duration_since(epoch).num_days()).ok()
}

/// Microseconds from the epoch of `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`.
fn parse_timestamp(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    };
    let (date, time) = s.split_once(' ')?;
    let days = i64::from(days(date, bc)?);
    // The zone offset, if any, starts at the first sign after the seconds.
    let (clock, offset) = match time.find(['+', '-']) {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time, None),
    };
    let mut hms = clock.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec = hms.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut micros: i64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    for _ in frac.len()..6 {
        micros *= 10;
    }
    let mut total = days
        .checked_mul(86_400_000_000)?
        .checked_add(((h * 60 + m) * 60 + whole) * 1_000_000 + micros)?;
    if let Some(off) = offset {
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut parts = off[1..].splitn(3, ':');
        let oh: i64 = parts.next()?.parse().ok()?;
        let om: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let os: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        total = total.checked_sub(sign * ((oh * 60 + om) * 60 + os) * 1_000_000)?;
    }
    Some(total)
}

/// Splits one `COPY … TO STDOUT` text-format line into fields, unescaping into
/// `scratch`; `field(i, value)` gets `None` for `\N`. Fields without a backslash are
/// passed through without copying.
pub fn copy_fields(
    line: &[u8],
    scratch: &mut Vec<u8>,
    mut field: impl FnMut(usize, Option<&[u8]>) -> Result<(), String>,
) -> Result<usize, String> {
    let mut n = 0;
    for raw in line.split(|&b| b == b'\t') {
        if raw == b"\\N" {
            field(n, None)?;
        } else if !raw.contains(&b'\\') {
            field(n, Some(raw))?;
        } else {
            scratch.clear();
            let mut i = 0;
            while i < raw.len() {
                let c = raw[i];
                if c != b'\\' || i + 1 == raw.len() {
                    scratch.push(c);
                    i += 1;
                    continue;
                }
                let e = raw[i + 1];
                i += 2;
                match e {
                    b'b' => scratch.push(8),
                    b'f' => scratch.push(12),
                    b'n' => scratch.push(b'\n'),
                    b'r' => scratch.push(b'\r'),
                    b't' => scratch.push(b'\t'),
                    b'v' => scratch.push(11),
                    b'x' => {
                        let hex: Vec<u8> = raw[i..]
                            .iter()
                            .take(2)
                            .take_while(|c| c.is_ascii_hexdigit())
                            .copied()
                            .collect();
                        i += hex.len();
                        let v = std::str::from_utf8(&hex)
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok());
                        scratch.push(v.unwrap_or(b'x'));
                    }
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        let mut k = 0;
                        while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                            v = v * 8 + u32::from(raw[i] - b'0');
                            i += 1;
                            k += 1;
                        }
                        scratch.push(v as u8);
                    }
                    other => scratch.push(other),
                }
            }
            field(n, Some(&scratch[..]))?;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
