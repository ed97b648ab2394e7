//! What the source asks the database: publications, slots, table layouts and keys,
//! types, positions. Every statement runs on a plain (non-replication) connection.

use std::collections::HashMap;

use super::pg;
use super::types::TypeRow;
use super::wire::{Conn, parse_lsn, quote_ident, quote_literal};
use crate::source::SourceError;

/// A captured table, as the catalog describes it now.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `schema.table`: the stream name.
    pub stream: String,
    pub oid: u32,
    /// Published columns in table order: name, type, type modifier.
    pub columns: Vec<(String, u32, i32)>,
    /// Primary key (or replica-identity index) columns, in index order; empty when
    /// the table has neither.
    pub key: Vec<String>,
    /// The publication's row filter for the table, if any (Postgres 15).
    pub row_filter: Option<String>,
    /// A partitioned table, published through its root: its rows live in its
    /// partitions, so the snapshot reads it without `ONLY`.
    pub partitioned: bool,
}

/// The replication slot, as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (an invalidated slot).
    pub wal_status: Option<String>,
}

/// `"schema"."table"` for a `schema.table` stream name.
pub fn quote_table(stream: &str) -> String {
    match stream.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
        None => quote_ident(stream),
    }
}

fn literal_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quote_literal(s))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn server_version(conn: &mut Conn) -> Result<u32, SourceError> {
    let rows = conn
        .query("SHOW server_version_num")
        .await
        .map_err(pg("reading the server version"))?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Makes sure the publication exists and covers `tables`; returns the captured
/// streams. A missing publication is created for the listed tables; an existing one
/// is never altered.
pub async fn ensure_publication(
    conn: &mut Conn,
    publication: &str,
    tables: Option<&[String]>,
) -> Result<Vec<String>, SourceError> {
    let exists = !conn
        .query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await
        .map_err(pg("looking up the publication"))?
        .is_empty();
    if !exists {
        let Some(tables) = tables else {
            return Err(SourceError::Setup(format!(
                "publication \"{publication}\" does not exist: create it, or list source.tables \
                 so that Tributary creates it for them"
            )));
        };
        let list: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
        // Changes to a partition are published as changes to the listed partitioned
        // table, so one Delta table holds the whole partitioned table (no effect on
        // other tables).
        conn.query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote_ident(publication),
            list.join(", ")
        ))
        .await
        .map_err(pg(format!("creating publication {publication}")))?;
        tracing::info!(publication, tables = ?tables, "created publication");
    }
    let published: Vec<String> = conn
        .query(&format!(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = {} ORDER BY 1",
            quote_literal(publication)
        ))
        .await
        .map_err(pg("listing the publication's tables"))?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    match tables {
        Some(tables) => {
            for t in tables {
                if !published.contains(t) {
                    if is_partitioned(conn, t).await? {
                        return Err(SourceError::Setup(format!(
                            "source.tables: {t} is a partitioned table and publication \"{publication}\" \
                             publishes its partitions one by one: to mirror it as one table, \
                             ALTER PUBLICATION {} SET (publish_via_partition_root = true); \
                             or list its partitions as tables of their own",
                            quote_ident(publication),
                        )));
                    }
                    return Err(SourceError::Setup(format!(
                        "source.tables: {t} is not in publication \"{publication}\" \
                         (ALTER PUBLICATION {} ADD TABLE {})",
                        quote_ident(publication),
                        quote_table(t)
                    )));
                }
            }
            Ok(tables.to_vec())
        }
        None if published.is_empty() => Err(SourceError::Setup(format!(
            "publication \"{publication}\" has no tables"
        ))),
        None => Ok(published),
    }
}

/// Whether `stream` is a partitioned table.
async fn is_partitioned(conn: &mut Conn, stream: &str) -> Result<bool, SourceError> {
    let rows = conn
        .query(&format!(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = {}",
            quote_literal(stream)
        ))
        .await
        .map_err(pg("looking up the table"))?;
    Ok(rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("p"))
}

