//! `func(measure) OVER (…)`: the post-window step, read from a select item or from an
//! `over` value.

use deltalake::datafusion::sql::sqlparser;
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value, WindowFrameBound, WindowFrameUnits,
    WindowType,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Location;

use super::{SqlError, column_of, refuse, start};
use crate::config::OverFn;

/// Frames longer than this are refused: each partition keeps that many values.
pub const MAX_PRECEDING: u64 = 10_000;

/// The partition keys (those `key` accepts) and the number of preceding rows of
/// `OVER ([PARTITION BY …] ORDER BY window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)`.
pub(super) fn frame(
    w: &sqlparser::ast::WindowSpec,
    key: impl Fn(&Expr) -> Option<String>,
    at: Location,
) -> Result<(Vec<String>, u64), SqlError> {
    let mut partition = Vec::new();
    for p in &w.partition_by {
        match key(p) {
            Some(c) => partition.push(c),
            None => return refuse(start(p), format!("PARTITION BY {p}: partition by group keys")),
        }
    }
    let order_ok = match w.order_by.as_slice() {
        [o] => {
            column_of(&o.expr).as_deref() == Some("window_start")
                && o.options.asc != Some(false)
                && o.options.nulls_first.is_none()
        }
        _ => false,
    };
    if !order_ok {
        return refuse(
            at,
            "OVER (…) must ORDER BY window_start (ascending): rows are taken as windows close",
        );
    }
    let hint = "frames are ROWS BETWEEN n PRECEDING AND CURRENT ROW";
    let Some(frame) = &w.window_frame else {
        return refuse(at, format!("OVER (…) needs a frame: {hint}"));
    };
    let n = match (&frame.units, &frame.start_bound, &frame.end_bound) {
        (
            WindowFrameUnits::Rows,
            WindowFrameBound::Preceding(Some(n)),
            None | Some(WindowFrameBound::CurrentRow),
        ) => match n.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse::<u64>().ok(),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match n.filter(|n| *n <= MAX_PRECEDING) {
        Some(n) => Ok((partition, n)),
        None => refuse(
            at,
            format!("OVER (…) frame: {hint}, with n at most {MAX_PRECEDING}"),
        ),
    }
}

/// The window function `f` names, if it is one the engine has.
pub(super) fn over_fn(f: &sqlparser::ast::Function) -> Option<OverFn> {
    let name = f.name.to_string().to_ascii_lowercase();
    OverFn::ALL.into_iter().find(|o| o.name() == name)
}

/// A post-window step read from `over`: `func(measure) OVER (…)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverParts {
    pub func: OverFn,
    pub measure: String,
    pub partition_by: Vec<String>,
    pub preceding: u64,
}

/// Parses an `over` value such as `avg(views) over (partition by page order by
/// window_start rows between 2 preceding and current row)`.
pub fn parse_over(text: &str) -> Result<OverParts, String> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("\"{text}\" is not a window function: {e}"))?;
    let shape = "write func(measure) OVER ([PARTITION BY keys] ORDER BY window_start ROWS BETWEEN n PRECEDING AND CURRENT ROW)";
    let Expr::Function(f) = &expr else {
        return Err(format!("\"{text}\": {shape}"));
    };
    let Some(func) = over_fn(f) else {
        return Err(format!(
            "\"{text}\": {} is not supported (avg, sum, min, max and count are)",
            f.name
        ));
    };
    let measure = match &f.args {
        FunctionArguments::List(l) if l.duplicate_treatment.is_none() && l.clauses.is_empty() => {
            match l.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => column_of(e),
                _ => None,
            }
        }
        _ => None,
    };
    let (Some(measure), Some(WindowType::WindowSpec(w))) = (measure, &f.over) else {
        return Err(format!("\"{text}\": {shape}, the argument a measure's name"));
    };
    let (partition_by, preceding) =
        frame(w, column_of, start(f)).map_err(|e| format!("\"{text}\": {}", e.message))?;
    Ok(OverParts {
        func,
        measure,
        partition_by,
        preceding,
    })
}
