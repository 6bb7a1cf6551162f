//! Scalar expressions compiled once into closures over a row.
//!
//! The planner type-checks each expression against its input's columns and turns it
//! into a tree of closures: evaluating one walks no syntax tree and looks nothing up by
//! name; each operator reads the values it needs by index.

use super::types::{format_timestamp, parse_timestamp, DataType, Row, Value};
use super::{Column, SqlError};
use sqlparser::ast::{
    BinaryOperator, CastKind, CeilFloorKind, DateTimeField, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Spanned, TrimWhereField, UnaryOperator, Value as SqlValue,
};
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled expression: a closure from a row to a value.
pub type Eval = Arc<dyn Fn(&Row) -> Value + Send + Sync>;

/// A type-checked, compiled expression.
#[derive(Clone)]
pub struct Compiled {
    /// Its result type.
    pub ty: DataType,
    /// Its evaluation.
    pub eval: Eval,
}

/// Aggregate function names (they may not appear in a scalar context).
pub const AGGREGATES: &[&str] = &["COUNT", "SUM", "MIN", "MAX", "AVG"];

/// What names an expression can refer to.
pub struct Scope<'a> {
    /// The input's columns.
    pub columns: &'a [Column],
    /// Expressions (by their SQL text) that an aggregation already computed: after a
    /// GROUP BY, grouping expressions and aggregate calls are columns of its output.
    pub computed: Option<&'a HashMap<String, usize>>,
    /// How each column is computed from the rows the expression will really see (a
    /// projection not applied yet, which this expression fuses with): column `i` is
    /// `bindings[i]` of the row instead of the row's value `i`.
    pub bindings: Option<&'a [Eval]>,
    /// The columns are qualified (`A.id`, a join's): a qualified name must match one.
    pub qualified: bool,
}

impl<'a> Scope<'a> {
    /// A scope over `columns`.
    pub fn new(columns: &'a [Column]) -> Self {
        Self {
            columns,
            computed: None,
            bindings: None,
            qualified: false,
        }
    }

    /// A reference to column `i`.
    fn column(&self, i: usize) -> Compiled {
        match self.bindings.and_then(|b| b.get(i)) {
            Some(e) => Compiled {
                ty: self.columns[i].ty,
                eval: e.clone(),
            },
            None => column_ref(i, self.columns[i].ty),
        }
    }

    /// The column a name refers to: `name`, or `q.name` — a ROW's field (`bid.price`,
    /// a flattened column) or a qualified column. Where the scope's columns are
    /// qualified (a join's), `q.name` must name one of them; elsewhere a qualifier
    /// the columns do not carry is the table's alias, and `name` alone decides.
    pub fn resolve(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Identifier(id) => self.lookup(&id.value),
            Expr::CompoundIdentifier(parts) => {
                let full: Vec<&str> = parts.iter().map(|p| p.value.as_str()).collect();
                let exact = self.lookup_exact(&full.join("."));
                if exact.is_some() || self.qualified {
                    return exact;
                }
                parts.last().and_then(|l| self.lookup(&l.value))
            }
            Expr::Nested(x) => self.resolve(x),
            _ => None,
        }
    }

    /// The column named `name`, exactly, else the only case-insensitive match.
    pub fn lookup_exact(&self, name: &str) -> Option<usize> {
        match self.case_insensitive(name) {
            Match::One(i) => Some(i),
            Match::None | Match::Many => None,
        }
    }

    fn case_insensitive(&self, name: &str) -> Match {
        if let Some(i) = self.columns.iter().position(|c| c.name == name) {
            return Match::One(i);
        }
        only(
            self.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.name.eq_ignore_ascii_case(name)),
        )
    }

    /// The index of the column `name`: as [`Self::lookup_exact`], else — a join's
    /// columns are qualified (`A.id`) — the only column `name` qualifies.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        match self.case_insensitive(name) {
            Match::One(i) => return Some(i),
            Match::Many => return None,
            Match::None => {}
        }
        let suffix = format!(".{}", name.to_ascii_lowercase());
        match only(
            self.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.name.to_ascii_lowercase().ends_with(&suffix)),
        ) {
            Match::One(i) => Some(i),
            Match::None | Match::Many => None,
        }
    }
}

/// How many columns a name matched.
enum Match {
    None,
    One(usize),
    Many,
}

fn only<'c>(mut it: impl Iterator<Item = (usize, &'c Column)>) -> Match {
    match (it.next(), it.next()) {
        (None, _) => Match::None,
        (Some((i, _)), None) => Match::One(i),
        (Some(_), Some(_)) => Match::Many,
    }
}

/// The error at an identifier's position.
pub fn err_ident(i: &sqlparser::ast::Ident, msg: impl Into<String>) -> SqlError {
    SqlError::at(msg, i.span.start.line, i.span.start.column)
}

/// The error at an expression's position.
pub fn err_at(e: &impl Spanned, msg: impl Into<String>) -> SqlError {
    let s = e.span();
    SqlError::at(msg, s.start.line, s.start.column)
}

fn column_ref(i: usize, ty: DataType) -> Compiled {
    Compiled {
        ty,
        eval: Arc::new(move |r: &Row| r.get(i).clone()),
    }
}

fn constant(ty: DataType, v: Value) -> Compiled {
    Compiled {
        ty,
        eval: Arc::new(move |_: &Row| v.clone()),
    }
}

/// The SQL type a `CAST` or a column definition names.
pub fn data_type(t: &sqlparser::ast::DataType) -> Option<DataType> {
    use sqlparser::ast::DataType as T;
    Some(match t {
        T::Boolean | T::Bool => DataType::Boolean,
        T::TinyInt(_) => DataType::TinyInt,
        T::SmallInt(_) => DataType::SmallInt,
        T::Int(_) | T::Integer(_) => DataType::Int,
        T::BigInt(_) => DataType::BigInt,
        T::Float(_) | T::Real => DataType::Float,
        T::Double(_) | T::DoublePrecision | T::Decimal(_) | T::Numeric(_) => DataType::Double,
        T::String(_) | T::Varchar(_) | T::Char(_) | T::Text | T::CharVarying(_) => DataType::String,
        T::Timestamp(_, tz) => match tz {
            sqlparser::ast::TimezoneInfo::None | sqlparser::ast::TimezoneInfo::WithoutTimeZone => {
                DataType::Timestamp
            }
            _ => DataType::TimestampLtz,
        },
        T::Custom(name, _) if name.to_string().eq_ignore_ascii_case("TIMESTAMP_LTZ") => {
            DataType::TimestampLtz
        }
        T::Custom(name, _) if name.to_string().eq_ignore_ascii_case("STRING") => DataType::String,
        _ => return None,
    })
}

