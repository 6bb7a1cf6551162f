//! Splits a SQL script into statements and parses each with sqlparser, after taking
//! out the parts of Flink SQL that its dialect does not know:
//!
//! - `WATERMARK FOR col AS expr` and computed columns (`name AS expr`) in `CREATE
//!   TABLE`: each is cut out of the column list and its expression parsed on its own;
//! - the `TABLE` keyword before a window table function's input
//!   (`TUMBLE(TABLE bids, ...)`);
//! - `EXECUTE STATEMENT SET BEGIN ... END;` and `BEGIN STATEMENT SET; ... END;`, which
//!   group the INSERTs between them into one job.
//!
//! Everything is cut by blanking characters with spaces (newlines stay), and each
//! statement is parsed from a copy of the whole script in which everything else is
//! blank: every position sqlparser reports is the position in the script the user wrote.

use super::SqlError;
use sqlparser::ast::{Expr, Statement};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// One statement of a script.
#[derive(Debug)]
pub struct Parsed {
    /// The statement, as sqlparser read it.
    pub statement: Statement,
    /// What a `CREATE TABLE` declared that sqlparser does not know.
    pub extras: TableExtras,
    /// The statement set it belongs to (statements of one set share the number).
    pub statement_set: Option<usize>,
    /// Its text as written.
    pub text: String,
    /// Its first line (1-based).
    pub line: u64,
    /// Its first column (1-based).
    pub column: u64,
}

/// A `ROW` column's fields: names and types.
pub type RowFields = Vec<(String, sqlparser::ast::DataType)>;

/// Flink's parts of a `CREATE TABLE` column list.
#[derive(Debug, Default, Clone)]
pub struct TableExtras {
    /// Computed columns: (position among the columns, name, expression).
    pub computed: Vec<(usize, String, Expr)>,
    /// `WATERMARK FOR column AS expression`.
    pub watermark: Option<(String, Expr)>,
    /// `ROW<field TYPE, ...>` columns: (position among the columns, name, fields). A
    /// table holds them flattened, as columns named `name.field`.
    pub rows: Vec<(usize, String, RowFields)>,
}

impl From<ParserError> for SqlError {
    fn from(e: ParserError) -> Self {
        let msg = match e {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            ParserError::RecursionLimitExceeded => {
                return SqlError::new("the statement nests too deeply")
            }
        };
        from_message(&msg)
    }
}

/// An error from sqlparser's message, whose position it appends as
/// "at Line: L, Column: C".
fn from_message(msg: &str) -> SqlError {
    if let Some(i) = msg.rfind(" at Line: ") {
        let tail = &msg[i + " at Line: ".len()..];
        if let Some((l, c)) = tail.split_once(", Column: ") {
            if let (Ok(l), Ok(c)) = (l.trim().parse(), c.trim().parse()) {
                return SqlError::at(format!("SQL parse error: {}", &msg[..i]), l, c);
            }
        }
    }
    SqlError::new(format!("SQL parse error: {msg}"))
}

struct Text {
    chars: Vec<char>,
    /// The char index each line starts at.
    lines: Vec<usize>,
}

impl Text {
    fn new(s: &str) -> Self {
        let chars: Vec<char> = s.chars().collect();
        let mut lines = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                lines.push(i + 1);
            }
        }
        Self { chars, lines }
    }

    /// The char index of a 1-based (line, column).
    fn index(&self, line: u64, column: u64) -> usize {
        let l = usize::try_from(line.max(1) - 1).unwrap_or(usize::MAX);
        let start = self.lines.get(l).copied().unwrap_or(self.chars.len());
        let c = usize::try_from(column.max(1) - 1).unwrap_or(usize::MAX);
        start.saturating_add(c).min(self.chars.len())
    }

    fn start(&self, t: &TokenWithSpan) -> usize {
        self.index(t.span.start.line, t.span.start.column)
    }

    fn end(&self, t: &TokenWithSpan) -> usize {
        self.index(t.span.end.line, t.span.end.column)
    }

    /// The script with only `keep` (char ranges) left, minus `blank`.
    fn masked(&self, keep: (usize, usize), blank: &[(usize, usize)]) -> String {
        self.chars
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let kept = i >= keep.0 && i < keep.1 && !blank.iter().any(|b| i >= b.0 && i < b.1);
                if kept || c == '\n' {
                    c
                } else {
                    ' '
                }
            })
            .collect()
    }
}

