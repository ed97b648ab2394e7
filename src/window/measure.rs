//! Measures: accumulators kept as columns, one per measure, indexed by a group slot.
//!
//! An operator allocates a slot per (window, group key) and folds rows into it; a
//! batch's input columns are cast and row-encoded once ([`Measures::inputs`]), so the
//! per-row work is an index and an add. Slots merge (hopping panes into windows,
//! sessions into sessions), turn into output columns, and into state columns for
//! snapshots.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Decimal128Array, FixedSizeBinaryArray,
    FixedSizeBinaryBuilder, Float64Array, Int64Array, ListArray, ListBuilder, RecordBatch,
};
use deltalake::arrow::buffer::NullBuffer;
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{
    DataType, Decimal128Type, Field, FieldRef, Float64Type, Int64Type, Schema,
};
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashSet;

use super::WindowError;
use super::hll::Hll;
use crate::config::{AggregateConfig, MeasureFn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CountAll,
    Count,
    Distinct,
    Approx,
    SumInt,
    SumFloat,
    /// Sum of decimals of this scale.
    SumDecimal(i8),
    AvgInt,
    AvgFloat,
    AvgDecimal(i8),
    Min,
    Max,
}

/// One measure bound to a stream's schema.
struct Bound {
    kind: Kind,
    column: Option<usize>,
    output: FieldRef,
    /// Row encoding of the column (min, max, distinct counts).
    rows: Option<RowConverter>,
}

/// A batch's measure columns, prepared once for per-row folding.
pub(super) enum Input {
    None,
    Valid(Option<NullBuffer>),
    I64(Int64Array),
    F64(Float64Array),
    I128(Decimal128Array),
    Rows(Rows, Option<NullBuffer>),
    Hashes(Vec<u64>, Option<NullBuffer>),
}

fn valid(nulls: &Option<NullBuffer>, i: usize) -> bool {
    nulls.as_ref().is_none_or(|n| n.is_valid(i))
}

/// Accumulator columns of one measure.
enum Acc {
    Count(Vec<i64>),
    SumI {
        sum: Vec<i128>,
        n: Vec<i64>,
    },
    SumF {
        sum: Vec<f64>,
        n: Vec<i64>,
    },
    /// Row-encoded best value so far (min or max), compared as bytes.
    Best(Vec<Option<Box<[u8]>>>),
    Distinct(Vec<HashSet<Box<[u8]>>>),
    Approx(Vec<Hll>),
}

/// The measures of one aggregate over one stream schema.
pub(super) struct Measures {
    bound: Vec<Bound>,
    name: String,
}