/// Milliseconds of an `INTERVAL 'n' UNIT` literal.
pub fn interval_ms(iv: &sqlparser::ast::Interval, at: &Expr) -> Result<i64, SqlError> {
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) => s.clone(),
            SqlValue::Number(n, _) => n.clone(),
            _ => {
                return Err(err_at(
                    at,
                    "an INTERVAL takes a number, as INTERVAL '5' SECOND",
                ))
            }
        },
        _ => {
            return Err(err_at(
                at,
                "an INTERVAL takes a number, as INTERVAL '5' SECOND",
            ))
        }
    };
    let unit_ms: f64 = match &iv.leading_field {
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => 1.0,
        Some(DateTimeField::Second | DateTimeField::Seconds) | None => 1000.0,
        Some(DateTimeField::Minute | DateTimeField::Minutes) => 60_000.0,
        Some(DateTimeField::Hour | DateTimeField::Hours) => 3_600_000.0,
        Some(DateTimeField::Day | DateTimeField::Days) => 86_400_000.0,
        Some(other) => {
            return Err(err_at(
                at,
                format!("INTERVAL units of {other} are not supported (use MILLISECOND, SECOND, MINUTE, HOUR or DAY)"),
            ))
        }
    };
    let n: f64 = text
        .trim()
        .parse()
        .map_err(|_| err_at(at, format!("'{text}' is not a number of interval units")))?;
    let ms = n * unit_ms;
    if !ms.is_finite() || ms.abs() > 1e15 {
        return Err(err_at(at, format!("the interval '{text}' is out of range")));
    }
    Ok(ms.round() as i64)
}

/// The wall clock in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether `e` is `PROCTIME()`.
pub fn is_proctime_call(e: &Expr) -> bool {
    match e {
        Expr::Function(f) => function_name(f) == "PROCTIME",
        Expr::Nested(x) => is_proctime_call(x),
        _ => false,
    }
}

/// The plain name of a function call (upper case).
pub fn function_name(f: &sqlparser::ast::Function) -> String {
    f.name.to_string().to_ascii_uppercase()
}

/// The plain arguments of a call (`*` as `None`).
pub fn function_args(f: &sqlparser::ast::Function) -> Result<Vec<Option<&Expr>>, SqlError> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err(err_at(
            &f.name,
            format!("{}: a subquery as an argument is not supported", f.name),
        )),
        FunctionArguments::List(l) => l
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(Some(e)),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => Ok(None),
                _ => Err(err_at(
                    &f.name,
                    format!("{}: named or qualified arguments are not supported", f.name),
                )),
            })
            .collect(),
    }
}

