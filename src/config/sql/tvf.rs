//! The window call `TABLE(TUMBLE(TABLE s, DESCRIPTOR(c), INTERVAL …))`, read from the
//! token stream (sqlparser has no grammar for it), and Flink's `WATERMARK FOR`.

use deltalake::datafusion::sql::sqlparser;
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use super::{PLACEHOLDER, SqlError, refuse};
use crate::config::values::{Span, parse_span};

/// The window call, as read from the tokens.
pub(super) struct Tvf {
    pub kind: String,
    pub at: Location,
    pub stream: String,
    pub partition_by: Vec<String>,
    pub time: String,
    pub intervals: Vec<(String, Span, Location)>,
}

fn significant(tokens: &[TokenWithSpan]) -> Vec<usize> {
    (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect()
}

fn is_kw(t: &TokenWithSpan, kw: Keyword) -> bool {
    matches!(&t.token, Token::Word(w) if w.keyword == kw && w.quote_style.is_none())
}

/// Finds `TABLE ( name ( … ) )`, reads it, and puts a placeholder table in its place.
pub(super) fn cut_window_call(
    mut tokens: Vec<TokenWithSpan>,
) -> Result<(Vec<TokenWithSpan>, Option<Tvf>), SqlError> {
    // Every call is cut (a query naming two is then refused for its join or union);
    // the first is the aggregate's.
    let mut first_call = None;
    while let Some((first, last, tvf)) = next_call(&tokens)? {
        let span = tokens[first].span.union(&tokens[last].span);
        let placeholder = TokenWithSpan::new(
            Token::Word(Word {
                value: PLACEHOLDER.into(),
                quote_style: None,
                keyword: Keyword::NoKeyword,
            }),
            span,
        );
        tokens.splice(first..=last, std::iter::once(placeholder));
        first_call.get_or_insert(tvf);
    }
    Ok((tokens, first_call))
}

/// The token range of the next `TABLE ( name ( … ) )`, and the call read from it.
fn next_call(tokens: &[TokenWithSpan]) -> Result<Option<(usize, usize, Tvf)>, SqlError> {
    let sig = significant(tokens);
    let found = sig.windows(4).position(|w| {
        is_kw(&tokens[w[0]], Keyword::TABLE)
            && tokens[w[1]].token == Token::LParen
            && matches!(tokens[w[2]].token, Token::Word(_))
            && tokens[w[3]].token == Token::LParen
    });
    let Some(pos) = found else { return Ok(None) };
    // The closing parenthesis of TABLE( … ).
    let mut depth = 0usize;
    let mut close = None;
    for (k, &i) in sig.iter().enumerate().skip(pos + 1) {
        match tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    close = Some(k);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return refuse(tokens[sig[pos]].span.start, "TABLE( is not closed");
    };
    let call: Vec<TokenWithSpan> = sig[pos + 2..close].iter().map(|&i| tokens[i].clone()).collect();
    let tvf = read_call(&call)?;
    Ok(Some((sig[pos], sig[close], tvf)))
}

/// Reads `NAME ( arg, … )`.
fn read_call(call: &[TokenWithSpan]) -> Result<Tvf, SqlError> {
    let Token::Word(name) = &call[0].token else {
        unreachable!("checked by the caller")
    };
    let at = call[0].span.start;
    let kind = name.value.to_ascii_uppercase();
    if !["TUMBLE", "HOP", "CUMULATE", "SESSION"].contains(&kind.as_str()) {
        return refuse(
            at,
            format!(
                "TABLE({}(…)) is not a window function (supported: TUMBLE, HOP, SESSION, CUMULATE)",
                name.value
            ),
        );
    }
    // Arguments between the call's parentheses, split at top-level commas.
    if call.last().is_none_or(|t| t.token != Token::RParen) {
        return refuse(
            at,
            "TABLE(…) takes one window call and nothing else: TABLE(TUMBLE(…))",
        );
    }
    let inner = &call[2..call.len() - 1];
    let mut args: Vec<&[TokenWithSpan]> = Vec::new();
    let (mut depth, mut from) = (0usize, 0usize);
    for (i, t) in inner.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                args.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    args.push(&inner[from..]);
    let mut tvf = Tvf {
        kind,
        at,
        stream: String::new(),
        partition_by: Vec::new(),
        time: String::new(),
        intervals: Vec::new(),
    };
    let (mut data, mut time) = (false, false);
    for arg in args {
        let Some(first) = arg.first() else {
            return refuse(at, format!("{}(…): an argument is empty", tvf.kind));
        };
        // `NAME => value`
        let (name, arg) = match (arg.first(), arg.get(1)) {
            (
                Some(TokenWithSpan {
                    token: Token::Word(w),
                    ..
                }),
                Some(TokenWithSpan {
                    token: Token::RArrow, ..
                }),
            ) => (Some(w.value.to_ascii_uppercase()), &arg[2..]),
            _ => (None, arg),
        };
        let Some(head) = arg.first() else {
            return refuse(first.span.start, format!("{}(…): an argument is empty", tvf.kind));
        };
        if is_kw(head, Keyword::TABLE) {
            read_table(&tvf.kind, arg, &mut tvf.stream, &mut tvf.partition_by)?;
            data = true;
        } else if matches!(&head.token, Token::Word(w) if w.value.eq_ignore_ascii_case("DESCRIPTOR")) {
            tvf.time = read_descriptor(arg)?;
            time = true;
        } else if is_kw(head, Keyword::INTERVAL) {
            let span = read_interval(arg)?;
            tvf.intervals
                .push((name.unwrap_or_default(), span, head.span.start));
        } else {
            return refuse(
                head.span.start,
                format!(
                    "{}(…): \"{}\" is not an argument it takes (TABLE <stream>, DESCRIPTOR(<column>), INTERVAL …)",
                    tvf.kind, head.token
                ),
            );
        }
    }
    if !data || !time {
        return refuse(
            at,
            format!(
                "{}(…) needs TABLE <stream> and DESCRIPTOR(<time column>) first",
                tvf.kind
            ),
        );
    }
    Ok(tvf)
}

fn word(t: &TokenWithSpan) -> Option<&Word> {
    match &t.token {
        Token::Word(w) => Some(w),
        _ => None,
    }
}

/// `TABLE s [PARTITION BY c | PARTITION BY (c, …)]`
fn read_table(
    kind: &str,
    arg: &[TokenWithSpan],
    stream: &mut String,
    partition: &mut Vec<String>,
) -> Result<(), SqlError> {
    let at = arg[0].span.start;
    let Some(name) = arg.get(1).and_then(word) else {
        return refuse(at, format!("{kind}(…): TABLE takes the stream's name"));
    };
    stream.clone_from(&name.value);
    let rest = &arg[2..];
    if rest.is_empty() {
        return Ok(());
    }
    let by = rest.len() >= 3 && is_kw(&rest[0], Keyword::PARTITION) && is_kw(&rest[1], Keyword::BY);
    if !by || kind != "SESSION" {
        return refuse(
            rest[0].span.start,
            format!(
                "{kind}(…): TABLE {} is followed by \"{}\"; only SESSION takes PARTITION BY",
                name.value, rest[0].token
            ),
        );
    }
    for t in &rest[2..] {
        match &t.token {
            Token::Word(w) => partition.push(w.value.clone()),
            Token::LParen | Token::RParen | Token::Comma => {}
            other => {
                return refuse(
                    t.span.start,
                    format!("SESSION(…): \"{other}\" in PARTITION BY is not a column"),
                );
            }
        }
    }
    Ok(())
}

/// `DESCRIPTOR(c)`
fn read_descriptor(arg: &[TokenWithSpan]) -> Result<String, SqlError> {
    match arg {
        [_, l, c, r] if l.token == Token::LParen && r.token == Token::RParen => match word(c) {
            Some(w) => Ok(w.value.clone()),
            None => refuse(c.span.start, "DESCRIPTOR takes the event-time column"),
        },
        _ => refuse(
            arg[0].span.start,
            "DESCRIPTOR takes one column: DESCRIPTOR(event_time)",
        ),
    }
}

/// `INTERVAL '5' MINUTE`, `INTERVAL 5 MINUTES`, `INTERVAL '5 minutes'`.
fn read_interval(arg: &[TokenWithSpan]) -> Result<Span, SqlError> {
    let at = arg[0].span.start;
    let hint = "write intervals as INTERVAL '5' MINUTE (MILLISECOND, SECOND, MINUTE, HOUR or DAY)";
    let (amount, unit) = match arg.get(1..) {
        Some([v]) => match &v.token {
            Token::SingleQuotedString(s) => match s.trim().split_once(char::is_whitespace) {
                Some((n, u)) => (n.trim().to_string(), u.trim().to_string()),
                None => return refuse(at, hint),
            },
            _ => return refuse(at, hint),
        },
        Some([v, u]) => {
            let n = match &v.token {
                Token::SingleQuotedString(s) => s.trim().to_string(),
                Token::Number(n, _) => n.clone(),
                _ => return refuse(at, hint),
            };
            let Some(u) = word(u) else { return refuse(at, hint) };
            (n, u.value.clone())
        }
        _ => {
            return refuse(
                at,
                format!("{hint}; ranges such as MINUTE TO SECOND are not supported"),
            );
        }
    };
    // The unit as a pipeline file writes it; parse_span does the arithmetic.
    let suffix = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => "ms",
        "SECOND" => "s",
        "MINUTE" => "m",
        "HOUR" => "h",
        "DAY" => "d",
        other => return refuse(at, format!("interval unit {other} is not supported: {hint}")),
    };
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return refuse(at, format!("\"{amount}\" is not a whole number: {hint}"));
    }
    let span = parse_span(&format!("{amount}{suffix}")).or_else(|m| refuse(at, m))?;
    if span.0.is_zero() {
        return refuse(at, "an interval must be longer than 0");
    }
    Ok(span)
}

