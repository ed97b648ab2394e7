//! A strict check that bytes are exactly one Avro datum of a schema, without
//! building any value: the Arrow decoder appends a datum column by column and cannot
//! take back half a record, so every body is checked before it gets there. Whatever
//! the bytes, the check returns an error naming the field; it never panics, never
//! recurses without bound and never allocates in proportion to a length it read.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, UuidSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

/// Nesting deeper than this (recursive schemas) is refused.
const MAX_DEPTH: usize = 64;
/// Items of zero-byte types (null) a single array or map block may claim.
const MAX_EMPTY_ITEMS: u64 = 1 << 20;

/// Whether data written with `writer` can be read with `reader` in every case (a
/// partial match, such as a union missing a branch, is not enough).
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "the reader cannot resolve every value of the writer (a missing union branch or enum symbol)"
                .into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// A string holding a UUID (the Arrow decoder parses it).
    Uuid,
    Fixed(usize),
    Enum(usize),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<(String, usize)>),
}

/// A schema compiled for checking.
#[derive(Debug, Clone)]
pub struct Checker {
    nodes: Vec<Node>,
}

/// Where a check failed: the field path and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field {}: {}", self.path, self.message)
        }
    }
}

impl Checker {
    /// Compiles `schema`; `Err` names a construct the decoder cannot take.
    pub fn new(schema: &Schema) -> Result<Self, String> {
        let mut c = Compiler {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        c.compile(schema, None)?;
        Ok(Self { nodes: c.nodes })
    }

    /// Checks that `data` is exactly one datum.
    pub fn check(&self, data: &[u8]) -> Result<(), CheckError> {
        let mut r = Reader { data, pos: 0 };
        let mut path = Vec::new();
        let result = self.node(0, &mut r, &mut path, 0);
        let err = |message: String, path: &[&str]| CheckError {
            path: path.join("."),
            message,
        };
        match result {
            Err(m) => Err(err(m, &path)),
            Ok(()) if r.pos != data.len() => Err(err(
                format!("{} bytes left after the record", data.len() - r.pos),
                &[],
            )),
            Ok(()) => Ok(()),
        }
    }

    fn node<'s>(
        &'s self,
        i: usize,
        r: &mut Reader<'_>,
        path: &mut Vec<&'s str>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        match &self.nodes[i] {
            Node::Null => Ok(()),
            Node::Boolean => match r.byte()? {
                0 | 1 => Ok(()),
                b => Err(format!("boolean byte {b} is neither 0 nor 1")),
            },
            Node::Int => {
                let v = r.long()?;
                i32::try_from(v)
                    .map(|_| ())
                    .map_err(|_| format!("{v} does not fit an int"))
            }
            Node::Long => r.long().map(|_| ()),
            Node::Float => r.take(4).map(|_| ()),
            Node::Double => r.take(8).map(|_| ()),
            Node::Bytes => r.bytes().map(|_| ()),
            Node::String => std::str::from_utf8(r.bytes()?)
                .map(|_| ())
                .map_err(|e| format!("string is not UTF-8: {e}")),
            Node::Uuid => {
                let s = std::str::from_utf8(r.bytes()?).map_err(|e| format!("uuid is not UTF-8: {e}"))?;
                uuid::Uuid::parse_str(s)
                    .map(|_| ())
                    .map_err(|e| format!("\"{s}\" is not a UUID: {e}"))
            }
            Node::Fixed(n) => r.take(*n).map(|_| ()),
            Node::Enum(n) => {
                let v = r.long()?;
                if (0..*n as i64).contains(&v) {
                    Ok(())
                } else {
                    Err(format!("enum index {v} is not one of the {n} symbols"))
                }
            }
            Node::Union(branches) => {
                let v = r.long()?;
                let b = usize::try_from(v)
                    .ok()
                    .and_then(|b| branches.get(b))
                    .ok_or_else(|| {
                        format!("union branch {v} is not one of the {} branches", branches.len())
                    })?;
                self.node(*b, r, path, depth + 1)
            }
            Node::Record(fields) => {
                for (name, f) in fields {
                    path.push(name);
                    self.node(*f, r, path, depth + 1)?;
                    path.pop();
                }
                Ok(())
            }
            Node::Array(item) => self.blocks(r, path, depth, |s, r, path| s.node(*item, r, path, depth + 1)),
            Node::Map(value) => self.blocks(r, path, depth, |s, r, path| {
                std::str::from_utf8(r.bytes()?).map_err(|e| format!("map key is not UTF-8: {e}"))?;
                s.node(*value, r, path, depth + 1)
            }),
        }
    }

    /// Array and map blocks: a count (negative: followed by the block's byte size), the
    /// items, until a zero count.
    fn blocks<'s>(
        &'s self,
        r: &mut Reader<'_>,
        path: &mut Vec<&'s str>,
        _depth: usize,
        mut item: impl FnMut(&'s Self, &mut Reader<'_>, &mut Vec<&'s str>) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = r.long()?;
            if count == 0 {
                return Ok(());
            }
            let n = if count < 0 {
                r.long()?;
                count.unsigned_abs()
            } else {
                count as u64
            };
            // Each item takes at least one byte unless it is null: a count beyond what
            // is left is a lie (and would spin).
            let left = (r.data.len() - r.pos) as u64;
            if n > left.max(MAX_EMPTY_ITEMS) {
                return Err(format!("block of {n} items in {left} bytes"));
            }
            for _ in 0..n {
                item(self, r, path)?;
            }
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.data.get(self.pos).ok_or("the record ends early")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the record ends early ({n} bytes needed, {} left)",
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A zig-zag varint long.
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err("varint overflows a long".into());
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
        self.take(n)
    }
}

struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

impl Compiler {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn compile(&mut self, s: &Schema, _ns: Option<&str>) -> Result<usize, String> {
        Ok(match s {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.push(Node::Long),
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes | Schema::BigDecimal => self.push(Node::Bytes),
            Schema::String => self.push(Node::String),
            Schema::Uuid(UuidSchema::String) => self.push(Node::Uuid),
            Schema::Uuid(UuidSchema::Bytes) => self.push(Node::Bytes),
            Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) | Schema::Fixed(f) => {
                let i = self.push(Node::Fixed(f.size));
                self.names.insert(f.name.fullname(None), i);
                i
            }
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => self.push(Node::Bytes),
                InnerDecimalSchema::Fixed(f) => {
                    let i = self.push(Node::Fixed(f.size));
                    self.names.insert(f.name.fullname(None), i);
                    i
                }
            },
            Schema::Enum(e) => {
                let i = self.push(Node::Enum(e.symbols.len()));
                self.names.insert(e.name.fullname(None), i);
                i
            }
            Schema::Array(a) => {
                let i = self.push(Node::Null);
                let item = self.compile(&a.items, None)?;
                self.nodes[i] = Node::Array(item);
                i
            }
            Schema::Map(m) => {
                let i = self.push(Node::Null);
                let value = self.compile(&m.types, None)?;
                self.nodes[i] = Node::Map(value);
                i
            }
            Schema::Union(u) => {
                let i = self.push(Node::Null);
                let mut branches = Vec::with_capacity(u.variants().len());
                for v in u.variants() {
                    branches.push(self.compile(v, None)?);
                }
                self.nodes[i] = Node::Union(branches);
                i
            }
            Schema::Record(rec) => {
                // Registered before its fields so that a field may refer to it.
                let i = self.push(Node::Null);
                self.names.insert(rec.name.fullname(None), i);
                let mut fields = Vec::with_capacity(rec.fields.len());
                for f in &rec.fields {
                    fields.push((f.name.clone(), self.compile(&f.schema, None)?));
                }
                self.nodes[i] = Node::Record(fields);
                i
            }
            Schema::Ref { name } => *self
                .names
                .get(&name.fullname(None))
                .ok_or_else(|| format!("unknown type {}", name.fullname(None)))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(s: &str) -> Checker {
        Checker::new(&Schema::parse_str(s).unwrap()).unwrap()
    }

    #[test]
    fn exact_datums_pass_and_anything_else_names_the_field() {
        let c = checker(
            r#"{"type":"record","name":"R","fields":[
                {"name":"id","type":"long"},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"kind","type":{"type":"enum","name":"K","symbols":["a","b"]}},
                {"name":"maybe","type":["null","int"]},
                {"name":"u","type":{"type":"string","logicalType":"uuid"}}]}"#,
        );
        let uuid = b"67e55044-10b1-426f-9247-bb680e5fe0c8";
        let mut good = vec![
            0x04,
            0x02,
            0x02,
            b'x',
            0x00,
            0x02,
            0x02,
            0x54,
            uuid.len() as u8 * 2,
        ];
        good.extend_from_slice(uuid);
        assert_eq!(c.check(&good), Ok(()));

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(c.check(&trailing).unwrap_err().message.contains("1 bytes left"));
        let e = c.check(&good[..3]).unwrap_err();
        assert_eq!(e.path, "tags");
        let mut bad_enum = good.clone();
        bad_enum[5] = 0x06;
        assert_eq!(c.check(&bad_enum).unwrap_err().path, "kind");
        let mut bad_union = good.clone();
        bad_union[6] = 0x08;
        assert!(
            c.check(&bad_union)
                .unwrap_err()
                .message
                .contains("union branch 4")
        );
        let mut bad_uuid = good.clone();
        bad_uuid[10] = b'z';
        assert_eq!(c.check(&bad_uuid).unwrap_err().path, "u");
        // A block claiming more items than bytes left.
        let lie = [0x04, 0xfe, 0xff, 0xff, 0xff, 0x0f];
        assert!(c.check(&lie).unwrap_err().message.contains("items in"));
    }

    #[test]
    fn recursion_is_bounded() {
        let c =
            checker(r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#);
        assert_eq!(c.check(&[0x02, 0x02, 0x00]), Ok(()));
        let deep = vec![0x02; 10_000];
        assert!(c.check(&deep).unwrap_err().message.contains("nested deeper"));
    }
}