fn is_word(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// Parses a script into its statements.
pub fn script(sql: &str) -> Result<Vec<Parsed>, SqlError> {
    let dialect = GenericDialect {};
    let text = Text::new(sql);
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            SqlError::at(
                format!("SQL parse error: {}", e.message),
                e.location.line,
                e.location.column,
            )
        })?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    let mut out = Vec::new();
    let mut set: Option<usize> = None;
    let mut sets = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let mut j = i;
        let mut depth = 0i32;
        while j < tokens.len() {
            match tokens[j].token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::SemiColon if depth <= 0 => break,
                _ => {}
            }
            j += 1;
        }
        let seg = &tokens[i..j];
        i = j + 1;
        if seg.is_empty() {
            continue;
        }
        let words: Vec<&Token> = seg.iter().take(4).map(|t| &t.token).collect();
        let mut body = seg;
        // Statement sets.
        if words.len() >= 4
            && is_word(words[0], "EXECUTE")
            && is_word(words[1], "STATEMENT")
            && is_word(words[2], "SET")
            && is_word(words[3], "BEGIN")
        {
            if set.is_some() {
                return Err(pos(&seg[0], "a statement set cannot hold another"));
            }
            sets += 1;
            set = Some(sets);
            body = &seg[4..];
        } else if words.len() == 3
            && is_word(words[0], "BEGIN")
            && is_word(words[1], "STATEMENT")
            && is_word(words[2], "SET")
        {
            if set.is_some() {
                return Err(pos(&seg[0], "a statement set cannot hold another"));
            }
            sets += 1;
            set = Some(sets);
            continue;
        } else if words.len() == 1 && is_word(words[0], "END") {
            if set.take().is_none() {
                return Err(pos(&seg[0], "END without a statement set to end"));
            }
            continue;
        }
        let Some(first) = body.first() else {
            return Err(pos(&seg[0], "an empty statement set"));
        };
        let Some(last) = body.last() else {
            continue;
        };
        let keep = (text.start(first), text.end(last));
        let (blank, extras) = rewrite(body, &text)?;
        let mut masked: Vec<char> = text.masked(keep, &blank).chars().collect();
        let mut replacements = session_partitions(body, &text)?;
        replacements.extend(lookups(body, &text)?);
        for (start, end, with) in replacements {
            // The replacement in one piece, then the range's newlines at its end (so
            // that later lines keep their numbers, as far as the range has room).
            let end = end.min(masked.len());
            let Some(range) = masked.get_mut(start..end) else {
                continue;
            };
            let newlines = range.iter().filter(|c| **c == '\n').count();
            let with: Vec<char> = with.chars().collect();
            let room = range.len();
            let keep = newlines.min(room.saturating_sub(with.len()));
            for (k, c) in range.iter_mut().enumerate() {
                *c = if k < with.len() {
                    with[k]
                } else if k >= room - keep {
                    '\n'
                } else {
                    ' '
                };
            }
        }
        let masked: String = masked.into_iter().collect();
        let mut parser = Parser::new(&dialect).try_with_sql(&masked)?;
        let statement = parser
            .parse_statement()
            .map_err(|e| at_end_if_unplaced(e.into(), last))?;
        let next = parser.peek_token();
        if next.token != Token::EOF && next.token != Token::SemiColon {
            return Err(pos(
                &next,
                format!(
                    "SQL parse error: unexpected {} after the statement",
                    next.token
                ),
            ));
        }
        if set.is_some() && !matches!(statement, Statement::Insert(_)) {
            return Err(pos(first, "a statement set holds only INSERT statements"));
        }
        out.push(Parsed {
            statement,
            extras,
            statement_set: set,
            text: text.chars[keep.0..keep.1].iter().collect(),
            line: first.span.start.line,
            column: first.span.start.column,
        });
    }
    if let (Some(_), Some(t)) = (set, tokens.last()) {
        return Err(pos(t, "the statement set has no END"));
    }
    Ok(out)
}

