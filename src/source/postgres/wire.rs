//! A small Postgres wire-protocol client: TLS negotiation by `sslmode` ([`super::tls`]),
//! startup and authentication (cleartext, MD5, SCRAM-SHA-256), simple queries,
//! `COPY … TO STDOUT`, and the logical replication sub-protocol (`START_REPLICATION`,
//! `XLogData`, keepalives, standby status).
//!
//! tokio-postgres cannot stream logical replication, and one client for the three
//! uses keeps one text-format value path ([`super::types`]) for snapshot and stream.
//! Message encoding and SCRAM come from `postgres-protocol`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::tls::{self, Socket};
use crate::config::{PostgresDsn, SslMode};

/// Largest backend message accepted (Postgres caps a value at 1 GB).
const MAX_MESSAGE: usize = 1 << 30;

/// Why talking to Postgres failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An error the server reported (SQLSTATE `code`).
    #[error("{severity} {code}: {message}{}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(), hint.as_ref().map(|h| format!("; hint: {h}")).unwrap_or_default())]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    /// TLS could not be set up; the text names the `sslmode`.
    #[error("{0}")]
    Tls(String),
}

impl PgError {
    /// The server turned the session down before authentication (a `pg_hba.conf`
    /// rule for this kind of connection: SQLSTATE 28000), not a wrong password.
    fn refused_by_server(&self) -> bool {
        matches!(self, PgError::Server { code, .. } if code == "28000")
    }

    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> PgError {
        move |source| PgError::Io { context, source }
    }
}

/// A row of a simple query: every value in text format.
pub type Row = Vec<Option<String>>;

/// One message of the replication stream.
#[derive(Debug)]
pub enum Replication {
    /// WAL data: one `pgoutput` message.
    XLogData { data: Bytes },
    /// The server's position; `reply` asks for a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// A connection, before or outside streaming.
#[derive(Debug)]
pub struct Conn {
    frames: Frames,
    writer: WriteHalf<Socket>,
    out: BytesMut,
}

/// Whether a connection attempt asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encrypt {
    No,
    /// Ask; continue without when the server has no TLS (`prefer`).
    IfOffered,
    /// Ask; fail when the server has no TLS.
    Yes,
}

/// Backend messages read from a socket: one framing for plain and streaming sessions.
#[derive(Debug)]
struct Frames {
    reader: ReadHalf<Socket>,
    buf: BytesMut,
}