/// Compiles `e` against `scope`.
pub fn compile(e: &Expr, scope: &Scope<'_>) -> Result<Compiled, SqlError> {
    if let Some(computed) = scope.computed {
        if let Some(&i) = computed.get(&e.to_string()) {
            return Ok(scope.column(i));
        }
    }
    match e {
        Expr::Identifier(id) => {
            let i = scope
                .lookup(&id.value)
                .ok_or_else(|| unknown_column(e, &id.value, scope))?;
            Ok(scope.column(i))
        }
        Expr::CompoundIdentifier(parts) => {
            if parts.is_empty() {
                return Err(err_at(e, "an empty name"));
            }
            let i = scope
                .resolve(e)
                .ok_or_else(|| unknown_column(e, &e.to_string(), scope))?;
            Ok(scope.column(i))
        }
        Expr::Nested(inner) => compile(inner, scope),
        Expr::Value(v) => literal(&v.value, e),
        Expr::Interval(iv) => Ok(constant(DataType::Interval, Value::Ts(interval_ms(iv, e)?))),
        Expr::TypedString(ts) => {
            let text = match &ts.value.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            };
            match data_type(&ts.data_type) {
                Some(t @ (DataType::Timestamp | DataType::TimestampLtz)) => {
                    let ms = parse_timestamp(&text).ok_or_else(|| {
                        err_at(
                            e,
                            format!("'{text}' is not a timestamp (yyyy-MM-dd HH:mm:ss[.SSS])"),
                        )
                    })?;
                    Ok(constant(t, Value::Ts(ms)))
                }
                _ => Err(err_at(
                    e,
                    format!("literals of type {} are not supported", ts.data_type),
                )),
            }
        }
        Expr::UnaryOp { op, expr } => {
            let x = compile(expr, scope)?;
            match op {
                UnaryOperator::Not => {
                    expect_bool(&x, expr)?;
                    let f = x.eval;
                    Ok(Compiled {
                        ty: DataType::Boolean,
                        eval: Arc::new(move |r| match f(r) {
                            Value::Bool(b) => Value::Bool(!b),
                            _ => Value::Null,
                        }),
                    })
                }
                UnaryOperator::Minus => {
                    if !x.ty.is_numeric() && x.ty != DataType::Interval {
                        return Err(err_at(e, format!("cannot negate a value of type {}", x.ty)));
                    }
                    let f = x.eval;
                    Ok(Compiled {
                        ty: x.ty,
                        eval: Arc::new(move |r| match f(r) {
                            Value::Int(i) => Value::Int(i.wrapping_neg()),
                            Value::Double(d) => Value::Double(-d),
                            Value::Ts(t) => Value::Ts(t.wrapping_neg()),
                            _ => Value::Null,
                        }),
                    })
                }
                UnaryOperator::Plus => Ok(x),
                other => Err(err_at(e, format!("the operator {other} is not supported"))),
            }
        }
        Expr::BinaryOp { left, op, right } => binary(e, left, op, right, scope),
        Expr::IsNull(x) | Expr::IsNotNull(x) => {
            let f = compile(x, scope)?.eval;
            let want_null = matches!(e, Expr::IsNull(_));
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |r| Value::Bool(f(r).is_null() == want_null)),
            })
        }
        Expr::IsTrue(x) | Expr::IsFalse(x) | Expr::IsNotTrue(x) | Expr::IsNotFalse(x) => {
            let c = compile(x, scope)?;
            expect_bool(&c, x)?;
            let f = c.eval;
            let (want, negate) = match e {
                Expr::IsTrue(_) => (true, false),
                Expr::IsFalse(_) => (false, false),
                Expr::IsNotTrue(_) => (true, true),
                _ => (false, true),
            };
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |r| Value::Bool((f(r).as_bool() == Some(want)) != negate)),
            })
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let x = compile(expr, scope)?;
            let lo = compile(low, scope)?;
            let hi = compile(high, scope)?;
            comparable(x.ty, lo.ty, e)?;
            comparable(x.ty, hi.ty, e)?;
            let (x, lo, hi, negated) = (x.eval, lo.eval, hi.eval, *negated);
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |r| {
                    let v = x(r);
                    match (v.sql_cmp(&lo(r)), v.sql_cmp(&hi(r))) {
                        (Some(a), Some(b)) => Value::Bool((a.is_ge() && b.is_le()) != negated),
                        _ => Value::Null,
                    }
                }),
            })
        }
        Expr::In {
            expr,
            target,
            negated,
            ..
        } => {
            let sqlparser::ast::InTarget::List(list) = target else {
                return Err(err_at(
                    e,
                    "unsupported: IN with a subquery (IN takes a list of values)",
                ));
            };
            let x = compile(expr, scope)?;
            let mut items = Vec::with_capacity(list.len());
            for item in list {
                let c = compile(item, scope)?;
                comparable(x.ty, c.ty, item)?;
                items.push(c.eval);
            }
            let (x, negated) = (x.eval, *negated);
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |r| {
                    let v = x(r);
                    if v.is_null() {
                        return Value::Null;
                    }
                    let mut null = false;
                    for item in &items {
                        match v.sql_cmp(&item(r)) {
                            Some(std::cmp::Ordering::Equal) => return Value::Bool(!negated),
                            None => null = true,
                            _ => {}
                        }
                    }
                    if null {
                        Value::Null
                    } else {
                        Value::Bool(negated)
                    }
                }),
            })
        }
        Expr::Like {
            negated,
            expr,
            pattern,
            escape_char,
            any: false,
        } => {
            if escape_char.is_some() {
                return Err(err_at(e, "LIKE ... ESCAPE is not supported"));
            }
            let x = compile(expr, scope)?;
            let p = compile(pattern, scope)?;
            expect_string(&x, expr)?;
            expect_string(&p, pattern)?;
            let (x, p, negated) = (x.eval, p.eval, *negated);
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |r| match (x(r), p(r)) {
                    (Value::Str(s), Value::Str(pat)) => Value::Bool(like(&s, &pat) != negated),
                    _ => Value::Null,
                }),
            })
        }
        Expr::Cast {
            kind: CastKind::Cast | CastKind::TryCast | CastKind::SafeCast,
            expr,
            data_type: target,
            format: None,
        } => {
            let x = compile(expr, scope)?;
            let to = data_type(target)
                .ok_or_else(|| err_at(e, format!("CAST to {target} is not supported")))?;
            cast(x, to, e)
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => case(
            e,
            operand.as_deref(),
            conditions,
            else_result.as_deref(),
            scope,
        ),
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let s = compile(expr, scope)?;
            expect_string(&s, expr)?;
            let from = match substring_from {
                Some(f) => Some(expect_int(compile(f, scope)?, f)?),
                None => None,
            };
            let len = match substring_for {
                Some(f) => Some(expect_int(compile(f, scope)?, f)?),
                None => None,
            };
            let s = s.eval;
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| {
                    let Value::Str(text) = s(r) else {
                        return Value::Null;
                    };
                    let start = match &from {
                        Some(f) => match f(r).as_i64() {
                            Some(i) => i,
                            None => return Value::Null,
                        },
                        None => 1,
                    };
                    let count = match &len {
                        Some(l) => match l(r).as_i64() {
                            Some(n) if n >= 0 => Some(n),
                            Some(_) => return Value::Null,
                            None => return Value::Null,
                        },
                        None => None,
                    };
                    Value::Str(substring(&text, start, count).into())
                }),
            })
        }
        Expr::Trim {
            trim_where,
            trim_what,
            expr,
            trim_characters: None,
        } => {
            let s = compile(expr, scope)?;
            expect_string(&s, expr)?;
            let what = match trim_what {
                Some(w) => {
                    let c = compile(w, scope)?;
                    expect_string(&c, w)?;
                    Some(c.eval)
                }
                None => None,
            };
            let (s, mode) = (s.eval, *trim_where);
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| {
                    let Value::Str(text) = s(r) else {
                        return Value::Null;
                    };
                    let chars: Vec<char> = match &what {
                        Some(w) => match w(r) {
                            Value::Str(c) => c.chars().collect(),
                            _ => return Value::Null,
                        },
                        None => vec![' '],
                    };
                    let pat = |c: char| chars.contains(&c);
                    let t = match mode {
                        Some(TrimWhereField::Leading) => text.trim_start_matches(pat),
                        Some(TrimWhereField::Trailing) => text.trim_end_matches(pat),
                        _ => text.trim_matches(pat),
                    };
                    Value::Str(t.into())
                }),
            })
        }
        Expr::Floor { expr, field } | Expr::Ceil { expr, field } => {
            if !matches!(
                field,
                CeilFloorKind::DateTimeField(DateTimeField::NoDateTime)
            ) {
                return Err(err_at(e, "FLOOR/CEIL to a time unit is not supported"));
            }
            let x = compile(expr, scope)?;
            numeric(&x, expr)?;
            let up = matches!(e, Expr::Ceil { .. });
            let (ty, f) = (x.ty, x.eval);
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| match f(r) {
                    Value::Double(d) => Value::Double(if up { d.ceil() } else { d.floor() }),
                    v => v,
                }),
            })
        }
        Expr::Function(f) => function(e, f, scope),
        other => Err(err_at(
            other,
            format!("the expression `{other}` is not supported"),
        )),
    }
}

fn unknown_column(e: &Expr, name: &str, scope: &Scope<'_>) -> SqlError {
    let names: Vec<&str> = scope.columns.iter().map(|c| c.name.as_str()).collect();
    err_at(
        e,
        format!(
            "Column '{name}' not found in any table; the columns are {}",
            names.join(", ")
        ),
    )
}

fn literal(v: &SqlValue, e: &Expr) -> Result<Compiled, SqlError> {
    Ok(match v {
        SqlValue::Number(n, _) => {
            if let Ok(i) = n.parse::<i64>() {
                let ty = if i32::try_from(i).is_ok() {
                    DataType::Int
                } else {
                    DataType::BigInt
                };
                constant(ty, Value::Int(i))
            } else {
                let d: f64 = n
                    .parse()
                    .map_err(|_| err_at(e, format!("{n} is not a number")))?;
                constant(DataType::Double, Value::Double(d))
            }
        }
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => {
            constant(DataType::String, Value::Str(s.as_str().into()))
        }
        SqlValue::Boolean(b) => constant(DataType::Boolean, Value::Bool(*b)),
        SqlValue::Null => constant(DataType::Null, Value::Null),
        other => return Err(err_at(e, format!("the literal {other} is not supported"))),
    })
}

