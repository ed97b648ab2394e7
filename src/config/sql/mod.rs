//! `[[aggregates]] sql`: the window-TVF queries of Flink SQL, translated into the spec
//! the TOML keys give (`from`, `event_time`, `window`, `group_by`, `measures`, `filter`,
//! `over`), so one resolver checks both and one operator runs both. What is outside the
//! subset is refused here, with the clause named and the supported form suggested.
//!
//! sqlparser cannot parse `TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), INTERVAL …))`, so the
//! window call is read from the token stream and replaced by a placeholder table before
//! the rest is parsed; tokens keep their places, so every error has a line and column.
//!
//! Accepted, as Flink has it:
//! - `[INSERT INTO t [(columns)]] SELECT … FROM TABLE(<window>) [WHERE …]
//!   GROUP BY window_start, window_end[, keys]`
//! - `<window>`: `TUMBLE(TABLE s, DESCRIPTOR(c), size)`, `HOP(TABLE s, DESCRIPTOR(c),
//!   slide, size)`, `CUMULATE(TABLE s, DESCRIPTOR(c), step, size)`,
//!   `SESSION(TABLE s [PARTITION BY keys], DESCRIPTOR(c), gap)`; arguments may be named
//!   (`SIZE => INTERVAL '1' MINUTE`); intervals are `INTERVAL '5' MINUTE` or
//!   `INTERVAL '5 minutes'` in milliseconds to days.
//! - select items: `window_start`, `window_end`, group keys, `COUNT(*)`, `COUNT([DISTINCT]
//!   x)`, `APPROX_COUNT_DISTINCT(x)`, `SUM`, `AVG`, `MIN`, `MAX` with `AS` aliases, and
//!   `AVG|SUM|MIN|MAX|COUNT(<aggregate or alias>) OVER ([PARTITION BY keys] ORDER BY
//!   window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)`.

mod over;
pub(super) mod resolve;
mod tvf;

use deltalake::datafusion::sql::sqlparser;
use indexmap::IndexMap;
use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    ObjectName, Query, Select, SelectItem, SetExpr, Spanned, Statement, TableFactor, TableObject, WindowType,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Tokenizer};

use over::frame;
pub use over::{MAX_PRECEDING, OverParts, parse_over};
pub use tvf::parse_watermark;
use tvf::{Tvf, cut_window_call};

use super::spec::WindowSpec;
use super::values::Span;

/// The table the window call is replaced by before parsing.
const PLACEHOLDER: &str = "__tributary_window";

/// A query in the TOML form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The `INSERT INTO` table.
    pub target: Option<String>,
    pub from: String,
    pub event_time: String,
    pub window: WindowSpec,
    pub group_by: Vec<String>,
    /// Output column → aggregate expression, as `measures` takes it.
    pub measures: IndexMap<String, String>,
    pub filter: Option<String>,
    /// Output column → window function, as `over` takes it.
    pub over: IndexMap<String, String>,
}

/// Why a query is refused, and where in it (line and column of the SQL text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    pub at: Option<Location>,
}

fn refuse<T>(at: impl Into<Option<Location>>, message: impl Into<String>) -> Result<T, SqlError> {
    Err(SqlError {
        message: message.into(),
        at: at.into().filter(|l| l.line > 0),
    })
}

fn start(node: &impl Spanned) -> Location {
    node.span().start
}

const AGGREGATES: &str =
    "COUNT(*), COUNT(x), COUNT(DISTINCT x), APPROX_COUNT_DISTINCT(x), SUM(x), AVG(x), MIN(x), MAX(x)";

