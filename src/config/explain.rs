//! `tributary explain`: each aggregate as the engine will run it, the same for SQL and
//! TOML aggregates, ending with the TOML form (what a SQL query was translated into).

use std::fmt::{self, Write as _};

use super::Pipeline;
use super::aggregate::{AggregateConfig, MeasureFn, Over, WatermarkFrom, Window};
use super::spec::{EmitMode, LatePolicy};

impl fmt::Display for MeasureFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CountAll => write!(f, "count(*)"),
            Self::Count(c) => write!(f, "count({c})"),
            Self::CountDistinct(c) => write!(f, "count(distinct {c})"),
            Self::ApproxCountDistinct(c) => write!(f, "approx_count_distinct({c})"),
            Self::Sum(c) => write!(f, "sum({c})"),
            Self::Avg(c) => write!(f, "avg({c})"),
            Self::Min(c) => write!(f, "min({c})"),
            Self::Max(c) => write!(f, "max({c})"),
        }
    }
}

impl fmt::Display for Over {
    /// The `over` value it is written as.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}) over (", self.func.name(), self.measure)?;
        if !self.partition_by.is_empty() {
            write!(f, "partition by {} ", self.partition_by.join(", "))?;
        }
        write!(
            f,
            "order by window_start rows between {} preceding and current row)",
            self.preceding
        )
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn window_toml(w: Window) -> String {
    match w {
        Window::Tumbling { size } => format!("{{ kind = \"tumbling\", size = \"{size}\" }}"),
        Window::Hopping { size, slide } => {
            format!("{{ kind = \"hopping\", size = \"{size}\", slide = \"{slide}\" }}")
        }
        Window::Session { gap } => format!("{{ kind = \"session\", gap = \"{gap}\" }}"),
        Window::Cumulate { size, step } => {
            format!("{{ kind = \"cumulate\", size = \"{size}\", step = \"{step}\" }}")
        }
        Window::Global => "{ kind = \"global\" }".to_string(),
    }
}

fn window_words(w: Window) -> String {
    match w {
        Window::Tumbling { size } => {
            format!("tumbling {size}: [window_start, window_end), aligned to the Unix epoch")
        }
        Window::Hopping { size, slide } => format!(
            "hopping {size} every {slide}: each event in {} overlapping windows (panes of the common divisor)",
            (size.as_micros() + slide.as_micros() - 1) / slide.as_micros().max(1)
        ),
        Window::Session { gap } => {
            format!("session, gap {gap}: per group key, events less than {gap} apart share a window")
        }
        Window::Cumulate { size, step } => format!(
            "cumulate {step} steps up to {size}: from each multiple of {size}, windows growing by {step} \
             ({} per block; they share window_start)",
            size.as_micros() / step.as_micros().max(1)
        ),
        Window::Global => "global: one window over all time per group key".to_string(),
    }
}

/// The aggregate as the engine runs it.
pub fn aggregate(p: &Pipeline, a: &AggregateConfig) -> String {
    let mut o = String::new();
    let origin = if a.sql.is_some() {
        "written in SQL"
    } else {
        "written in TOML"
    };
    let _ = writeln!(o, "aggregate {} ({}, {origin})", a.name, a.key);
    let _ = writeln!(o, "  input      stream {}, event time {}", a.from, a.event_time);
    let _ = writeln!(o, "  window     {}", window_words(a.window));
    let from = match &a.watermark_from {
        WatermarkFrom::Aggregate => format!("{}.watermark", a.key),
        WatermarkFrom::Stream(s) => format!("[streams.{s}]"),
        WatermarkFrom::None => "none needed".to_string(),
    };
    let idle = a.idle_timeout.map_or_else(
        || "a quiet shard holds it back until it sends again".to_string(),
        |t| format!("a shard quiet for {t} stops holding it back"),
    );
    let _ = writeln!(
        o,
        "  watermark  min over shards of their largest event time − {} ({from}); {idle}",
        a.watermark
    );
    let _ = writeln!(
        o,
        "  filter     {}",
        a.filter.as_deref().unwrap_or("none: every row")
    );
    let mut group = vec!["window_start", "window_end"];
    if a.window == Window::Global {
        group.clear();
    }
    group.extend(a.group_by.iter().map(String::as_str));
    let _ = writeln!(
        o,
        "  group by   {}",
        if group.is_empty() {
            "nothing".into()
        } else {
            group.join(", ")
        }
    );
    for (i, m) in a.measures.iter().enumerate() {
        let label = if i == 0 { "measures" } else { "" };
        let _ = writeln!(o, "  {label:<10} {} = {}", m.name, m.func);
    }
    for (i, over) in a.over.iter().enumerate() {
        let label = if i == 0 { "over" } else { "" };
        let _ = writeln!(
            o,
            "  {label:<10} {} = {} of {} over its last {} window rows{}, as windows close",
            over.name,
            over.func.name(),
            over.measure,
            over.preceding + 1,
            if over.partition_by.is_empty() {
                String::new()
            } else {
                format!(" per {}", over.partition_by.join(", "))
            }
        );
    }
    let emit = match a.emit {
        EmitMode::Final => "final: each window once, appended when the watermark passes window_end",
        EmitMode::Update => "update: every window a micro-batch changed, merged with its values so far",
    };
    let _ = writeln!(o, "  emit       {emit}");
    let late = match a.late {
        LatePolicy::Drop => "drop: counted in tributary_late_events_total, not written".to_string(),
        LatePolicy::Dlq => format!(
            "dlq: written with the reason to {}",
            a.late_table.as_deref().unwrap_or_default()
        ),
        LatePolicy::Update => format!(
            "update: windows are corrected until {} after their end",
            a.lateness
        ),
    };
    let _ = writeln!(o, "  late       {late}");
    let _ = writeln!(
        o,
        "  state      {}",
        if a.per_partition {
            "per Kafka partition (moves with the partition at a rebalance)"
        } else {
            "one set of windows for the whole stream"
        }
    );
    let mut columns: Vec<&str> = vec!["window_start", "window_end"];
    columns.extend(a.group_by.iter().map(String::as_str));
    columns.extend(a.measures.iter().map(|m| m.name.as_str()));
    columns.extend(a.over.iter().map(|m| m.name.as_str()));
    let how = if a.keyed() {
        format!("merged on {}", a.merge_key().join(", "))
    } else {
        "appended".to_string()
    };
    let _ = writeln!(
        o,
        "  table      {} ({how}): {}",
        p.sink.table_url(&a.name),
        columns.join(", ")
    );
    let _ = writeln!(o, "  as TOML    [[aggregates]]");
    for line in toml_lines(a) {
        let _ = writeln!(o, "             {line}");
    }
    o
}

/// The aggregate's `[[aggregates]]` entry in TOML keys.
fn toml_lines(a: &AggregateConfig) -> Vec<String> {
    let mut l = vec![
        format!("name = {}", quoted(&a.name)),
        format!("from = {}", quoted(&a.from)),
        format!("event_time = {}", quoted(&a.event_time)),
        format!("window = {}", window_toml(a.window)),
    ];
    if a.window != Window::Global {
        l.push(format!("watermark = \"{}\"", a.watermark));
    }
    if let Some(t) = a.idle_timeout {
        l.push(format!("idle_timeout = \"{t}\""));
    }
    if !a.group_by.is_empty() {
        let keys: Vec<String> = a.group_by.iter().map(|k| quoted(k)).collect();
        l.push(format!("group_by = [{}]", keys.join(", ")));
    }
    let measures: Vec<String> = a
        .measures
        .iter()
        .map(|m| format!("{} = {}", m.name, quoted(&m.func.to_string())))
        .collect();
    l.push(format!("measures = {{ {} }}", measures.join(", ")));
    if let Some(f) = &a.filter {
        l.push(format!("filter = {}", quoted(f)));
    }
    if !a.over.is_empty() {
        let over: Vec<String> = a
            .over
            .iter()
            .map(|o| format!("{} = {}", o.name, quoted(&o.to_string())))
            .collect();
        l.push(format!("over = {{ {} }}", over.join(", ")));
    }
    if a.emit == EmitMode::Update {
        l.push("emit = \"update\"".into());
    }
    match a.late {
        LatePolicy::Drop => {}
        LatePolicy::Dlq => {
            l.push("late = \"dlq\"".into());
            if let Some(t) = &a.late_table {
                l.push(format!("late_table = {}", quoted(t)));
            }
        }
        LatePolicy::Update => {
            l.push("late = \"update\"".into());
            l.push(format!("lateness = \"{}\"", a.lateness));
        }
    }
    l
}
