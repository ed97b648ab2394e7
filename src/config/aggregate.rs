//! `[[aggregates]]`: windowed aggregates, resolved from their spec. Column names and
//! types are checked when the operator meets the stream's schema (see
//! [`crate::window::build`]); everything knowable from the file alone is checked here.

use std::collections::{BTreeMap, BTreeSet};

use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;

use super::spec::{AggregateSpec, EmitMode, LatePolicy, WindowSpec};
use super::sql::resolve::StreamTime;
use super::{ConfigError, Resolver, Span};

#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub name: String,
    /// `aggregates[i]`, for error messages.
    pub key: String,
    pub from: String,
    pub event_time: String,
    pub window: Window,
    /// Allowed out-of-orderness (zero for `global`).
    pub watermark: Span,
    pub idle_timeout: Option<Span>,
    pub group_by: Vec<String>,
    pub measures: Vec<Measure>,
    /// SQL condition rows must meet, checked for syntax here.
    pub filter: Option<String>,
    pub emit: EmitMode,
    pub late: LatePolicy,
    /// `late = "update"`: how long a window stays correctable after its end.
    pub lateness: Span,
    /// `late = "dlq"`: the late-events table.
    pub late_table: Option<String>,
    /// Each shard's windows are state of their own (`partitioned_by_key`, resolved
    /// against the source): see `runtime::partitioned`.
    pub per_partition: bool,
    /// Post-window steps (`over`), computed over the window rows as they are emitted.
    pub over: Vec<Over>,
    /// Where the watermark's delay came from, for `explain`.
    pub watermark_from: WatermarkFrom,
    /// The query it was written as (`sql`), if it was.
    pub sql: Option<String>,
}

/// Where an aggregate's watermark delay is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatermarkFrom {
    /// Its own `watermark` key.
    Aggregate,
    /// `[streams.<name>] watermark`.
    Stream(String),
    /// Global windows have none.
    None,
}

/// `name = "func(measure) over (…)"`: a moving aggregate of a measure over the last
/// `preceding + 1` window rows of its partition, in window_start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub name: String,
    pub func: OverFn,
    /// The measure it reads.
    pub measure: String,
    pub partition_by: Vec<String>,
    pub preceding: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverFn {
    Avg,
    Sum,
    Min,
    Max,
    Count,
}

impl OverFn {
    pub const ALL: [OverFn; 5] = [Self::Avg, Self::Sum, Self::Min, Self::Max, Self::Count];

    /// As SQL and the `over` values write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Count => "count",
        }
    }
}

impl AggregateConfig {
    /// Whether the output table is written by MERGE on (window_start, group keys):
    /// rows are updated after they were first written. Global windows always are: each
    /// bounded run ends by writing every key's total so far.
    pub fn keyed(&self) -> bool {
        self.emit == EmitMode::Update || self.late == LatePolicy::Update || self.window == Window::Global
    }

    /// The columns a keyed output table is merged on: the window (its end too for
    /// cumulating windows, which share starts) and the group keys.
    pub fn merge_key(&self) -> Vec<String> {
        let mut key = vec!["window_start".to_string()];
        if matches!(self.window, Window::Cumulate { .. }) {
            key.push("window_end".to_string());
        }
        key.extend(self.group_by.iter().cloned());
        key
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Tumbling { size: Span },
    Hopping { size: Span, slide: Span },
    Session { gap: Span },
    Cumulate { size: Span, step: Span },
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// Output column name.
    pub name: String,
    pub func: MeasureFn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasureFn {
    /// `count(*)`: rows in the group.
    CountAll,
    /// `count(col)`: rows where `col` is not null.
    Count(String),
    /// `count_distinct(col)` or `count(distinct col)`: exact number of distinct non-null values.
    CountDistinct(String),
    /// `approx_count_distinct(col)`: HyperLogLog estimate (see [`crate::window`]).
    ApproxCountDistinct(String),
    Sum(String),
    Avg(String),
    Min(String),
    Max(String),
}

impl MeasureFn {
    /// The column it reads, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            Self::CountAll => None,
            Self::Count(c)
            | Self::CountDistinct(c)
            | Self::ApproxCountDistinct(c)
            | Self::Sum(c)
            | Self::Avg(c)
            | Self::Min(c)
            | Self::Max(c) => Some(c),
        }
    }
}