impl Frames {
    /// Reads until one whole message is buffered; returns its tag and length.
    async fn fill(&mut self, context: &'static str) -> Result<(u8, usize), PgError> {
        loop {
            if let Some(h) =
                backend::Header::parse(&self.buf).map_err(|e| PgError::Protocol(e.to_string()))?
            {
                let total = h.len() as usize + 1;
                if total > MAX_MESSAGE {
                    return Err(PgError::Protocol(format!("message of {total} bytes")));
                }
                if self.buf.len() >= total {
                    return Ok((h.tag(), total));
                }
                self.buf.reserve(total - self.buf.len());
            }
            let n = self
                .reader
                .read_buf(&mut self.buf)
                .await
                .map_err(PgError::io(context))?;
            if n == 0 {
                return Err(PgError::Io {
                    context,
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
    }

    /// The tag and body of the next message, whatever its tag (for tags
    /// `postgres-protocol` does not know, like CopyBothResponse).
    async fn next_raw(&mut self, context: &'static str) -> Result<(u8, Bytes), PgError> {
        let (tag, total) = self.fill(context).await?;
        let frame = self.buf.split_to(total).freeze();
        Ok((tag, frame.slice(5..)))
    }
}

impl Conn {
    /// Connects and authenticates, with or without TLS as `sslmode` says.
    /// `replication`: open a logical replication (walsender) connection to the database.
    pub async fn connect(dsn: &PostgresDsn, replication: bool) -> Result<Conn, PgError> {
        match dsn.tls.mode {
            SslMode::Disable => Conn::attempt(dsn, replication, Encrypt::No).await,
            // libpq: plain first; TLS only when the server turns the plain session down.
            SslMode::Allow => match Conn::attempt(dsn, replication, Encrypt::No).await {
                Err(e) if e.refused_by_server() => Conn::attempt(dsn, replication, Encrypt::Yes).await,
                other => other,
            },
            // libpq: TLS when offered; plain again when the TLS session fails or is
            // turned down (a `hostnossl` rule), never after a wrong password.
            SslMode::Prefer => match Conn::attempt(dsn, replication, Encrypt::IfOffered).await {
                Err(e) if matches!(e, PgError::Tls(_)) || e.refused_by_server() => {
                    tracing::debug!(error = %e, "sslmode=prefer: retrying without TLS");
                    Conn::attempt(dsn, replication, Encrypt::No).await
                }
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Conn::attempt(dsn, replication, Encrypt::Yes).await
            }
        }
    }

    /// One connection attempt.
    async fn attempt(dsn: &PostgresDsn, replication: bool, encrypt: Encrypt) -> Result<Conn, PgError> {
        let addr = format!("{}:{}", dsn.hostaddr.as_deref().unwrap_or(&dsn.host), dsn.port);
        let timed_out = || PgError::Io {
            context: "connecting",
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {addr}")),
        };
        let mut stream = tokio::time::timeout(dsn.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(PgError::io("connecting"))?;
        stream.set_nodelay(true).map_err(PgError::io("connecting"))?;
        let socket = match encrypt {
            Encrypt::No => Socket::Plain(stream),
            Encrypt::IfOffered | Encrypt::Yes => {
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                stream
                    .write_all(&request)
                    .await
                    .map_err(PgError::io("requesting TLS"))?;
                let answer = tokio::time::timeout(dsn.connect_timeout, stream.read_u8())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(PgError::io("requesting TLS"))?;
                match answer {
                    b'S' => tokio::time::timeout(dsn.connect_timeout, tls::handshake(dsn, stream))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| match e {
                            tls::Failure::Refused(why) => PgError::Tls(why),
                            tls::Failure::Io(source) => PgError::Io {
                                context: "TLS handshake",
                                source,
                            },
                        })?,
                    b'N' if encrypt == Encrypt::IfOffered => Socket::Plain(stream),
                    b'N' => {
                        return Err(PgError::Tls(format!(
                            "sslmode={}: the server at {addr} does not accept TLS connections",
                            dsn.tls.mode.name()
                        )));
                    }
                    other => {
                        return Err(PgError::Protocol(format!(
                            "unexpected answer '{}' to the TLS request",
                            other.escape_ascii()
                        )));
                    }
                }
            }
        };
        let (reader, writer) = tokio::io::split(socket);
        let mut conn = Conn {
            frames: Frames {
                reader,
                buf: BytesMut::with_capacity(64 * 1024),
            },
            writer,
            out: BytesMut::with_capacity(1024),
        };
        // Output formats every value parser relies on, whatever the server's defaults.
        let mut params = vec![
            ("user", dsn.user.as_str()),
            ("database", dsn.dbname.as_str()),
            ("application_name", dsn.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "iso_8601"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("bytea_output", "hex"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        if let Some(o) = &dsn.options {
            params.push(("options", o.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.out).map_err(PgError::io("startup"))?;
        conn.flush().await?;
        conn.authenticate(dsn).await?;
        conn.until_ready().await?;
        Ok(conn)
    }

    /// Sends what is buffered. The socket's own flush matters for TLS: rustls may
    /// accept the bytes into its buffer without writing them (when the socket is not
    /// writable that instant) and sends them only when flushed; a query left there
    /// never reaches the server, and its answer is awaited forever.
    async fn flush(&mut self) -> Result<(), PgError> {
        self.writer
            .write_all(&self.out)
            .await
            .map_err(PgError::io("writing"))?;
        self.writer.flush().await.map_err(PgError::io("writing"))?;
        self.out.clear();
        Ok(())
    }

    /// The next message, parsed by `postgres-protocol`.
    async fn next(&mut self) -> Result<backend::Message, PgError> {
        self.frames.fill("reading").await?;
        match backend::Message::parse(&mut self.frames.buf).map_err(|e| PgError::Protocol(e.to_string()))? {
            Some(m) => Ok(m),
            None => Err(PgError::Protocol("incomplete message".into())),
        }
    }

    async fn next_raw(&mut self) -> Result<(u8, Bytes), PgError> {
        self.frames.next_raw("reading").await
    }

    async fn authenticate(&mut self, dsn: &PostgresDsn) -> Result<(), PgError> {
        let password = || {
            dsn.password
                .as_ref()
                .map(|p| p.expose().as_bytes().to_vec())
                .ok_or_else(|| PgError::Auth("the server asks for a password and the DSN has none".into()))
        };
        loop {
            match self.next().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(&password()?, &mut self.out).map_err(PgError::io("auth"))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        dsn.user.as_bytes(),
                        &password()?,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.out)
                        .map_err(PgError::io("auth"))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = fallible(mechanisms.next())? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(PgError::Auth("the server offers no SCRAM-SHA-256".into()));
                    }
                    let mut sasl = ScramSha256::new(&password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sasl.message(), &mut self.out)
                        .map_err(PgError::io("auth"))?;
                    self.flush().await?;
                    match self.next().await? {
                        backend::Message::AuthenticationSaslContinue(b) => {
                            sasl.update(b.data()).map_err(|e| PgError::Auth(e.to_string()))?;
                        }
                        backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                        _ => return Err(PgError::Auth("unexpected SASL message".into())),
                    }
                    frontend::sasl_response(sasl.message(), &mut self.out).map_err(PgError::io("auth"))?;
                    self.flush().await?;
                    match self.next().await? {
                        backend::Message::AuthenticationSaslFinal(b) => {
                            sasl.finish(b.data()).map_err(|e| PgError::Auth(e.to_string()))?;
                        }
                        backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                        _ => return Err(PgError::Auth("unexpected SASL message".into())),
                    }
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                _ => return Err(PgError::Auth("unsupported authentication method".into())),
            }
        }
    }

    /// Skips messages until ReadyForQuery; the first error reported on the way wins.
    async fn until_ready(&mut self) -> Result<(), PgError> {
        let mut error = None;
        loop {
            match self.next().await? {
                backend::Message::ReadyForQuery(_) => return error.map_or(Ok(()), Err),
                backend::Message::ErrorResponse(e) => {
                    error.get_or_insert(server_error(&e));
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` (simple query protocol) and returns the rows of every result.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        frontend::query(sql, &mut self.out).map_err(PgError::io("query"))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = fallible(ranges.next())? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                backend::Message::ErrorResponse(e) => {
                    error.get_or_insert(server_error(&e));
                }
                backend::Message::CopyInResponse(_) | backend::Message::CopyOutResponse(_) => {
                    return Err(PgError::Protocol("COPY through query(); use copy_out()".into()));
                }
                backend::Message::ReadyForQuery(_) => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Starts `COPY … TO STDOUT`; read its rows with [`Conn::copy_row`].
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.out).map_err(PgError::io("copy"))?;
        self.flush().await?;
        loop {
            match self.next().await? {
                backend::Message::CopyOutResponse(_) => return Ok(()),
                backend::Message::ErrorResponse(e) => {
                    let err = server_error(&e);
                    self.until_ready().await.ok();
                    return Err(err);
                }
                _ => {}
            }
        }
    }

    /// The next row of a COPY (one text-format line, without its newline); `None` at
    /// the end.
    pub async fn copy_row(&mut self) -> Result<Option<Bytes>, PgError> {
        loop {
            let (tag, body) = self.next_raw().await?;
            match tag {
                b'd' => {
                    let mut row = body;
                    if row.last() == Some(&b'\n') {
                        row.truncate(row.len() - 1);
                    }
                    return Ok(Some(row));
                }
                b'c' => {
                    self.until_ready().await?;
                    return Ok(None);
                }
                b'E' => {
                    let err = error_from_body(&body);
                    self.until_ready().await.ok();
                    return Err(err);
                }
                _ => {}
            }
        }
    }

    /// Sends `START_REPLICATION` and switches to streaming: the returned reader yields
    /// [`Replication`] messages, the writer sends standby status updates.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: u64,
        publication: &str,
    ) -> Result<(ReplicationReader, StatusWriter), PgError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
            quote_ident(slot),
            format_lsn(start),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.out).map_err(PgError::io("start replication"))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.next_raw().await?;
            match tag {
                b'W' => break,
                b'E' => return Err(error_from_body(&body)),
                _ => {}
            }
        }
        Ok((
            ReplicationReader { frames: self.frames },
            StatusWriter {
                writer: self.writer,
                out: self.out,
            },
        ))
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush().await;
    }
}

/// The reading side of a streaming replication connection.
#[derive(Debug)]
pub struct ReplicationReader {
    frames: Frames,
}

impl ReplicationReader {
    /// The next replication message; `None` when the server ended the stream.
    pub async fn recv(&mut self) -> Result<Option<Replication>, PgError> {
        loop {
            let (tag, mut body) = self.frames.next_raw("reading the replication stream").await?;
            match tag {
                b'd' => {
                    if body.is_empty() {
                        return Err(PgError::Protocol("empty CopyData".into()));
                    }
                    match body.get_u8() {
                        b'w' if body.len() >= 24 => {
                            // Start and end of the WAL data, send time: the
                            // pgoutput messages carry the positions that matter.
                            body.advance(24);
                            return Ok(Some(Replication::XLogData { data: body }));
                        }
                        b'k' if body.len() >= 17 => {
                            let wal_end = body.get_u64();
                            let _clock = body.get_i64();
                            let reply = body.get_u8() == 1;
                            return Ok(Some(Replication::Keepalive { wal_end, reply }));
                        }
                        other => {
                            return Err(PgError::Protocol(format!(
                                "unexpected replication message '{}' of {} bytes",
                                other.escape_ascii(),
                                body.len()
                            )));
                        }
                    }
                }
                b'c' => return Ok(None),
                b'E' => return Err(error_from_body(&body)),
                // Notices and parameter changes are not part of the stream.
                _ => {}
            }
        }
    }
}

/// The writing side of a streaming replication connection.
#[derive(Debug)]
pub struct StatusWriter {
    writer: WriteHalf<Socket>,
    out: BytesMut,
}

impl StatusWriter {
    /// Sends a standby status update: `received` is what arrived, `flushed` what is
    /// durable downstream (the slot's `confirmed_flush_lsn` moves to it).
    pub async fn send(&mut self, received: u64, flushed: u64, reply: bool) -> Result<(), PgError> {
        let now = chrono::Utc::now().timestamp_micros() - super::pgoutput::PG_EPOCH_OFFSET_MICROS;
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        msg.extend(received.to_be_bytes());
        msg.extend(flushed.to_be_bytes());
        msg.extend(flushed.to_be_bytes());
        msg.extend(now.to_be_bytes());
        msg.push(u8::from(reply));
        frontend::CopyData::new(&msg[..])
            .map_err(PgError::io("status"))?
            .write(&mut self.out);
        // Flushed too (see `Conn::flush`): an update left in rustls's buffer would let
        // the server's wal_sender_timeout end the session.
        let write = async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await
        };
        tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .map_err(|_| PgError::Io {
                context: "sending standby status",
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(PgError::io("sending standby status"))?;
        self.out.clear();
        Ok(())
    }
}

fn fallible<T>(r: std::io::Result<Option<T>>) -> Result<Option<T>, PgError> {
    r.map_err(|e| PgError::Protocol(e.to_string()))
}

/// The error in an ErrorResponse whose body was read raw.
fn error_from_body(body: &[u8]) -> PgError {
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.extend_from_slice(b"E");
    frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(body);
    match backend::Message::parse(&mut frame) {
        Ok(Some(backend::Message::ErrorResponse(e))) => server_error(&e),
        _ => PgError::Protocol("malformed error response".into()),
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> PgError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let (mut detail, mut hint) = (None, None);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = v,
            b'C' => code = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            _ => {}
        }
    }
    PgError::Server {
        severity,
        code,
        message,
        detail,
        hint,
    }
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` for `standard_conforming_strings = on` (the default since 9.1), with
/// embedded quotes doubled; NUL cannot occur in a Rust-validated Postgres string.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `X/Y`, the way Postgres prints an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `X/Y`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}