/// Translates a window-TVF query.
pub fn translate(sql: &str) -> Result<Translated, SqlError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .or_else(|e| refuse(e.location, e.message))?;
    let (tokens, tvf) = cut_window_call(tokens)?;
    let mut statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .or_else(|e| parser_error(&e.to_string()))?;
    if statements.len() != 1 {
        let at = statements.get(1).map(start);
        return refuse(at, "give one statement: [INSERT INTO t] SELECT …");
    }
    let (target, columns, query) = match statements.remove(0) {
        Statement::Insert(insert) => {
            let at = start(&insert.table);
            let TableObject::TableName(name) = &insert.table else {
                return refuse(at, "INSERT INTO takes a table name");
            };
            if insert.overwrite
                || insert.partitioned.is_some()
                || insert.on.is_some()
                || insert.returning.is_some()
                || !insert.assignments.is_empty()
            {
                return refuse(at, "only INSERT INTO <table> [(columns)] SELECT … is supported");
            }
            let Some(query) = insert.source else {
                return refuse(at, "INSERT INTO needs a SELECT");
            };
            let columns = insert
                .columns
                .iter()
                .map(last_part)
                .collect::<Result<Vec<_>, _>>()?;
            (Some(last_part(name)?), columns, query)
        }
        Statement::Query(q) => (None, Vec::new(), q),
        other => return refuse(start(&other), "give a SELECT or INSERT INTO … SELECT"),
    };
    let select = select_of(&query)?;
    let mut out = Builder::new(tvf, target, columns);
    out.select(select)?;
    out.finish()
}

/// A parser error, its " at Line: l, Column: c" turned into a location.
fn parser_error<T>(message: &str) -> Result<T, SqlError> {
    let message = message.trim_start_matches("sql parser error: ");
    if let Some((text, place)) = message.rsplit_once(" at Line: ")
        && let Some((line, column)) = place.split_once(", Column: ")
        && let (Ok(line), Ok(column)) = (line.trim().parse(), column.trim().parse())
    {
        return refuse(Location { line, column }, text);
    }
    refuse(None, message)
}

/// The last part of a name (`t` of `db.t`), which must be a plain identifier.
fn last_part(name: &ObjectName) -> Result<String, SqlError> {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(Ident { value, .. }) => Ok(value.clone()),
        None => refuse(start(name), format!("{name} is not a table or column name")),
    }
}

fn select_of(query: &Query) -> Result<&Select, SqlError> {
    if let Some(with) = &query.with {
        return refuse(
            start(&with.with_token.0),
            "WITH (common table expressions) is not supported: write one SELECT",
        );
    }
    if let Some(o) = &query.order_by {
        return refuse(
            start(o),
            "ORDER BY is not supported: a table has no order; order when reading it",
        );
    }
    if let Some(l) = &query.limit_clause {
        return refuse(
            start(l),
            "LIMIT/OFFSET is not supported: every window row is written",
        );
    }
    if query.fetch.is_some() {
        return refuse(None, "FETCH is not supported: every window row is written");
    }
    match query.body.as_ref() {
        SetExpr::Select(s) => Ok(s),
        SetExpr::SetOperation { op, .. } => refuse(
            start(query.body.as_ref()),
            format!("{op} is not supported: write one aggregate per query"),
        ),
        other => refuse(start(other), "give a SELECT … FROM TABLE(<window>) GROUP BY …"),
    }
}

/// The query as it is read: group keys, select items, and what they become.
struct Builder {
    tvf: Option<Tvf>,
    target: Option<String>,
    /// `INSERT INTO t (columns)`: the name of each select item, by position.
    columns: Vec<String>,
    group_by: Vec<String>,
    measures: IndexMap<String, String>,
    over: IndexMap<String, String>,
    filter: Option<String>,
    alias: Option<String>,
}