/// Parses Flink's `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` (or `AS ts`: no delay)
/// into the column and the delay.
pub fn parse_watermark(text: &str) -> Result<(String, Span), String> {
    let shape = "write WATERMARK FOR <column> AS <column> - INTERVAL '5' SECOND";
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| format!("\"{text}\": {e}"))?;
    let sig: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let kw = |i: usize, k: &str| {
        sig.get(i)
            .and_then(word)
            .is_some_and(|w| w.value.eq_ignore_ascii_case(k))
    };
    let col = |i: usize| sig.get(i).and_then(word).map(|w| w.value.clone());
    if !(kw(0, "WATERMARK") && kw(1, "FOR") && kw(3, "AS")) {
        return Err(format!("\"{text}\": {shape}"));
    }
    let (Some(c), Some(c2)) = (col(2), col(4)) else {
        return Err(format!("\"{text}\": {shape}"));
    };
    if c != c2 {
        return Err(format!(
            "\"{text}\": the watermark must trail the same column ({c}) by an interval"
        ));
    }
    match sig.get(5..) {
        Some([]) | None => Ok((c, Span::from_secs(0))),
        Some([minus, rest @ ..])
            if minus.token == Token::Minus && rest.first().is_some_and(|t| is_kw(t, Keyword::INTERVAL)) =>
        {
            read_interval(rest)
                .map(|d| (c, d))
                .map_err(|e| format!("\"{text}\": {}", e.message))
        }
        _ => Err(format!("\"{text}\": {shape}")),
    }
}