fn is_int(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

impl Measures {
    pub fn bind(
        cfg: &AggregateConfig,
        input: &Schema,
        column: &dyn Fn(String, &str) -> Result<usize, WindowError>,
    ) -> Result<Self, WindowError> {
        let mut bound = Vec::with_capacity(cfg.measures.len());
        for m in &cfg.measures {
            let key = format!("{}.measures.{}", cfg.key, m.name);
            let col = m.func.column().map(|c| column(key.clone(), c)).transpose()?;
            let t = col.map(|c| input.field(c).data_type().clone());
            let numeric_only = |what: &str| WindowError::Config {
                key: key.clone(),
                message: format!(
                    "{what} needs a numeric column; \"{}\" is {}",
                    m.func.column().unwrap_or_default(),
                    t.as_ref().map(ToString::to_string).unwrap_or_default()
                ),
            };
            let (kind, out) = match (&m.func, &t) {
                (MeasureFn::CountAll, _) => (Kind::CountAll, DataType::Int64),
                (MeasureFn::Count(_), _) => (Kind::Count, DataType::Int64),
                (MeasureFn::CountDistinct(_), _) => (Kind::Distinct, DataType::Int64),
                (MeasureFn::ApproxCountDistinct(_), _) => (Kind::Approx, DataType::Int64),
                (MeasureFn::Sum(_), Some(t)) if is_int(t) => (Kind::SumInt, DataType::Int64),
                (MeasureFn::Sum(_), Some(t)) if is_float(t) => (Kind::SumFloat, DataType::Float64),
                (MeasureFn::Sum(_), Some(DataType::UInt64)) => {
                    (Kind::SumDecimal(0), DataType::Decimal128(38, 0))
                }
                (MeasureFn::Sum(_), Some(DataType::Decimal128(_, s))) => {
                    (Kind::SumDecimal(*s), DataType::Decimal128(38, *s))
                }
                (MeasureFn::Sum(_), _) => return Err(numeric_only("sum")),
                (MeasureFn::Avg(_), Some(t)) if is_int(t) => (Kind::AvgInt, DataType::Float64),
                (MeasureFn::Avg(_), Some(t)) if is_float(t) => (Kind::AvgFloat, DataType::Float64),
                (MeasureFn::Avg(_), Some(DataType::UInt64)) => (Kind::AvgDecimal(0), DataType::Float64),
                (MeasureFn::Avg(_), Some(DataType::Decimal128(_, s))) => {
                    (Kind::AvgDecimal(*s), DataType::Float64)
                }
                (MeasureFn::Avg(_), _) => return Err(numeric_only("avg")),
                (MeasureFn::Min(_), Some(t)) => (Kind::Min, t.clone()),
                (MeasureFn::Max(_), Some(t)) => (Kind::Max, t.clone()),
                (MeasureFn::Min(_) | MeasureFn::Max(_), None) => (Kind::CountAll, DataType::Int64),
            };
            let rows = match kind {
                Kind::Min | Kind::Max | Kind::Distinct | Kind::Approx => Some(
                    RowConverter::new(vec![SortField::new(t.clone().unwrap_or(DataType::Null))]).map_err(
                        |e| WindowError::Config {
                            key: key.clone(),
                            message: format!(
                                "cannot compare values of type {}: {e}",
                                t.clone().unwrap_or(DataType::Null)
                            ),
                        },
                    )?,
                ),
                _ => None,
            };
            let nullable = !matches!(kind, Kind::CountAll | Kind::Count | Kind::Distinct | Kind::Approx);
            bound.push(Bound {
                kind,
                column: col,
                output: Arc::new(Field::new(&m.name, out, nullable)),
                rows,
            });
        }
        Ok(Self {
            bound,
            name: cfg.name.clone(),
        })
    }

    fn arrow(&self, source: deltalake::arrow::error::ArrowError) -> WindowError {
        WindowError::Arrow {
            aggregate: self.name.clone(),
            source,
        }
    }

    pub fn output_fields(&self) -> impl Iterator<Item = FieldRef> + '_ {
        self.bound.iter().map(|b| b.output.clone())
    }

    /// The batch's columns, cast and encoded for [`Store::update`].
    pub fn inputs(&self, batch: &RecordBatch) -> Result<Vec<Input>, WindowError> {
        let mut out = Vec::with_capacity(self.bound.len());
        for b in &self.bound {
            let Some(c) = b.column.map(|c| batch.column(c)) else {
                out.push(Input::None);
                continue;
            };
            let nulls = c.logical_nulls();
            let input = match b.kind {
                Kind::CountAll => Input::None,
                Kind::Count => Input::Valid(nulls),
                Kind::SumInt | Kind::AvgInt => Input::I64(
                    cast(c, &DataType::Int64)
                        .map_err(|e| self.arrow(e))?
                        .as_primitive::<Int64Type>()
                        .clone(),
                ),
                Kind::SumFloat | Kind::AvgFloat => Input::F64(
                    cast(c, &DataType::Float64)
                        .map_err(|e| self.arrow(e))?
                        .as_primitive::<Float64Type>()
                        .clone(),
                ),
                Kind::SumDecimal(s) | Kind::AvgDecimal(s) => Input::I128(
                    cast(c, &DataType::Decimal128(38, s))
                        .map_err(|e| self.arrow(e))?
                        .as_primitive::<Decimal128Type>()
                        .clone(),
                ),
                Kind::Min | Kind::Max | Kind::Distinct | Kind::Approx => {
                    let conv = b.rows.as_ref().ok_or_else(|| self.arrow(missing_converter()))?;
                    let rows = conv
                        .convert_columns(std::slice::from_ref(c))
                        .map_err(|e| self.arrow(e))?;
                    if b.kind == Kind::Approx {
                        let hashes = rows.iter().map(|r| Hll::hash(r.as_ref())).collect();
                        Input::Hashes(hashes, nulls)
                    } else {
                        Input::Rows(rows, nulls)
                    }
                }
            };
            out.push(input);
        }
        Ok(out)
    }

    /// A store with no slots for these measures.
    pub fn store(&self) -> Store {
        Store {
            accs: self
                .bound
                .iter()
                .map(|b| match b.kind {
                    Kind::CountAll | Kind::Count => Acc::Count(Vec::new()),
                    Kind::SumInt | Kind::SumDecimal(_) | Kind::AvgInt | Kind::AvgDecimal(_) => Acc::SumI {
                        sum: Vec::new(),
                        n: Vec::new(),
                    },
                    Kind::SumFloat | Kind::AvgFloat => Acc::SumF {
                        sum: Vec::new(),
                        n: Vec::new(),
                    },
                    Kind::Min | Kind::Max => Acc::Best(Vec::new()),
                    Kind::Distinct => Acc::Distinct(Vec::new()),
                    Kind::Approx => Acc::Approx(Vec::new()),
                })
                .collect(),
            kinds: self.bound.iter().map(|b| b.kind).collect(),
            len: 0,
            free: Vec::new(),
        }
    }

    /// Output columns of `slots` of `store`, in measure order.
    pub fn finish(&self, store: &Store, slots: &[u32]) -> Result<Vec<ArrayRef>, WindowError> {
        self.finish_merged(store, slots.len(), |i| std::slice::from_ref(&slots[i]))
    }

    /// Output columns of `n` rows, row `i` merging the slots `group(i)` of `store` (a
    /// hopping window's panes). Nothing is copied: distinct sets are counted through a
    /// scratch set of borrowed values, so emitting a window costs hashing its panes'
    /// values once.
    pub fn finish_merged<'a>(
        &self,
        store: &Store,
        n: usize,
        group: impl Fn(usize) -> &'a [u32],
    ) -> Result<Vec<ArrayRef>, WindowError> {
        let mut out = Vec::with_capacity(self.bound.len());
        for (b, acc) in self.bound.iter().zip(&store.accs) {
            let rows = (0..n).map(|i| group(i).iter().map(|&s| s as usize));
            let col: ArrayRef = match (acc, b.kind) {
                (Acc::Count(v), _) => {
                    Arc::new(Int64Array::from_iter_values(rows.map(|g| g.map(|s| v[s]).sum())))
                }
                (Acc::SumI { sum, n }, kind) => {
                    let totals =
                        rows.map(|g| g.fold((0i128, 0i64), |(a, c), s| (a.saturating_add(sum[s]), c + n[s])));
                    match kind {
                        Kind::SumInt => Arc::new(Int64Array::from_iter(totals.map(|(total, c)| {
                            (c > 0).then(|| {
                                i64::try_from(total).unwrap_or(if total > 0 { i64::MAX } else { i64::MIN })
                            })
                        }))),
                        Kind::SumDecimal(scale) => Arc::new(
                            Decimal128Array::from_iter(totals.map(|(total, c)| (c > 0).then_some(total)))
                                .with_precision_and_scale(38, scale)
                                .map_err(|e| self.arrow(e))?,
                        ),
                        _ => {
                            let scale = match kind {
                                Kind::AvgDecimal(s) => 10f64.powi(i32::from(s)),
                                _ => 1.0,
                            };
                            #[allow(clippy::cast_precision_loss)]
                            Arc::new(Float64Array::from_iter(
                                totals.map(|(total, c)| (c > 0).then(|| total as f64 / scale / c as f64)),
                            ))
                        }
                    }
                }
                (Acc::SumF { sum, n }, kind) => {
                    let totals = rows.map(|g| g.fold((0f64, 0i64), |(a, c), s| (a + sum[s], c + n[s])));
                    #[allow(clippy::cast_precision_loss)]
                    let avg = kind == Kind::AvgFloat;
                    Arc::new(Float64Array::from_iter(totals.map(|(total, c)| {
                        #[allow(clippy::cast_precision_loss)]
                        (c > 0).then(|| if avg { total / c as f64 } else { total })
                    })))
                }
                (Acc::Best(v), kind) => {
                    let conv = b.rows.as_ref().ok_or_else(|| self.arrow(missing_converter()))?;
                    let best = rows.map(|g| {
                        g.filter_map(|s| v[s].as_deref())
                            .reduce(|a, x| if (kind == Kind::Min) == (x < a) { x } else { a })
                    });
                    decode_values(conv, best, b.output.data_type()).map_err(|e| self.arrow(e))?
                }
                (Acc::Distinct(v), _) => {
                    let mut scratch: HashSet<&[u8]> = HashSet::new();
                    Arc::new(Int64Array::from_iter_values(rows.map(|g| {
                        let g: Vec<usize> = g.collect();
                        if let [one] = g[..] {
                            return v[one].len() as i64;
                        }
                        scratch.clear();
                        for s in g {
                            scratch.extend(v[s].iter().map(AsRef::as_ref));
                        }
                        scratch.len() as i64
                    })))
                }
                (Acc::Approx(v), _) => {
                    let mut scratch = Hll::default();
                    Arc::new(Int64Array::from_iter_values(rows.map(|g| {
                        scratch.clear();
                        for s in g {
                            scratch.merge(&v[s]);
                        }
                        scratch.estimate()
                    })))
                }
            };
            out.push(col);
        }
        Ok(out)
    }

    /// Columns holding the complete state of `slots`, and their fields.
    pub fn state_columns(&self, store: &Store, slots: &[u32]) -> Result<Vec<(Field, ArrayRef)>, WindowError> {
        let mut out = Vec::new();
        for (j, acc) in store.accs.iter().enumerate() {
            let name = |part: &str| format!("__m{j}_{part}");
            match acc {
                Acc::Count(v) => out.push((
                    Field::new(name("n"), DataType::Int64, false),
                    Arc::new(Int64Array::from_iter_values(slots.iter().map(|&s| v[s as usize]))) as ArrayRef,
                )),
                Acc::SumI { sum, n } => {
                    let mut b = FixedSizeBinaryBuilder::with_capacity(slots.len(), 16);
                    for &s in slots {
                        b.append_value(sum[s as usize].to_le_bytes())
                            .map_err(|e| self.arrow(e))?;
                    }
                    out.push((
                        Field::new(name("sum"), DataType::FixedSizeBinary(16), false),
                        Arc::new(b.finish()),
                    ));
                    out.push((
                        Field::new(name("n"), DataType::Int64, false),
                        Arc::new(Int64Array::from_iter_values(slots.iter().map(|&s| n[s as usize]))),
                    ));
                }
                Acc::SumF { sum, n } => {
                    out.push((
                        Field::new(name("sum"), DataType::Float64, false),
                        Arc::new(Float64Array::from_iter_values(
                            slots.iter().map(|&s| sum[s as usize]),
                        )),
                    ));
                    out.push((
                        Field::new(name("n"), DataType::Int64, false),
                        Arc::new(Int64Array::from_iter_values(slots.iter().map(|&s| n[s as usize]))),
                    ));
                }
                Acc::Best(v) => out.push((
                    Field::new(name("best"), DataType::Binary, true),
                    Arc::new(BinaryArray::from_iter(
                        slots.iter().map(|&s| v[s as usize].as_deref()),
                    )),
                )),
                Acc::Distinct(v) => {
                    let mut b = ListBuilder::new(BinaryBuilder::new());
                    for &s in slots {
                        // Sorted, so that equal state always serialises to equal bytes.
                        let mut values: Vec<&[u8]> = v[s as usize].iter().map(AsRef::as_ref).collect();
                        values.sort_unstable();
                        for x in values {
                            b.values().append_value(x);
                        }
                        b.append(true);
                    }
                    let list = b.finish();
                    out.push((
                        Field::new(name("set"), list.data_type().clone(), false),
                        Arc::new(list),
                    ));
                }
                Acc::Approx(v) => out.push((
                    Field::new(name("hll"), DataType::Binary, false),
                    Arc::new(BinaryArray::from_iter_values(
                        slots.iter().map(|&s| v[s as usize].bytes()),
                    )),
                )),
            }
        }
        Ok(out)
    }

    /// Restores slots from state columns written by [`Measures::state_columns`] (the
    /// columns of `batch` from `first` on); returns the new slots in row order.
    pub fn restore(
        &self,
        store: &mut Store,
        batch: &RecordBatch,
        first: usize,
    ) -> Result<Vec<u32>, WindowError> {
        let bad = |m: &str| WindowError::State {
            aggregate: self.name.clone(),
            message: m.to_string(),
        };
        let slots: Vec<u32> = (0..batch.num_rows()).map(|_| store.alloc()).collect();
        let mut c = first;
        let mut next = || {
            let col = batch.columns().get(c).cloned();
            c += 1;
            col.ok_or_else(|| bad("fewer state columns than measures"))
        };
        for acc in &mut store.accs {
            match acc {
                Acc::Count(v) => {
                    let col = next()?;
                    let a = col
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| bad("count column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        v[s as usize] = a.value(i);
                    }
                }
                Acc::SumI { sum, n } => {
                    let (cs, cn) = (next()?, next()?);
                    let a = cs
                        .as_any()
                        .downcast_ref::<FixedSizeBinaryArray>()
                        .ok_or_else(|| bad("sum column"))?;
                    let b = cn
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| bad("sum count column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        let bytes: [u8; 16] = a.value(i).try_into().map_err(|_| bad("sum width"))?;
                        sum[s as usize] = i128::from_le_bytes(bytes);
                        n[s as usize] = b.value(i);
                    }
                }
                Acc::SumF { sum, n } => {
                    let (cs, cn) = (next()?, next()?);
                    let a = cs
                        .as_primitive_opt::<Float64Type>()
                        .ok_or_else(|| bad("sum column"))?;
                    let b = cn
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| bad("sum count column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        sum[s as usize] = a.value(i);
                        n[s as usize] = b.value(i);
                    }
                }
                Acc::Best(v) => {
                    let col = next()?;
                    let a = col.as_binary_opt::<i32>().ok_or_else(|| bad("min/max column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        v[s as usize] = a.is_valid(i).then(|| a.value(i).into());
                    }
                }
                Acc::Distinct(v) => {
                    let col = next()?;
                    let a = col
                        .as_any()
                        .downcast_ref::<ListArray>()
                        .ok_or_else(|| bad("distinct column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        let values = a.value(i);
                        let values = values
                            .as_binary_opt::<i32>()
                            .ok_or_else(|| bad("distinct values"))?;
                        v[s as usize] = values.iter().flatten().map(Into::into).collect();
                    }
                }
                Acc::Approx(v) => {
                    let col = next()?;
                    let a = col.as_binary_opt::<i32>().ok_or_else(|| bad("approx column"))?;
                    for (i, &s) in slots.iter().enumerate() {
                        v[s as usize] = Hll::from_bytes(a.value(i)).ok_or_else(|| bad("approx registers"))?;
                    }
                }
            }
        }
        Ok(slots)
    }
}

fn missing_converter() -> deltalake::arrow::error::ArrowError {
    deltalake::arrow::error::ArrowError::InvalidArgumentError("measure without a row converter".into())
}

/// Decodes row-encoded single values (None = null) into an array of `t`.
fn decode_values<'a>(
    conv: &RowConverter,
    values: impl Iterator<Item = Option<&'a [u8]>>,
    t: &DataType,
) -> Result<ArrayRef, deltalake::arrow::error::ArrowError> {
    // A null of the column's type, row-encoded, stands in for "no value yet".
    let null_row = conv.convert_columns(&[deltalake::arrow::array::new_null_array(t, 1)])?;
    let null = null_row.row(0);
    let parser = conv.parser();
    let rows: Vec<_> = values
        .map(|v| match v {
            Some(b) => parser.parse(b),
            None => null,
        })
        .collect();
    let mut cols = conv.convert_rows(rows)?;
    cols.pop()
        .ok_or_else(|| deltalake::arrow::error::ArrowError::InvalidArgumentError("no column decoded".into()))
}