const SUPPORTED: &str = "count(*), count(col), count_distinct(col), approx_count_distinct(col), \
                         sum(col), avg(col), min(col), max(col)";

/// Parses an aggregate expression such as `count(*)` or `sum(amount)`.
pub fn parse_measure(expr: &str) -> Result<MeasureFn, String> {
    let e = expr.trim();
    let (func, arg) = e
        .strip_suffix(')')
        .and_then(|s| s.split_once('('))
        .map(|(f, a)| (f.trim().to_ascii_lowercase(), a.trim()))
        .ok_or_else(|| format!("\"{expr}\" is not an aggregate expression (try \"count(*)\")"))?;
    let col = |c: &str| -> Result<String, String> {
        let ok = !c.is_empty() && !c.contains(|ch: char| ch.is_whitespace() || "(),*".contains(ch));
        if ok {
            Ok(c.to_string())
        } else {
            Err(format!("\"{expr}\": \"{c}\" is not a column name"))
        }
    };
    let distinct_arg = arg
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("distinct "))
        .map(|_| arg[9..].trim());
    match (func.as_str(), arg) {
        ("count", "*") => Ok(MeasureFn::CountAll),
        ("count", a) => match distinct_arg {
            Some(c) => Ok(MeasureFn::CountDistinct(col(c)?)),
            None => Ok(MeasureFn::Count(col(a)?)),
        },
        ("count_distinct", a) => Ok(MeasureFn::CountDistinct(col(a)?)),
        ("approx_count_distinct", a) => Ok(MeasureFn::ApproxCountDistinct(col(a)?)),
        ("sum", a) => Ok(MeasureFn::Sum(col(a)?)),
        ("avg", a) => Ok(MeasureFn::Avg(col(a)?)),
        ("min", a) => Ok(MeasureFn::Min(col(a)?)),
        ("max", a) => Ok(MeasureFn::Max(col(a)?)),
        _ => Err(format!(
            "\"{expr}\" is not a supported aggregate (supported: {SUPPORTED})"
        )),
    }
}