/// A select item's aggregate, in the form `measures` takes.
fn measure_expr(f: &Function) -> Result<String, SqlError> {
    let at = start(f);
    let name = f.name.to_string().to_ascii_lowercase();
    if f.filter.is_some() || f.null_treatment.is_some() || !f.within_group.is_empty() {
        return refuse(
            at,
            format!("{name}(…) takes no FILTER, WITHIN GROUP or NULLS clause"),
        );
    }
    let FunctionArguments::List(list) = &f.args else {
        return refuse(
            at,
            format!("{name} is not supported here (supported: {AGGREGATES})"),
        );
    };
    if !list.clauses.is_empty() {
        return refuse(
            at,
            format!("{name}(…) takes one column and no ORDER BY or LIMIT inside"),
        );
    }
    let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
    let arg = match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if name == "count" && !distinct => {
            return Ok("count(*)".into());
        }
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => column_of(e)
            .ok_or(())
            .or_else(|()| refuse(start(e), format!("{name}(…) takes a column, not {e}")))?,
        _ => return refuse(at, format!("{name}(…) takes one column")),
    };
    let func = match (name.as_str(), distinct) {
        ("count", true) => "count(distinct ",
        ("count", false) => "count(",
        ("approx_count_distinct", false) => "approx_count_distinct(",
        ("sum", false) => "sum(",
        ("avg", false) => "avg(",
        ("min", false) => "min(",
        ("max", false) => "max(",
        (_, true) => {
            return refuse(
                at,
                format!("{name}(DISTINCT …) is not supported (COUNT(DISTINCT x) is)"),
            );
        }
        _ => {
            return refuse(
                at,
                format!("function {} is not supported (supported: {AGGREGATES})", f.name),
            );
        }
    };
    Ok(format!("{func}{arg})"))
}

/// Checks a WHERE condition: it filters the stream's rows before any window exists, so
/// it can name neither the window's columns nor aggregates, nor hold a subquery.
fn where_clause(w: &Expr) -> Result<(), SqlError> {
    let mut bad: Option<SqlError> = None;
    let _ = sqlparser::ast::visit_expressions(w, |e| {
        let why = match e {
            Expr::Identifier(i) if i.value == "window_start" || i.value == "window_end" => Some(format!(
                "WHERE filters the stream's rows before windows exist: {} is not a column there",
                i.value
            )),
            Expr::Function(f) if measure_expr(f).is_ok() => Some(format!(
                "WHERE {f}: aggregates cannot filter (HAVING is not supported either); filter the output table when reading it"
            )),
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
                Some("a subquery in WHERE is not supported".to_string())
            }
            _ => None,
        };
        match why {
            Some(message) => {
                bad = Some(SqlError {
                    message,
                    at: Some(start(e)).filter(|l| l.line > 0),
                });
                std::ops::ControlFlow::Break(())
            }
            None => std::ops::ControlFlow::Continue(()),
        }
    });
    bad.map_or(Ok(()), Err)
}

/// The default name of a measure without an alias: `count`, `count_distinct_user_id`, `sum_amount`.
fn default_name(expr: &str) -> String {
    if expr == "count(*)" {
        return "count".into();
    }
    expr.replace("(distinct ", "_distinct_")
        .replace('(', "_")
        .trim_end_matches(')')
        .to_string()
}

fn column_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::Nested(e) => column_of(e),
        _ => None,
    }
}

impl Builder {
    fn new(tvf: Option<Tvf>, target: Option<String>, columns: Vec<String>) -> Self {
        Self {
            tvf,
            target,
            columns,
            group_by: Vec::new(),
            measures: IndexMap::new(),
            over: IndexMap::new(),
            filter: None,
            alias: None,
        }
    }

