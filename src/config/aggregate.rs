//! `[[aggregates]]`: windowed aggregates, resolved from their spec. Column names and
//! types are checked when the operator meets the stream's schema (see
//! [`crate::window::build`]); everything knowable from the file alone is checked here.

use std::collections::BTreeSet;

use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;

use super::spec::{AggregateSpec, EmitMode, LatePolicy, WindowSpec};
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
}

impl AggregateConfig {
    /// Whether the output table is written by MERGE on (window_start, group keys):
    /// rows are updated after they were first written. Global windows always are: each
    /// bounded run ends by writing every key's total so far.
    pub fn keyed(&self) -> bool {
        self.emit == EmitMode::Update || self.late == LatePolicy::Update || self.window == Window::Global
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Tumbling { size: Span },
    Hopping { size: Span, slide: Span },
    Session { gap: Span },
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
        a: AggregateSpec,
        streams: &Option<Vec<String>>,
        names: &mut BTreeSet<String>,
    ) -> Result<AggregateConfig, ConfigError> {
        let key = format!("aggregates[{i}]");
        self.name(&format!("{key}.name"), &a.name)?;
        if !names.insert(a.name.clone()) {
            return Err(self.err(format!("{key}.name"), format!("\"{}\" is used twice", a.name)));
        }
        self.stream(&format!("{key}.from"), streams, &a.from)?;
        let positive = |k: &str, s: Span| {
            if s.0.is_zero() {
                Err(self.err(format!("{key}.window.{k}"), "must be longer than 0"))
            } else {
                Ok(s)
            }
        };
        let window = match a.window {
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
            WindowSpec::Global => Window::Global,
        };
        let watermark = match (a.watermark, window) {
            (Some(w), _) => w,
            (None, Window::Global) => Span::from_secs(0),
            (None, _) => {
                return Err(self.err(
                    format!("{key}.watermark"),
                    "missing: how far behind the latest event time the watermark trails, e.g. \"30s\"",
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
                let t = t.unwrap_or_else(|| format!("{}_late_events", a.name));
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
        Ok(AggregateConfig {
            name: a.name,
            key,
            from: a.from,
            event_time: a.event_time,
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
