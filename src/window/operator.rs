//! The windowed aggregate: one operator for every window kind. It binds the aggregate
//! to the stream's schema, folds each batch row by row into the window index (panes,
//! sessions or global groups) with measures kept as columns, and turns emissions into
//! output batches.

use std::sync::Arc;

use bytes::Bytes;
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, new_null_array,
};
use deltalake::arrow::compute::{CastOptions, cast_with_options, concat_batches, take_record_batch};
use deltalake::arrow::datatypes::{
    DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::arrow::row::{RowConverter, SortField};
use deltalake::datafusion::common::DFSchema;
use deltalake::datafusion::physical_expr::PhysicalExpr;
use deltalake::datafusion::prelude::SessionContext;
use hashbrown::{HashMap, HashSet};
use tokio::time::Instant;

use super::measure::{Measures, Store};
use super::over::OverSteps;
use super::panes::Panes;
use super::sessions::Sessions;
use super::{Ctx, Emission, Operator, OperatorStats, Outcome, Row, Watermarks, WindowError};
use crate::config::{AggregateConfig, EmitMode, LatePolicy, Window};

/// Largest event time magnitude accepted (2^62 µs): window bounds stay in range.
const EVENT_TIME_LIMIT: i64 = 1 << 62;

/// Column of keyed outputs telling the sink to upsert (`u`) or delete (`d`) the row.
pub const OP_COLUMN: &str = "_op";

pub(super) enum Index {
    Panes(Panes),
    Sessions(Sessions),
    /// One window over all time: group key → slot, and the slots changed since the last
    /// emission (`emit = "update"`).
    Global(HashMap<Box<[u8]>, u32>, HashSet<u32>),
}

/// `[[aggregates]]` of any window kind.
pub struct WindowedAggregate {
    pub(super) name: String,
    pub(super) keyed: bool,
    emit_update: bool,
    late: LatePolicy,
    lateness: i64,
    event_time: usize,
    group_cols: Vec<usize>,
    pub(super) key_fields: Vec<FieldRef>,
    pub(super) keys: Option<RowConverter>,
    pub(super) measures: Measures,
    filter: Option<Arc<dyn PhysicalExpr>>,
    pub(super) store: Store,
    pub(super) index: Index,
    /// Rows as the windows give them; `output` adds the post-window steps' columns.
    base: SchemaRef,
    output: SchemaRef,
    pub(super) over: Option<OverSteps>,
    input: SchemaRef,
    /// `input` with every column nullable: the layout a changed stream is read into.
    input_nullable: SchemaRef,
    pub(super) watermarks: Watermarks,
    /// Reached by the last micro-batch; never moves backwards.
    pub(super) watermark: i64,
    pub(super) stats: OperatorStats,
    late_rows: Vec<RecordBatch>,
    /// What the state's layout depends on (window, keys, measures), kept in snapshots
    /// so that a changed aggregate never restores state of another shape.
    pub(super) signature: String,
}

impl std::fmt::Debug for WindowedAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedAggregate")
            .field("name", &self.name)
            .field("groups", &self.store.live())
            .field("watermark", &self.watermark)
            .finish()
    }
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compiles the aggregate's SQL `filter` against the stream's schema.
fn compile_filter(
    cfg: &AggregateConfig,
    input: &SchemaRef,
) -> Result<Option<Arc<dyn PhysicalExpr>>, WindowError> {
    let Some(sql) = &cfg.filter else { return Ok(None) };
    let bad = |e: &dyn std::fmt::Display| WindowError::Config {
        key: format!("{}.filter", cfg.key),
        message: format!("\"{sql}\": {e}"),
    };
    let df_schema = DFSchema::try_from(input.as_ref().clone()).map_err(|e| bad(&e))?;
    let ctx = SessionContext::new();
    let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(|e| bad(&e))?;
    let physical = ctx.create_physical_expr(expr, &df_schema).map_err(|e| bad(&e))?;
    match physical.data_type(input).map_err(|e| bad(&e))? {
        DataType::Boolean => Ok(Some(physical)),
        other => Err(bad(&format!("is {other}, not a condition"))),
    }
}

