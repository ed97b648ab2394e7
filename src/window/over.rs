//! Post-window steps (`over`): `func(measure) OVER (PARTITION BY keys ORDER BY
//! window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)` over the window rows, the
//! moving averages dashboards draw from windowed counts.
//!
//! Only final rows of tumbling and hopping windows get them (checked by the resolver):
//! those are emitted once each, in window_start order, so each partition's last `n`
//! values are all the state a step needs, and a row's value equals what a SQL window
//! function over the finished table gives. Rows of one window_start are taken in the
//! order of their group keys (rows' sort order), which only matters when the partition
//! leaves some keys out.
//!
//! Crash story: the values are operator state, written in the operator's snapshot
//! (see `snapshot.rs`) before the commit that depends on them, so a restart resumes each
//! partition's frame exactly where the committed rows left it.

use std::collections::VecDeque;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type, Schema, SchemaRef};
use deltalake::arrow::row::{RowConverter, SortField};
use hashbrown::HashMap;

use super::WindowError;
use crate::config::{Over, OverFn};

/// One value of a frame: integers stay exact, floats are kept as their bits (so a
/// snapshot holds NaN too).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum Num {
    I(i64),
    F(u64),
}

/// A partition's frame: its last values, oldest first.
type Frame = VecDeque<Option<Num>>;

struct Step {
    cfg: Over,
    /// Column of the measure in the rows before the steps.
    measure: usize,
    partition: Vec<usize>,
    keys: Option<RowConverter>,
    /// Whether values are integers (else floats).
    int: bool,
    /// Each partition's last `preceding + 1` values, oldest first.
    frames: HashMap<Box<[u8]>, Frame>,
}

/// The steps of one aggregate.
pub(super) struct OverSteps {
    steps: Vec<Step>,
    output: SchemaRef,
}

fn config_err(aggregate_key: &str, name: &str, message: String) -> WindowError {
    WindowError::Config {
        key: format!("{aggregate_key}.over.{name}"),
        message,
    }
}