    /// A column reference: `c`, or `alias.c` for the window call's alias.
    fn column(&self, e: &Expr) -> Option<String> {
        match e {
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let qualifier = &parts[0].value;
                let stream = self.tvf.as_ref().map(|t| t.stream.as_str());
                (self.alias.as_deref() == Some(qualifier) || Some(qualifier.as_str()) == stream)
                    .then(|| parts[1].value.clone())
            }
            other => column_of(other),
        }
    }

    fn select(&mut self, s: &Select) -> Result<(), SqlError> {
        let at = start(&s.select_token.0);
        if s.distinct.is_some() {
            return refuse(
                at,
                "SELECT DISTINCT is not supported: GROUP BY already gives one row per window and key",
            );
        }
        if s.top.is_some() || s.into.is_some() {
            return refuse(at, "SELECT TOP/INTO is not supported");
        }
        if let Some(h) = &s.having {
            return refuse(
                start(h),
                "HAVING is not supported: filter input rows with WHERE, or the output table when reading it",
            );
        }
        if let Some(q) = &s.qualify {
            return refuse(start(q), "QUALIFY is not supported");
        }
        if !s.named_window.is_empty() {
            return refuse(
                at,
                "WINDOW clauses are not supported: write OVER (…) in the select item",
            );
        }
        if !s.lateral_views.is_empty()
            || !s.sort_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
        {
            return refuse(
                at,
                "LATERAL VIEW, SORT BY, CLUSTER BY and DISTRIBUTE BY are not supported",
            );
        }
        match s.from.as_slice() {
            [one] => {
                if let Some(j) = one.joins.first() {
                    return refuse(
                        start(&j.relation),
                        "JOIN is not supported: an aggregate reads one stream",
                    );
                }
                match &one.relation {
                    TableFactor::Table {
                        name,
                        alias,
                        args: None,
                        ..
                    } if last_part(name).is_ok_and(|n| n == PLACEHOLDER) => {
                        self.alias = alias.as_ref().map(|a| a.name.value.clone());
                    }
                    TableFactor::Table { name, .. } => {
                        return refuse(
                            start(name),
                            format!(
                                "FROM {name} has no window: aggregates read FROM TABLE(TUMBLE(TABLE {name}, \
                                 DESCRIPTOR(<time column>), INTERVAL '1' MINUTE)) (or HOP, SESSION, CUMULATE); a \
                                 GROUP BY without a window is not supported"
                            ),
                        );
                    }
                    TableFactor::Derived { .. } => {
                        return refuse(
                            start(&one.relation),
                            "a subquery in FROM is not supported: read the window call directly",
                        );
                    }
                    other => return refuse(start(other), "FROM takes one window call: TABLE(TUMBLE(…))"),
                }
            }
            [] => return refuse(at, "FROM TABLE(<window>) is missing"),
            [_, second, ..] => {
                return refuse(
                    start(second),
                    "several tables in FROM (a join) are not supported: an aggregate reads one stream",
                );
            }
        }
        if let Some(w) = &s.selection {
            where_clause(w)?;
            self.filter = Some(w.to_string());
        }
        self.group(&s.group_by)?;
        if !self.columns.is_empty() && self.columns.len() != s.projection.len() {
            return refuse(
                at,
                format!(
                    "INSERT INTO names {} columns, the SELECT gives {}",
                    self.columns.len(),
                    s.projection.len()
                ),
            );
        }
        for (i, item) in s.projection.iter().enumerate() {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                other => {
                    return refuse(
                        start(other),
                        "SELECT * is not supported: list window_start, window_end, the keys and the aggregates",
                    );
                }
            };
            let name = self.columns.get(i).cloned().or(alias);
            self.item(expr, name)?;
        }
        if self.measures.is_empty() {
            return refuse(at, format!("select at least one aggregate ({AGGREGATES})"));
        }
        Ok(())
    }

    fn group(&mut self, g: &GroupByExpr) -> Result<(), SqlError> {
        let exprs = match g {
            GroupByExpr::All(_) => {
                return refuse(
                    None,
                    "GROUP BY ALL is not supported: list window_start, window_end and the keys",
                );
            }
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return refuse(
                        exprs.first().map(start),
                        "GROUP BY … WITH ROLLUP/CUBE/TOTALS is not supported",
                    );
                }
                exprs
            }
        };
        let (mut ws, mut we) = (false, false);
        for e in exprs {
            let Some(c) = self.column(e) else {
                return refuse(
                    start(e),
                    format!("GROUP BY {e} is not supported: group by window_start, window_end and columns"),
                );
            };
            match c.as_str() {
                "window_start" => ws = true,
                "window_end" => we = true,
                _ if self.group_by.contains(&c) => {}
                _ => self.group_by.push(c),
            }
        }
        if !(ws && we) {
            return refuse(
                exprs.first().map(start),
                "GROUP BY must list window_start and window_end: a GROUP BY without the window is not supported",
            );
        }
        Ok(())
    }

    fn item(&mut self, expr: &Expr, name: Option<String>) -> Result<(), SqlError> {
        let at = start(expr);
        if let Some(c) = self.column(expr) {
            let known = c == "window_start" || c == "window_end" || self.group_by.contains(&c);
            if !known {
                return refuse(
                    at,
                    format!(
                        "column {c} is neither grouped nor aggregated: add it to GROUP BY or aggregate it"
                    ),
                );
            }
            if name.as_ref().is_some_and(|n| *n != c) {
                return refuse(
                    at,
                    format!("{c} keeps its name in the output table (aliases name aggregates only)"),
                );
            }
            return Ok(());
        }
        let Expr::Function(f) = expr else {
            return refuse(
                at,
                format!(
                    "{expr} is not supported in SELECT: select window_start, window_end, group keys and \
                     aggregates ({AGGREGATES})"
                ),
            );
        };
        if let Some(over) = &f.over {
            return self.over_item(f, over, name);
        }
        let m = measure_expr(f)?;
        let name = name.unwrap_or_else(|| default_name(&m));
        self.add(at, name.clone(), &m, true)
    }

    fn add(&mut self, at: Location, name: String, expr: &str, measure: bool) -> Result<(), SqlError> {
        if name == "window_start"
            || name == "window_end"
            || self.group_by.contains(&name)
            || self.measures.contains_key(&name)
            || self.over.contains_key(&name)
        {
            return refuse(
                at,
                format!("the output column {name} is given twice: name it with AS"),
            );
        }
        if measure {
            self.measures.insert(name, expr.to_string());
        } else {
            self.over.insert(name, expr.to_string());
        }
        Ok(())
    }

    /// `AGG(<aggregate or measure>) OVER (PARTITION BY … ORDER BY window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)`
    fn over_item(&mut self, f: &Function, over: &WindowType, name: Option<String>) -> Result<(), SqlError> {
        let at = start(f);
        let Some(func) = over::over_fn(f).map(crate::config::OverFn::name) else {
            return refuse(
                at,
                format!(
                    "{} OVER (…) is not supported (AVG, SUM, MIN, MAX and COUNT are)",
                    f.name
                ),
            );
        };
        let WindowType::WindowSpec(w) = over else {
            return refuse(
                at,
                "a named window is not supported: write OVER (ORDER BY window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)",
            );
        };
        let arg = match &f.args {
            FunctionArguments::List(l)
                if l.duplicate_treatment.is_none() && l.clauses.is_empty() && l.args.len() == 1 =>
            {
                match &l.args[0] {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e,
                    _ => {
                        return refuse(
                            at,
                            format!("{func}(…) OVER takes an aggregate or an aggregate's name"),
                        );
                    }
                }
            }
            _ => return refuse(at, format!("{func}(…) OVER takes one argument")),
        };
        // The measure it reads: an alias, or an aggregate (added when not selected).
        let measure = match arg {
            Expr::Function(inner) if inner.over.is_none() => {
                let m = measure_expr(inner)?;
                match self.measures.iter().find(|(_, e)| **e == m) {
                    Some((n, _)) => n.clone(),
                    None => {
                        let n = default_name(&m);
                        self.add(start(inner), n.clone(), &m, true)?;
                        n
                    }
                }
            }
            e => match self.column(e) {
                Some(c) if self.measures.contains_key(&c) => c,
                _ => {
                    return refuse(
                        start(e),
                        format!(
                            "{func}({e}) OVER: the argument must be an aggregate, or the name of one selected before it"
                        ),
                    );
                }
            },
        };
        let (partition, n) = frame(w, |e| self.column(e).filter(|c| self.group_by.contains(c)), at)?;
        let partition = if partition.is_empty() {
            String::new()
        } else {
            format!("partition by {} ", partition.join(", "))
        };
        let expr = format!(
            "{func}({measure}) over ({partition}order by window_start rows between {n} preceding and current row)"
        );
        let name = name.unwrap_or_else(|| format!("{func}_{measure}_{}", n + 1));
        self.add(at, name, &expr, false)
    }

    fn finish(self) -> Result<Translated, SqlError> {
        let Some(Tvf {
            kind,
            at,
            stream,
            partition_by,
            time,
            intervals,
        }) = self.tvf
        else {
            return refuse(
                None,
                "aggregates need a window: FROM TABLE(TUMBLE(TABLE <stream>, DESCRIPTOR(<time column>), \
                 INTERVAL '1' MINUTE)) (or HOP, SESSION, CUMULATE); a GROUP BY without a window is not supported",
            );
        };
        let interval = |names: &[&str], i: usize| -> Result<Span, SqlError> {
            let named = intervals.iter().find(|(n, _, _)| names.contains(&n.as_str()));
            match named.or_else(|| intervals.iter().filter(|(n, _, _)| n.is_empty()).nth(i)) {
                Some((_, s, _)) => Ok(*s),
                None => refuse(at, format!("{kind}(…) is missing its {} interval", names[0])),
            }
        };
        let expected = if kind == "TUMBLE" || kind == "SESSION" {
            1
        } else {
            2
        };
        if intervals.len() > expected {
            return refuse(
                intervals[expected].2,
                format!("{kind}(…): window offsets are not supported (windows align to the Unix epoch)"),
            );
        }
        let window = match kind.as_str() {
            "TUMBLE" => WindowSpec::Tumbling {
                size: interval(&["SIZE"], 0)?,
            },
            "HOP" => WindowSpec::Hopping {
                slide: interval(&["SLIDE"], 0)?,
                size: interval(&["SIZE"], 1)?,
            },
            "CUMULATE" => WindowSpec::Cumulate {
                step: interval(&["STEP"], 0)?,
                size: interval(&["SIZE"], 1)?,
            },
            _ => {
                let mut p = partition_by.clone();
                let mut g = self.group_by.clone();
                p.sort();
                g.sort();
                if p != g {
                    return refuse(
                        at,
                        format!(
                            "SESSION(TABLE {stream} PARTITION BY …) must partition by exactly the group keys ({}): \
                             sessions are per group key",
                            if g.is_empty() {
                                "none".to_string()
                            } else {
                                g.join(", ")
                            }
                        ),
                    );
                }
                WindowSpec::Session {
                    gap: interval(&["GAP"], 0)?,
                }
            }
        };
        Ok(Translated {
            target: self.target,
            from: stream,
            event_time: time,
            window,
            group_by: self.group_by,
            measures: self.measures,
            filter: self.filter,
            over: self.over,
        })
    }
}