impl WindowedAggregate {
    pub fn new(cfg: &AggregateConfig, input: &SchemaRef) -> Result<Self, WindowError> {
        let column = |key: String, name: &str| {
            input.index_of(name).map_err(|_| WindowError::Config {
                key,
                message: format!(
                    "stream \"{}\" has no column \"{name}\" (it has: {})",
                    cfg.from,
                    names(input)
                ),
            })
        };
        let event_time = column(format!("{}.event_time", cfg.key), &cfg.event_time)?;
        match input.field(event_time).data_type() {
            DataType::Timestamp(..)
            | DataType::Int64
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View => {}
            other => {
                return Err(WindowError::Config {
                    key: format!("{}.event_time", cfg.key),
                    message: format!(
                        "column \"{}\" is {other}; an event time must be a timestamp, a date, \
                         RFC 3339 text or epoch microseconds",
                        cfg.event_time
                    ),
                });
            }
        }
        let mut group_cols = Vec::with_capacity(cfg.group_by.len());
        for (i, name) in cfg.group_by.iter().enumerate() {
            group_cols.push(column(format!("{}.group_by[{i}]", cfg.key), name)?);
        }
        let key_fields: Vec<FieldRef> = group_cols
            .iter()
            .map(|&i| {
                Arc::new(
                    input
                        .field(i)
                        .clone()
                        .with_nullable(true)
                        .with_metadata(Default::default()),
                )
            })
            .collect();
        let arrow = |source| WindowError::Arrow {
            aggregate: cfg.name.clone(),
            source,
        };
        let keys = if key_fields.is_empty() {
            None
        } else {
            Some(
                RowConverter::new(
                    key_fields
                        .iter()
                        .map(|f| SortField::new(f.data_type().clone()))
                        .collect(),
                )
                .map_err(arrow)?,
            )
        };
        let measures = Measures::bind(cfg, input, &column)?;
        let filter = compile_filter(cfg, input)?;
        let keyed = cfg.keyed();
        let global = cfg.window == Window::Global;
        // Keyed rows may be deletes, which carry only the key.
        let mut fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("window_start", utc_micros(), global)),
            Arc::new(Field::new("window_end", utc_micros(), global || keyed)),
        ];
        fields.extend(key_fields.iter().cloned());
        fields.extend(measures.output_fields().map(|f| {
            if keyed {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                f
            }
        }));
        if keyed {
            fields.push(Arc::new(Field::new(OP_COLUMN, DataType::Utf8, false)));
        }
        let index = match cfg.window {
            Window::Tumbling { size } => Index::Panes(Panes::new(size.as_micros(), size.as_micros())),
            Window::Hopping { size, slide } => Index::Panes(Panes::new(size.as_micros(), slide.as_micros())),
            Window::Session { gap } => Index::Sessions(Sessions::new(gap.as_micros())),
            Window::Cumulate { size, step } => {
                Index::Panes(Panes::cumulate(size.as_micros(), step.as_micros()))
            }
            Window::Global => Index::Global(HashMap::new(), HashSet::new()),
        };
        let base: SchemaRef = Arc::new(Schema::new(fields));
        let over = OverSteps::bind(&cfg.key, &cfg.over, &base)?;
        let output = over
            .as_ref()
            .map_or_else(|| base.clone(), OverSteps::output_schema);
        Ok(Self {
            name: cfg.name.clone(),
            keyed,
            emit_update: cfg.emit == EmitMode::Update,
            late: cfg.late,
            lateness: cfg.lateness.as_micros(),
            event_time,
            group_cols,
            key_fields,
            keys,
            store: measures.store(),
            measures,
            filter,
            index,
            base,
            output,
            over,
            input: input.clone(),
            input_nullable: Arc::new(Schema::new(
                input
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            watermarks: Watermarks::new(cfg.watermark.as_micros(), cfg.idle_timeout.map(|s| s.0)),
            watermark: i64::MIN,
            stats: OperatorStats::default(),
            late_rows: Vec::new(),
            signature: if cfg.over.is_empty() {
                format!(
                    "{:?} by {:?} measuring {:?} lateness {:?}",
                    cfg.window, cfg.group_by, cfg.measures, cfg.lateness
                )
            } else {
                format!(
                    "{:?} by {:?} measuring {:?} lateness {:?} over {:?}",
                    cfg.window, cfg.group_by, cfg.measures, cfg.lateness, cfg.over
                )
            },
        })
    }

    pub(super) fn arrow_err(&self) -> impl FnOnce(deltalake::arrow::error::ArrowError) -> WindowError + '_ {
        |source| WindowError::Arrow {
            aggregate: self.name.clone(),
            source,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            watermark: self.watermark,
            emit_update: self.emit_update,
            late_update: self.late == LatePolicy::Update,
            lateness: self.lateness,
        }
    }

    /// Output rows for `emission`, then the state of what it no longer needs is dropped.
    fn output(&self, emission: Emission) -> Result<Option<RecordBatch>, WindowError> {
        let Emission { rows, groups } = emission;
        if rows.is_empty() {
            return Ok(None);
        }
        let (upserts, deletes): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.slot.is_some());
        let mut batches = Vec::with_capacity(2);
        for (part, is_delete) in [(upserts, false), (deletes, true)] {
            if part.is_empty() {
                continue;
            }
            let n = part.len();
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter(part.iter().map(|r| r.start)).with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(part.iter().map(|r| r.end)).with_timezone("UTC"),
                ),
            ];
            if let Some(conv) = &self.keys {
                let parser = conv.parser();
                cols.extend(
                    conv.convert_rows(part.iter().map(|r| parser.parse(&r.key)))
                        .map_err(self.arrow_err())?,
                );
            }
            if is_delete {
                let first = 2 + self.key_fields.len();
                let last = self.base.fields().len() - 1;
                cols.extend(
                    self.base.fields()[first..last]
                        .iter()
                        .map(|f| new_null_array(f.data_type(), n)),
                );
            } else {
                let slots: Vec<u32> = part.iter().filter_map(|r| r.slot).collect();
                cols.extend(match &groups {
                    None => self.measures.finish(&self.store, &slots)?,
                    Some(g) => self
                        .measures
                        .finish_merged(&self.store, slots.len(), |i| g[slots[i] as usize].as_slice())?,
                });
            }
            if self.keyed {
                let op = if is_delete { "d" } else { "u" };
                cols.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    op, n,
                ))));
            }
            batches.push(RecordBatch::try_new(self.base.clone(), cols).map_err(self.arrow_err())?);
        }
        concat_batches(&self.base, &batches)
            .map(Some)
            .map_err(self.arrow_err())
    }

    fn emit(&mut self, new: i64, to_end: bool) -> Result<Option<RecordBatch>, WindowError> {
        let ctx = self.ctx();
        let emit_update = self.emit_update;
        let emission = match &mut self.index {
            Index::Panes(p) => p.emit(&ctx, new, to_end),
            Index::Sessions(s) => s.emit(&ctx, new, to_end),
            Index::Global(groups, dirty) => {
                let mut rows: Vec<Row> = groups
                    .iter()
                    // At the end of an input, `final` writes every key's total; `update`
                    // has written each change already (rewriting them would give the
                    // commit two rows per key).
                    .filter(|(_, slot)| (to_end && !emit_update) || dirty.contains(*slot))
                    .map(|(k, &slot)| Row::upsert(None, None, k.clone(), slot))
                    .collect();
                rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                dirty.clear();
                Emission { rows, groups: None }
            }
        };
        // After the end of an input, what was emitted is final; a later run (new files)
        // may still add later windows.
        let emitted_end = emission.rows.iter().filter_map(|r| r.end).max();
        let mut out = self.output(emission)?;
        if let (Some(over), Some(rows)) = (&mut self.over, &out) {
            let with = over.apply(rows).map_err(|source| WindowError::Arrow {
                aggregate: self.name.clone(),
                source,
            })?;
            out = Some(with);
        }
        match &mut self.index {
            Index::Panes(p) if to_end => p.clear(&mut self.store),
            Index::Panes(p) => p.evict(&mut self.store, &ctx, new),
            Index::Sessions(s) if to_end => s.clear(&mut self.store),
            Index::Sessions(s) => s.evict(&mut self.store, &ctx, new),
            // A global window never closes: its groups outlive the end of an input, and
            // the next run's totals include them.
            Index::Global(..) => {}
        }
        self.watermark = self.watermark.max(if to_end {
            emitted_end.unwrap_or(i64::MIN)
        } else {
            new
        });
        Ok(out)
    }

    /// `batch` in the layout the operator was built for, when the stream's schema has
    /// changed since (columns added, dropped, reordered or widened): columns are found
    /// by name, cast to the type they had (values that do not fit become NULL) and
    /// NULL when gone. `None` when the layout is unchanged.
    fn conform(&self, batch: &RecordBatch) -> Result<Option<RecordBatch>, WindowError> {
        let schema = batch.schema();
        if Arc::ptr_eq(&schema, &self.input) || schema.fields() == self.input.fields() {
            return Ok(None);
        }
        crate::sink::schema::conform(batch, &self.input_nullable)
            .map(Some)
            .map_err(self.arrow_err())
    }

    /// Late rows of `batch` (at `picked`) with why and where they came from.
    fn late_batch(
        &self,
        shard: &str,
        batch: &RecordBatch,
        positions: &Int64Array,
        picked: &[(u32, i64)],
    ) -> Result<RecordBatch, WindowError> {
        let idx = UInt32Array::from_iter_values(picked.iter().map(|p| p.0));
        let rows = take_record_batch(batch, &idx).map_err(self.arrow_err())?;
        let n = picked.len();
        let mut fields: Vec<FieldRef> = rows.schema().fields().iter().cloned().collect();
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        let mut add = |name: &str, col: ArrayRef| {
            fields.push(Arc::new(Field::new(name, col.data_type().clone(), false)));
            cols.push(col);
        };
        add(
            "_late_reason",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "every window of the event was final",
                n,
            ))),
        );
        add(
            "_late_window_end",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(picked.iter().map(|p| p.1)).with_timezone("UTC"),
            ),
        );
        add(
            "_late_watermark",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(self.watermark, n))
                    .with_timezone("UTC"),
            ),
        );
        add(
            "_late_shard",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(shard, n))),
        );
        add(
            "_late_position",
            Arc::new(Int64Array::from_iter_values(
                picked.iter().map(|p| positions.value(p.0 as usize)),
            )),
        );
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(self.arrow_err())
    }
}

