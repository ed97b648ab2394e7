//! Decoder of the `pgoutput` logical replication messages (protocol version 1), as
//! PostgreSQL sends them inside `XLogData`.
//!
//! Zero-copy: a [`Message`] borrows the buffer it was parsed from, and tuple data is
//! walked lazily by [`Tuple::columns`]. Every message is fully validated by [`parse`]
//! before it is returned, so walking a tuple afterwards cannot fail. The module
//! depends on `std` only so that the fuzz target (`fuzz/`) can build it alone.

use std::fmt;

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message tag, as sent.
    pub tag: u8,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pgoutput message '{}': {}",
            self.tag.escape_ascii(),
            self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// One column of a `Relation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Part of the replica identity (the key a delete or key change carries).
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Tuple data: the values of one row image.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    count: usize,
    /// The encoded columns, already validated.
    data: &'a [u8],
}

impl fmt::Debug for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.columns()).finish()
    }
}

/// One value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value that did not change: Postgres did not send it.
    Unchanged,
    /// The value in the type's text output format.
    Text(&'a [u8]),
    /// The value in the type's binary format (only when requested; Tributary does not).
    Binary(&'a [u8]),
}

impl<'a> Tuple<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values in column order.
    pub fn columns(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut rest = self.data;
        (0..self.count).map(move |_| {
            // Validated by `parse`: the fallbacks below are unreachable but keep the
            // walk total.
            let (&kind, tail) = rest.split_first().unwrap_or((&b'n', &[]));
            rest = tail;
            match kind {
                b't' | b'b' => {
                    let len = rest
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        as usize;
                    let value = rest.get(4..4 + len).unwrap_or(&[]);
                    rest = rest.get(4 + len..).unwrap_or(&[]);
                    if kind == b't' {
                        Value::Text(value)
                    } else {
                        Value::Binary(value)
                    }
                }
                b'u' => Value::Unchanged,
                _ => Value::Null,
            }
        })
    }
}

/// A decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since the Unix epoch.
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        /// End of the commit record: where a consumer that has this transaction resumes.
        end_lsn: u64,
        commit_ts: i64,
    },
    Origin,
    Relation {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
        /// `d`efault, `n`othing, `f`ull or `i`ndex.
        replica_identity: u8,
        columns: Vec<RelationColumn<'a>>,
    },
    Type,
    Insert {
        oid: u32,
        new: Tuple<'a>,
    },
    Update {
        oid: u32,
        /// The old key (`K`, when the key changed) or the old row (`O`, REPLICA
        /// IDENTITY FULL).
        old: Option<Tuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        oid: u32,
        /// The old key or, with REPLICA IDENTITY FULL, the old row.
        old: Tuple<'a>,
    },
    Truncate {
        oids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`); not a row change.
    /// Transactional ones arrive inside their transaction.
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: &'a str,
        content: &'a [u8],
    },
}

struct Reader<'a> {
    tag: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: self.tag,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err(format!("truncated before {what}")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn timestamp(&mut self, what: &str) -> Result<i64, DecodeError> {
        let pg = self.u64(what)? as i64;
        pg.checked_add(PG_EPOCH_OFFSET_MICROS)
            .ok_or_else(|| self.err(format!("{what} out of range")))
    }

    fn cstr(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err(format!("{what} is not NUL-terminated")))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| self.err(format!("{what} is not UTF-8")))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Tuple data, validated value by value.
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let count = self.u16("the column count")? as usize;
        let start = self.buf;
        for i in 0..count {
            match self.u8("a column kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.u32("a value length")? as usize;
                    self.take(len, "a value")?;
                }
                other => {
                    return Err(self.err(format!(
                        "column {i}: unknown value kind '{}'",
                        other.escape_ascii()
                    )));
                }
            }
        }
        let used = start.len() - self.buf.len();
        Ok(Tuple {
            count,
            data: &start[..used],
        })
    }

    fn expect_new(&mut self) -> Result<Tuple<'a>, DecodeError> {
        match self.u8("the new tuple")? {
            b'N' => self.tuple(),
            other => Err(self.err(format!(
                "expected a new tuple ('N'), found '{}'",
                other.escape_ascii()
            ))),
        }
    }

    fn done<T>(&self, value: T) -> Result<T, DecodeError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(self.err(format!("{} unexpected trailing bytes", self.buf.len())))
        }
    }
}

/// Tuple data on its own (what follows `N` in an insert).
pub fn parse_tuple(buf: &[u8]) -> Result<Tuple<'_>, DecodeError> {
    let mut r = Reader { tag: b'N', buf };
    let t = r.tuple()?;
    r.done(t)
}

/// Decodes one message. Never panics, whatever `buf` holds.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, body) = buf.split_first().ok_or(DecodeError {
        tag: b'?',
        reason: "empty message".into(),
    })?;
    let mut r = Reader { tag, buf: body };
    match tag {
        b'B' => {
            let final_lsn = r.u64("the final LSN")?;
            let commit_ts = r.timestamp("the commit time")?;
            let xid = r.u32("the xid")?;
            r.done(Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            })
        }
        b'C' => {
            let _flags = r.u8("the flags")?;
            let commit_lsn = r.u64("the commit LSN")?;
            let end_lsn = r.u64("the end LSN")?;
            let commit_ts = r.timestamp("the commit time")?;
            r.done(Message::Commit {
                commit_lsn,
                end_lsn,
                commit_ts,
            })
        }
        b'O' => {
            r.u64("the origin LSN")?;
            r.cstr("the origin name")?;
            r.done(Message::Origin)
        }
        b'R' => {
            let oid = r.u32("the relation id")?;
            let namespace = r.cstr("the namespace")?;
            let name = r.cstr("the relation name")?;
            let replica_identity = r.u8("the replica identity")?;
            let n = r.u16("the column count")? as usize;
            // Bound the allocation by what the buffer can hold (7 bytes per column).
            let mut columns = Vec::with_capacity(n.min(r.buf.len() / 7));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstr("a column name")?;
                let type_oid = r.u32("a column type")?;
                let type_modifier = r.u32("a type modifier")? as i32;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            r.done(Message::Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            r.u32("the type id")?;
            r.cstr("the type namespace")?;
            r.cstr("the type name")?;
            r.done(Message::Type)
        }
        b'I' => {
            let oid = r.u32("the relation id")?;
            let new = r.expect_new()?;
            r.done(Message::Insert { oid, new })
        }
        b'U' => {
            let oid = r.u32("the relation id")?;
            let (old, new) = match r.u8("the tuple kind")? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    (Some(old), r.expect_new()?)
                }
                b'N' => (None, r.tuple()?),
                other => return Err(r.err(format!("unknown tuple kind '{}'", other.escape_ascii()))),
            };
            r.done(Message::Update { oid, old, new })
        }
        b'D' => {
            let oid = r.u32("the relation id")?;
            match r.u8("the tuple kind")? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    r.done(Message::Delete { oid, old })
                }
                other => Err(r.err(format!("unknown tuple kind '{}'", other.escape_ascii()))),
            }
        }
        b'T' => {
            let n = r.u32("the relation count")? as usize;
            let _options = r.u8("the options")?;
            let mut oids = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                oids.push(r.u32("a relation id")?);
            }
            r.done(Message::Truncate { oids })
        }
        b'M' => {
            let flags = r.u8("the flags")?;
            let lsn = r.u64("the message LSN")?;
            let prefix = r.cstr("the prefix")?;
            let len = r.u32("the content length")? as usize;
            let content = r.take(len, "the content")?;
            r.done(Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            })
        }
        other => Err(DecodeError {
            tag: other,
            reason: "unknown message type".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