fn expect_bool(c: &Compiled, at: &Expr) -> Result<(), SqlError> {
    if matches!(c.ty, DataType::Boolean | DataType::Null) {
        Ok(())
    } else {
        Err(err_at(
            at,
            format!("expected a BOOLEAN, found {} in `{at}`", c.ty),
        ))
    }
}

fn expect_string(c: &Compiled, at: &Expr) -> Result<(), SqlError> {
    if matches!(c.ty, DataType::String | DataType::Null) {
        Ok(())
    } else {
        Err(err_at(
            at,
            format!("expected a STRING, found {} in `{at}`", c.ty),
        ))
    }
}

fn expect_int(c: Compiled, at: &Expr) -> Result<Eval, SqlError> {
    if c.ty.is_integer() || c.ty == DataType::Null {
        Ok(c.eval)
    } else {
        Err(err_at(
            at,
            format!("expected an integer, found {} in `{at}`", c.ty),
        ))
    }
}

fn numeric(c: &Compiled, at: &Expr) -> Result<(), SqlError> {
    if c.ty.is_numeric() || c.ty == DataType::Null {
        Ok(())
    } else {
        Err(err_at(
            at,
            format!("expected a number, found {} in `{at}`", c.ty),
        ))
    }
}

fn comparable(a: DataType, b: DataType, at: &Expr) -> Result<(), SqlError> {
    let ok = a == b
        || a == DataType::Null
        || b == DataType::Null
        || (a.is_numeric() && b.is_numeric())
        || (a.is_timestamp() && b.is_timestamp());
    if ok {
        Ok(())
    } else {
        Err(err_at(at, format!("cannot compare {a} with {b} in `{at}`")))
    }
}

fn binary(
    e: &Expr,
    left: &Expr,
    op: &BinaryOperator,
    right: &Expr,
    scope: &Scope<'_>,
) -> Result<Compiled, SqlError> {
    let l = compile(left, scope)?;
    let r = compile(right, scope)?;
    use BinaryOperator as B;
    match op {
        B::And | B::Or => {
            expect_bool(&l, left)?;
            expect_bool(&r, right)?;
            let (lf, rf, and) = (l.eval, r.eval, matches!(op, B::And));
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |row| {
                    // Three-valued logic: FALSE AND NULL is FALSE, TRUE OR NULL is TRUE.
                    let a = lf(row).as_bool();
                    if a == Some(!and) {
                        return Value::Bool(!and);
                    }
                    let b = rf(row).as_bool();
                    match (a, b) {
                        (_, Some(x)) if x != and => Value::Bool(!and),
                        (Some(_), Some(_)) => Value::Bool(and),
                        _ => Value::Null,
                    }
                }),
            })
        }
        B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => {
            comparable(l.ty, r.ty, e)?;
            let (lf, rf, op) = (l.eval, r.eval, op.clone());
            Ok(Compiled {
                ty: DataType::Boolean,
                eval: Arc::new(move |row| match lf(row).sql_cmp(&rf(row)) {
                    None => Value::Null,
                    Some(o) => Value::Bool(match op {
                        B::Eq => o.is_eq(),
                        B::NotEq => o.is_ne(),
                        B::Lt => o.is_lt(),
                        B::LtEq => o.is_le(),
                        B::Gt => o.is_gt(),
                        _ => o.is_ge(),
                    }),
                }),
            })
        }
        B::StringConcat => {
            expect_string(&l, left)?;
            expect_string(&r, right)?;
            let (lf, rf) = (l.eval, r.eval);
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |row| match (lf(row), rf(row)) {
                    (Value::Str(a), Value::Str(b)) => Value::Str(format!("{a}{b}").into()),
                    _ => Value::Null,
                }),
            })
        }
        B::Plus | B::Minus if l.ty.is_timestamp() && r.ty == DataType::Interval => {
            let (lf, rf, minus, ty) = (l.eval, r.eval, matches!(op, B::Minus), l.ty);
            Ok(Compiled {
                ty,
                eval: Arc::new(move |row| match (lf(row), rf(row)) {
                    (Value::Ts(t), Value::Ts(i)) => Value::Ts(if minus {
                        t.wrapping_sub(i)
                    } else {
                        t.wrapping_add(i)
                    }),
                    _ => Value::Null,
                }),
            })
        }
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo => {
            numeric(&l, left)?;
            numeric(&r, right)?;
            let ty = DataType::wider(l.ty, r.ty);
            let ty = if ty == DataType::Null {
                DataType::Int
            } else {
                ty
            };
            let (lf, rf, op) = (l.eval, r.eval, op.clone());
            Ok(Compiled {
                ty,
                eval: Arc::new(move |row| arith(&op, lf(row), rf(row))),
            })
        }
        other => Err(err_at(e, format!("the operator {other} is not supported"))),
    }
}

fn arith(op: &BinaryOperator, a: Value, b: Value) -> Value {
    use BinaryOperator as B;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => match op {
            B::Plus => Value::Int(x.wrapping_add(y)),
            B::Minus => Value::Int(x.wrapping_sub(y)),
            B::Multiply => Value::Int(x.wrapping_mul(y)),
            // Division by zero is NULL (a row's bad value never fails the job).
            B::Divide => x.checked_div(y).map_or(Value::Null, Value::Int),
            _ => x.checked_rem(y).map_or(Value::Null, Value::Int),
        },
        (a, b) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => match op {
                B::Plus => Value::Double(x + y),
                B::Minus => Value::Double(x - y),
                B::Multiply => Value::Double(x * y),
                B::Divide if y == 0.0 => Value::Null,
                B::Divide => Value::Double(x / y),
                _ if y == 0.0 => Value::Null,
                _ => Value::Double(x % y),
            },
            _ => Value::Null,
        },
    }
}