pub async fn slot(conn: &mut Conn, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let rows = conn
        .query(&format!(
            "SELECT plugin, database, confirmed_flush_lsn::text, wal_status \
             FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await
        .map_err(pg("looking up the replication slot"))?;
    Ok(rows.into_iter().next().map(|mut r| {
        r.resize(4, None);
        SlotInfo {
            plugin: r[0].take(),
            database: r[1].take(),
            confirmed_flush: r[2].as_deref().and_then(parse_lsn),
            wal_status: r[3].take(),
        }
    }))
}

/// Creates the permanent `pgoutput` slot.
pub async fn create_slot(conn: &mut Conn, slot: &str) -> Result<u64, SourceError> {
    let rows = conn
        .query(&format!(
            "SELECT lsn::text FROM pg_create_logical_replication_slot({}, 'pgoutput')",
            quote_literal(slot)
        ))
        .await
        .map_err(pg(format!("creating replication slot {slot}")))?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|l| parse_lsn(&l))
        .ok_or_else(|| SourceError::Setup("pg_create_logical_replication_slot returned no LSN".into()))
}

/// Layout, key and row filter of each stream.
pub async fn tables(
    conn: &mut Conn,
    publication: &str,
    streams: &[String],
) -> Result<Vec<TableInfo>, SourceError> {
    let sql = format!(
        "SELECT pt.schemaname || '.' || pt.tablename, c.oid::text, c.relreplident::text, pt.rowfilter, \
           (SELECT json_agg(json_build_array(a.attname, a.atttypid::int8, a.atttypmod) ORDER BY a.attnum)::text \
              FROM pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
               AND a.attname = ANY(pt.attnames)), \
           (SELECT json_agg(a.attname ORDER BY k.ord)::text \
              FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a \
             WHERE i.indrelid = c.oid AND a.attrelid = c.oid AND a.attnum = k.attnum \
               AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END), \
           c.relkind::text \
         FROM pg_publication_tables pt \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         WHERE pt.pubname = {} AND pt.schemaname || '.' || pt.tablename IN ({})",
        quote_literal(publication),
        literal_list(streams)
    );
    let rows = conn.query(&sql).await.map_err(pg("reading table layouts"))?;
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        r.resize(7, None);
        let stream = r[0].take().unwrap_or_default();
        let parse = |j: Option<&str>, what: &str| -> Result<serde_json::Value, SourceError> {
            j.map_or(Ok(serde_json::Value::Array(Vec::new())), |j| {
                serde_json::from_str(j).map_err(|e| {
                    SourceError::Setup(format!("{stream}: unexpected {what} from the catalog: {e}"))
                })
            })
        };
        let columns: Vec<(String, u32, i32)> = serde_json::from_value(parse(r[4].as_deref(), "columns")?)
            .map_err(|e| SourceError::Setup(format!("{stream}: unexpected columns from the catalog: {e}")))?;
        let key: Vec<String> = serde_json::from_value(parse(r[5].as_deref(), "key")?)
            .map_err(|e| SourceError::Setup(format!("{stream}: unexpected key from the catalog: {e}")))?;
        if columns.is_empty() {
            return Err(SourceError::Setup(format!(
                "{stream}: the publication publishes no columns of it"
            )));
        }
        out.push(TableInfo {
            oid: r[1].as_deref().and_then(|o| o.parse().ok()).unwrap_or(0),
            row_filter: r[3].take(),
            partitioned: r[6].as_deref() == Some("p"),
            columns,
            key,
            stream,
        });
    }
    out.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(out)
}

/// Catalog rows of the given types (for arrays of user types and domains).
pub async fn type_rows(conn: &mut Conn, oids: &[u32]) -> Result<HashMap<u32, TypeRow>, SourceError> {
    if oids.is_empty() {
        return Ok(HashMap::new());
    }
    let list = oids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let rows = conn
        .query(&format!(
            "SELECT oid::text, typcategory::text, typtype::text, typelem::text, typbasetype::text, typtypmod::text \
             FROM pg_type WHERE oid IN ({list})"
        ))
        .await
        .map_err(pg("reading column types"))?;
    let byte = |v: &Option<String>| v.as_deref().and_then(|s| s.bytes().next()).unwrap_or(0);
    let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    Ok(rows
        .into_iter()
        .filter(|r| r.len() == 6)
        .map(|r| {
            (
                num(&r[0]) as u32,
                TypeRow {
                    category: byte(&r[1]),
                    kind: byte(&r[2]),
                    element: num(&r[3]) as u32,
                    base: num(&r[4]) as u32,
                    base_modifier: num(&r[5]) as i32,
                },
            )
        })
        .collect())
}

/// The server's current WAL insert position.
pub async fn current_lsn(conn: &mut Conn) -> Result<u64, SourceError> {
    let rows = conn
        .query("SELECT pg_current_wal_lsn()::text")
        .await
        .map_err(pg("reading the current WAL position"))?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|l| parse_lsn(&l))
        .ok_or_else(|| SourceError::Setup("pg_current_wal_lsn() returned nothing".into()))
}

/// How far the slot is behind, in bytes: the server's WAL position minus the slot's
/// confirmed position, and minus its restart position (the WAL it keeps from being
/// recycled). `None` when the slot does not exist.
pub async fn slot_lag(conn: &mut Conn, slot: &str) -> Result<Option<(i64, i64)>, SourceError> {
    let rows = conn
        .query(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text \
             FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await
        .map_err(pg("reading the slot's lag"))?;
    let value = |i: usize| -> Option<i64> { rows.first()?.get(i)?.as_ref()?.parse().ok() };
    Ok(value(0).zip(value(1)))
}

/// How long a table's size estimate may take (it only feeds progress bars and chunk
/// sizes): callers wait this long, then go on without it.
pub const ESTIMATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The planner's estimate of a table's rows and pages (a partitioned table's summed
/// over its partitions).
pub async fn size(conn: &mut Conn, oid: u32) -> Result<(u64, u64), SourceError> {
    let rows = conn
        .query(&format!(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint::text, \
                    coalesce(sum(c.relpages), 0)::bigint::text FROM pg_class c \
             WHERE c.oid = {0} OR c.oid IN (SELECT relid FROM pg_partition_tree({0}) WHERE isleaf)",
            oid
        ))
        .await
        .map_err(pg("estimating a table's size"))?;
    let row = rows.into_iter().next().unwrap_or_default();
    let number = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((number(0), number(1)))
}