/// Where SQL location `at` is in the pipeline file, for a `sql` value whose raw text
/// spans `span` of `text` and whose parsed text is `value`: " (line L, column C)", or
/// the value's line alone when escapes make the SQL's columns differ from the file's.
pub fn place(text: &str, span: std::ops::Range<usize>, value: &str, at: Option<Location>) -> String {
    let raw = text.get(span.clone()).unwrap_or_default();
    let delim = ["\"\"\"", "'''", "\"", "'"]
        .into_iter()
        .find(|d| raw.starts_with(d))
        .unwrap_or("");
    let mut body_start = span.start + delim.len();
    if delim.len() == 3 {
        if text[body_start..].starts_with("\r\n") {
            body_start += 2;
        } else if text[body_start..].starts_with('\n') {
            body_start += 1;
        }
    }
    let exact = text.get(body_start..body_start + value.len()) == Some(value);
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let col_of = |offset: usize| {
        text[..offset]
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
            + 1
    };
    match at {
        Some(l) if exact => {
            let (line, column) = (l.line as usize, l.column as usize);
            let file_line = line_of(body_start) + line - 1;
            let file_col = if line == 1 {
                col_of(body_start) + column - 1
            } else {
                column
            };
            format!(" (line {file_line}, column {file_col})")
        }
        _ => format!(" (line {})", line_of(span.start)),
    }
}

#[cfg(test)]
mod tests;
