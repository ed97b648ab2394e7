//! Where the SQL front end meets the resolver: a `sql` query fills the aggregate's spec
//! (then checked like a TOML one), `over` values become post-window steps, and
//! `[streams.*]` declare event times and watermarks for every aggregate of a stream.

use std::collections::BTreeMap;

use crate::config::aggregate::{Measure, Over, Window};
use crate::config::spec::{AggregateSpec, EmitMode, LatePolicy, StreamSpec};
use crate::config::values::{Span, parse_span};
use crate::config::{ConfigError, Resolver};

/// A stream's declared event-time column and watermark delay.
#[derive(Debug, Clone, Default)]
pub struct StreamTime {
    pub event_time: Option<String>,
    pub delay: Option<Span>,
}

impl Resolver<'_> {
    /// Fills `a` from its query; the keys the query replaces must not be set too.
    pub(in crate::config) fn read_sql(
        &self,
        key: &str,
        a: &mut AggregateSpec,
        sql: toml::Spanned<String>,
    ) -> Result<String, ConfigError> {
        let set = [
            ("from", a.from.is_some()),
            ("event_time", a.event_time.is_some()),
            ("window", a.window.is_some()),
            ("group_by", !a.group_by.is_empty()),
            ("measures", !a.measures.is_empty()),
            ("filter", a.filter.is_some()),
            ("over", !a.over.is_empty()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
            return Err(self.err(
                format!("{key}.{k}"),
                "give either sql or from/event_time/window/group_by/measures/filter/over, not both",
            ));
        }
        let span = sql.span();
        let text = sql.into_inner();
        let t = super::translate(&text).map_err(|e| {
            let at = super::place(self.text, span.clone(), &text, e.at);
            self.err(format!("{key}.sql"), format!("{}{at}", e.message))
        })?;
        match (&a.name, t.target) {
            (Some(n), Some(t)) if *n != t => {
                return Err(self.err(
                    format!("{key}.name"),
                    format!("\"{n}\" differs from the query's INSERT INTO {t}: give one"),
                ));
            }
            (None, Some(t)) => a.name = Some(t),
            (None, None) => {
                return Err(self.err(
                    format!("{key}.name"),
                    "missing: the output table (or write the query as INSERT INTO <table> SELECT …)",
                ));
            }
            _ => {}
        }
        a.from = Some(t.from);
        a.event_time = Some(t.event_time);
        a.window = Some(t.window);
        a.group_by = t.group_by;
        a.measures = t.measures;
        a.filter = t.filter;
        a.over = t.over;
        Ok(text)
    }

    /// Resolves `over`: each reads a measure, partitions by group keys, and needs windows
    /// that close in start order and are written once.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::config) fn over(
        &self,
        key: &str,
        over: &indexmap::IndexMap<String, String>,
        measures: &[Measure],
        group_by: &[String],
        window: Window,
        emit: EmitMode,
        late: LatePolicy,
    ) -> Result<Vec<Over>, ConfigError> {
        let mut out = Vec::with_capacity(over.len());
        for (name, text) in over {
            let okey = format!("{key}.over.{name}");
            self.name(&okey, name)?;
            let taken = group_by.contains(name)
                || measures.iter().any(|m| m.name == *name)
                || out.iter().any(|o: &Over| o.name == *name)
                || name == "window_start"
                || name == "window_end";
            if taken {
                return Err(self.err(
                    &okey,
                    format!("\"{name}\" is also a window, group-by or measure column"),
                ));
            }
            let p = super::parse_over(text).map_err(|m| self.err(&okey, m))?;
            if !measures.iter().any(|m| m.name == p.measure) {
                return Err(self.err(
                    &okey,
                    format!(
                        "\"{}\" is not a measure of this aggregate (it has: {})",
                        p.measure,
                        {
                            let names: Vec<&str> = measures.iter().map(|m| m.name.as_str()).collect();
                            names.join(", ")
                        }
                    ),
                ));
            }
            if let Some(c) = p.partition_by.iter().find(|c| !group_by.contains(c)) {
                return Err(self.err(&okey, format!("PARTITION BY {c}: partition by group-by columns")));
            }
            if !matches!(window, Window::Tumbling { .. } | Window::Hopping { .. }) {
                return Err(self.err(
                    &okey,
                    "OVER needs tumbling or hopping windows, which close in window_start order",
                ));
            }
            if emit != EmitMode::Final || late == LatePolicy::Update {
                return Err(self.err(
                    &okey,
                    "OVER needs windows written once (emit = \"final\", late other than \"update\")",
                ));
            }
            out.push(Over {
                name: name.clone(),
                func: p.func,
                measure: p.measure,
                partition_by: p.partition_by,
                preceding: u32::try_from(p.preceding).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    /// Resolves `[streams.*]`: each names a stream of the source, and its watermark is
    /// a delay on a declared column.
    pub(in crate::config) fn stream_times(
        &self,
        specs: BTreeMap<String, StreamSpec>,
        streams: &Option<Vec<String>>,
    ) -> Result<BTreeMap<String, StreamTime>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, s) in specs {
            let key = format!("streams.{name}");
            self.stream(&key, streams, &name)?;
            let mut t = StreamTime {
                event_time: s.event_time,
                delay: None,
            };
            if let Some(w) = s.watermark {
                let wkey = format!("{key}.watermark");
                if w.trim_start().to_ascii_uppercase().starts_with("WATERMARK") {
                    let (column, delay) = super::parse_watermark(&w).map_err(|m| self.err(&wkey, m))?;
                    match &t.event_time {
                        Some(c) if *c != column => {
                            return Err(self.err(
                                &wkey,
                                format!("it is declared for {column}, the stream's event_time is {c}"),
                            ));
                        }
                        _ => t.event_time = Some(column),
                    }
                    t.delay = Some(delay);
                } else {
                    let delay = parse_span(&w).map_err(|m| self.err(&wkey, m))?;
                    if t.event_time.is_none() {
                        return Err(self.err(
                            format!("{key}.event_time"),
                            "missing: the column the watermark follows (or write watermark = \"WATERMARK FOR <column> AS <column> - INTERVAL '5' SECOND\")",
                        ));
                    }
                    t.delay = Some(delay);
                }
            }
            out.insert(name, t);
        }
        Ok(out)
    }
}