impl Operator for WindowedAggregate {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn on_start(&mut self, snapshot: Option<Bytes>) -> Result<(), WindowError> {
        match snapshot {
            Some(bytes) => self.restore(bytes),
            None => Ok(()),
        }
    }

    fn expect_shards(&mut self, shards: &[String]) {
        let now = Instant::now();
        for s in shards {
            self.watermarks.expect(s, now);
        }
    }

    fn process_batch(
        &mut self,
        shard: &str,
        batch: &RecordBatch,
        positions: &Int64Array,
    ) -> Result<(), WindowError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let conformed = self.conform(batch)?;
        let batch = conformed.as_ref().unwrap_or(batch);
        // Unparseable times become nulls (counted), never errors: bad input must not
        // stop the stream.
        let ts = cast_with_options(
            batch.column(self.event_time),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
            &CastOptions {
                safe: true,
                ..Default::default()
            },
        )
        .map_err(self.arrow_err())?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let keep: Option<BooleanArray> = match &self.filter {
            None => None,
            Some(f) => {
                let v = f
                    .evaluate(batch)
                    .and_then(|v| v.into_array(n))
                    .map_err(|e| WindowError::Arrow {
                        aggregate: self.name.clone(),
                        source: deltalake::arrow::error::ArrowError::ComputeError(format!("filter: {e}")),
                    })?;
                Some(v.as_boolean().clone())
            }
        };
        let rows = match &self.keys {
            None => None,
            Some(conv) => {
                let cols: Vec<ArrayRef> = self.group_cols.iter().map(|&i| batch.column(i).clone()).collect();
                Some(conv.convert_columns(&cols).map_err(self.arrow_err())?)
            }
        };
        let inputs = self.measures.inputs(batch)?;
        let ctx = self.ctx();
        let dlq = self.late == LatePolicy::Dlq;
        let mut late: Vec<(u32, i64)> = Vec::new();
        for i in 0..n {
            if keep.as_ref().is_some_and(|k| !k.is_valid(i) || !k.value(i)) {
                continue;
            }
            // Times beyond ±146,000 years are garbage, and would overflow window
            // arithmetic: they count as missing.
            if ts.is_null(i) || !(-EVENT_TIME_LIMIT..=EVENT_TIME_LIMIT).contains(&ts.value(i)) {
                self.stats.no_event_time += 1;
                continue;
            }
            let t = ts.value(i);
            let key: &[u8] = rows.as_ref().map_or(&[], |r| r.row(i).data());
            let outcome = match &mut self.index {
                Index::Panes(p) => p.fold(&mut self.store, &inputs, i, t, key, &ctx),
                Index::Sessions(s) => s.fold(&mut self.store, &inputs, i, t, key, &ctx),
                Index::Global(groups, dirty) => {
                    let slot = match groups.get(key) {
                        Some(&s) => s,
                        None => {
                            let s = self.store.alloc();
                            groups.insert(key.into(), s);
                            s
                        }
                    };
                    self.store.update(slot, &inputs, i);
                    if ctx.emit_update {
                        dirty.insert(slot);
                    }
                    Outcome::Folded
                }
            };
            match outcome {
                Outcome::Folded => {}
                Outcome::Corrected => self.stats.late_corrected += 1,
                Outcome::Late { window_end } if dlq => {
                    self.stats.late_dead_lettered += 1;
                    late.push((u32::try_from(i).unwrap_or(u32::MAX), window_end));
                }
                Outcome::Late { .. } => self.stats.late_dropped += 1,
            }
        }
        if !late.is_empty() {
            let rows = self.late_batch(shard, batch, positions, &late)?;
            self.late_rows.push(rows);
        }
        // Every event time counts (filtered rows too: the watermark is the stream's
        // progress), except garbage ones.
        if let Some(m) = ts
            .iter()
            .flatten()
            .filter(|t| (-EVENT_TIME_LIMIT..=EVENT_TIME_LIMIT).contains(t))
            .max()
        {
            self.watermarks.observe(shard, m, Instant::now());
        }
        Ok(())
    }

    fn on_watermark(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        let w = self.watermarks.current(Instant::now()).max(self.watermark);
        let out = self.emit(w, false)?;
        if w > i64::MIN {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(crate::telemetry::WATERMARK, "aggregate" => self.name.clone())
                .set(w as f64 / 1e6);
        }
        Ok(out)
    }

    fn take_late(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.late_rows)
    }

    fn on_checkpoint(&self) -> Result<Bytes, WindowError> {
        self.snapshot()
    }

    fn on_close(&mut self) -> Result<Option<RecordBatch>, WindowError> {
        self.emit(i64::MAX, true)
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }
}