/// Accumulators of every measure, as columns indexed by slot; freed slots are reused.
pub(super) struct Store {
    accs: Vec<Acc>,
    kinds: Vec<Kind>,
    len: usize,
    free: Vec<u32>,
}

impl Store {
    /// A fresh, empty slot.
    pub fn alloc(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.len;
        self.len += 1;
        for acc in &mut self.accs {
            match acc {
                Acc::Count(v) => v.push(0),
                Acc::SumI { sum, n } => {
                    sum.push(0);
                    n.push(0);
                }
                Acc::SumF { sum, n } => {
                    sum.push(0.0);
                    n.push(0);
                }
                Acc::Best(v) => v.push(None),
                Acc::Distinct(v) => v.push(HashSet::new()),
                Acc::Approx(v) => v.push(Hll::default()),
            }
        }
        u32::try_from(s).unwrap_or(u32::MAX)
    }

    /// Empties `slot` (releasing what it holds) for reuse.
    pub fn release(&mut self, slot: u32) {
        let s = slot as usize;
        for acc in &mut self.accs {
            match acc {
                Acc::Count(v) => v[s] = 0,
                Acc::SumI { sum, n } => {
                    sum[s] = 0;
                    n[s] = 0;
                }
                Acc::SumF { sum, n } => {
                    sum[s] = 0.0;
                    n[s] = 0;
                }
                Acc::Best(v) => v[s] = None,
                Acc::Distinct(v) => v[s] = HashSet::new(),
                Acc::Approx(v) => v[s] = Hll::default(),
            }
        }
        self.free.push(slot);
    }