fn case(
    e: &Expr,
    operand: Option<&Expr>,
    conditions: &[sqlparser::ast::CaseWhen],
    else_result: Option<&Expr>,
    scope: &Scope<'_>,
) -> Result<Compiled, SqlError> {
    let operand = match operand {
        Some(o) => Some(compile(o, scope)?),
        None => None,
    };
    let mut whens = Vec::new();
    let mut ty = DataType::Null;
    for w in conditions {
        let c = compile(&w.condition, scope)?;
        match &operand {
            Some(o) => comparable(o.ty, c.ty, &w.condition)?,
            None => expect_bool(&c, &w.condition)?,
        }
        let r = compile(&w.result, scope)?;
        ty = unify(ty, r.ty, &w.result)?;
        whens.push((c.eval, r.eval));
    }
    let otherwise = match else_result {
        Some(x) => {
            let c = compile(x, scope)?;
            ty = unify(ty, c.ty, x)?;
            Some(c.eval)
        }
        None => None,
    };
    let _ = e;
    let operand = operand.map(|o| o.eval);
    let double = ty == DataType::Double || ty == DataType::Float;
    Ok(Compiled {
        ty,
        eval: Arc::new(move |row| {
            let subject = operand.as_ref().map(|o| o(row));
            for (cond, result) in &whens {
                let hit = match &subject {
                    Some(s) => s.sql_cmp(&cond(row)) == Some(std::cmp::Ordering::Equal),
                    None => cond(row).as_bool() == Some(true),
                };
                if hit {
                    return widen(result(row), double);
                }
            }
            otherwise
                .as_ref()
                .map_or(Value::Null, |o| widen(o(row), double))
        }),
    })
}

fn widen(v: Value, double: bool) -> Value {
    match v {
        Value::Int(i) if double => Value::Double(i as f64),
        v => v,
    }
}

/// The common type of two branches (CASE, COALESCE).
fn unify(a: DataType, b: DataType, at: &Expr) -> Result<DataType, SqlError> {
    if a == DataType::Null || a == b {
        return Ok(b);
    }
    if b == DataType::Null {
        return Ok(a);
    }
    if a.is_numeric() && b.is_numeric() {
        return Ok(DataType::wider(a, b));
    }
    if a.is_timestamp() && b.is_timestamp() {
        return Ok(a);
    }
    Err(err_at(
        at,
        format!("the branches have incompatible types {a} and {b}"),
    ))
}

/// `CAST(x AS to)`: a value that does not convert is NULL.
pub fn cast(x: Compiled, to: DataType, at: &Expr) -> Result<Compiled, SqlError> {
    let from = x.ty;
    let ok = from == to
        || from == DataType::Null
        || to == DataType::String
        || (from.is_numeric() && to.is_numeric())
        || (from == DataType::String
            && (to.is_numeric() || to.is_timestamp() || to == DataType::Boolean))
        || (from.is_timestamp() && to.is_timestamp())
        || (from.is_integer() && to.is_timestamp())
        || (from.is_timestamp() && to == DataType::BigInt)
        || (from == DataType::Boolean && to.is_integer());
    if !ok {
        return Err(err_at(at, format!("cannot CAST a {from} to {to}")));
    }
    if from == to {
        return Ok(x);
    }
    let f = x.eval;
    Ok(Compiled {
        ty: to,
        eval: Arc::new(move |r| convert(f(r), from, to)),
    })
}

fn int_range(to: DataType, i: i64) -> Value {
    let fits = match to {
        DataType::TinyInt => i8::try_from(i).is_ok(),
        DataType::SmallInt => i16::try_from(i).is_ok(),
        DataType::Int => i32::try_from(i).is_ok(),
        _ => true,
    };
    if fits {
        Value::Int(i)
    } else {
        Value::Null
    }
}

pub(crate) fn convert(v: Value, from: DataType, to: DataType) -> Value {
    match (v, to) {
        (Value::Null, _) => Value::Null,
        (v, DataType::String) => Value::Str(v.display(from).into()),
        (Value::Int(i), t) if t.is_integer() => int_range(t, i),
        (Value::Int(i), DataType::Float | DataType::Double) => Value::Double(i as f64),
        (Value::Double(d), t) if t.is_integer() => {
            if d.is_finite() && d.abs() < 9.2e18 {
                int_range(t, d.trunc() as i64)
            } else {
                Value::Null
            }
        }
        (Value::Double(d), DataType::Float) => Value::Double(f64::from(d as f32)),
        (Value::Double(d), _) => Value::Double(d),
        (Value::Str(s), t) if t.is_integer() => s
            .trim()
            .parse::<i64>()
            .map_or(Value::Null, |i| int_range(t, i)),
        (Value::Str(s), DataType::Float | DataType::Double) => {
            s.trim().parse::<f64>().map_or(Value::Null, Value::Double)
        }
        (Value::Str(s), t) if t.is_timestamp() => {
            parse_timestamp(&s).map_or(Value::Null, Value::Ts)
        }
        (Value::Str(s), DataType::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Null,
        },
        // Integers as timestamps are seconds since the epoch (Flink's rule).
        (Value::Int(i), t) if t.is_timestamp() => Value::Ts(i.saturating_mul(1000)),
        (Value::Ts(t), DataType::BigInt) => Value::Int(t.div_euclid(1000)),
        (Value::Ts(t), _) => Value::Ts(t),
        (Value::Bool(b), t) if t.is_integer() => Value::Int(i64::from(b)),
        (v, _) => v,
    }
}