/// The fields of `ROW<name TYPE, ...>` or `ROW(name TYPE, ...)` (from the `<` or `(`).
fn row_fields(el: &[TokenWithSpan], text: &Text) -> Result<RowFields, SqlError> {
    let angle = el[0].token == Token::Lt;
    let mut fields = Vec::new();
    let mut depth = 0i32;
    let mut start = 1;
    let mut end = None;
    for (k, t) in el.iter().enumerate().skip(1) {
        let closes = match t.token {
            Token::Gt if angle && depth == 0 => true,
            Token::RParen if !angle && depth == 0 => true,
            Token::ShiftRight if angle => {
                return Err(pos(t, "unsupported: a ROW inside a ROW"));
            }
            Token::Lt if angle => return Err(pos(t, "unsupported: a ROW inside a ROW")),
            Token::LParen => {
                depth += 1;
                false
            }
            Token::RParen => {
                depth -= 1;
                false
            }
            _ => false,
        };
        if closes || (t.token == Token::Comma && depth == 0) {
            let f = &el[start..k];
            let (
                Some(TokenWithSpan {
                    token: Token::Word(n),
                    ..
                }),
                Some(ty_first),
            ) = (f.first(), f.get(1))
            else {
                return Err(pos(t, "expected a ROW field: name TYPE"));
            };
            let keep = (text.start(ty_first), text.end(&f[f.len() - 1]));
            let dialect = GenericDialect {};
            let mut p = Parser::new(&dialect).try_with_sql(&text.masked(keep, &[]))?;
            let ty = p
                .parse_data_type()
                .map_err(|e| at_end_if_unplaced(e.into(), &f[f.len() - 1]))?;
            let next = p.peek_token();
            if next.token != Token::EOF {
                return Err(pos(
                    &next,
                    format!("unexpected {} in a ROW field's type", next.token),
                ));
            }
            fields.push((n.value.clone(), ty));
            start = k + 1;
        }
        if closes {
            end = Some(k);
            break;
        }
    }
    match end {
        Some(k) if k + 1 == el.len() => Ok(fields),
        Some(k) => Err(pos(&el[k + 1], "unexpected text after a ROW type")),
        None => Err(pos(&el[0], "a ROW type that does not close")),
    }
}

/// An error sqlparser gave no position (it ran out of input) is placed at the end of
/// the last token.
fn at_end_if_unplaced(e: SqlError, last: &TokenWithSpan) -> SqlError {
    if e.line > 0 {
        return e;
    }
    SqlError::at(e.message, last.span.end.line, last.span.end.column)
}

fn pos(t: &TokenWithSpan, msg: impl Into<String>) -> SqlError {
    SqlError::at(msg, t.span.start.line, t.span.start.column)
}