impl Resolver<'_> {
    /// Resolves `aggregates[i]`; `names` holds every table name taken so far.
    pub(super) fn aggregate(
        &self,
        i: usize,
        mut a: AggregateSpec,
        streams: &Option<Vec<String>>,
        times: &BTreeMap<String, StreamTime>,
        names: &mut BTreeSet<String>,
    ) -> Result<AggregateConfig, ConfigError> {
        let key = format!("aggregates[{i}]");
        let sql = match a.sql.take() {
            Some(sql) => Some(self.read_sql(&key, &mut a, sql)?),
            None => None,
        };
        let missing = |k: &str, what: &str| self.err(format!("{key}.{k}"), format!("missing: {what}"));
        let name = a.name.ok_or_else(|| missing("name", "the output table's name"))?;
        let from = a
            .from
            .ok_or_else(|| missing("from", "the stream it aggregates"))?;
        let stream_time = times.get(&from);
        let event_time = match (a.event_time, stream_time.and_then(|t| t.event_time.clone())) {
            (Some(c), _) | (None, Some(c)) => c,
            (None, None) => return Err(missing("event_time", "the event-time column")),
        };
        let window = a.window.ok_or_else(|| {
            missing(
                "window",
                "the window, e.g. { kind = \"tumbling\", size = \"1m\" }",
            )
        })?;
        self.name(&format!("{key}.name"), &name)?;
        if !names.insert(name.clone()) {
            return Err(self.err(format!("{key}.name"), format!("\"{name}\" is used twice")));
        }
        self.stream(&format!("{key}.from"), streams, &from)?;
        let positive = |k: &str, s: Span| {
            if s.0.is_zero() {
                Err(self.err(format!("{key}.window.{k}"), "must be longer than 0"))
            } else {
                Ok(s)
            }
        };
        let window = match window {
            WindowSpec::Tumbling { size } => Window::Tumbling {
                size: positive("size", size)?,
            },
            WindowSpec::Hopping { size, slide } => {
                let (size, slide) = (positive("size", size)?, positive("slide", slide)?);
                if slide.0 > size.0 {
                    return Err(self.err(
                        format!("{key}.window.slide"),
                        format!("{slide:?} is longer than the window size {size:?}; events between windows would be lost"),
                    ));
                }
                Window::Hopping { size, slide }
            }
            WindowSpec::Session { gap } => Window::Session {
                gap: positive("gap", gap)?,
            },
            WindowSpec::Cumulate { size, step } => {
                let (size, step) = (positive("size", size)?, positive("step", step)?);
                if step.0 > size.0 || size.as_micros() % step.as_micros() != 0 {
                    return Err(self.err(
                        format!("{key}.window.size"),
                        format!("{size:?} must be a whole multiple of the step {step:?}"),
                    ));
                }
                Window::Cumulate { size, step }
            }
            WindowSpec::Global => Window::Global,
        };
        // The stream's declared delay applies to aggregates on its declared column.
        let declared = stream_time.filter(|t| t.event_time.as_deref() == Some(event_time.as_str()));
        let (watermark, watermark_from) = match (a.watermark, window, declared.and_then(|t| t.delay)) {
            (Some(w), _, _) => (w, WatermarkFrom::Aggregate),
            (None, Window::Global, _) => (Span::from_secs(0), WatermarkFrom::None),
            (None, _, Some(d)) => (d, WatermarkFrom::Stream(from.clone())),
            (None, _, None) => {
                return Err(self.err(
                    format!("{key}.watermark"),
                    format!(
                        "missing: how far behind the latest event time the watermark trails, e.g. \"30s\" \
                         (here or for every aggregate of the stream: [streams.{from}] watermark = \
                         \"WATERMARK FOR {event_time} AS {event_time} - INTERVAL '30' SECOND\")"
                    ),
                ));
            }
        };
        self.columns(&format!("{key}.group_by"), &a.group_by)?;
        if a.measures.is_empty() {
            return Err(self.err(
                format!("{key}.measures"),
                "name at least one measure, e.g. { n = \"count(*)\" }",
            ));
        }
        let mut measures = Vec::with_capacity(a.measures.len());
        for (name, expr) in &a.measures {
            let mkey = format!("{key}.measures.{name}");
            self.name(&mkey, name)?;
            if a.group_by.contains(name) || name == "window_start" || name == "window_end" {
                return Err(self.err(&mkey, format!("\"{name}\" is also a group-by or window column")));
            }
            let func = parse_measure(expr).map_err(|m| self.err(&mkey, m))?;
            measures.push(Measure {
                name: name.clone(),
                func,
            });
        }
        if let Some(f) = &a.filter {
            Parser::new(&GenericDialect {})
                .try_with_sql(f)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| {
                    self.err(
                        format!("{key}.filter"),
                        format!("\"{f}\" is not a SQL condition: {e}"),
                    )
                })?;
        }
        let lateness = match (a.late, a.lateness) {
            (LatePolicy::Update, Some(l)) => l,
            (LatePolicy::Update, None) => {
                return Err(self.err(
                    format!("{key}.lateness"),
                    "late = \"update\" needs how long windows stay correctable, e.g. lateness = \"1h\"",
                ));
            }
            (_, Some(_)) => {
                return Err(self.err(format!("{key}.lateness"), "only used with late = \"update\""));
            }
            (_, None) => Span::from_secs(0),
        };
        let late_table = match (a.late, a.late_table) {
            (LatePolicy::Dlq, t) => {
                let t = t.unwrap_or_else(|| format!("{name}_late_events"));
                self.name(&format!("{key}.late_table"), &t)?;
                if !names.insert(t.clone()) {
                    return Err(self.err(format!("{key}.late_table"), format!("\"{t}\" is used twice")));
                }
                Some(t)
            }
            (_, Some(_)) => {
                return Err(self.err(format!("{key}.late_table"), "only used with late = \"dlq\""));
            }
            (_, None) => None,
        };
        if window == Window::Global && a.late != LatePolicy::Drop {
            return Err(self.err(
                format!("{key}.late"),
                "a global window never closes, so no event is ever late",
            ));
        }
        let over = self.over(&key, &a.over, &measures, &a.group_by, window, a.emit, a.late)?;
        Ok(AggregateConfig {
            name,
            key,
            from,
            event_time,
            window,
            watermark,
            idle_timeout: a.idle_timeout,
            group_by: a.group_by,
            measures,
            filter: a.filter,
            emit: a.emit,
            late: a.late,
            lateness,
            late_table,
            per_partition: a.partitioned_by_key.unwrap_or(false),
            over,
            watermark_from,
            sql,
        })
    }

    /// Settles `per_partition` for an aggregate over `source`: a declared
    /// `partitioned_by_key`, else derived from the message key's columns when the
    /// source scales out; refuses an aggregate that several processes would split.
    pub(super) fn partition(
        &self,
        a: &mut AggregateConfig,
        declared: Option<bool>,
        source: &super::SourceConfig,
    ) -> Result<(), ConfigError> {
        let super::SourceConfig::Kafka(k) = source else {
            if declared == Some(true) {
                return Err(self.err(
                    format!("{}.partitioned_by_key", a.key),
                    "only Kafka sources have partitions that move between processes",
                ));
            }
            a.per_partition = false;
            return Ok(());
        };
        let key_columns = key_columns(k);
        let derived = key_columns
            .as_ref()
            .is_some_and(|cols| !cols.is_empty() && cols.iter().all(|c| a.group_by.contains(c)));
        a.per_partition = declared.unwrap_or(k.scale_out && derived);
        if a.per_partition
            && let Some(o) = a
                .over
                .iter()
                .find(|o| a.group_by.iter().any(|g| !o.partition_by.contains(g)))
        {
            return Err(self.err(
                format!("{}.over.{}", a.key, o.name),
                "with state per Kafka partition, each partition's rows get their own frames: \
                 PARTITION BY every group-by column, or keep the aggregate's state whole \
                 (partitioned_by_key = false)",
            ));
        }
        if k.scale_out && !a.per_partition {
            let why = match (&key_columns, declared) {
                (_, Some(false)) => format!("{}.partitioned_by_key is false", a.key),
                (None, _) => "the message key is not read (source.key_format), or its columns are not known                               until the registry is asked (set source.key_schema)"
                    .to_string(),
                (Some(cols), _) => format!(
                    "its group_by {:?} does not hold every column of the message key {cols:?}",
                    a.group_by
                ),
            };
            return Err(self.err(
                format!("{}.group_by", a.key),
                format!(
                    "with source.scale_out = true each process reads some partitions, so a key's events \
                     must all be in one partition for its windows to be whole, and {why}. Key the topic by \
                     the group-by columns and set partitioned_by_key = true, or run one process \
                     (source.scale_out = false)"
                ),
            ));
        }
        Ok(())
    }
}

/// The columns a Kafka source's message key becomes, when known from the file alone.
fn key_columns(k: &super::KafkaConfig) -> Option<Vec<String>> {
    use super::kafka::KeyFormat;
    let key = k.key.as_ref()?;
    match key.format {
        KeyFormat::String | KeyFormat::Bytes => Some(vec![super::kafka::KEY_COLUMN.to_string()]),
        KeyFormat::Json | KeyFormat::Avro => {
            let schema = apache_avro::Schema::parse_str(key.schema.as_ref()?).ok()?;
            match schema {
                apache_avro::Schema::Record(r) => Some(
                    r.fields
                        .iter()
                        .map(|f| format!("{}{}", key.prefix, f.name))
                        .collect(),
                ),
                _ => None,
            }
        }
    }
}