    /// Slots in use.
    pub fn live(&self) -> usize {
        self.len - self.free.len()
    }

    /// Folds row `i` of a batch's `inputs` into `slot`.
    #[inline]
    pub fn update(&mut self, slot: u32, inputs: &[Input], i: usize) {
        let s = slot as usize;
        for ((acc, input), kind) in self.accs.iter_mut().zip(inputs).zip(&self.kinds) {
            match (acc, input) {
                (Acc::Count(v), Input::None) => v[s] += 1,
                (Acc::Count(v), Input::Valid(nulls)) => v[s] += i64::from(valid(nulls, i)),
                (Acc::SumI { sum, n }, Input::I64(a)) if a.is_valid(i) => {
                    sum[s] += i128::from(a.value(i));
                    n[s] += 1;
                }
                (Acc::SumI { sum, n }, Input::I128(a)) if a.is_valid(i) => {
                    sum[s] = sum[s].saturating_add(a.value(i));
                    n[s] += 1;
                }
                (Acc::SumF { sum, n }, Input::F64(a)) if a.is_valid(i) => {
                    sum[s] += a.value(i);
                    n[s] += 1;
                }
                (Acc::Best(v), Input::Rows(rows, nulls)) if valid(nulls, i) => {
                    let r = rows.row(i);
                    let better = match &v[s] {
                        None => true,
                        Some(cur) if *kind == Kind::Min => r.as_ref() < cur.as_ref(),
                        Some(cur) => r.as_ref() > cur.as_ref(),
                    };
                    if better {
                        v[s] = Some(r.as_ref().into());
                    }
                }
                (Acc::Distinct(v), Input::Rows(rows, nulls)) if valid(nulls, i) => {
                    let r = rows.row(i);
                    if !v[s].contains(r.as_ref()) {
                        v[s].insert(r.as_ref().into());
                    }
                }
                (Acc::Approx(v), Input::Hashes(h, nulls)) if valid(nulls, i) => v[s].add(h[i]),
                _ => {}
            }
        }
    }

    /// Folds `src` into `dst` within this store and frees `src` (merging sessions).
    pub fn absorb(&mut self, dst: u32, src: u32) {
        let (d, s) = (dst as usize, src as usize);
        for (acc, kind) in self.accs.iter_mut().zip(&self.kinds) {
            match acc {
                Acc::Count(a) => a[d] += a[s],
                Acc::SumI { sum, n } => {
                    sum[d] = sum[d].saturating_add(sum[s]);
                    n[d] += n[s];
                }
                Acc::SumF { sum, n } => {
                    sum[d] += sum[s];
                    n[d] += n[s];
                }
                Acc::Best(a) => {
                    if let Some(o) = a[s].take() {
                        let better = match &a[d] {
                            None => true,
                            Some(cur) if *kind == Kind::Min => o < *cur,
                            Some(cur) => o > *cur,
                        };
                        if better {
                            a[d] = Some(o);
                        }
                    }
                }
                Acc::Distinct(a) => {
                    let taken = std::mem::take(&mut a[s]);
                    a[d].extend(taken);
                }
                Acc::Approx(a) => {
                    let taken = std::mem::take(&mut a[s]);
                    a[d].merge(&taken);
                }
            }
        }
        self.release(src);
    }
}