/// `SESSION(TABLE t PARTITION BY k1, k2, DESCRIPTOR(...), ...)` (or `PARTITION BY
/// (k1, k2)`): sqlparser cannot read the partition clause, so `TABLE t PARTITION BY
/// k1, k2` is handed over as `t,PARTITION_BY(k1, k2)`, an argument the planner reads.
/// Each is a char range of the script and its replacement.
fn session_partitions(
    seg: &[TokenWithSpan],
    text: &Text,
) -> Result<Vec<(usize, usize, String)>, SqlError> {
    let mut out = Vec::new();
    let slice = |a: &TokenWithSpan, b: &TokenWithSpan| -> String {
        text.chars[text.start(a)..text.end(b)].iter().collect()
    };
    for k in 2..seg.len() {
        if !(is_word(&seg[k].token, "TABLE")
            && seg[k - 1].token == Token::LParen
            && is_word(&seg[k - 2].token, "SESSION"))
        {
            continue;
        }
        // The table's name runs up to PARTITION (or the argument's end).
        let Some(p) = (k + 1..seg.len())
            .take_while(|&j| seg[j].token != Token::Comma && seg[j].token != Token::RParen)
            .find(|&j| is_word(&seg[j].token, "PARTITION"))
        else {
            continue;
        };
        if p == k + 1 {
            return Err(pos(
                &seg[p],
                "SESSION: expected a table before PARTITION BY",
            ));
        }
        if !seg.get(p + 1).is_some_and(|t| is_word(&t.token, "BY")) {
            return Err(pos(&seg[p], "SESSION: expected PARTITION BY"));
        }
        // The columns: `(a, b)`, or `a, b` up to the comma before DESCRIPTOR.
        let first = p + 2;
        let (cols_from, cols_to, last) = if seg.get(first).map(|t| &t.token) == Some(&Token::LParen)
        {
            let Some(close) = (first..seg.len()).find(|&j| seg[j].token == Token::RParen) else {
                return Err(pos(&seg[first], "SESSION: PARTITION BY ( has no )"));
            };
            if close == first + 1 {
                return Err(pos(&seg[first], "SESSION: PARTITION BY names no column"));
            }
            (first + 1, close - 1, close)
        } else {
            let mut j = first;
            loop {
                if !seg
                    .get(j)
                    .is_some_and(|t| matches!(t.token, Token::Word(_)))
                {
                    return Err(pos(
                        seg.get(j).unwrap_or(&seg[p]),
                        "SESSION: PARTITION BY takes column names",
                    ));
                }
                let more = seg.get(j + 1).is_some_and(|t| t.token == Token::Comma)
                    && seg
                        .get(j + 2)
                        .is_some_and(|t| !is_word(&t.token, "DESCRIPTOR"));
                if !more {
                    break;
                }
                j += 2;
            }
            (first, j, j)
        };
        let with = format!(
            "{},PARTITION_BY({})",
            slice(&seg[k + 1], &seg[p - 1]),
            slice(&seg[cols_from], &seg[cols_to])
        );
        out.push((text.start(&seg[k]), text.end(&seg[last]), with));
    }
    Ok(out)
}

/// `JOIN t FOR SYSTEM_TIME AS OF e` (a lookup join): sqlparser's dialect does not
/// take the clause, so `t FOR SYSTEM_TIME AS OF e` is handed over as
/// `SYSTEM_TIME_AS_OF(t, e)`, a FROM item the planner reads.
fn lookups(seg: &[TokenWithSpan], text: &Text) -> Result<Vec<(usize, usize, String)>, SqlError> {
    let mut out = Vec::new();
    let slice = |a: &TokenWithSpan, b: &TokenWithSpan| -> String {
        text.chars[text.start(a)..text.end(b)].iter().collect()
    };
    for k in 1..seg.len() {
        let clause = ["FOR", "SYSTEM_TIME", "AS", "OF"];
        if !(0..4).all(|d| seg.get(k + d).is_some_and(|t| is_word(&t.token, clause[d]))) {
            continue;
        }
        // The table's name: `a` or `a.b` before FOR.
        let mut first = k - 1;
        while first >= 2
            && seg[first - 1].token == Token::Period
            && matches!(seg[first - 2].token, Token::Word(_))
        {
            first -= 2;
        }
        if !matches!(seg[first].token, Token::Word(_)) {
            return Err(pos(&seg[k], "FOR SYSTEM_TIME AS OF follows a table's name"));
        }
        // The time expression: up to the alias, ON, or the end of the FROM item.
        let from = k + 4;
        let mut depth = 0i32;
        let mut end = from;
        while end < seg.len() {
            let t = &seg[end].token;
            match t {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma | Token::SemiColon if depth == 0 => break,
                _ if depth == 0
                    && [
                        "AS", "ON", "JOIN", "WHERE", "INNER", "LEFT", "RIGHT", "FULL", "CROSS",
                        "GROUP", "ORDER", "UNION", "HAVING", "LIMIT", "USING",
                    ]
                    .iter()
                    .any(|w| is_word(t, w)) =>
                {
                    break
                }
                _ => {}
            }
            end += 1;
        }
        if end == from {
            return Err(pos(&seg[k + 3], "FOR SYSTEM_TIME AS OF needs a time"));
        }
        let (start, expr_at, expr_end) = (
            text.start(&seg[first]),
            text.start(&seg[from]),
            text.end(&seg[end - 1]),
        );
        let prefix = format!("SYSTEM_TIME_AS_OF({},", slice(&seg[first], &seg[k - 1]));
        let expr = slice(&seg[from], &seg[end - 1]);
        // The time expression stays where it was (so errors in it keep their column)
        // when the clause is on one line and a blank follows it for the `)`.
        let gap = expr_at - start;
        let aligned = !text.chars[start..expr_at].contains(&'\n')
            && gap > prefix.chars().count()
            && matches!(text.chars.get(expr_end), Some(' ' | '\t'));
        if aligned {
            let with = format!("{prefix:<gap$}{expr})");
            out.push((start, expr_end + 1, with));
        } else {
            out.push((start, expr_end, format!("{prefix} {expr})")));
        }
    }
    Ok(out)
}