impl OverSteps {
    /// Binds `over` to the rows the operator emits (`base`); `None` when there is none.
    pub fn bind(aggregate_key: &str, over: &[Over], base: &SchemaRef) -> Result<Option<Self>, WindowError> {
        if over.is_empty() {
            return Ok(None);
        }
        let mut steps = Vec::with_capacity(over.len());
        let mut fields: Vec<FieldRef> = base.fields().iter().cloned().collect();
        for o in over {
            let err = |m: String| config_err(aggregate_key, &o.name, m);
            let measure = base
                .index_of(&o.measure)
                .map_err(|_| err(format!("no measure \"{}\"", o.measure)))?;
            let t = base.field(measure).data_type();
            let int = t.is_integer();
            if !int && !t.is_floating() && !matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
                return Err(err(format!("measure \"{}\" is {t}, not a number", o.measure)));
            }
            let mut partition = Vec::with_capacity(o.partition_by.len());
            for p in &o.partition_by {
                partition.push(
                    base.index_of(p)
                        .map_err(|_| err(format!("no group key \"{p}\"")))?,
                );
            }
            let keys = if partition.is_empty() {
                None
            } else {
                let sort = partition
                    .iter()
                    .map(|&i| SortField::new(base.field(i).data_type().clone()))
                    .collect();
                Some(RowConverter::new(sort).map_err(|e| err(e.to_string()))?)
            };
            let out_type = match o.func {
                OverFn::Avg => DataType::Float64,
                OverFn::Count => DataType::Int64,
                _ if int => DataType::Int64,
                _ => DataType::Float64,
            };
            fields.push(Arc::new(Field::new(&o.name, out_type, true)));
            steps.push(Step {
                cfg: o.clone(),
                measure,
                partition,
                keys,
                int: int && o.func != OverFn::Avg,
                frames: HashMap::new(),
            });
        }
        Ok(Some(Self {
            steps,
            output: Arc::new(Schema::new(fields)),
        }))
    }

    /// The rows' schema with the steps' columns.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Adds each step's column to `rows` (final windows, in window_start order) and
    /// moves the frames on.
    pub fn apply(&mut self, rows: &RecordBatch) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        for step in &mut self.steps {
            cols.push(step.apply(rows)?);
        }
        RecordBatch::try_new(self.output.clone(), cols)
    }

    /// The frames, in a canonical order (so equal state is equal bytes).
    pub fn to_json(&self) -> String {
        let frames: Vec<Vec<(String, &Frame)>> = self
            .steps
            .iter()
            .map(|s| {
                let mut f: Vec<(String, &Frame)> = s.frames.iter().map(|(k, v)| (hex(k), v)).collect();
                f.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                f
            })
            .collect();
        serde_json::to_string(&frames).unwrap_or_default()
    }

    pub fn restore_json(&mut self, json: &str) -> Result<(), String> {
        let frames: Vec<Vec<(String, Frame)>> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if frames.len() != self.steps.len() {
            return Err(format!(
                "{} over steps saved, {} configured",
                frames.len(),
                self.steps.len()
            ));
        }
        for (step, saved) in self.steps.iter_mut().zip(frames) {
            step.frames = saved
                .into_iter()
                .map(|(k, v)| unhex(&k).map(|k| (k, v)))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

impl Step {
    fn apply(&mut self, rows: &RecordBatch) -> Result<ArrayRef, deltalake::arrow::error::ArrowError> {
        let n = rows.num_rows();
        let col = rows.column(self.measure);
        let values: Vec<Option<Num>> = if self.int {
            let c = cast(col, &DataType::Int64)?;
            c.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(Num::I))
                .collect()
        } else {
            let c = cast(col, &DataType::Float64)?;
            c.as_primitive::<Float64Type>()
                .iter()
                .map(|v| v.map(|f| Num::F(f.to_bits())))
                .collect()
        };
        let keys = match &self.keys {
            None => None,
            Some(conv) => {
                let cols: Vec<ArrayRef> = self.partition.iter().map(|&i| rows.column(i).clone()).collect();
                Some(conv.convert_columns(&cols)?)
            }
        };
        let cap = self.cfg.preceding as usize + 1;
        let mut ints: Vec<Option<i64>> = Vec::new();
        let mut floats: Vec<Option<f64>> = Vec::new();
        for (i, v) in values.into_iter().enumerate() {
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
            let frame = match self.frames.get_mut(key) {
                Some(f) => f,
                None => self
                    .frames
                    .entry(key.into())
                    .or_insert_with(|| VecDeque::with_capacity(cap)),
            };
            if frame.len() == cap {
                frame.pop_front();
            }
            frame.push_back(v);
            match fold(self.cfg.func, self.int, frame) {
                Folded::Int(x) => ints.push(x),
                Folded::Float(x) => floats.push(x),
            }
        }
        debug_assert!(ints.len() == n || floats.len() == n);
        Ok(if self.cfg.func == OverFn::Count || self.int {
            Arc::new(Int64Array::from(ints))
        } else {
            Arc::new(Float64Array::from(floats))
        })
    }
}

enum Folded {
    Int(Option<i64>),
    Float(Option<f64>),
}

/// The frame's aggregate, nulls ignored as SQL does (an all-null frame gives NULL,
/// COUNT gives 0); `int`: the frame holds integers, and SUM/MIN/MAX stay integers.
fn fold(func: OverFn, int: bool, frame: &Frame) -> Folded {
    let present = frame.iter().flatten();
    let as_f64 = |v: &Num| match *v {
        #[allow(clippy::cast_precision_loss)]
        Num::I(i) => i as f64,
        Num::F(b) => f64::from_bits(b),
    };
    match func {
        OverFn::Count => Folded::Int(Some(i64::try_from(present.count()).unwrap_or(i64::MAX))),
        OverFn::Avg => {
            let (mut sum, mut count) = (0f64, 0u32);
            for v in present {
                sum += as_f64(v);
                count += 1;
            }
            Folded::Float((count > 0).then(|| sum / f64::from(count)))
        }
        _ if int => {
            let ints = present.map(|v| match *v {
                Num::I(i) => i,
                Num::F(b) => f64::from_bits(b) as i64,
            });
            Folded::Int(match func {
                OverFn::Sum => ints.reduce(i64::wrapping_add),
                OverFn::Min => ints.min(),
                _ => ints.max(),
            })
        }
        _ => {
            let floats = present.map(as_f64);
            Folded::Float(match func {
                OverFn::Sum => floats.reduce(|a, b| a + b),
                OverFn::Min => floats.reduce(f64::min),
                _ => floats.reduce(f64::max),
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Box<[u8]>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("bad frame key {s}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad frame key {s}")))
        .collect()
}