/// SQL `LIKE` with `%` and `_`.
pub fn like(s: &str, pat: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pat.chars().collect();
    // Iterative matching with backtracking to the last `%`.
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && p[j] == '%' {
            star = Some((j, i));
            j += 1;
        } else if j < p.len() && (p[j] == '_' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    while j < p.len() && p[j] == '%' {
        j += 1;
    }
    j == p.len()
}

/// SQL `SUBSTRING(s FROM start FOR count)` (1-based, by characters).
fn substring(s: &str, start: i64, count: Option<i64>) -> String {
    let begin = start.max(1);
    let end = match count {
        Some(n) => start.saturating_add(n),
        None => i64::MAX,
    };
    if end <= begin {
        return String::new();
    }
    s.chars()
        .skip(usize::try_from(begin - 1).unwrap_or(usize::MAX))
        .take(usize::try_from(end - begin).unwrap_or(usize::MAX))
        .collect()
}

/// A new id for a call site's entry in [`date_format_cached`]'s cache.
fn next_cache_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Relaxed: only uniqueness matters, which the atomic increment gives alone.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The span (ms) within which `pattern`'s text stays the same: its finest field (a
/// day for dates; days never straddle months or years). UTC, as [`date_format`].
fn date_format_unit(pattern: &str) -> i64 {
    let has = |c: char| pattern.contains(c);
    if has('S') {
        1
    } else if has('s') {
        1_000
    } else if has('m') {
        60_000
    } else if has('H') {
        3_600_000
    } else {
        86_400_000
    }
}

/// A call site's last `DATE_FORMAT` text and the span of time it is good for.
struct RememberedFormat {
    id: u64,
    from_ms: i64,
    until_ms: i64,
    pattern: Arc<str>,
    text: Arc<str>,
}

impl RememberedFormat {
    fn new(id: u64, ms: i64, pattern: &Arc<str>) -> Self {
        let unit = date_format_unit(pattern);
        let from_ms = ms - ms.rem_euclid(unit);
        Self {
            id,
            from_ms,
            until_ms: from_ms.saturating_add(unit),
            pattern: pattern.clone(),
            text: date_format(ms, pattern).into(),
        }
    }
}

thread_local! {
    /// Per call site (id): its last text.
    static DATE_FORMATS: std::cell::RefCell<Vec<RememberedFormat>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// [`date_format`], remembered per call site while the time stays within the
/// pattern's finest field (`DATE_FORMAT(ts, 'yyyy-MM-dd')` formats once a day per
/// thread, not once a row).
fn date_format_cached(id: u64, ms: i64, pattern: &Arc<str>) -> Arc<str> {
    DATE_FORMATS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(e) = c.iter_mut().find(|e| e.id == id) {
            let same = Arc::ptr_eq(&e.pattern, pattern) || *e.pattern == **pattern;
            if !(same && e.from_ms <= ms && ms < e.until_ms) {
                *e = RememberedFormat::new(id, ms, pattern);
            }
            return e.text.clone();
        }
        let e = RememberedFormat::new(id, ms, pattern);
        let text = e.text.clone();
        // (A few call sites per thread; a bound keeps a long session's list short.)
        if c.len() >= 64 {
            c.remove(0);
        }
        c.push(e);
        text
    })
}

/// Formats a timestamp with a Java `SimpleDateFormat` pattern (`yyyy`, `MM`, `dd`, `HH`,
/// `mm`, `ss`, `SSS`; quoted text in `'...'`).
pub fn date_format(ms: i64, pattern: &str) -> String {
    let full = format_timestamp(ms);
    // yyyy-MM-dd HH:mm:ss.SSS
    let part = |a: usize, b: usize| full.get(a..b).unwrap_or("");
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        match (c, n) {
            ('y', 2) => out.push_str(part(2, 4)),
            ('y', _) => out.push_str(part(0, 4)),
            ('M', _) => out.push_str(part(5, 7)),
            ('d', _) => out.push_str(part(8, 10)),
            ('H', _) => out.push_str(part(11, 13)),
            ('m', _) => out.push_str(part(14, 16)),
            ('s', _) => out.push_str(part(17, 19)),
            ('S', _) => out.push_str(part(20, 23)),
            _ => (0..n).for_each(|_| out.push(c)),
        }
        i += n;
    }
    out
}