/// The ranges to blank in a statement, and Flink's column-list parts it declared.
fn rewrite(
    seg: &[TokenWithSpan],
    text: &Text,
) -> Result<(Vec<(usize, usize)>, TableExtras), SqlError> {
    let mut blank = Vec::new();
    let mut extras = TableExtras::default();
    // `TABLE` before a window function's input.
    for k in 2..seg.len() {
        if is_word(&seg[k].token, "TABLE")
            && seg[k - 1].token == Token::LParen
            && ["TUMBLE", "HOP", "CUMULATE", "SESSION"]
                .iter()
                .any(|f| is_word(&seg[k - 2].token, f))
        {
            blank.push((text.start(&seg[k]), text.end(&seg[k])));
        }
    }
    // CREATE [TEMPORARY] TABLE name ( elements ) ...
    let is_create = seg.first().is_some_and(|t| is_word(&t.token, "CREATE"));
    let table_at = seg
        .iter()
        .take(4)
        .position(|t| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::TABLE));
    let (true, Some(table_at)) = (is_create, table_at) else {
        return Ok((blank, extras));
    };
    let Some(open) = seg[table_at..]
        .iter()
        .position(|t| t.token == Token::LParen)
        .map(|p| p + table_at)
    else {
        return Ok((blank, extras));
    };
    // The elements: token ranges between depth-1 commas.
    let mut elements: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0;
    // Inside `ROW<...>`: its commas separate fields, not columns.
    let mut angle = 0i32;
    let mut start = open + 1;
    let mut close = None;
    for (k, t) in seg.iter().enumerate().skip(open) {
        match t.token {
            Token::Lt if angle > 0 || (k > 0 && is_word(&seg[k - 1].token, "ROW")) => angle += 1,
            Token::Gt if angle > 0 => angle -= 1,
            Token::ShiftRight if angle > 0 => angle -= 2,
            _ if angle > 0 => {}
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    elements.push((start, k));
                    close = Some(k);
                    break;
                }
            }
            Token::Comma if depth == 1 => {
                elements.push((start, k));
                start = k + 1;
            }
            _ => {}
        }
    }
    if close.is_none() {
        return Ok((blank, extras));
    }
    let mut column_index = 0usize;
    let mut cut: Vec<usize> = Vec::new();
    for (e, &(a, b)) in elements.iter().enumerate() {
        if a >= b {
            continue;
        }
        let el = &seg[a..b];
        let expr_of = |from: usize| -> Result<Expr, SqlError> {
            let Some(first) = el.get(from) else {
                return Err(pos(&el[el.len() - 1], "an expression is missing after AS"));
            };
            let keep = (text.start(first), text.end(&el[el.len() - 1]));
            let masked = text.masked(keep, &[]);
            let dialect = GenericDialect {};
            let mut p = Parser::new(&dialect).try_with_sql(&masked)?;
            let expr = p
                .parse_expr()
                .map_err(|e| at_end_if_unplaced(e.into(), &el[el.len() - 1]))?;
            let next = p.peek_token();
            if next.token != Token::EOF {
                return Err(pos(
                    &next,
                    format!(
                        "SQL parse error: unexpected {} in the expression",
                        next.token
                    ),
                ));
            }
            Ok(expr)
        };
        if is_word(&el[0].token, "WATERMARK") && el.len() > 1 && is_word(&el[1].token, "FOR") {
            let (
                Some(TokenWithSpan {
                    token: Token::Word(col),
                    ..
                }),
                Some(as_),
            ) = (el.get(2), el.get(3))
            else {
                return Err(pos(&el[0], "expected WATERMARK FOR column AS expression"));
            };
            if !is_word(&as_.token, "AS") {
                return Err(pos(as_, "expected AS after WATERMARK FOR column"));
            }
            if extras.watermark.is_some() {
                return Err(pos(&el[0], "a table has at most one WATERMARK"));
            }
            extras.watermark = Some((col.value.clone(), expr_of(4)?));
            cut.push(e);
        } else if el.len() > 2
            && matches!(&el[0].token, Token::Word(_))
            && is_word(&el[1].token, "AS")
        {
            let Token::Word(name) = &el[0].token else {
                continue;
            };
            extras
                .computed
                .push((column_index, name.value.clone(), expr_of(2)?));
            cut.push(e);
            column_index += 1;
        } else if el.len() > 2
            && matches!(&el[0].token, Token::Word(_))
            && is_word(&el[1].token, "ROW")
            && matches!(el[2].token, Token::Lt | Token::LParen)
        {
            let Token::Word(name) = &el[0].token else {
                continue;
            };
            let fields = row_fields(&el[2..], text)?;
            extras.rows.push((column_index, name.value.clone(), fields));
            cut.push(e);
            column_index += 1;
        } else if !["PRIMARY", "CONSTRAINT", "UNIQUE", "CHECK", "FOREIGN"]
            .iter()
            .any(|w| is_word(&el[0].token, w))
        {
            column_index += 1;
        }
    }
    // Blank the cut elements and every comma but one between consecutive kept
    // elements, so that what stays is still a valid list.
    let kept: Vec<usize> = (0..elements.len()).filter(|e| !cut.contains(e)).collect();
    if kept.is_empty() && !cut.is_empty() {
        return Err(pos(
            &seg[open],
            "a table needs at least one physical column",
        ));
    }
    for &e in &cut {
        let (a, b) = elements[e];
        if a < b {
            blank.push((text.start(&seg[a]), text.end(&seg[b - 1])));
        }
    }
    for (e, &(_, b)) in elements.iter().enumerate() {
        // Element e's comma follows it at token b (the last element ends at `)`).
        let comma_kept = kept.contains(&e) && kept.iter().any(|&k| k > e);
        if seg[b].token == Token::Comma && !comma_kept {
            blank.push((text.start(&seg[b]), text.end(&seg[b])));
        }
    }
    Ok((blank, extras))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn flink_ddl_parses_with_watermark_and_computed_columns() {
        let sql = "CREATE TABLE bids (\n  price BIGINT,\n  net AS price * 2,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'datagen');\nSELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND));";
        let s = script(sql).unwrap();
        assert_eq!(s.len(), 2);
        let Statement::CreateTable(ct) = &s[0].statement else {
            panic!("{:?}", s[0].statement)
        };
        let names: Vec<_> = ct.columns.iter().map(|c| c.name.value.clone()).collect();
        assert_eq!(names, ["price", "ts"]);
        assert_eq!(s[0].extras.computed.len(), 1);
        assert_eq!(s[0].extras.computed[0].0, 1);
        assert_eq!(s[0].extras.computed[0].2.to_string(), "price * 2");
        let (col, wm) = s[0].extras.watermark.as_ref().unwrap();
        assert_eq!(col, "ts");
        assert_eq!(wm.to_string(), "ts - INTERVAL '5' SECOND");
        assert_eq!(s[1].line, 7);
        // The first column computed, the watermark right after it.
        let s = script("CREATE TABLE t (a AS 1, WATERMARK FOR b AS b, b TIMESTAMP(3))").unwrap();
        let Statement::CreateTable(ct) = &s[0].statement else {
            panic!()
        };
        assert_eq!(ct.columns.len(), 1);
        assert_eq!(s[0].extras.computed[0].0, 0);
    }

    #[test]
    fn row_columns_are_cut_out_with_their_fields() {
        let sql = "CREATE TABLE n (\n event_type INT,\n bid ROW<auction BIGINT, url VARCHAR, dateTime TIMESTAMP(3)>,\n p ROW(id BIGINT),\n dateTime AS bid.dateTime\n) WITH ()";
        let s = script(sql).unwrap();
        let Statement::CreateTable(ct) = &s[0].statement else {
            panic!()
        };
        assert_eq!(ct.columns.len(), 1);
        let rows = &s[0].extras.rows;
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "bid"));
        let names: Vec<_> = rows[0].2.iter().map(|(n, t)| format!("{n} {t}")).collect();
        assert_eq!(
            names,
            ["auction BIGINT", "url VARCHAR", "dateTime TIMESTAMP(3)"]
        );
        assert_eq!((rows[1].0, rows[1].2.len()), (2, 1));
        assert_eq!(s[0].extras.computed[0].0, 3);
        let e = script("CREATE TABLE n (r ROW<a ROW<b INT>>) WITH ()").unwrap_err();
        assert!(e.message.contains("ROW inside a ROW"), "{e}");
        assert!(script("CREATE TABLE n (r ROW<a>) WITH ()").is_err());
    }

    #[test]
    fn errors_carry_the_script_position() {
        let e = script("SET 'a' = 'b';\n\nSELECT a FROM WHERE x").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.column > 0, "{e}");
        // Where the expression ran out.
        let e = script("CREATE TABLE t (\n a INT,\n b AS a +\n) WITH ()").unwrap_err();
        assert_eq!((e.line, e.column), (3, 10), "{e}");
        let e = script("SELECT 'unterminated").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn session_partition_by_is_handed_over_as_an_argument() {
        for sql in [
            "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY a, b, DESCRIPTOR(ts), INTERVAL '1' SECOND))",
            "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY (a, b), DESCRIPTOR(ts), INTERVAL '1' SECOND))",
        ] {
            let s = script(sql).unwrap();
            let text = s[0].statement.to_string();
            assert!(
                text.contains("SESSION(bids, PARTITION_BY(a, b), DESCRIPTOR(ts)"),
                "{text}"
            );
        }
        // A clause over several lines.
        let s = script("SELECT * FROM TABLE(SESSION(TABLE bids\n  PARTITION BY\n a, DESCRIPTOR(ts), INTERVAL '1' SECOND))").unwrap();
        let text = s[0].statement.to_string();
        assert!(
            text.contains("SESSION(bids, PARTITION_BY(a), DESCRIPTOR(ts)"),
            "{text}"
        );
        let s = script("SELECT * FROM t JOIN dim\n  FOR SYSTEM_TIME AS OF\n t.p AS d ON t.k = d.k")
            .unwrap();
        let text = s[0].statement.to_string();
        assert!(text.contains("SYSTEM_TIME_AS_OF(dim, t.p)"), "{text}");
        // Positions after the clause are kept.
        let e = script("SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY a,\n DESCRIPTOR(ts), INTERVAL '1' SECOND)) WHERE x = = 1")
            .unwrap_err();
        assert_eq!((e.line, e.column), (2, 50), "{e}");
        assert!(script("SELECT * FROM TABLE(SESSION(TABLE bids PARTITION a, DESCRIPTOR(ts), INTERVAL '1' SECOND))").is_err());
    }

    #[test]
    fn statement_sets_group_inserts() {
        let sql = "EXECUTE STATEMENT SET BEGIN\nINSERT INTO a SELECT * FROM s;\nINSERT INTO b SELECT * FROM s;\nEND;\nINSERT INTO c SELECT * FROM s;\nBEGIN STATEMENT SET;\nINSERT INTO d SELECT * FROM s;\nEND;";
        let s = script(sql).unwrap();
        let sets: Vec<_> = s.iter().map(|p| p.statement_set).collect();
        assert_eq!(sets, [Some(1), Some(1), None, Some(2)]);
        assert!(script("EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1;").is_err());
        assert!(script("BEGIN STATEMENT SET; SELECT 1; END;").is_err());
        assert!(script("END;").is_err());
    }
}