fn function(
    e: &Expr,
    f: &sqlparser::ast::Function,
    scope: &Scope<'_>,
) -> Result<Compiled, SqlError> {
    let name = function_name(f);
    if f.over.is_some() {
        return Err(err_at(
            e,
            format!("{name} OVER (...) is not supported here"),
        ));
    }
    if AGGREGATES.contains(&name.as_str()) {
        return Err(err_at(
            e,
            format!("the aggregate function {name} is not allowed here (only in SELECT and HAVING of an aggregating query)"),
        ));
    }
    let raw = function_args(f)?;
    let mut args = Vec::with_capacity(raw.len());
    for a in &raw {
        match a {
            Some(x) => args.push((compile(x, scope)?, *x)),
            None => return Err(err_at(e, format!("{name}(*) is not a function"))),
        }
    }
    let arity = |n: std::ops::RangeInclusive<usize>| {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(err_at(
                e,
                format!(
                    "{name} takes {} argument(s), not {}",
                    if n.start() == n.end() {
                        n.start().to_string()
                    } else {
                        format!("{} to {}", n.start(), n.end())
                    },
                    args.len()
                ),
            ))
        }
    };
    let str_fn = |args: &[(Compiled, &Expr)],
                  g: fn(&str) -> Value,
                  ty: DataType|
     -> Result<Compiled, SqlError> {
        expect_string(&args[0].0, args[0].1)?;
        let f = args[0].0.eval.clone();
        Ok(Compiled {
            ty,
            eval: Arc::new(move |r| match f(r) {
                Value::Str(s) => g(&s),
                _ => Value::Null,
            }),
        })
    };
    match name.as_str() {
        "UPPER" => {
            arity(1..=1)?;
            str_fn(
                &args,
                |s| Value::Str(s.to_uppercase().into()),
                DataType::String,
            )
        }
        "LOWER" => {
            arity(1..=1)?;
            str_fn(
                &args,
                |s| Value::Str(s.to_lowercase().into()),
                DataType::String,
            )
        }
        "CHAR_LENGTH" | "CHARACTER_LENGTH" => {
            arity(1..=1)?;
            str_fn(
                &args,
                |s| Value::Int(s.chars().count() as i64),
                DataType::Int,
            )
        }
        "CONCAT" => {
            for (c, x) in &args {
                expect_string(c, x)?;
            }
            let fs: Vec<Eval> = args.iter().map(|(c, _)| c.eval.clone()).collect();
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| {
                    let mut out = String::new();
                    for f in &fs {
                        match f(r) {
                            Value::Str(s) => out.push_str(&s),
                            _ => return Value::Null,
                        }
                    }
                    Value::Str(out.into())
                }),
            })
        }
        "REPLACE" => {
            arity(3..=3)?;
            for (c, x) in &args {
                expect_string(c, x)?;
            }
            let (a, b, c) = (
                args[0].0.eval.clone(),
                args[1].0.eval.clone(),
                args[2].0.eval.clone(),
            );
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| match (a(r), b(r), c(r)) {
                    (Value::Str(s), Value::Str(from), Value::Str(to)) => {
                        Value::Str(s.replace(&*from, &to).into())
                    }
                    _ => Value::Null,
                }),
            })
        }
        "SPLIT_INDEX" => {
            arity(3..=3)?;
            expect_string(&args[0].0, args[0].1)?;
            expect_string(&args[1].0, args[1].1)?;
            let idx = expect_int(args[2].0.clone(), args[2].1)?;
            let (s, d) = (args[0].0.eval.clone(), args[1].0.eval.clone());
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| match (s(r), d(r), idx(r).as_i64()) {
                    (Value::Str(s), Value::Str(d), Some(i)) if i >= 0 && !d.is_empty() => s
                        .split(&*d)
                        .nth(usize::try_from(i).unwrap_or(usize::MAX))
                        .map_or(Value::Null, |p| Value::Str(p.into())),
                    _ => Value::Null,
                }),
            })
        }
        "ABS" => {
            arity(1..=1)?;
            numeric(&args[0].0, args[0].1)?;
            let (ty, f) = (args[0].0.ty, args[0].0.eval.clone());
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| match f(r) {
                    Value::Int(i) => Value::Int(i.wrapping_abs()),
                    Value::Double(d) => Value::Double(d.abs()),
                    v => v,
                }),
            })
        }
        "MOD" => {
            arity(2..=2)?;
            numeric(&args[0].0, args[0].1)?;
            numeric(&args[1].0, args[1].1)?;
            let ty = DataType::wider(args[0].0.ty, args[1].0.ty);
            let (a, b) = (args[0].0.eval.clone(), args[1].0.eval.clone());
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| arith(&BinaryOperator::Modulo, a(r), b(r))),
            })
        }
        "POWER" | "SQRT" | "LN" | "LOG10" | "EXP" => {
            arity(if name == "POWER" { 2..=2 } else { 1..=1 })?;
            for (c, x) in &args {
                numeric(c, x)?;
            }
            let fs: Vec<Eval> = args.iter().map(|(c, _)| c.eval.clone()).collect();
            let op: fn(f64, f64) -> f64 = match name.as_str() {
                "POWER" => f64::powf,
                "SQRT" => |x, _| x.sqrt(),
                "LN" => |x, _| x.ln(),
                "LOG10" => |x, _| x.log10(),
                _ => |x, _| x.exp(),
            };
            Ok(Compiled {
                ty: DataType::Double,
                eval: Arc::new(move |r| {
                    let x = fs[0](r).as_f64();
                    let y = fs.get(1).map_or(Some(0.0), |g| g(r).as_f64());
                    match (x, y) {
                        (Some(x), Some(y)) => Value::Double(op(x, y)),
                        _ => Value::Null,
                    }
                }),
            })
        }
        "ROUND" => {
            arity(1..=2)?;
            numeric(&args[0].0, args[0].1)?;
            let digits = match args.get(1) {
                Some((c, x)) => Some(expect_int(c.clone(), x)?),
                None => None,
            };
            let (ty, f) = (args[0].0.ty, args[0].0.eval.clone());
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| {
                    let d = digits.as_ref().map_or(Some(0), |g| g(r).as_i64());
                    match (f(r), d) {
                        (Value::Double(x), Some(d)) => {
                            let m = 10f64.powi(i32::try_from(d.clamp(-30, 30)).unwrap_or(0));
                            Value::Double((x * m).round() / m)
                        }
                        (v @ Value::Int(_), Some(_)) => v,
                        _ => Value::Null,
                    }
                }),
            })
        }
        "COALESCE" | "IFNULL" => {
            if args.is_empty() {
                return Err(err_at(e, format!("{name} takes at least one argument")));
            }
            let mut ty = DataType::Null;
            for (c, x) in &args {
                ty = unify(ty, c.ty, x)?;
            }
            let double = matches!(ty, DataType::Double | DataType::Float);
            let fs: Vec<Eval> = args.iter().map(|(c, _)| c.eval.clone()).collect();
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| {
                    fs.iter()
                        .map(|f| f(r))
                        .find(|v| !v.is_null())
                        .map_or(Value::Null, |v| widen(v, double))
                }),
            })
        }
        "IF" => {
            arity(3..=3)?;
            expect_bool(&args[0].0, args[0].1)?;
            let ty = unify(args[1].0.ty, args[2].0.ty, args[2].1)?;
            let double = matches!(ty, DataType::Double | DataType::Float);
            let (c, a, b) = (
                args[0].0.eval.clone(),
                args[1].0.eval.clone(),
                args[2].0.eval.clone(),
            );
            Ok(Compiled {
                ty,
                eval: Arc::new(move |r| {
                    widen(
                        if c(r).as_bool() == Some(true) {
                            a(r)
                        } else {
                            b(r)
                        },
                        double,
                    )
                }),
            })
        }
        "TO_TIMESTAMP_LTZ" => {
            arity(1..=2)?;
            let n = expect_int(args[0].0.clone(), args[0].1)?;
            let precision =
                match args.get(1) {
                    Some((c, x)) => {
                        let v = (c.eval)(&Row::default()).as_i64();
                        match v {
                            Some(p @ (0 | 3)) => p,
                            _ => return Err(err_at(
                                *x,
                                "TO_TIMESTAMP_LTZ's precision is 0 (seconds) or 3 (milliseconds)",
                            )),
                        }
                    }
                    None => 3,
                };
            let scale = if precision == 0 { 1000 } else { 1 };
            Ok(Compiled {
                ty: DataType::TimestampLtz,
                eval: Arc::new(move |r| {
                    n(r).as_i64()
                        .map_or(Value::Null, |v| Value::Ts(v.saturating_mul(scale)))
                }),
            })
        }
        "TO_TIMESTAMP" => {
            arity(1..=1)?;
            str_fn(
                &args,
                |s| parse_timestamp(s).map_or(Value::Null, Value::Ts),
                DataType::Timestamp,
            )
        }
        "UNIX_TIMESTAMP" if args.len() == 1 => {
            if !args[0].0.ty.is_timestamp() {
                return Err(err_at(args[0].1, "UNIX_TIMESTAMP takes a timestamp here"));
            }
            let f = args[0].0.eval.clone();
            Ok(Compiled {
                ty: DataType::BigInt,
                eval: Arc::new(move |r| match f(r) {
                    Value::Ts(t) => Value::Int(t.div_euclid(1000)),
                    _ => Value::Null,
                }),
            })
        }
        "DATE_FORMAT" => {
            arity(2..=2)?;
            if !args[0].0.ty.is_timestamp() && args[0].0.ty != DataType::String {
                return Err(err_at(args[0].1, "DATE_FORMAT takes a timestamp"));
            }
            expect_string(&args[1].0, args[1].1)?;
            let (t, p) = (args[0].0.eval.clone(), args[1].0.eval.clone());
            let id = next_cache_id();
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| {
                    let ms = match t(r) {
                        Value::Ts(ms) => ms,
                        Value::Str(s) => match parse_timestamp(&s) {
                            Some(ms) => ms,
                            None => return Value::Null,
                        },
                        _ => return Value::Null,
                    };
                    match p(r) {
                        Value::Str(p) => Value::Str(date_format_cached(id, ms, &p)),
                        _ => Value::Null,
                    }
                }),
            })
        }
        "REGEXP_EXTRACT" | "REGEXP" => {
            if name == "REGEXP" {
                arity(2..=2)?;
            } else {
                arity(2..=3)?;
            }
            expect_string(&args[0].0, args[0].1)?;
            let pattern = match args[1].1 {
                Expr::Value(v) => match &v.value {
                    SqlValue::SingleQuotedString(p) => Some(p.clone()),
                    _ => None,
                },
                _ => None,
            };
            let Some(pattern) = pattern else {
                return Err(err_at(
                    args[1].1,
                    format!("{name} takes its pattern as a string literal"),
                ));
            };
            let re = regex::Regex::new(&pattern)
                .map_err(|e| err_at(args[1].1, format!("a bad regular expression: {e}")))?;
            let s = args[0].0.eval.clone();
            if name == "REGEXP" {
                return Ok(Compiled {
                    ty: DataType::Boolean,
                    eval: Arc::new(move |r| match s(r) {
                        Value::Str(x) => Value::Bool(re.is_match(&x)),
                        _ => Value::Null,
                    }),
                });
            }
            let group = match args.get(2) {
                Some((c, at)) => expect_int(c.clone(), at)?,
                None => Arc::new(|_: &Row| Value::Int(0)),
            };
            Ok(Compiled {
                ty: DataType::String,
                eval: Arc::new(move |r| {
                    let (Value::Str(x), Some(g)) = (s(r), group(r).as_i64()) else {
                        return Value::Null;
                    };
                    let Ok(g) = usize::try_from(g) else {
                        return Value::Null;
                    };
                    re.captures(&x)
                        .and_then(|c| c.get(g))
                        .map_or(Value::Null, |m| Value::Str(m.as_str().into()))
                }),
            })
        }
        "PROCTIME" | "NOW" | "CURRENT_TIMESTAMP" | "LOCALTIMESTAMP" => {
            // The wall clock when the row is computed (PROCTIME() marks the column a
            // processing-time attribute: see `Column::proctime`).
            arity(0..=0)?;
            Ok(Compiled {
                ty: DataType::Timestamp,
                eval: Arc::new(|_| Value::Ts(now_ms())),
            })
        }
        "HOUR" | "MINUTE" | "SECOND" => {
            arity(1..=1)?;
            if !args[0].0.ty.is_timestamp() {
                return Err(err_at(args[0].1, format!("{name} takes a timestamp")));
            }
            let (t, unit, modulo) = match name.as_str() {
                "HOUR" => (args[0].0.eval.clone(), 3_600_000, 24),
                "MINUTE" => (args[0].0.eval.clone(), 60_000, 60),
                _ => (args[0].0.eval.clone(), 1000, 60),
            };
            Ok(Compiled {
                ty: DataType::BigInt,
                eval: Arc::new(move |r| match t(r) {
                    Value::Ts(ms) => Value::Int(ms.div_euclid(unit).rem_euclid(modulo)),
                    _ => Value::Null,
                }),
            })
        }
        _ => match super::functions::lookup(&name) {
            Some(udf) => {
                if let Some(n) = udf.arity {
                    arity(n..=n)?;
                }
                if args.len() > super::functions::MAX_ARGS {
                    return Err(err_at(
                        e,
                        format!(
                            "{name} takes at most {} arguments",
                            super::functions::MAX_ARGS
                        ),
                    ));
                }
                let evals: Vec<Eval> = args.iter().map(|(c, _)| c.eval.clone()).collect();
                let call = udf.call.clone();
                Ok(Compiled {
                    ty: udf.returns,
                    eval: Arc::new(move |r| {
                        let mut vals: [Value; super::functions::MAX_ARGS] = Default::default();
                        for (v, a) in vals.iter_mut().zip(&evals) {
                            *v = a(r);
                        }
                        call(&vals[..evals.len()])
                    }),
                })
            }
            None => Err(err_at(
                &f.name,
                format!(
                    "No match found for function signature {name}(...): the function is unknown"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches_percent_and_underscore() {
        assert!(like("hello", "h%o"));
        assert!(like("hello", "h_llo"));
        assert!(like("hello", "%"));
        assert!(!like("hello", "h_lo"));
        assert!(like("", "%"));
        assert!(
            like("%ab", "%b"),
            "a % in the text is matched by the pattern's %"
        );
        assert!(like("a%b", "a\u{25}b"));
        assert!(like("a%b", "a%b"));
        assert!(!like("abc", "abd%"));
    }

    #[test]
    fn substrings_and_date_formats() {
        assert_eq!(substring("hello", 2, Some(3)), "ell");
        assert_eq!(substring("hello", 0, Some(2)), "h");
        assert_eq!(substring("hello", 4, None), "lo");
        assert_eq!(
            date_format(1_700_000_000_123, "yyyy-MM-dd'T'HH:mm:ss.SSS"),
            "2023-11-14T22:13:20.123"
        );
    }

    /// The remembered texts equal the formatted ones, across day, hour and second
    /// boundaries, before 1970, and with two call sites and patterns interleaved.
    #[test]
    fn remembered_date_formats_equal_formatted_ones() {
        let (day, time): (Arc<str>, Arc<str>) = ("yyyy-MM-dd".into(), "HH:mm:ss".into());
        let (a, b) = (next_cache_id(), next_cache_id());
        let mut ms = 1_700_000_000_000 - 3 * 86_400_000;
        let mut step = 1i64;
        while ms < 1_700_000_000_000 + 3 * 86_400_000 {
            assert_eq!(
                &*date_format_cached(a, ms, &day),
                date_format(ms, &day),
                "{ms}"
            );
            assert_eq!(
                &*date_format_cached(b, ms, &time),
                date_format(ms, &time),
                "{ms}"
            );
            // The other pattern at the same call site.
            assert_eq!(
                &*date_format_cached(a, ms, &time),
                date_format(ms, &time),
                "{ms}"
            );
            ms += step;
            step = (step * 7 + 13) % 5_000_000 + 1;
        }
        for ms in [-1, 0, -86_400_000, -86_400_001, 86_399_999, 86_400_000] {
            assert_eq!(
                &*date_format_cached(a, ms, &day),
                date_format(ms, &day),
                "{ms}"
            );
        }
    }
}
