//! The planner: queries to operators.
//!
//! A query is type-checked against the catalog and lowered bottom-up into a [`Rel`]: a
//! stream of rows, its schema, which column (if any) is its event time, and whether it
//! only inserts. Each `SELECT` becomes a filter and a map whose expressions were
//! compiled once ([`super::expr`]); a window aggregate over `TUMBLE` or `HOP` becomes
//! the DataStream API's keyed event-time window with an incremental aggregate; an
//! unbounded `GROUP BY` becomes a keyed process function that emits a changelog
//! (`+I`, then `-U`/`+U` pairs as a group's result changes, `-D` when `HAVING` drops it).

use super::connector;
use super::expr::{self, err_at, Compiled, Eval, Scope, AGGREGATES};
use super::lookup;
use super::types::{DataType, Row, RowKind, Value};
use super::{Catalog, Column, SqlError, TableDef, WindowBound};
use crate::api::{DataStream, PadFn, StreamExecutionEnvironment};
use spate_dataplane::operator::keyed::{Context, KeyedProcessFunction};
use spate_dataplane::operator::watermark::WatermarkStrategy;
use spate_dataplane::operator::window::{AggregateFunction, Window, WindowAssigner};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Insert, Query, Select,
    SelectItem, SetExpr, TableFactor, TableObject,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A node of a query plan, for `EXPLAIN`.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// The operator and its parameters.
    pub label: String,
    /// Its inputs.
    pub inputs: Vec<PlanNode>,
}

impl PlanNode {
    fn new(label: impl Into<String>, inputs: Vec<PlanNode>) -> Self {
        Self {
            label: label.into(),
            inputs,
        }
    }

    /// The plan as an indented tree (Flink's `+-` style).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, "", "");
        out
    }

    fn render_into(&self, out: &mut String, first: &str, rest: &str) {
        out.push_str(first);
        out.push_str(&self.label);
        out.push('\n');
        for (i, c) in self.inputs.iter().enumerate() {
            let last = i + 1 == self.inputs.len();
            let (f, r) = if last { ("+- ", "   ") } else { (":- ", ":  ") };
            c.render_into(out, &format!("{rest}{f}"), &format!("{rest}{r}"));
        }
    }
}

/// A planned relation: a stream of rows and what it holds.
#[derive(Clone)]
pub struct Rel {
    /// The rows.
    pub stream: DataStream<Row>,
    /// The columns.
    pub schema: Vec<Column>,
    /// The event-time column, if the rows have one (with watermarks).
    pub rowtime: Option<usize>,
    /// Whether the rows are all insertions (else a changelog with updates).
    pub append_only: bool,
    /// How it was computed.
    pub plan: PlanNode,
    /// A window table function not applied yet: its columns are the last three of
    /// `schema`, which the rows do not hold until the windows are materialized or
    /// aggregated.
    window: Option<Arc<WindowTvf>>,
    /// Filters and a projection not applied yet: consecutive `WHERE`s and `SELECT`s
    /// (through views and subqueries) fuse into one operator, whose filters run on
    /// the input rows before any projected row is built.
    calc: Option<Calc>,
}

/// How a calculation builds its output row from an input row that passed its filters.
#[derive(Clone)]
enum Projection {
    /// Plain columns: (input column, whether this is its last use, so it moves).
    Moves(Vec<(usize, bool)>),
    /// Expressions.
    Evals(Arc<Vec<Eval>>),
}

impl Projection {
    /// Replaces `r`'s values by the projected ones, in `r`'s own vector (no
    /// allocation when the output is no wider than the input, as it mostly is),
    /// built in `scratch` (empty before and after; kept for its capacity).
    fn apply(&self, r: &mut Row, scratch: &mut Vec<Value>) {
        match self {
            Projection::Moves(moves) => {
                scratch.extend(moves.iter().map(|&(i, last)| match r.values.get_mut(i) {
                    Some(v) if last => std::mem::take(v),
                    Some(v) => v.clone(),
                    None => Value::Null,
                }))
            }
            Projection::Evals(evals) => scratch.extend(evals.iter().map(|e| e(r))),
        }
        r.values.clear();
        r.values.append(scratch);
    }
}

/// A pending calculation over a relation's input rows.
#[derive(Clone, Default)]
struct Calc {
    /// Predicates over the input rows: all must be true.
    filters: Vec<Eval>,
    /// The relation's columns from an input row (`None`: the input's own).
    project: Option<Arc<Vec<Eval>>>,
    /// Beside `project`: for each column, the input row's column it is a plain copy
    /// of, if it is one (then the projected row can take the value instead of
    /// cloning it).
    refs: Option<Arc<Vec<Option<usize>>>>,
}

#[derive(Clone, Copy, Debug)]
enum WindowKind {
    Tumble { size_ms: i64 },
    Hop { slide_ms: i64, size_ms: i64 },
    Cumulate { step_ms: i64, size_ms: i64 },
    Session { gap_ms: i64 },
}

/// A window table function (or a legacy group window) over a relation.
#[derive(Clone, Debug)]
struct WindowTvf {
    kind: WindowKind,
    /// The time column, of the input's columns.
    time_col: usize,
    /// Whether that column is a processing-time attribute (windows follow the clock).
    processing: bool,
    /// Which rows a session window takes: those of a `PARTITION BY` (column names),
    /// of the aggregation's group keys (a legacy `GROUP BY k, SESSION(...)`), or all
    /// rows (`None`, `false`).
    partition: Option<Vec<String>>,
    by_group_keys: bool,
}

impl WindowTvf {
    fn assigner(&self) -> Result<WindowAssigner, String> {
        let d = |ms: i64| std::time::Duration::from_millis(ms.max(0) as u64);
        let p = self.processing;
        match self.kind {
            WindowKind::Tumble { size_ms } if p => {
                WindowAssigner::tumbling_processing_time(d(size_ms))
            }
            WindowKind::Tumble { size_ms } => WindowAssigner::tumbling_event_time(d(size_ms)),
            WindowKind::Hop { slide_ms, size_ms } if p => {
                WindowAssigner::sliding_processing_time(d(size_ms), d(slide_ms))
            }
            WindowKind::Hop { slide_ms, size_ms } => {
                WindowAssigner::sliding_event_time(d(size_ms), d(slide_ms))
            }
            WindowKind::Cumulate { step_ms, size_ms } if p => {
                WindowAssigner::cumulative_processing_time(d(size_ms), d(step_ms))
            }
            WindowKind::Cumulate { step_ms, size_ms } => {
                WindowAssigner::cumulative_event_time(d(size_ms), d(step_ms))
            }
            WindowKind::Session { gap_ms } if p => {
                WindowAssigner::processing_time_session(d(gap_ms))
            }
            WindowKind::Session { gap_ms } => WindowAssigner::event_time_session(d(gap_ms)),
        }
        .map_err(|e| e.to_string())
    }

    /// The plan's description of the window.
    fn describe(&self, col: &str) -> String {
        match self.kind {
            WindowKind::Tumble { size_ms } => {
                format!("TUMBLE(time_col=[{col}], size=[{size_ms} ms])")
            }
            WindowKind::Hop { slide_ms, size_ms } => {
                format!("HOP(time_col=[{col}], slide=[{slide_ms} ms], size=[{size_ms} ms])")
            }
            WindowKind::Cumulate { step_ms, size_ms } => {
                format!("CUMULATE(time_col=[{col}], max_size=[{size_ms} ms], step=[{step_ms} ms])")
            }
            WindowKind::Session { gap_ms } => match &self.partition {
                Some(p) => format!(
                    "SESSION(time_col=[{col}], gap=[{gap_ms} ms], partition keys=[{}])",
                    p.join(", ")
                ),
                None => format!("SESSION(time_col=[{col}], gap=[{gap_ms} ms])"),
            },
        }
    }
}

/// An event-time value (ms) as the engine's timestamps (ns since the epoch).
pub fn ts_ns(v: &Value) -> u64 {
    match v {
        Value::Ts(ms) => u64::try_from(*ms).unwrap_or(0).saturating_mul(1_000_000),
        _ => 0,
    }
}

fn ms(ns: u64) -> Value {
    Value::Ts(i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX))
}

/// A table's full schema: physical and computed columns, and its event time.
pub struct TableSchema {
    /// All columns, in declaration order.
    pub columns: Vec<Column>,
    /// The computed columns: (index in `columns`, compiled over the physical columns).
    pub computed: Vec<(usize, Compiled)>,
    /// The rowtime column and the watermark's delay behind it (ms).
    pub watermark: Option<(usize, i64)>,
}

/// Type-checks a table's computed columns and watermark.
pub fn table_schema(def: &TableDef) -> Result<TableSchema, SqlError> {
    let mut columns = def.physical.clone();
    let mut computed = Vec::new();
    for (at, name, e) in &def.extras.computed {
        let c = expr::compile(e, &Scope::new(&def.physical))?;
        let at = (*at).min(columns.len());
        if columns.iter().any(|x| x.name == *name) {
            return Err(err_at(e, format!("the column '{name}' is declared twice")));
        }
        let column = if expr::is_proctime_call(e) {
            Column::proctime(name.clone())
        } else {
            Column::new(name.clone(), c.ty)
        };
        columns.insert(at, column);
        computed.push((name.clone(), c));
    }
    let computed = computed
        .into_iter()
        .filter_map(|(n, c)| columns.iter().position(|x| x.name == n).map(|i| (i, c)))
        .collect();
    let watermark = match &def.extras.watermark {
        None => None,
        Some((col, e)) => {
            let i = Scope::new(&columns).lookup(col).ok_or_else(|| {
                err_at(
                    e,
                    format!("WATERMARK FOR '{col}': the table has no such column"),
                )
            })?;
            if !columns[i].ty.is_timestamp() {
                return Err(err_at(
                    e,
                    format!(
                        "WATERMARK FOR '{col}': a rowtime column is a TIMESTAMP(3) or TIMESTAMP_LTZ(3), not {}",
                        columns[i].ty
                    ),
                ));
            }
            Some((i, watermark_delay(e, &columns[i].name)?))
        }
    };
    Ok(TableSchema {
        columns,
        computed,
        watermark,
    })
}

/// The delay of a watermark expression `col` or `col - INTERVAL ...`.
fn watermark_delay(e: &Expr, col: &str) -> Result<i64, SqlError> {
    let is_col = |x: &Expr| match x {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(col),
        Expr::Nested(n) => {
            matches!(n.as_ref(), Expr::Identifier(i) if i.value.eq_ignore_ascii_case(col))
        }
        _ => false,
    };
    if is_col(e) {
        return Ok(0);
    }
    if let Expr::BinaryOp { left, op, right } = e {
        if *op == sqlparser::ast::BinaryOperator::Minus && is_col(left) {
            if let Expr::Interval(iv) = right.as_ref() {
                let d = expr::interval_ms(iv, right)?;
                if d < 0 {
                    return Err(err_at(
                        right.as_ref(),
                        "a watermark delay cannot be negative",
                    ));
                }
                return Ok(d);
            }
        }
    }
    Err(err_at(
        e,
        format!(
            "unsupported watermark expression: spate takes `{col}` or `{col} - INTERVAL 'n' UNIT`"
        ),
    ))
}

/// Plans queries against a catalog.
pub struct Planner<'a> {
    catalog: &'a Catalog,
    config: &'a BTreeMap<String, String>,
    /// `WITH` queries in scope, innermost last.
    ctes: Vec<(String, Query)>,
    /// What the statement (and the views it reads) may refer to, if it selects no
    /// `*`: generated tables that can leave columns out (Nexmark's) generate only the
    /// columns among them, and views leave out the columns nothing names.
    prune: Option<Arc<Referenced>>,
}

/// What a statement may refer to (see [`referenced_names`]).
pub struct Referenced {
    /// Every word of the statement and of the views it reads, lower case.
    names: HashSet<String>,
    /// The statement's text and those of the views it reads (narrowed), each with
    /// whether it reads every column of what it reads (a `*` whose columns all count).
    texts: Vec<(String, bool)>,
    /// The views read by a text that selects `*`: not narrowed.
    whole: HashSet<String>,
}

/// Whether `text` (a statement as displayed) selects `*` or `q.*` somewhere
/// (`COUNT(*)` aside; a multiplication follows an operand).
fn selects_all(text: &str) -> bool {
    let text = text.replace("(*)", "()");
    let b = text.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        if c != b'*' {
            return false;
        }
        let before = text[..i].trim_end();
        let Some(last) = before.chars().last() else {
            return true;
        };
        if matches!(last, ',' | '.' | '(') {
            return true;
        }
        matches!(
            last_word(before).to_ascii_uppercase().as_str(),
            "SELECT" | "DISTINCT" | "ALL" | "BY" | "RETURNING"
        )
    })
}

/// Whether `c` can be part of an identifier-like word.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier-like word `s` ends with (empty if it ends otherwise).
fn last_word(s: &str) -> &str {
    let start = s
        .char_indices()
        .rev()
        .find(|(_, c)| !is_word_char(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &s[start..]
}

/// The identifier-like words of `text`, lower case.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !is_word_char(c))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

/// What `text` and the views it reads (transitively) may refer to.
///
/// A `*` (or `q.*`) in the statement itself reads every column of what it reads (its
/// rows are the result, by position): the views it reads are not narrowed and the
/// tables it reads not pruned, and so on through a `*` in such a view. A `*` in a
/// narrowed view passes on only the columns named: what it reads is narrowed too. The
/// inputs of a UNION, INTERSECT or EXCEPT are read whole.
pub fn referenced_names(catalog: &Catalog, text: &str) -> Referenced {
    // A view read contributes its text but for the columns it selects that no name
    // refers to; what counts as referred to (and which views are read whole) grows as
    // views are added, so the closure is taken again until it stops growing.
    let mut names: HashSet<String> = HashSet::new();
    let mut whole: HashSet<String> = HashSet::new();
    loop {
        let before = (names.len(), whole.len());
        // (text, whether all its columns are read)
        let mut pending = vec![(text.to_string(), true)];
        let mut texts = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some((t, all_read)) = pending.pop() {
            // (A set operation matches its inputs' columns by position: they are read
            // whole.)
            let passes_all = (all_read && selects_all(&t))
                || words(&t).any(|w| matches!(w.as_str(), "union" | "intersect" | "except"));
            names.extend(words(&t));
            for (key, view) in &catalog.views {
                if !reads_relation(&t, key) {
                    continue;
                }
                if passes_all {
                    whole.insert(key.clone());
                }
                if seen.insert(key.as_str()) {
                    pending.push(if whole.contains(key) {
                        (view.query.to_string(), true)
                    } else {
                        (view_text(&view.query, &names), false)
                    });
                }
            }
            texts.push((t, passes_all));
        }
        if (names.len(), whole.len()) == before {
            return Referenced {
                names,
                texts,
                whole,
            };
        }
    }
}

/// The words of `text` (lower case), each with the word before it when a dot joins
/// them (`bid.price`: `price` qualified by `bid`).
fn qualified_words(text: &str) -> Vec<(Option<String>, String)> {
    let mut out: Vec<(Option<String>, String)> = Vec::new();
    let mut prev: Option<String> = None;
    let mut dot = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if is_word_char(c) {
            let end = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
            let w = rest[..end].to_ascii_lowercase();
            out.push((if dot { prev.clone() } else { None }, w.clone()));
            prev = Some(w);
            dot = false;
            rest = &rest[end..];
        } else {
            if c == '.' {
                dot = prev.is_some();
            } else if c == '`' || c == '"' {
                // Quotes around a name keep the dot's meaning.
            } else {
                dot = false;
                if !c.is_whitespace() {
                    prev = None;
                }
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A view's query as text, narrowed as [`narrowed_view`] does.
fn view_text(q: &Query, names: &HashSet<String>) -> String {
    narrowed_view(q, names).to_string()
}

/// A view's query without the columns of its SELECT list whose names are not in
/// `names` (but one, if none is named), where leaving them out changes no row and no
/// name: a plain SELECT (no DISTINCT, GROUP BY, HAVING, aggregate, OVER aggregate or
/// unnamed expression). Otherwise the query as it is.
fn narrowed_view(q: &Query, names: &HashSet<String>) -> Query {
    let mut q = q.clone();
    if let SetExpr::Select(sel) = q.body.as_mut() {
        // An item's name, if it is a plain word (an unnamed expression's name comes
        // from its position, which leaving others out would change).
        let name = |item: &SelectItem| -> Option<String> {
            let n = match item {
                SelectItem::ExprWithAlias { alias, .. } => &alias.value,
                SelectItem::UnnamedExpr(Expr::Identifier(i)) => &i.value,
                SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => &parts.last()?.value,
                _ => return None,
            };
            n.chars().all(is_word_char).then(|| n.to_ascii_lowercase())
        };
        // Items that decide which rows there are or what others are called: aggregates
        // (a global aggregate has one row), OVER aggregates (they drop late rows), and
        // unnamed expressions (named by their position).
        let rows_depend = sel.projection.iter().any(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                words(&e.to_string())
                    .any(|w| w == "over" || AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(&w)))
                    || (matches!(item, SelectItem::UnnamedExpr(_))
                        && !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)))
            }
            _ => false,
        });
        let plain = sel.distinct.is_none()
            && sel.having.is_none()
            && matches!(&sel.group_by, GroupByExpr::Expressions(k, m) if k.is_empty() && m.is_empty())
            && !rows_depend;
        if plain {
            let keep: Vec<SelectItem> = sel
                .projection
                .iter()
                .filter(|item| {
                    // (Wildcards and names that are not plain words stay.)
                    name(item).is_none_or(|n| names.contains(&n))
                })
                .cloned()
                .collect();
            // (A view read for its rows alone keeps one column.)
            sel.projection = if keep.is_empty() {
                sel.projection.iter().take(1).cloned().collect()
            } else {
                keep
            };
        }
    }
    q
}

/// Whether `text` may read the relation `name`: the name (any case, a whole word)
/// right after FROM, JOIN, TABLE, a comma (a FROM list) or as a window function's
/// first argument. (A view missed here loses columns its query needs, which fails the pruned
/// planning: the statement is then planned with every column.)
fn reads_relation(text: &str, name: &str) -> bool {
    // (Quoted parts of a name, `db`.`t`, are the name db.t.)
    let lower = text.replace(['`', '"'], "").to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let mut from = 0;
    while let Some(k) = lower[from..].find(&name) {
        let at = from + k;
        from = at + name.len();
        let before = &lower[..at];
        let after = &lower[at + name.len()..];
        // A whole word.
        if before.chars().last().is_some_and(is_word_char)
            || after.chars().next().is_some_and(is_word_char)
        {
            continue;
        }
        let before = before.trim_end();
        if before.ends_with(',') {
            return true;
        }
        if matches!(last_word(before), "from" | "join" | "table") {
            return true;
        }
        // A window function's first argument (shown without its TABLE keyword).
        if let Some(call) = before.strip_suffix('(') {
            if matches!(
                last_word(call.trim_end()),
                "tumble" | "hop" | "cumulate" | "session"
            ) {
                return true;
            }
        }
    }
    false
}

/// `def` with only the physical columns that the texts reading it (and its computed
/// columns and watermark) may refer to. A ROW's field `r.x` (a column named so) is
/// kept where `r.x` is written; any other use of the word `x` (alone, or after a
/// qualifier that names no such ROW field) keeps every column whose name ends in `x`,
/// as a name lookup would consider them all. Columns whose names are not plain words
/// are kept.
fn pruned(def: &TableDef, refs: &Referenced) -> TableDef {
    let mut uses: Vec<(Option<String>, String)> = Vec::new();
    for (t, reads_all) in refs
        .texts
        .iter()
        .filter(|(t, _)| reads_relation(t, &def.name))
    {
        if *reads_all {
            return def.clone();
        }
        if selects_all(t) {
            // A narrowed view's `*`: the columns any name refers to.
            uses.extend(refs.names.iter().map(|n| (None, n.clone())));
        }
        uses.extend(qualified_words(t));
    }
    for (_, _, e) in &def.extras.computed {
        uses.extend(qualified_words(&e.to_string()));
    }
    if let Some((col, e)) = &def.extras.watermark {
        uses.extend(qualified_words(col));
        uses.extend(qualified_words(&e.to_string()));
    }
    let full: HashSet<String> = def
        .physical
        .iter()
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    // Words used alone (or after a qualifier that is no ROW of the table), and ROW
    // fields named in full.
    let mut alone: HashSet<String> = HashSet::new();
    let mut exact: HashSet<String> = HashSet::new();
    for (q, w) in uses {
        match q.map(|q| format!("{q}.{w}")) {
            Some(name) if full.contains(&name) => {
                exact.insert(name);
            }
            _ => {
                alone.insert(w);
            }
        }
    }
    let mut out = def.clone();
    out.physical.retain(|c| {
        let name = c.name.to_ascii_lowercase();
        let last = name.rsplit('.').next().unwrap_or(&name);
        !last.chars().all(is_word_char) || alone.contains(last) || exact.contains(&name)
    });
    out
}

impl<'a> Planner<'a> {
    /// A planner over `catalog`, with the session's options.
    pub fn new(catalog: &'a Catalog, config: &'a BTreeMap<String, String>) -> Self {
        Self {
            catalog,
            config,
            ctes: Vec::new(),
            prune: None,
        }
    }

    /// This planner, with generated tables that can leave columns out generating only
    /// those a statement may read, and views only the columns it names (see
    /// [`referenced_names`]).
    pub fn pruning(mut self, refs: Referenced) -> Self {
        self.prune = Some(Arc::new(refs));
        self
    }

    /// `table.exec.mini-batch.enabled` (Flink's key; default false).
    fn mini_batch(&self) -> Result<bool, SqlError> {
        match self
            .config
            .get("table.exec.mini-batch.enabled")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(SqlError::new(format!(
                "'table.exec.mini-batch.enabled' is true or false, not '{v}'"
            ))),
        }
    }

    /// Declares `INSERT INTO table query` on `env`: the query, its sink, and returns
    /// the sink table's name and the plan.
    pub fn insert(
        &self,
        env: &StreamExecutionEnvironment,
        ins: &Insert,
    ) -> Result<(String, PlanNode), SqlError> {
        let TableObject::TableName(name) = &ins.table else {
            return Err(err_at(&ins.table, "INSERT INTO takes a table name"));
        };
        let n = super::object_name(name);
        let key = self
            .catalog
            .resolve(&n)
            .ok_or_else(|| err_at(name, format!("no table '{n}' to insert into")))?;
        let Some(def) = self.catalog.tables.get(&key) else {
            return Err(err_at(
                name,
                format!("'{n}' is a view: INSERT INTO takes a table"),
            ));
        };
        let Some(source) = &ins.source else {
            return Err(err_at(name, "INSERT INTO needs a query"));
        };
        if !ins.columns.is_empty() {
            return Err(err_at(
                name,
                "INSERT INTO with a column list is not supported: select the sink's columns in order",
            ));
        }
        let rel = self.query(env, source)?;
        let sink_cols = &def.physical;
        if rel.schema.len() != sink_cols.len() {
            return Err(err_at(
                name,
                format!(
                    "the query has {} columns, the sink '{}' has {} ({})",
                    rel.schema.len(),
                    def.name,
                    sink_cols.len(),
                    describe_columns(sink_cols)
                ),
            ));
        }
        let mut conversions = Vec::new();
        for (i, (q, s)) in rel.schema.iter().zip(sink_cols).enumerate() {
            if q.ty == s.ty || q.ty == DataType::Null {
                continue;
            }
            let ok = (q.ty.is_numeric() && s.ty.is_numeric())
                || (q.ty.is_timestamp() && s.ty.is_timestamp());
            if !ok {
                return Err(err_at(
                    name,
                    format!(
                        "column {} of the query ('{}', {}) does not fit the sink's column '{}' ({})",
                        i + 1,
                        q.name,
                        q.ty,
                        s.name,
                        s.ty
                    ),
                ));
            }
            conversions.push((i, q.ty, s.ty));
        }
        let mut rel = rel;
        rel.stream = cast_columns(&rel.stream, conversions);
        let plan = connector::sink(&rel, def)?;
        Ok((def.name.clone(), plan))
    }

    /// Plans a query on `env`.
    pub fn query(&self, env: &StreamExecutionEnvironment, q: &Query) -> Result<Rel, SqlError> {
        Ok(self
            .query_inner(env, q)?
            .materialize()
            .map_err(|e| placed(e, q))?
            .flush())
    }

    /// A query, with its last calculation left pending (for fusion with what reads it).
    fn query_inner(&self, env: &StreamExecutionEnvironment, q: &Query) -> Result<Rel, SqlError> {
        let mut scoped;
        let planner = match &q.with {
            Some(with) => {
                scoped = Planner {
                    catalog: self.catalog,
                    config: self.config,
                    ctes: self.ctes.clone(),
                    prune: self.prune.clone(),
                };
                for cte in &with.cte_tables {
                    scoped
                        .ctes
                        .push((cte.alias.name.value.clone(), (*cte.query).clone()));
                }
                &scoped
            }
            None => self,
        };
        if q.order_by.is_some() || q.limit_clause.is_some() {
            let body = Query {
                order_by: None,
                limit_clause: None,
                ..q.clone()
            };
            let rel = planner.query_inner(env, &body)?;
            return order_and_limit(rel, q);
        }
        match q.body.as_ref() {
            SetExpr::Select(s) => planner.select(env, s),
            SetExpr::Query(inner) => planner.query_inner(env, inner),
            SetExpr::SetOperation {
                op,
                left,
                right,
                set_quantifier,
                ..
            } => {
                use sqlparser::ast::{SetOperator, SetQuantifier};
                if *op != SetOperator::Union || *set_quantifier != SetQuantifier::All {
                    return Err(err_at(
                        q,
                        format!("unsupported: {op} {set_quantifier} (spate runs UNION ALL)"),
                    ));
                }
                let sub = |b: &SetExpr| -> Result<Rel, SqlError> {
                    match b {
                        SetExpr::Select(s) => planner.select(env, s),
                        SetExpr::Query(q) => planner.query(env, q),
                        other => Err(err_at(other, "unsupported query in a UNION ALL")),
                    }
                };
                let (l, r) = (
                    sub(left)?
                        .materialize()
                        .map_err(|e| placed(e, left.as_ref()))?,
                    sub(right)?
                        .materialize()
                        .map_err(|e| placed(e, right.as_ref()))?,
                );
                if l.schema.len() != r.schema.len()
                    || l.schema
                        .iter()
                        .zip(&r.schema)
                        .any(|(a, b)| a.ty != b.ty && !(a.ty.is_numeric() && b.ty.is_numeric()))
                {
                    return Err(err_at(
                        q,
                        format!(
                            "UNION ALL of different columns: ({}) and ({})",
                            describe_columns(&l.schema),
                            describe_columns(&r.schema)
                        ),
                    ));
                }
                let rowtime = l.rowtime.filter(|t| r.rowtime == Some(*t));
                // Numeric columns of different types meet in the wider one.
                let mut schema = l.schema.clone();
                let mut conv_l = Vec::new();
                let mut conv_r = Vec::new();
                for (i, (a, b)) in l.schema.iter().zip(&r.schema).enumerate() {
                    if a.ty != b.ty && a.ty.is_numeric() && b.ty.is_numeric() {
                        let to = DataType::wider(a.ty, b.ty);
                        schema[i].ty = to;
                        if a.ty != to {
                            conv_l.push((i, a.ty, to));
                        }
                        if b.ty != to {
                            conv_r.push((i, b.ty, to));
                        }
                    }
                }
                let (ls, rs) = (
                    cast_columns(&l.stream, conv_l),
                    cast_columns(&r.stream, conv_r),
                );
                let mut stream = ls.union(std::slice::from_ref(&rs));
                if let Some(t) = rowtime {
                    stream = stream.with_event_time(move |r: &Row| ts_ns(r.get(t)));
                }
                Ok(Rel {
                    stream,
                    schema,
                    rowtime,
                    append_only: l.append_only && r.append_only,
                    plan: PlanNode::new("Union(all=[true])", vec![l.plan, r.plan]),
                    window: None,
                    calc: None,
                })
            }
            other => Err(err_at(other, "unsupported query form")),
        }
    }

    /// A table, view or `WITH` query by name.
    fn scan(
        &self,
        env: &StreamExecutionEnvironment,
        name: &sqlparser::ast::ObjectName,
    ) -> Result<Rel, SqlError> {
        let n = super::object_name(name);
        if let Some((_, q)) = self
            .ctes
            .iter()
            .rev()
            .find(|(c, _)| c.eq_ignore_ascii_case(&n))
        {
            let inner = Planner {
                catalog: self.catalog,
                config: self.config,
                ctes: self
                    .ctes
                    .iter()
                    .take_while(|(c, _)| !c.eq_ignore_ascii_case(&n))
                    .cloned()
                    .collect(),
                prune: self.prune.clone(),
            };
            return inner.query_inner(env, q);
        }
        let key = self.catalog.resolve(&n).ok_or_else(|| {
            let known: Vec<&String> = self
                .catalog
                .tables
                .keys()
                .chain(self.catalog.views.keys())
                .collect();
            err_at(
                name,
                if known.is_empty() {
                    format!("unknown table '{n}': no table is declared (CREATE TABLE first)")
                } else {
                    format!(
                        "unknown table '{n}' (the catalog has {})",
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            )
        })?;
        if let Some(t) = self.catalog.streams.get(&key) {
            let mut stream = t.stream.clone();
            if let Some(c) = t.rowtime {
                stream = stream.with_event_time(move |r: &Row| ts_ns(r.get(c)));
            }
            return Ok(Rel {
                stream,
                schema: t.schema.clone(),
                rowtime: t.rowtime,
                append_only: true,
                plan: PlanNode::new(format!("DataStreamScan(table=[[{key}]])"), vec![]),
                window: None,
                calc: None,
            });
        }
        if let Some(v) = self.catalog.views.get(&key) {
            let inner = Planner {
                prune: self.prune.clone(),
                ..Planner::new(self.catalog, self.config)
            };
            // Pruning: the view's columns that nothing refers to are left out.
            return match &self.prune {
                Some(refs) if !refs.whole.contains(&key) => {
                    inner.query_inner(env, &narrowed_view(&v.query, &refs.names))
                }
                _ => inner.query_inner(env, &v.query),
            };
        }
        let whole = &self.catalog.tables[&key];
        // Nexmark's values do not depend on which columns a table declares: it can
        // generate only those the statement may read.
        let narrowed = match &self.prune {
            Some(refs) if whole.options.get("connector").map(String::as_str) == Some("nexmark") => {
                Some(pruned(whole, refs))
            }
            _ => None,
        };
        let def = narrowed.as_ref().unwrap_or(whole);
        let schema = table_schema(def)?;
        let mut stream = connector::source(env, def, self.config)?;
        let mut label = format!(
            "TableSourceScan(table=[[{}]], fields=[{}])",
            def.name,
            def.physical
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !schema.computed.is_empty() {
            let computed: Vec<(usize, Eval)> = schema
                .computed
                .iter()
                .map(|(i, c)| (*i, c.eval.clone()))
                .collect();
            stream = match <[(usize, Eval); 1]>::try_from(computed) {
                // One computed column (the common case: an event time): no list of
                // values in between.
                Ok([(i, e)]) => stream.map(move |mut r: Row| {
                    let v = e(&r);
                    r.values.insert(i.min(r.values.len()), v);
                    r
                }),
                Err(computed) => stream.map(move |mut r: Row| {
                    // Every expression reads the physical row; then the values go to
                    // their positions (in increasing order).
                    let values: Vec<Value> = computed.iter().map(|(_, e)| e(&r)).collect();
                    for ((i, _), v) in computed.iter().zip(values) {
                        r.values.insert((*i).min(r.values.len()), v);
                    }
                    r
                }),
            }
            .name("Calc(computed columns)");
            label = format!("Calc(computed columns)\n   +- {label}");
        }
        let mut rowtime = None;
        if let Some((col, delay_ms)) = schema.watermark {
            let mut strategy = WatermarkStrategy::for_bounded_out_of_orderness(
                std::time::Duration::from_millis(delay_ms.max(0) as u64),
            )
            .with_timestamp_assigner(move |r: &Row| ts_ns(r.get(col)));
            if let Some(idle) = self.config.get("table.exec.source.idle-timeout") {
                let d = crate::config::parse_duration(idle).ok_or_else(|| {
                    SqlError::new(format!(
                        "'table.exec.source.idle-timeout': '{idle}' is not a duration"
                    ))
                })?;
                if !d.is_zero() {
                    strategy = strategy.with_idleness(d);
                }
            }
            stream = stream
                .assign_timestamps_and_watermarks(strategy)
                .name("WatermarkAssigner");
            label = format!(
                "WatermarkAssigner(rowtime=[{}], watermark=[{} - {delay_ms} ms])\n   +- {label}",
                schema.columns[col].name, schema.columns[col].name
            );
            rowtime = Some(col);
        }
        // A multi-line label nests: split it into a chain of nodes.
        let mut lines: Vec<&str> = label.lines().collect();
        let leaf = lines
            .pop()
            .unwrap_or_default()
            .trim_start_matches(['+', '-', ' ']);
        let mut node = PlanNode::new(leaf, vec![]);
        while let Some(l) = lines.pop() {
            node = PlanNode::new(l.trim_start_matches(['+', '-', ' ']), vec![node]);
        }
        Ok(Rel {
            stream,
            schema: schema.columns,
            rowtime,
            append_only: true,
            plan: node,
            window: None,
            calc: None,
        })
    }

    fn from(&self, env: &StreamExecutionEnvironment, s: &Select) -> Result<Rel, SqlError> {
        if s.from.len() > 1 {
            if let Some(t) = s.from.iter().find(|t| !t.joins.is_empty()) {
                return Err(err_at(
                    &t.relation,
                    "unsupported: JOIN inside a comma-separated FROM list (write all as JOIN ... ON)",
                ));
            }
            let Some(w) = &s.selection else {
                return Err(err_at(
                    &s.from[1].relation,
                    "unsupported: a cross join (FROM a, b needs a WHERE that relates them)",
                ));
            };
            let mut conds = Vec::new();
            conjuncts(w, &mut conds);
            let items: Vec<&TableFactor> = s.from.iter().map(|t| &t.relation).collect();
            return self.inner_joins(env, &items, conds);
        }
        let [twj] = s.from.as_slice() else {
            return Err(err_at(s, "a streaming SELECT needs a FROM clause"));
        };
        if let Some(ons) = pooled_joins(s) {
            // Inner joins: the ON and WHERE conditions, each placed where it can act.
            let mut conds = Vec::new();
            for on in ons {
                conjuncts(on, &mut conds);
            }
            if let Some(w) = &s.selection {
                conjuncts(w, &mut conds);
            }
            let mut items = vec![&twj.relation];
            items.extend(twj.joins.iter().map(|j| &j.relation));
            return self.inner_joins(env, &items, conds);
        }
        if !twj.joins.is_empty() {
            let (left, q) = self.factor(env, &twj.relation)?;
            let mut left = qualify(left.materialize().map_err(|e| placed(e, &twj.relation))?, q);
            for j in &twj.joins {
                use sqlparser::ast::{JoinConstraint, JoinOperator};
                // (The ON condition, and which sides keep their unmatched rows.)
                let (on, outer) = match &j.join_operator {
                    JoinOperator::Join(JoinConstraint::On(e))
                    | JoinOperator::Inner(JoinConstraint::On(e)) => (e, (false, false)),
                    JoinOperator::Left(JoinConstraint::On(e))
                    | JoinOperator::LeftOuter(JoinConstraint::On(e)) => (e, (true, false)),
                    JoinOperator::Right(JoinConstraint::On(e))
                    | JoinOperator::RightOuter(JoinConstraint::On(e)) => (e, (false, true)),
                    JoinOperator::FullOuter(JoinConstraint::On(e)) => (e, (true, true)),
                    JoinOperator::Join(_)
                    | JoinOperator::Inner(_)
                    | JoinOperator::Left(_)
                    | JoinOperator::LeftOuter(_)
                    | JoinOperator::Right(_)
                    | JoinOperator::RightOuter(_)
                    | JoinOperator::FullOuter(_) => {
                        return Err(err_at(
                            &j.relation,
                            "unsupported: a join without ON (spate runs [INNER | LEFT | RIGHT | FULL] JOIN ... ON)",
                        ))
                    }
                    _ => {
                        return Err(err_at(
                            &j.relation,
                            "unsupported: cross, semi, anti and lateral joins (spate runs [INNER | LEFT | RIGHT | FULL] JOIN ... ON)",
                        ))
                    }
                };
                if let Some((table, time, q)) = lookup_of(&j.relation)? {
                    if outer.1 {
                        return Err(err_at(
                            &j.relation,
                            "unsupported: a RIGHT or FULL lookup join (a lookup table is joined with JOIN or LEFT JOIN, as in Flink)",
                        ));
                    }
                    left = self.lookup_join(left, &table, time, q, on, outer.0)?;
                    continue;
                }
                let (right, q) = self.factor(env, &j.relation)?;
                let right = qualify(right.materialize().map_err(|e| placed(e, &j.relation))?, q);
                left = join_kind(left, right, on, outer)?;
            }
            return Ok(left);
        }
        Ok(self.factor(env, &twj.relation)?.0)
    }

    /// Inner joins of `items`, left to right, on `parts` (the conjuncts of their ON
    /// and WHERE conditions): a condition over one side only filters that side
    /// before the join; the others are the join's (its key equalities, and the rest
    /// checked on joined rows).
    fn inner_joins(
        &self,
        env: &StreamExecutionEnvironment,
        items: &[&TableFactor],
        mut parts: Vec<&Expr>,
    ) -> Result<Rel, SqlError> {
        let over = |schema: &[Column], c: &Expr| {
            expr::compile(
                c,
                &Scope {
                    qualified: true,
                    ..Scope::new(schema)
                },
            )
            .is_ok()
        };
        let side = |t: &TableFactor| -> Result<Rel, SqlError> {
            let (rel, q) = self.factor(env, t)?;
            // A pending calculation stays pending: the side's filters fuse into it.
            let rel = if rel.window.is_some() {
                rel.materialize().map_err(|e| placed(e, t))?
            } else {
                rel
            };
            Ok(qualify(rel, q))
        };
        let and = |cs: &[&Expr]| -> Option<Expr> {
            cs.iter()
                .map(|c| (*c).clone())
                .reduce(|a, b| Expr::BinaryOp {
                    left: Box::new(a),
                    op: sqlparser::ast::BinaryOperator::And,
                    right: Box::new(b),
                })
        };
        let Some((first, rest)) = items.split_first() else {
            return Err(SqlError::new("internal: a join of nothing"));
        };
        let mut left = side(first)?;
        for t in rest {
            let mut right = side(t)?;
            let mut joined = left.schema.clone();
            joined.extend(right.schema.iter().cloned());
            let (mut on, mut lf, mut rf, mut rest) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for c in parts {
                if over(&left.schema, c) {
                    lf.push(c);
                } else if over(&right.schema, c) {
                    rf.push(c);
                } else if over(&joined, c) {
                    on.push(c);
                } else {
                    rest.push(c);
                }
            }
            if let Some(f) = and(&lf) {
                left = left.filter(&f)?;
            }
            if let Some(f) = and(&rf) {
                right = right.filter(&f)?;
            }
            let Some(cond) = and(&on) else {
                return Err(err_at(
                    *t,
                    "unsupported: a cross join (no condition relates a column of this table to the tables before it)",
                ));
            };
            left = join(left, right, &cond)?;
            parts = rest;
        }
        // What no table could take names a column none has: its error.
        if let Some(f) = and(&parts) {
            return left.filter(&f);
        }
        Ok(left)
    }

    /// A lookup join (`JOIN t FOR SYSTEM_TIME AS OF left.proctime AS q ON ...`): the
    /// table's rows are read when the job is planned (in each process that runs it)
    /// and again whenever `'lookup.join.cache.ttl'` has passed, held in a hash table
    /// by the ON equalities' columns, and each left row meets the rows of its key, as
    /// of processing time.
    fn lookup_join(
        &self,
        left: Rel,
        table: &sqlparser::ast::ObjectName,
        time: &Expr,
        q: Option<String>,
        on: &Expr,
        keep_left: bool,
    ) -> Result<Rel, SqlError> {
        let left = left.materialize()?;
        let ls = Scope {
            qualified: true,
            ..Scope::new(&left.schema)
        };
        if !ls.resolve(time).is_some_and(|i| left.schema[i].proctime) {
            return Err(err_at(
                time,
                "unsupported: a temporal join in event time; spate looks a table up as of processing time (FOR SYSTEM_TIME AS OF a PROCTIME() column)",
            ));
        }
        let n = super::object_name(table);
        let Some(def) = self
            .catalog
            .resolve(&n)
            .and_then(|k| self.catalog.tables.get(&k))
        else {
            return Err(err_at(time, format!("unknown lookup table '{n}'")));
        };
        let key = def.name.clone();
        if def.options.get("connector").map(String::as_str) != Some("filesystem") {
            return Err(err_at(
                time,
                format!("table '{key}': only a 'filesystem' table can be looked up"),
            ));
        }
        let source = connector::LookupSource::of(def).map_err(|e| placed(e, time))?;
        let rows = source.read().map_err(|e| placed(SqlError::new(e), time))?;
        let q = q.or_else(|| {
            table
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.clone())
        });
        let mut right_cols = def.physical.clone();
        if let Some(q) = &q {
            for c in &mut right_cols {
                c.name = format!("{q}.{}", c.name);
            }
        }
        let rs = Scope {
            qualified: true,
            ..Scope::new(&right_cols)
        };
        let mut parts = Vec::new();
        conjuncts(on, &mut parts);
        let (mut lkeys, mut rkeys, mut residual) = (Vec::new(), Vec::new(), Vec::new());
        for c in parts {
            match equality_pair(c, &ls, &rs) {
                Some(((x, _), (y, _))) => {
                    lkeys.push((x.eval, x.ty));
                    rkeys.push((y.eval, y.ty));
                }
                None => residual.push(c),
            }
        }
        if lkeys.is_empty() {
            return Err(err_at(
                on,
                "a lookup join needs an equality between the lookup table's columns and the other side's in ON",
            ));
        }
        // Keys meet in one type: numbers as the wider, so that 7 finds 7.0.
        let types: Vec<DataType> = lkeys
            .iter()
            .zip(&rkeys)
            .map(|((_, a), (_, b))| {
                if a.is_numeric() && b.is_numeric() {
                    DataType::wider(*a, *b)
                } else {
                    *a
                }
            })
            .collect();
        let mut schema = left.schema.clone();
        schema.extend(right_cols.iter().cloned());
        let checks = join_checks(&residual, &schema)?;
        let rkeys: Vec<(Eval, DataType, DataType)> = rkeys
            .into_iter()
            .zip(&types)
            .map(|((e, ty), to)| (e, ty, *to))
            .collect();
        let build = move |rows: Vec<Row>| {
            let mut index = lookup::Index::new();
            for r in rows {
                let k: Vec<Value> = rkeys
                    .iter()
                    .map(|(e, ty, to)| expr::convert(e(&r), *ty, *to))
                    .collect();
                if !k.iter().any(Value::is_null) {
                    index.entry(k).or_default().push(r);
                }
            }
            index
        };
        let mut reader = lookup::LookupCache::new(source, Box::new(build), rows).reader();
        let lkeys: Arc<Vec<(Eval, DataType, DataType)>> = Arc::new(
            lkeys
                .into_iter()
                .zip(&types)
                .map(|((e, ty), to)| (e, ty, *to))
                .collect(),
        );
        let width = right_cols.len();
        let stream = left
            .stream
            .flat_map(
                move |r: Row, out: &mut spate_dataplane::operator::Collector<'_, '_, Row>| {
                    let k: Vec<Value> = lkeys
                        .iter()
                        .map(|(e, ty, to)| expr::convert(e(&r), *ty, *to))
                        .collect();
                    let mut met = false;
                    if let Some(found) = reader.index().get(&k) {
                        for other in found {
                            if let Some(mut row) = joined_row(&r, other, &checks) {
                                row.kind = r.kind;
                                out.collect(row);
                                met = true;
                            }
                        }
                    }
                    // LEFT JOIN: a row that found nothing goes with NULLs.
                    if keep_left && !met {
                        out.collect(padded(&r, width, false, r.kind));
                    }
                },
            )
            .name("LookupJoin");
        let stream = stamped(stream, left.rowtime);
        Ok(Rel {
            stream,
            schema,
            rowtime: left.rowtime,
            append_only: left.append_only,
            plan: PlanNode::new(
                format!(
                    "LookupJoin(table=[[{key}]], joinType=[{}], lookup=[{}], where=[{on}])",
                    join_type((keep_left, false)),
                    describe_columns(&def.physical)
                ),
                vec![left.plan],
            ),
            window: None,
            calc: None,
        })
    }

    /// One FROM item and the name that qualifies its columns (its alias, else its
    /// table's name).
    fn factor(
        &self,
        env: &StreamExecutionEnvironment,
        relation: &TableFactor,
    ) -> Result<(Rel, Option<String>), SqlError> {
        let alias =
            |a: &Option<sqlparser::ast::TableAlias>| a.as_ref().map(|a| a.name.value.clone());
        Ok(match relation {
            TableFactor::Table {
                name,
                args,
                alias: a,
                ..
            } => {
                if args.is_some() {
                    if super::object_name(name).eq_ignore_ascii_case("SYSTEM_TIME_AS_OF") {
                        return Err(err_at(
                            name,
                            "a lookup table (FOR SYSTEM_TIME AS OF) is joined with JOIN ... ON",
                        ));
                    }
                    return Err(err_at(name, "unsupported: a table function call in FROM"));
                }
                let q = alias(a).or_else(|| {
                    name.0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(|i| i.value.clone())
                });
                (self.scan(env, name)?, q)
            }
            TableFactor::Derived {
                subquery, alias: a, ..
            } => (self.query_inner(env, subquery)?, alias(a)),
            TableFactor::TableFunction { expr, alias: a } => {
                (self.window_tvf(env, expr)?, alias(a))
            }
            other => return Err(err_at(other, "unsupported FROM item")),
        })
    }

    /// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))`, `HOP(..., slide, size)`,
    /// `CUMULATE(..., step, size)` or `SESSION(TABLE t [PARTITION BY k, ...],
    /// DESCRIPTOR(ts), gap)`.
    fn window_tvf(&self, env: &StreamExecutionEnvironment, e: &Expr) -> Result<Rel, SqlError> {
        const KNOWN: &str = "TUMBLE, HOP, CUMULATE and SESSION";
        let Expr::Function(f) = e else {
            return Err(err_at(
                e,
                format!("TABLE(...) takes a window function: {KNOWN}"),
            ));
        };
        let fname = expr::function_name(f);
        let args = expr::function_args(f)?;
        let usage = match fname.as_str() {
            "TUMBLE" => "TUMBLE(TABLE t, DESCRIPTOR(time_col), size)",
            "HOP" => "HOP(TABLE t, DESCRIPTOR(time_col), slide, size)",
            "CUMULATE" => "CUMULATE(TABLE t, DESCRIPTOR(time_col), step, size)",
            "SESSION" => "SESSION(TABLE t [PARTITION BY k, ...], DESCRIPTOR(time_col), gap)",
            _ => {
                return Err(err_at(
                    e,
                    format!("unknown table function {fname} (spate runs {KNOWN})"),
                ))
            }
        };
        let mut args: Vec<&Expr> = args
            .into_iter()
            .map(|a| a.ok_or_else(|| err_at(e, format!("expected {usage}"))))
            .collect::<Result<_, _>>()?;
        // SESSION's PARTITION BY (the parser hands it over as PARTITION_BY(k, ...)).
        let mut partition = None;
        if let Some(Expr::Function(p)) = args.get(1) {
            if expr::function_name(p) == "PARTITION_BY" {
                if fname != "SESSION" {
                    return Err(err_at(args[1], "only SESSION takes PARTITION BY"));
                }
                let mut cols = Vec::new();
                for a in expr::function_args(p)? {
                    match a {
                        Some(Expr::Identifier(i)) => cols.push(i.value.clone()),
                        Some(Expr::CompoundIdentifier(parts)) => {
                            cols.extend(parts.last().map(|i| i.value.clone()))
                        }
                        _ => return Err(err_at(args[1], "PARTITION BY takes column names")),
                    }
                }
                partition = Some(cols);
                args.remove(1);
            }
        }
        let want = if matches!(fname.as_str(), "TUMBLE" | "SESSION") {
            3
        } else {
            4
        };
        if args.len() != want {
            return Err(err_at(e, format!("expected {usage}")));
        }
        let table = match args[0] {
            Expr::Identifier(i) => sqlparser::ast::ObjectName::from(vec![i.clone()]),
            Expr::CompoundIdentifier(p) => sqlparser::ast::ObjectName::from(p.clone()),
            other => return Err(err_at(other, format!("expected {usage}"))),
        };
        let input = self.scan(env, &table)?.materialize()?;
        let col = match args[1] {
            Expr::Function(d) if expr::function_name(d) == "DESCRIPTOR" => {
                match expr::function_args(d)?.as_slice() {
                    [Some(c @ Expr::Identifier(_))] => *c,
                    _ => return Err(err_at(args[1], "DESCRIPTOR takes one column name")),
                }
            }
            other => return Err(err_at(other, format!("expected {usage}"))),
        };
        if let Some(p) = &partition {
            for c in p {
                if Scope::new(&input.schema).lookup(c).is_none() {
                    return Err(err_at(
                        args[0],
                        format!("PARTITION BY: unknown column '{c}'"),
                    ));
                }
            }
        }
        window_over(input, &fname, col, &args[2..], partition, false, e)
    }

    fn select(&self, env: &StreamExecutionEnvironment, s: &Select) -> Result<Rel, SqlError> {
        if let Some(d) = &s.distinct {
            return Err(err_at(s, format!("unsupported: SELECT {d} (use GROUP BY)")));
        }
        if s.projection.is_empty() {
            return Err(err_at(s, "SELECT needs at least one column"));
        }
        let input = match self.top_n(env, s)? {
            Some(rel) => rel,
            None => self.from(env, s)?,
        };
        let group_by: &[Expr] = match &s.group_by {
            GroupByExpr::Expressions(e, mods) => {
                if !mods.is_empty() {
                    return Err(err_at(s, "unsupported: GROUP BY modifiers"));
                }
                e
            }
            GroupByExpr::All(_) => return Err(err_at(s, "unsupported: GROUP BY ALL")),
        };
        let mut aggs: Vec<&sqlparser::ast::Function> = Vec::new();
        for item in &s.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                collect_aggregates(e, &mut aggs);
            }
        }
        if let Some(h) = &s.having {
            collect_aggregates(h, &mut aggs);
        }
        if let Some(w) = &s.selection {
            let mut in_where = Vec::new();
            collect_aggregates(w, &mut in_where);
            if let Some(f) = in_where.first() {
                return Err(err_at(
                    *f,
                    "aggregate functions are not allowed in WHERE (use HAVING)",
                ));
            }
        }
        // WHERE applies before any windowing or grouping: over the input's own columns
        // (a comma join took it as its conditions).
        let input = match &s.selection {
            Some(w) if !where_in_joins(s) => input.filter(w)?,
            _ => input,
        };
        let mut overs: Vec<&sqlparser::ast::Function> = Vec::new();
        for item in &s.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                collect_over(e, &mut overs);
            }
        }
        if let Some(f) = overs.first() {
            if !group_by.is_empty() || !aggs.is_empty() || s.having.is_some() {
                return Err(err_at(
                    *f,
                    "unsupported: OVER aggregates beside GROUP BY or other aggregates",
                ));
            }
            let input = input.materialize().map_err(|e| placed(e, s))?;
            return over_aggregate(input, &overs, s);
        }
        if group_by.is_empty() && aggs.is_empty() {
            if s.having.is_some() {
                return Err(err_at(s, "HAVING needs GROUP BY or an aggregate"));
            }
            let input = input.materialize().map_err(|e| placed(e, s))?;
            return input.project(&s.projection);
        }
        // A legacy group window: `GROUP BY k, TUMBLE(ts, size)` (or HOP, SESSION)
        // with TUMBLE_START(ts, size) and the like in the projection.
        let mut legacy = None;
        for (k, g) in group_by.iter().enumerate() {
            if let Expr::Function(f) = g {
                if matches!(
                    expr::function_name(f).as_str(),
                    "TUMBLE" | "HOP" | "SESSION"
                ) {
                    if legacy.is_some() {
                        return Err(err_at(g, "GROUP BY takes one group window"));
                    }
                    legacy = Some((k, f));
                }
            }
        }
        let Some((k, f)) = legacy else {
            return self.aggregate(input, group_by, &aggs, s, &[]);
        };
        let fname = expr::function_name(f);
        let args: Vec<&Expr> = expr::function_args(f)?
            .into_iter()
            .map(|a| a.ok_or_else(|| err_at(&group_by[k], format!("{fname}(*) is not a window"))))
            .collect::<Result<_, _>>()?;
        let Some((col, durations)) = args.split_first() else {
            return Err(err_at(
                &group_by[k],
                format!("{fname} takes a time column and its intervals"),
            ));
        };
        let input = window_over(input, &fname, col, durations, None, true, &group_by[k])?;
        let mut keys: Vec<Expr> = group_by.to_vec();
        keys.remove(k);
        keys.push(Expr::Identifier(sqlparser::ast::Ident::new("window_start")));
        keys.push(Expr::Identifier(sqlparser::ast::Ident::new("window_end")));
        // The auxiliary functions, by their SQL text: each must repeat the window's
        // arguments.
        let window_args = args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let mut aux: Vec<(String, usize)> = Vec::new();
        let mut bad: Option<SqlError> = None;
        let mut visit = |e: &Expr| {
            fn walk(
                e: &Expr,
                fname: &str,
                want: &[String],
                aux: &mut Vec<(String, usize)>,
                bad: &mut Option<SqlError>,
            ) {
                if let Expr::Function(g) = e {
                    let name = expr::function_name(g);
                    let off =
                        ["_START", "_END", "_ROWTIME", "_PROCTIME"]
                            .iter()
                            .position(|suffix| {
                                name.strip_suffix(suffix)
                                    .is_some_and(|w| matches!(w, "TUMBLE" | "HOP" | "SESSION"))
                            });
                    if let Some(off) = off {
                        let same = name.starts_with(fname)
                            && expr::function_args(g).is_ok_and(|a| {
                                a.iter()
                                    .map(|x| x.map(|x| x.to_string()).unwrap_or_default())
                                    .collect::<Vec<_>>()
                                    == want
                            });
                        if !same && bad.is_none() {
                            *bad = Some(err_at(
                                e,
                                format!(
                                    "{name} must name the GROUP BY's window: {fname}({})",
                                    want.join(", ")
                                ),
                            ));
                        }
                        aux.push((e.to_string(), off.min(2)));
                        return;
                    }
                }
                for_each_operand(e, |x| walk(x, fname, want, aux, bad));
            }
            walk(e, &fname, &window_args, &mut aux, &mut bad);
        };
        for item in &s.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                visit(e);
            }
        }
        if let Some(h) = &s.having {
            visit(h);
        }
        if let Some(b) = bad {
            return Err(b);
        }
        self.aggregate(input, &keys, &aggs, s, &aux)
    }

    /// Flink's Top-N (and deduplication, its N = 1): `FROM (SELECT ..., ROW_NUMBER()
    /// OVER (PARTITION BY p ORDER BY o) AS rn FROM t) WHERE rn <= N` (or `rn < N`,
    /// `rn = 1`). The FROM item becomes a keyed operator that keeps each partition's
    /// first N rows in order and emits the changes: a row that enters the top N is
    /// inserted (`+I`), one pushed out deleted (`-D`), and rows whose rank changed are
    /// updated (`-U`/`+U`); with N = 1 the replaced row and its replacement are an
    /// update pair. `None` when `s` is not of that shape.
    fn top_n(&self, env: &StreamExecutionEnvironment, s: &Select) -> Result<Option<Rel>, SqlError> {
        let ([twj], Some(selection)) = (s.from.as_slice(), &s.selection) else {
            return Ok(None);
        };
        let TableFactor::Derived { subquery, .. } = &twj.relation else {
            return Ok(None);
        };
        if !twj.joins.is_empty() {
            return Ok(None);
        }
        let SetExpr::Select(inner) = subquery.body.as_ref() else {
            return Ok(None);
        };
        // The ROW_NUMBER() item of the inner projection.
        let mut found = None;
        for (k, item) in inner.projection.iter().enumerate() {
            let (e, alias) = match item {
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
                SelectItem::UnnamedExpr(e) => (e, None),
                _ => continue,
            };
            if let Expr::Function(f) = e {
                if let Some(over) = &f.over {
                    if expr::function_name(f) != "ROW_NUMBER" {
                        // An OVER aggregate: the subquery plans it.
                        continue;
                    }
                    let Some(alias) = alias else {
                        return Err(err_at(
                            e,
                            "ROW_NUMBER() needs a name: ROW_NUMBER() OVER (...) AS rn",
                        ));
                    };
                    found = Some((k, alias.value.clone(), over, e));
                }
            }
        }
        let Some((k, rn, over, at)) = found else {
            return Ok(None);
        };
        let sqlparser::ast::WindowType::WindowSpec(spec) = over else {
            return Err(err_at(at, "unsupported: a named window"));
        };
        if spec.window_frame.is_some() {
            return Err(err_at(at, "unsupported: ROW_NUMBER() with a window frame"));
        }
        if spec.order_by.is_empty() {
            return Err(err_at(at, "ROW_NUMBER() needs ORDER BY in its OVER clause"));
        }
        // The rank condition of the outer WHERE.
        let mut parts = Vec::new();
        conjuncts(selection, &mut parts);
        let is_rn =
            |e: &Expr| matches!(e, Expr::Identifier(i) if i.value.eq_ignore_ascii_case(&rn));
        let mut limit: Option<i64> = None;
        for c in &parts {
            use sqlparser::ast::BinaryOperator as B;
            if let Expr::BinaryOp { left, op, right } = c {
                let n = match (is_rn(left), op, int_literal(right)) {
                    (true, B::LtEq, Some(n)) => Some(n),
                    (true, B::Lt, Some(n)) => Some(n - 1),
                    (true, B::Eq, Some(1)) => Some(1),
                    _ => match (int_literal(left), op, is_rn(right)) {
                        (Some(n), B::GtEq, true) => Some(n),
                        (Some(n), B::Gt, true) => Some(n - 1),
                        _ => None,
                    },
                };
                if let Some(n) = n {
                    limit = Some(limit.map_or(n, |l| l.min(n)));
                }
            }
        }
        let Some(n) = limit else {
            return Err(err_at(
                selection,
                format!("ROW_NUMBER() runs as Top-N: the outer WHERE must bound it ({rn} <= N)"),
            ));
        };
        if !(1..=100_000).contains(&n) {
            return Err(err_at(
                selection,
                "a Top-N keeps 1 to 100000 rows per partition",
            ));
        }
        // The inner query without its ROW_NUMBER() item.
        let mut plain = inner.as_ref().clone();
        plain.projection.remove(k);
        if plain.projection.is_empty() {
            return Err(err_at(
                at,
                "the Top-N query selects nothing besides ROW_NUMBER()",
            ));
        }
        let input = self.select(env, &plain)?.materialize()?.flush();
        if !input.append_only {
            return Err(err_at(at, "unsupported: Top-N of an updating input"));
        }
        let scope = Scope::new(&input.schema);
        let partition: Vec<Eval> = spec
            .partition_by
            .iter()
            .map(|e| expr::compile(e, &scope).map(|c| c.eval))
            .collect::<Result<_, _>>()?;
        let mut order: Vec<(Eval, bool)> = Vec::new();
        for o in &spec.order_by {
            let c = expr::compile(&o.expr, &scope)?;
            let desc = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
            order.push((c.eval, desc));
        }
        // The rank column goes where ROW_NUMBER() was: after the columns of the items
        // before it (a `*` stands for many).
        let at_rank = if k == 0 {
            0
        } else {
            let mut head = inner.as_ref().clone();
            head.projection.truncate(k);
            let scratch = StreamExecutionEnvironment::new("rank");
            self.select(&scratch, &head)?.schema.len()
        };
        let mut schema = input.schema.clone();
        let at_rank = at_rank.min(schema.len());
        schema.insert(at_rank, Column::new(rn.clone(), DataType::BigInt));
        let partition = Arc::new(partition);
        let stream = input
            .stream
            .key_by(move |r: &Row| partition.iter().map(|p| p(r)).collect::<Vec<Value>>())
            .process(TopN {
                n: n as usize,
                order: Arc::new(order),
                rank_at: Some(at_rank),
            })
            .name("Rank");
        let label = format!(
            "Rank(rankRange=[rankStart=1, rankEnd={n}], partitionBy=[{}], orderBy=[{}])",
            spec.partition_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            spec.order_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Some(Rel {
            stream,
            schema,
            rowtime: None,
            append_only: false,
            plan: PlanNode::new(label, vec![input.plan]),
            window: None,
            calc: None,
        }))
    }

    fn aggregate(
        &self,
        input: Rel,
        group_by: &[Expr],
        aggs: &[&sqlparser::ast::Function],
        s: &Select,
        aux: &[(String, usize)],
    ) -> Result<Rel, SqlError> {
        let n_in = input.schema.len();
        let windowed = input.window.is_some() && {
            let names: Vec<String> = group_by
                .iter()
                .filter_map(|g| match g {
                    Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
                    Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            names.iter().any(|n| n == "window_start") && names.iter().any(|n| n == "window_end")
        };
        let input = if windowed {
            input.flush()
        } else {
            input.materialize()?
        };
        // The window columns (the last three of a windowed input) come from the window.
        let is_window_col = |g: &Expr| -> bool {
            windowed
                && match g {
                    Expr::Identifier(i) => Scope::new(&input.schema)
                        .lookup(&i.value)
                        .is_some_and(|k| k + 3 >= n_in),
                    Expr::CompoundIdentifier(p) => p
                        .last()
                        .and_then(|i| Scope::new(&input.schema).lookup(&i.value))
                        .is_some_and(|k| k + 3 >= n_in),
                    _ => false,
                }
        };
        let key_scope_cols: &[Column] = if windowed {
            &input.schema[..n_in - 3]
        } else {
            &input.schema
        };
        let mut keys: Vec<Compiled> = Vec::new();
        let mut columns: Vec<Column> = Vec::new();
        let mut computed: HashMap<String, usize> = HashMap::new();
        for g in group_by {
            if is_window_col(g) {
                continue;
            }
            let c = expr::compile(g, &Scope::new(key_scope_cols)).map_err(|e| {
                if windowed && Scope::new(&input.schema).lookup(&g.to_string()).is_some() {
                    err_at(
                        g,
                        "window_time cannot be grouped by; group by window_start and window_end",
                    )
                } else {
                    e
                }
            })?;
            computed.insert(g.to_string(), columns.len());
            let bound = Scope::new(key_scope_cols)
                .resolve(g)
                .and_then(|i| key_scope_cols[i].bound);
            columns.push(Column::new(output_name(g, columns.len()), c.ty).with_bound(bound));
            keys.push(c);
        }
        // Grouped by a window's end (of rows a window table function or aggregate
        // gave): a window aggregate of those rows, each group final when the
        // watermark passes its window's end.
        let end_key = (!windowed && input.append_only)
            .then(|| {
                columns
                    .iter()
                    .position(|c| c.bound == Some(WindowBound::End))
            })
            .flatten();
        let n_keys = keys.len();
        if windowed {
            let processing = input.window.as_ref().is_some_and(|t| t.processing);
            for (w, b) in [
                ("window_start", Some(WindowBound::Start)),
                ("window_end", Some(WindowBound::End)),
                ("window_time", None),
            ] {
                computed.insert(w.to_string(), columns.len());
                columns.push(
                    Column::new(w, DataType::Timestamp).with_bound(b.filter(|_| !processing)),
                );
            }
            // A legacy group window's TUMBLE_START(...) and the like.
            for (text, off) in aux {
                computed.insert(text.clone(), n_keys + off);
            }
            // Sessions are per partition: the rows a window aggregate groups.
            if let Some(tvf) = input.window.as_ref().filter(|t| !t.by_group_keys) {
                if matches!(tvf.kind, WindowKind::Session { .. }) {
                    let mut keys: Vec<String> = Vec::new();
                    for g in group_by.iter().filter(|g| !is_window_col(g)) {
                        let mut n = Vec::new();
                        column_names(g, &mut n);
                        keys.extend(n.into_iter().map(|x| x.to_ascii_lowercase()));
                    }
                    let mut parts: Vec<String> = tvf
                        .partition
                        .iter()
                        .flatten()
                        .map(|x| x.to_ascii_lowercase())
                        .collect();
                    keys.sort();
                    keys.dedup();
                    parts.sort();
                    parts.dedup();
                    if keys != parts {
                        return Err(err_at(
                            s,
                            format!(
                                "unsupported: a SESSION window aggregate groups by its PARTITION BY columns ({}), not by ({})",
                                parts.join(", "),
                                keys.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        let mut calls: Vec<AggCall> = Vec::new();
        for f in aggs {
            let text = Expr::Function((*f).clone()).to_string();
            if computed.contains_key(&text) {
                continue;
            }
            let mut call = AggCall::compile(f, key_scope_cols)?;
            call.retracting = !input.append_only;
            computed.insert(text.clone(), columns.len());
            columns.push(Column::new(text, call.out_ty));
            calls.push(call);
        }
        // HAVING and the projection, over [keys, window columns, aggregates].
        let scope = Scope {
            columns: &columns,
            computed: Some(&computed),
            bindings: None,
            qualified: false,
        };
        let grouped_hint = |e: SqlError, x: &Expr| -> SqlError {
            if e.message.starts_with("Column '") {
                let mut names = Vec::new();
                column_names(x, &mut names);
                for n in names {
                    if Scope::new(&input.schema).lookup(&n).is_some() && scope.lookup(&n).is_none()
                    {
                        return SqlError {
                            message: format!(
                                "column '{n}' is neither grouped nor aggregated: add it to GROUP BY or use it in an aggregate function"
                            ),
                            ..e
                        };
                    }
                }
            }
            e
        };
        let having = match &s.having {
            Some(h) => {
                let c = expr::compile(h, &scope).map_err(|e| grouped_hint(e, h))?;
                if !matches!(c.ty, DataType::Boolean | DataType::Null) {
                    return Err(err_at(h, format!("HAVING must be a BOOLEAN, not {}", c.ty)));
                }
                Some(c.eval)
            }
            None => None,
        };
        let mut outs: Vec<Eval> = Vec::new();
        let mut schema: Vec<Column> = Vec::new();
        let mut rowtime = None;
        for (k, item) in s.projection.iter().enumerate() {
            let (e, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                other => {
                    return Err(err_at(
                        other,
                        "SELECT * is not allowed with GROUP BY: name the columns",
                    ))
                }
            };
            let c = expr::compile(e, &scope).map_err(|err| grouped_hint(err, e))?;
            if windowed && computed.get(&e.to_string()) == Some(&(n_keys + 2)) {
                rowtime = Some(schema.len());
            }
            let bound = computed
                .get(&e.to_string())
                .copied()
                .or_else(|| scope.resolve(e))
                .and_then(|i| columns.get(i))
                .and_then(|c| c.bound);
            schema.push(
                Column::new(alias.unwrap_or_else(|| output_name(e, k)), c.ty).with_bound(bound),
            );
            outs.push(c.eval);
        }
        let finish: Finish = Arc::new(move |row: &Row| -> Option<Vec<Value>> {
            if let Some(h) = &having {
                if h(row) != Value::Bool(true) {
                    return None;
                }
            }
            Some(outs.iter().map(|o| o(row)).collect())
        });
        let calls = Arc::new(calls);
        let key_evals: Arc<Vec<Eval>> = Arc::new(keys.iter().map(|k| k.eval.clone()).collect());
        let key_fn = move |r: &Row| -> Vec<Value> { key_evals.iter().map(|k| k(r)).collect() };
        let agg_label = calls
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let group_label = group_by
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let keyed = input.stream.key_by(key_fn);
        if windowed {
            let Some(tvf) = input.window else {
                return Err(SqlError::new(
                    "internal: a window aggregate without a window",
                ));
            };
            let assigner = tvf.assigner().map_err(SqlError::new)?;
            // Processing-time windows give rows without event time.
            let rowtime = rowtime.filter(|_| !tvf.processing);
            let agg = SqlAggregate {
                calls: calls.clone(),
            };
            let stream = keyed
                .window(assigner)
                .aggregate_with(
                    agg,
                    move |key: &Vec<Value>, w: &Window, results: Vec<Value>| {
                        let mut values = key.clone();
                        values.push(ms(w.start));
                        values.push(ms(w.end));
                        values.push(ms(w.end.saturating_sub(1_000_000)));
                        values.extend(results);
                        finish(&Row::insert(values)).map(Row::insert)
                    },
                )
                .name("WindowAggregate");
            let stream = stamped(stream, rowtime);
            return Ok(Rel {
                stream,
                schema,
                rowtime,
                append_only: true,
                plan: PlanNode::new(
                    format!("WindowAggregate(groupBy=[{group_label}], select=[{agg_label}])"),
                    vec![input.plan],
                ),
                window: None,
                calc: None,
            });
        }
        if let Some(end) = end_key {
            let stream = keyed
                .process(WindowGroupAggregate { calls, finish, end })
                .name("WindowAggregate");
            return Ok(Rel {
                stream,
                schema,
                rowtime: None,
                append_only: true,
                plan: PlanNode::new(
                    format!(
                        "WindowAggregate(groupBy=[{group_label}], window=[the input's windows], select=[{agg_label}])"
                    ),
                    vec![input.plan],
                ),
                window: None,
                calc: None,
            });
        }
        if input.window.is_some()
            && group_by.iter().any(|g| {
                let mut n = Vec::new();
                column_names(g, &mut n);
                n.iter().any(|x| {
                    ["window_start", "window_end", "window_time"]
                        .contains(&x.to_ascii_lowercase().as_str())
                })
            })
        {
            return Err(err_at(
                s,
                "a window aggregate groups by both window_start and window_end of a window table function",
            ));
        }
        let mini_batch = self.mini_batch()?;
        let stream = keyed
            .process(GroupAggregate {
                calls,
                finish,
                mini_batch,
            })
            .name("GroupAggregate");
        Ok(Rel {
            stream,
            schema,
            rowtime: None,
            append_only: false,
            plan: PlanNode::new(
                format!(
                    "GroupAggregate(groupBy=[{group_label}], select=[{agg_label}]{})",
                    if mini_batch { ", miniBatch=[true]" } else { "" }
                ),
                vec![input.plan],
            ),
            window: None,
            calc: None,
        })
    }
}

/// A window (`fname`: TUMBLE, HOP, CUMULATE or SESSION, with its `durations` as
/// SQL writes them) over `input`'s time column `col`, not applied yet: the window
/// columns are appended to the schema, and a window aggregate or `materialize`
/// applies it.
fn window_over(
    input: Rel,
    fname: &str,
    col: &Expr,
    durations: &[&Expr],
    partition: Option<Vec<String>>,
    by_group_keys: bool,
    at: &Expr,
) -> Result<Rel, SqlError> {
    let input = input.materialize()?;
    if !input.append_only {
        return Err(err_at(
            at,
            "unsupported: a window over an updating input (a changelog with retractions)",
        ));
    }
    let name = match col {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
        other => return Err(err_at(other, "a window's time column is a column name")),
    };
    let idx = Scope::new(&input.schema)
        .resolve(col)
        .ok_or_else(|| err_at(col, format!("unknown column '{name}'")))?;
    let processing = input.schema[idx].proctime;
    if input.rowtime != Some(idx) && !processing {
        return Err(err_at(
            col,
            format!(
                "'{name}' is not a time attribute: declare WATERMARK FOR {name} AS ... on its table (event time), or use a PROCTIME() column (processing time)"
            ),
        ));
    }
    let dur = |x: &Expr| -> Result<i64, SqlError> {
        match x {
            Expr::Interval(iv) => {
                let ms = expr::interval_ms(iv, x)?;
                if ms <= 0 {
                    return Err(err_at(
                        x,
                        "a window's size, slide, step or gap must be positive",
                    ));
                }
                Ok(ms)
            }
            other => Err(err_at(other, "expected an INTERVAL")),
        }
    };
    let want = if matches!(fname, "TUMBLE" | "SESSION") {
        1
    } else {
        2
    };
    if durations.len() != want {
        return Err(err_at(
            at,
            format!("{fname} takes {want} interval(s) after its time column"),
        ));
    }
    let kind = match fname {
        "TUMBLE" => WindowKind::Tumble {
            size_ms: dur(durations[0])?,
        },
        "SESSION" => WindowKind::Session {
            gap_ms: dur(durations[0])?,
        },
        "HOP" | "CUMULATE" => {
            let (step, size) = (dur(durations[0])?, dur(durations[1])?);
            // As Flink: the slide (step) divides the size, and a row belongs to at
            // most 10000 windows.
            if size % step != 0 || size / step > 10_000 {
                return Err(err_at(
                    at,
                    format!(
                        "{fname}'s size ({size} ms) must be a multiple of its {} ({step} ms), at most 10000 times it",
                        if fname == "HOP" { "slide" } else { "step" }
                    ),
                ));
            }
            if fname == "HOP" {
                WindowKind::Hop {
                    slide_ms: step,
                    size_ms: size,
                }
            } else {
                WindowKind::Cumulate {
                    step_ms: step,
                    size_ms: size,
                }
            }
        }
        other => return Err(err_at(at, format!("unknown window function {other}"))),
    };
    let tvf = WindowTvf {
        kind,
        time_col: idx,
        processing,
        partition,
        by_group_keys,
    };
    tvf.assigner().map_err(|m| err_at(at, m))?;
    let label = format!(
        "WindowTableFunction(window=[{}])",
        tvf.describe(&input.schema[idx].name)
    );
    let mut schema = input.schema.clone();
    let bound = |b| (!processing).then_some(b);
    schema.push(
        Column::new("window_start", DataType::Timestamp).with_bound(bound(WindowBound::Start)),
    );
    schema.push(Column::new("window_end", DataType::Timestamp).with_bound(bound(WindowBound::End)));
    schema.push(if processing {
        Column::proctime("window_time")
    } else {
        Column::new("window_time", DataType::Timestamp)
    });
    Ok(Rel {
        stream: input.stream,
        schema,
        rowtime: input.rowtime,
        append_only: true,
        plan: PlanNode::new(label, vec![input.plan]),
        window: Some(Arc::new(tvf)),
        calc: None,
    })
}

/// `ORDER BY` and `LIMIT` over a query's rows, as Flink runs them on a stream: `ORDER
/// BY` the event-time column ascending (then any keys) sorts by the watermark; `ORDER
/// BY keys LIMIT n` keeps the first n rows (a Top-N over all rows, a changelog);
/// `LIMIT n` alone passes the first n rows.
fn order_and_limit(rel: Rel, q: &Query) -> Result<Rel, SqlError> {
    use sqlparser::ast::{LimitClause, OrderByKind};
    let rel = rel.materialize().map_err(|e| placed(e, q))?.flush();
    let limit = match &q.limit_clause {
        None => None,
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if offset.is_some() || !limit_by.is_empty() {
                return Err(err_at(q, "unsupported: OFFSET and LIMIT BY on a stream"));
            }
            match limit {
                None => None,
                Some(e) => match int_literal(e) {
                    Some(n) if (1..=100_000).contains(&n) => Some(n as usize),
                    Some(_) => return Err(err_at(q, "LIMIT takes 1 to 100000 rows")),
                    None => return Err(err_at(e, "LIMIT takes a number")),
                },
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => {
            return Err(err_at(q, "unsupported: LIMIT offset, n (write LIMIT n)"))
        }
    };
    let scope = Scope::new(&rel.schema);
    let mut order: Vec<(Eval, bool)> = Vec::new();
    let mut by_time = false;
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(items) = &ob.kind else {
            return Err(err_at(ob, "unsupported: ORDER BY ALL"));
        };
        for (k, o) in items.iter().enumerate() {
            let desc = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
            if k == 0 && !desc && rel.rowtime.is_some() && scope.resolve(&o.expr) == rel.rowtime {
                by_time = true;
                continue;
            }
            order.push((expr::compile(&o.expr, &scope)?.eval, desc));
        }
    }
    if !rel.append_only {
        return Err(err_at(
            q,
            "unsupported: ORDER BY or LIMIT of an updating input (a changelog with retractions)",
        ));
    }
    let keyed = |rel: &Rel| rel.stream.key_by(|_: &Row| Vec::<Value>::new());
    let text = |x: &dyn std::fmt::Display| x.to_string();
    match (q.order_by.as_ref(), by_time, limit) {
        // Sorted by event time: rows wait for the watermark to pass them.
        (Some(ob), true, limit) => {
            let Some(t) = rel.rowtime else {
                return Err(SqlError::new("internal: a time sort without event time"));
            };
            let stream = keyed(&rel)
                .process(TimeSort {
                    time: t,
                    order: Arc::new(order),
                    limit,
                })
                .name("TemporalSort")
                .with_event_time(move |r: &Row| ts_ns(r.get(t)));
            Ok(Rel {
                stream,
                plan: PlanNode::new(
                    format!("TemporalSort(orderBy=[{}], limit=[{limit:?}])", text(ob)),
                    vec![rel.plan.clone()],
                ),
                ..rel
            })
        }
        (Some(ob), false, Some(n)) => {
            let stream = keyed(&rel)
                .process(TopN {
                    n,
                    order: Arc::new(order),
                    rank_at: None,
                })
                .name("SortLimit");
            Ok(Rel {
                stream,
                rowtime: None,
                append_only: false,
                plan: PlanNode::new(
                    format!("SortLimit({}, fetch=[{n}])", text(ob)),
                    vec![rel.plan.clone()],
                ),
                ..rel
            })
        }
        (Some(ob), false, None) => Err(err_at(
            ob,
            "unsupported: ORDER BY on a stream without LIMIT sorts by the event-time column, ascending, first",
        )),
        (None, _, Some(n)) => {
            let stream = keyed(&rel)
                .process(Limit { n })
                .name("Limit");
            let stream = stamped(stream, rel.rowtime);
            Ok(Rel {
                stream,
                plan: PlanNode::new(format!("Limit(fetch=[{n}])"), vec![rel.plan.clone()]),
                ..rel
            })
        }
        (None, _, None) => Ok(rel),
    }
}

/// `LIMIT n`: the first n rows (of an insert-only input: `order_and_limit` refuses
/// a changelog).
#[derive(Clone)]
struct Limit {
    n: usize,
}

impl KeyedProcessFunction for Limit {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = u64;

    fn process_element(
        &mut self,
        value: Row,
        seen: &mut u64,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if *seen < self.n as u64 {
            *seen += 1;
            ctx.collect(value);
        }
    }
}

/// `ORDER BY time [, keys] [LIMIT n]`: rows wait until the watermark passes their
/// time, then go out in order; rows behind the watermark when they come are late
/// and dropped (as Flink's temporal sort drops them).
#[derive(Clone)]
struct TimeSort {
    time: usize,
    order: Arc<Vec<(Eval, bool)>>,
    limit: Option<usize>,
}

/// The rows waiting for the watermark, and how many went out.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SortState {
    /// By time (ns), in arrival order within a time.
    rows: BTreeMap<u64, Vec<Row>>,
    emitted: u64,
}

/// The rows of `pending` at times up to `at` (in time order), taken out of it.
fn take_due(pending: &mut BTreeMap<u64, Vec<Row>>, at: u64) -> Vec<Vec<Row>> {
    let later = pending.split_off(&at.saturating_add(1));
    std::mem::replace(pending, later).into_values().collect()
}

impl KeyedProcessFunction for TimeSort {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = SortState;

    fn process_element(
        &mut self,
        value: Row,
        st: &mut SortState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        let ts = ts_ns(value.get(self.time));
        if ts <= ctx.current_watermark() && ctx.current_watermark() > 0 {
            return;
        }
        ctx.register_event_time_timer(ts);
        st.rows.entry(ts).or_default().push(value);
    }

    fn on_timer(&mut self, at: u64, st: &mut SortState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        for mut same_time in take_due(&mut st.rows, at) {
            // Rows of one time by the other ORDER BY keys (stable: ties keep arrival).
            same_time.sort_by(|a, b| order_cmp(&self.order, a, b));
            for r in same_time {
                if self.limit.is_some_and(|n| st.emitted >= n as u64) {
                    return;
                }
                st.emitted += 1;
                ctx.collect(r);
            }
        }
    }
}

/// The ON conditions of a FROM item's joins when they are all inner joins with ON
/// and none is a lookup (their conditions and the WHERE's then pool).
fn pooled_joins(s: &Select) -> Option<Vec<&Expr>> {
    use sqlparser::ast::{JoinConstraint, JoinOperator};
    let [twj] = s.from.as_slice() else {
        return None;
    };
    if twj.joins.is_empty() {
        return None;
    }
    twj.joins
        .iter()
        .map(|j| match &j.join_operator {
            JoinOperator::Join(JoinConstraint::On(e))
            | JoinOperator::Inner(JoinConstraint::On(e))
                if matches!(lookup_of(&j.relation), Ok(None)) =>
            {
                Some(e)
            }
            _ => None,
        })
        .collect()
}

/// Whether the FROM clause took the WHERE as its joins' conditions.
fn where_in_joins(s: &Select) -> bool {
    s.from.len() > 1 || pooled_joins(s).is_some()
}

/// An OVER window's frame.
#[derive(Clone, Copy, Debug)]
enum Frame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`.
    Rows(usize),
    /// `RANGE BETWEEN INTERVAL ... PRECEDING AND CURRENT ROW` (ms).
    Range(i64),
    /// `... UNBOUNDED PRECEDING AND CURRENT ROW`.
    Unbounded,
}

/// `agg(x) OVER (PARTITION BY k ORDER BY time [frame])` (Flink's OVER aggregates: every
/// call of the query over one window, ordered by a time attribute): each row goes out
/// with the aggregates over the rows of its partition in its frame, in time order (in
/// event time, once the watermark passes the row).
fn over_aggregate(
    input: Rel,
    overs: &[&sqlparser::ast::Function],
    s: &Select,
) -> Result<Rel, SqlError> {
    use sqlparser::ast::{WindowFrameBound, WindowFrameUnits, WindowType};
    if !input.append_only {
        return Err(err_at(
            overs[0],
            "unsupported: an OVER aggregate of an updating input (a changelog with retractions)",
        ));
    }
    let spec_of = |f: &sqlparser::ast::Function| match &f.over {
        Some(WindowType::WindowSpec(spec)) => Ok(spec.clone()),
        // `OVER w` with `WINDOW w AS (...)`.
        Some(WindowType::NamedWindow(name)) => s
            .named_window
            .iter()
            .find(|d| d.0.value.eq_ignore_ascii_case(&name.value))
            .and_then(|d| match &d.1 {
                sqlparser::ast::NamedWindowExpr::WindowSpec(spec) => Some(spec.clone()),
                sqlparser::ast::NamedWindowExpr::NamedWindow(_) => None,
            })
            .ok_or_else(|| {
                err_at(
                    f,
                    format!(
                        "no window '{}' (declare it: WINDOW {} AS (PARTITION BY ... ORDER BY ...))",
                        name.value, name.value
                    ),
                )
            }),
        None => Err(err_at(f, "an OVER aggregate needs its window")),
    };
    let spec = spec_of(overs[0])?;
    for f in &overs[1..] {
        if spec_of(f)?.to_string() != spec.to_string() {
            return Err(err_at(
                *f,
                "unsupported: OVER aggregates over different windows in one query",
            ));
        }
    }
    let scope = Scope::new(&input.schema);
    let [order] = spec.order_by.as_slice() else {
        return Err(err_at(
            overs[0],
            "an OVER window is ordered by one time attribute: ORDER BY ts",
        ));
    };
    let time = scope.resolve(&order.expr);
    let processing = time.is_some_and(|t| input.schema[t].proctime);
    let time = match time {
        Some(t)
            if (input.rowtime == Some(t) || processing)
                && !matches!(order.options.sort, Some(sqlparser::ast::OrderBySort::Desc)) =>
        {
            t
        }
        _ => {
            return Err(err_at(
                &order.expr,
                "an OVER window is ordered by a time attribute (a WATERMARK or PROCTIME() column), ascending",
            ))
        }
    };
    let frame = match &spec.window_frame {
        None => Frame::Unbounded,
        Some(f) => {
            if !matches!(f.end_bound, None | Some(WindowFrameBound::CurrentRow)) {
                return Err(err_at(
                    overs[0],
                    "unsupported: an OVER frame that ends after CURRENT ROW",
                ));
            }
            match (&f.units, &f.start_bound) {
                (_, WindowFrameBound::Preceding(None)) => Frame::Unbounded,
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(Some(n))) => {
                    match int_literal(n) {
                        Some(n) if (0..=100_000).contains(&n) => Frame::Rows(n as usize),
                        _ => {
                            return Err(err_at(
                                overs[0],
                                "ROWS BETWEEN n PRECEDING takes n from 0 to 100000",
                            ))
                        }
                    }
                }
                (WindowFrameUnits::Rows, WindowFrameBound::CurrentRow) => Frame::Rows(0),
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(Some(x))) => {
                    match x.as_ref() {
                        Expr::Interval(iv) => Frame::Range(expr::interval_ms(iv, x)?.max(0)),
                        other => {
                            return Err(err_at(
                                other,
                                "RANGE BETWEEN takes an INTERVAL ... PRECEDING",
                            ))
                        }
                    }
                }
                (WindowFrameUnits::Range, WindowFrameBound::CurrentRow) => Frame::Range(0),
                _ => {
                    return Err(err_at(
                        overs[0],
                        "unsupported: this OVER frame (spate runs ROWS or RANGE ... PRECEDING AND CURRENT ROW)",
                    ))
                }
            }
        }
    };
    let bounded = !matches!(frame, Frame::Unbounded);
    let mut calls = Vec::new();
    let mut computed: HashMap<String, usize> = HashMap::new();
    let mut columns = input.schema.clone();
    for f in overs {
        let text = Expr::Function((*f).clone()).to_string();
        if computed.contains_key(&text) {
            continue;
        }
        let mut plain = (*f).clone();
        plain.over = None;
        let mut call = AggCall::compile(&plain, &input.schema)?;
        call.retracting = bounded;
        computed.insert(text.clone(), columns.len());
        columns.push(Column::new(text, call.out_ty));
        calls.push(call);
    }
    let out_scope = Scope {
        columns: &columns,
        computed: Some(&computed),
        bindings: None,
        qualified: false,
    };
    let mut outs: Vec<Eval> = Vec::new();
    let mut schema = Vec::new();
    let mut rowtime = None;
    for (k, item) in s.projection.iter().enumerate() {
        match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                let c = expr::compile(e, &out_scope)?;
                let col = out_scope.resolve(e);
                if col.is_some() && col == input.rowtime {
                    rowtime = Some(schema.len());
                }
                let name = match item {
                    SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                    _ => output_name(e, k),
                };
                schema.push(Column::new(name, c.ty));
                outs.push(c.eval);
            }
            SelectItem::Wildcard(_) => {
                for (i, c) in input.schema.iter().enumerate() {
                    if input.rowtime == Some(i) {
                        rowtime = Some(schema.len());
                    }
                    schema.push(c.clone());
                    outs.push(Arc::new(move |r: &Row| r.get(i).clone()));
                }
            }
            other => return Err(err_at(other, "unsupported in a SELECT with OVER")),
        }
    }
    let partition: Vec<Eval> = spec
        .partition_by
        .iter()
        .map(|e| expr::compile(e, &scope).map(|c| c.eval))
        .collect::<Result<_, _>>()?;
    let partition = Arc::new(partition);
    let outs = Arc::new(outs);
    let stream = input
        .stream
        .key_by(move |r: &Row| partition.iter().map(|p| p(r)).collect::<Vec<Value>>())
        .process(OverAggregate {
            calls: Arc::new(calls),
            time,
            processing,
            frame,
        })
        .name("OverAggregate")
        .map(move |r: Row| Row {
            kind: r.kind,
            values: outs.iter().map(|o| o(&r)).collect(),
        })
        .name("Calc");
    let stream = stamped(stream, rowtime);
    Ok(Rel {
        stream,
        schema,
        rowtime,
        append_only: true,
        plan: PlanNode::new(
            format!(
                "OverAggregate(window=[{spec}], select=[{}])",
                overs
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            vec![input.plan],
        ),
        window: None,
        calc: None,
    })
}

/// The OVER aggregate's operator (per partition).
#[derive(Clone)]
struct OverAggregate {
    calls: Arc<Vec<AggCall>>,
    /// The time column.
    time: usize,
    processing: bool,
    frame: Frame,
}

/// Per partition: rows waiting for the watermark, the rows in the frame, and the
/// aggregates over them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct OverState {
    /// By time (ns), in arrival order within a time.
    pending: BTreeMap<u64, Vec<Row>>,
    frame: std::collections::VecDeque<Row>,
    accs: Vec<Acc>,
}

impl OverAggregate {
    fn ts(&self, r: &Row) -> i64 {
        match r.get(self.time) {
            Value::Ts(ms) => *ms,
            _ => 0,
        }
    }

    /// `rows` (of one time, in order) enter the frame and go out with the aggregates.
    fn emit(&self, rows: Vec<Row>, st: &mut OverState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        if st.accs.len() != self.calls.len() {
            st.accs = self.calls.iter().map(AggCall::fresh).collect();
        }
        let results = |st: &OverState| -> Vec<Value> {
            self.calls
                .iter()
                .zip(&st.accs)
                .map(|(c, a)| c.result(a))
                .collect()
        };
        match self.frame {
            Frame::Rows(n) => {
                // Each row sees the n rows before it.
                for r in rows {
                    for (c, a) in self.calls.iter().zip(st.accs.iter_mut()) {
                        c.add(&r, a);
                    }
                    st.frame.push_back(r.clone());
                    while st.frame.len() > n + 1 {
                        if let Some(old) = st.frame.pop_front() {
                            for (c, a) in self.calls.iter().zip(st.accs.iter_mut()) {
                                c.retract(&old, a);
                            }
                        }
                    }
                    let mut values = r.values;
                    values.extend(results(st));
                    ctx.collect(Row::insert(values));
                }
            }
            Frame::Range(_) | Frame::Unbounded => {
                // Rows of one time are peers: each sees them all.
                let Some(t) = rows.first().map(|r| self.ts(r)) else {
                    return;
                };
                for r in &rows {
                    for (c, a) in self.calls.iter().zip(st.accs.iter_mut()) {
                        c.add(r, a);
                    }
                }
                if let Frame::Range(ms) = self.frame {
                    st.frame.extend(rows.iter().cloned());
                    while st
                        .frame
                        .front()
                        .is_some_and(|o| self.ts(o) < t.saturating_sub(ms))
                    {
                        if let Some(old) = st.frame.pop_front() {
                            for (c, a) in self.calls.iter().zip(st.accs.iter_mut()) {
                                c.retract(&old, a);
                            }
                        }
                    }
                }
                let out = results(st);
                for r in rows {
                    let mut values = r.values;
                    values.extend(out.iter().cloned());
                    ctx.collect(Row::insert(values));
                }
            }
        }
    }
}

impl KeyedProcessFunction for OverAggregate {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = OverState;

    fn process_element(
        &mut self,
        value: Row,
        st: &mut OverState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if self.processing {
            // In arrival order, as processing time has it.
            self.emit(vec![value], st, ctx);
            return;
        }
        let ts = ts_ns(value.get(self.time));
        if ts <= ctx.current_watermark() && ctx.current_watermark() > 0 {
            // Late: its frame has gone out already (Flink drops it too).
            return;
        }
        ctx.register_event_time_timer(ts);
        st.pending.entry(ts).or_default().push(value);
    }

    fn on_timer(&mut self, at: u64, st: &mut OverState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        // Each time's rows together (peers of a RANGE frame), in time order.
        for same_time in take_due(&mut st.pending, at) {
            self.emit(same_time, st, ctx);
        }
    }
}

/// A lookup table's name, the time it is looked up as of, and its qualifier.
type Lookup<'e> = (sqlparser::ast::ObjectName, &'e Expr, Option<String>);

/// A join's FROM item that is a lookup (`t FOR SYSTEM_TIME AS OF e [AS q]`, which
/// the parser hands over as `SYSTEM_TIME_AS_OF(t, e)`): the table, the time and the
/// qualifier.
fn lookup_of(f: &TableFactor) -> Result<Option<Lookup<'_>>, SqlError> {
    let TableFactor::Table {
        name,
        args: Some(args),
        alias,
        ..
    } = f
    else {
        return Ok(None);
    };
    if !super::object_name(name).eq_ignore_ascii_case("SYSTEM_TIME_AS_OF") {
        return Ok(None);
    }
    let plain: Vec<&Expr> = args
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x),
            _ => None,
        })
        .collect();
    let [table, time] = plain.as_slice() else {
        return Err(err_at(name, "expected t FOR SYSTEM_TIME AS OF time"));
    };
    let table = match table {
        Expr::Identifier(i) => i,
        Expr::CompoundIdentifier(p) => match p.last() {
            Some(i) => i,
            None => return Err(err_at(*table, "expected a table's name")),
        },
        other => return Err(err_at(*other, "expected a table's name")),
    };
    Ok(Some((
        sqlparser::ast::ObjectName::from(vec![table.clone()]),
        time,
        alias.as_ref().map(|a| a.name.value.clone()),
    )))
}

/// An error without a position placed at `at`.
fn placed(e: SqlError, at: &impl sqlparser::ast::Spanned) -> SqlError {
    if e.line == 0 {
        err_at(at, e.message)
    } else {
        e
    }
}

/// The rows with columns converted: `(index, from, to)` (the stream itself when
/// there is nothing to convert).
fn cast_columns(
    stream: &DataStream<Row>,
    conversions: Vec<(usize, DataType, DataType)>,
) -> DataStream<Row> {
    if conversions.is_empty() {
        return stream.clone();
    }
    stream
        .map(move |mut r: Row| {
            for &(i, from, to) in &conversions {
                if let Some(v) = r.values.get_mut(i) {
                    *v = expr::convert(std::mem::take(v), from, to);
                }
            }
            r
        })
        .name("Calc(cast)")
}

/// A FROM item's columns named `q.column` (for a join's ON and its SELECT).
fn qualify(mut rel: Rel, q: Option<String>) -> Rel {
    if let Some(q) = q {
        for c in &mut rel.schema {
            c.name = format!("{q}.{}", c.name);
        }
    }
    rel
}

/// The conjuncts of `e` (`a AND b AND c`).
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(x) => conjuncts(x, out),
        other => out.push(other),
    }
}

/// An inner join of two insert-only relations on the equalities of `on` between their
/// columns (and any other conditions of `on` over the joined row): per key, each side
/// keeps its rows, and a row joins every row of the other side seen so far.
fn join(left: Rel, right: Rel, on: &Expr) -> Result<Rel, SqlError> {
    join_kind(left, right, on, (false, false))
}

/// As [`join`]; `outer` says which sides keep their unmatched rows (LEFT, RIGHT,
/// FULL): such a row goes out with NULLs for the other side, and is retracted when a
/// partner comes (so an outer join's rows are a changelog).
fn join_kind(left: Rel, right: Rel, on: &Expr, outer: (bool, bool)) -> Result<Rel, SqlError> {
    let (left, right) = (left.flush(), right.flush());
    let arity = (left.schema.len(), right.schema.len());
    if !left.append_only || !right.append_only {
        return Err(err_at(
            on,
            "unsupported: a join of an updating input (a changelog with retractions)",
        ));
    }
    let mut parts = Vec::new();
    conjuncts(on, &mut parts);
    let (ls, rs) = (
        Scope {
            qualified: true,
            ..Scope::new(&left.schema)
        },
        Scope {
            qualified: true,
            ..Scope::new(&right.schema)
        },
    );
    let mut lkeys: Vec<Eval> = Vec::new();
    let mut rkeys: Vec<Eval> = Vec::new();
    let mut residual: Vec<&Expr> = Vec::new();
    let mut window_ends: Option<(usize, usize)> = None;
    for c in parts {
        let Some(((x, l), (y, r))) = equality_pair(c, &ls, &rs) else {
            residual.push(c);
            continue;
        };
        // The columns an equality pairs (for a window join: both windows' ends).
        if let (Some(li), Some(ri)) = (ls.resolve(l), rs.resolve(r)) {
            if left.schema[li].bound == Some(WindowBound::End)
                && right.schema[ri].bound == Some(WindowBound::End)
            {
                window_ends = Some((li, ri));
            }
        }
        let same = x.ty == y.ty
            || (x.ty.is_integer() && y.ty.is_integer())
            || (x.ty.is_timestamp() && y.ty.is_timestamp());
        if !same {
            return Err(err_at(
                r,
                format!("join keys of different types: {} and {}", x.ty, y.ty),
            ));
        }
        lkeys.push(x.eval);
        rkeys.push(y.eval);
    }
    if lkeys.is_empty() {
        return Err(err_at(
            on,
            "unsupported: a join needs an equality between a column of each side in ON",
        ));
    }
    // An interval join: conditions that bound one side's event time by the other's
    // (`l.ts BETWEEN r.ts - INTERVAL .. AND r.ts + INTERVAL ..`, or `>=`/`<=` pairs).
    let mut interval: (Option<i64>, Option<i64>) = (None, None);
    if window_ends.is_none() {
        if let (Some(lt), Some(rt)) = (left.rowtime, right.rowtime) {
            let mut rest = Vec::new();
            for &c in &residual {
                match time_bounds(c, &ls, &rs, lt, rt) {
                    Some(bounds) => {
                        for (lower, ms) in bounds {
                            let slot = if lower {
                                &mut interval.0
                            } else {
                                &mut interval.1
                            };
                            *slot = Some(match (*slot, lower) {
                                (Some(x), true) => x.max(ms),
                                (Some(x), false) => x.min(ms),
                                (None, _) => ms,
                            });
                        }
                    }
                    None => rest.push(c),
                }
            }
            // Only both bounds make an interval join; else the conditions stay checks.
            if interval.0.is_some() && interval.1.is_some() {
                residual = rest;
            } else {
                interval = (None, None);
            }
        }
    }
    let mut schema = left.schema.clone();
    schema.extend(right.schema.iter().cloned());
    if window_ends.is_none() {
        // Rows of a regular or interval join may come after their window ended: the
        // window bounds they carry no longer tell when their window is complete.
        for c in &mut schema {
            c.bound = None;
        }
    } else {
        // A window join's rows come at their window's end; the bounds of a side that
        // an outer join pads with NULLs tell nothing.
        let (l, r) = schema.split_at_mut(arity.0);
        for (side, padded) in [(l, outer.1), (r, outer.0)] {
            if padded {
                side.iter_mut().for_each(|c| c.bound = None);
            }
        }
    }
    let checks = join_checks(&residual, &schema)?;
    let (lk, rk) = (Arc::new(lkeys), Arc::new(rkeys));
    let lkey = move |r: &Row| lk.iter().map(|k| k(r)).collect::<Vec<Value>>();
    let rkey = move |r: &Row| rk.iter().map(|k| k(r)).collect::<Vec<Value>>();
    let (stream, label) = match interval {
        (Some(lower), Some(upper)) => {
            if lower > upper {
                return Err(err_at(
                    on,
                    format!(
                        "the interval join's bounds are empty: the other side's time from {lower} ms to {upper} ms"
                    ),
                ));
            }
            let (lkey2, checks2) = (lkey.clone(), checks.clone());
            // An outer side's rows that met none go with NULLs for the other side's
            // columns once no partner can come (the output stays append-only).
            let (ln, rn) = arity;
            let pad_left: Option<PadFn<Row, Row>> = outer.0.then(|| {
                Arc::new(move |l: &Row, out: &mut Vec<Row>| {
                    out.push(padded(l, rn, false, RowKind::Insert))
                }) as PadFn<Row, Row>
            });
            let pad_right: Option<PadFn<Row, Row>> = outer.1.then(|| {
                Arc::new(move |r: &Row, out: &mut Vec<Row>| {
                    out.push(padded(r, ln, true, RowKind::Insert))
                }) as PadFn<Row, Row>
            });
            let stream = left
                .stream
                .key_by(lkey)
                .interval_join(&right.stream.key_by(rkey))
                .between(
                    lower.saturating_mul(1_000_000),
                    upper.saturating_mul(1_000_000),
                )
                .process_outer(
                    move |l: &Row, r: &Row, out: &mut Vec<Row>| {
                        // NULL equals nothing: such a row joins no row.
                        if lkey2(l).iter().any(Value::is_null) {
                            return false;
                        }
                        match joined_row(l, r, &checks2) {
                            Some(row) => {
                                out.push(row);
                                true
                            }
                            None => false,
                        }
                    },
                    pad_left,
                    pad_right,
                )
                .name("IntervalJoin");
            (
                stream,
                format!(
                    "IntervalJoin(joinType=[{}], windowBounds=[rightTime - leftTime in [{lower} ms, {upper} ms]], where=[{on}])",
                    join_type(outer)
                ),
            )
        }
        _ => {
            let stream = left
                .stream
                .connect(&right.stream)
                .key_by(lkey, rkey)
                .process(RegularJoin {
                    checks,
                    ends: window_ends,
                    outer,
                    arity,
                })
                .name(if window_ends.is_some() {
                    "WindowJoin"
                } else {
                    "Join"
                });
            let kind = join_type(outer);
            let label = if window_ends.is_some() {
                format!("WindowJoin(joinType=[{kind}], where=[{on}])")
            } else {
                format!("Join(joinType=[{kind}], where=[{on}])")
            };
            (stream, label)
        }
    };
    Ok(Rel {
        stream,
        schema,
        rowtime: None,
        // An outer regular join retracts a padded row when its partner comes; an outer
        // interval or window join pads a row only once no partner can come.
        append_only: outer == (false, false) || interval.0.is_some() || window_ends.is_some(),
        plan: PlanNode::new(label, vec![left.plan, right.plan]),
        window: None,
        calc: None,
    })
}

/// The join type as Flink's plans name it.
fn join_type(outer: (bool, bool)) -> &'static str {
    match outer {
        (false, false) => "InnerJoin",
        (true, false) => "LeftOuterJoin",
        (false, true) => "RightOuterJoin",
        (true, true) => "FullOuterJoin",
    }
}

/// One side of a join key: compiled, and its expression.
type Side<'e> = (Compiled, &'e Expr);

/// An equality `a = b` of an ON condition between an expression over the left side
/// and one over the right (either way round): each compiled, with its expression.
fn equality_pair<'e>(c: &'e Expr, ls: &Scope<'_>, rs: &Scope<'_>) -> Option<(Side<'e>, Side<'e>)> {
    let Expr::BinaryOp {
        left: a,
        op: sqlparser::ast::BinaryOperator::Eq,
        right: b,
    } = c
    else {
        return None;
    };
    let (a, b) = (a.as_ref(), b.as_ref());
    match (expr::compile(a, ls), expr::compile(b, rs)) {
        (Ok(x), Ok(y)) => Some(((x, a), (y, b))),
        _ => match (expr::compile(b, ls), expr::compile(a, rs)) {
            (Ok(x), Ok(y)) => Some(((x, b), (y, a))),
            _ => None,
        },
    }
}

/// A join's other conditions, over its joined rows (`schema`), compiled.
fn join_checks(residual: &[&Expr], schema: &[Column]) -> Result<Arc<Vec<Eval>>, SqlError> {
    let joined = Scope {
        qualified: true,
        ..Scope::new(schema)
    };
    let mut checks = Vec::new();
    for r in residual {
        let c = expr::compile(r, &joined)?;
        if !matches!(c.ty, DataType::Boolean | DataType::Null) {
            return Err(err_at(
                *r,
                format!("a join condition is a BOOLEAN, not {}", c.ty),
            ));
        }
        checks.push(c.eval);
    }
    Ok(Arc::new(checks))
}

/// The time bounds a join condition puts on `r.ts - l.ts` (ms; `true`: a lower
/// bound), when it compares the two sides' event times (`lt`, `rt`), each plus or
/// minus an interval; `None` when it is not such a condition.
fn time_bounds(
    c: &Expr,
    ls: &Scope<'_>,
    rs: &Scope<'_>,
    lt: usize,
    rt: usize,
) -> Option<Vec<(bool, i64)>> {
    use sqlparser::ast::BinaryOperator as B;
    // `side.ts + offset`: (whether it is the right side, the offset in ms).
    fn term(e: &Expr, ls: &Scope<'_>, rs: &Scope<'_>, lt: usize, rt: usize) -> Option<(bool, i64)> {
        match e {
            Expr::Nested(x) => term(x, ls, rs, lt, rt),
            Expr::BinaryOp {
                left,
                op: op @ (B::Plus | B::Minus),
                right,
            } => {
                let Expr::Interval(iv) = right.as_ref() else {
                    return None;
                };
                let ms = expr::interval_ms(iv, right).ok()?;
                let (side, o) = term(left, ls, rs, lt, rt)?;
                Some((side, if *op == B::Plus { o + ms } else { o - ms }))
            }
            _ => match (ls.resolve(e) == Some(lt), rs.resolve(e) == Some(rt)) {
                (true, false) => Some((false, 0)),
                (false, true) => Some((true, 0)),
                _ => None,
            },
        }
    }
    // `a op b` as bounds on d = r.ts - l.ts.
    let compare = |a: &Expr, op: &B, b: &Expr| -> Option<(bool, i64)> {
        let ((ra, oa), (rb, ob)) = (term(a, ls, rs, lt, rt)?, term(b, ls, rs, lt, rt)?);
        if ra == rb {
            return None;
        }
        // With a on the right: r + oa op l + ob, i.e. d op ob - oa; else the mirror.
        let (op, v) = if ra {
            (op.clone(), ob - oa)
        } else {
            let flipped = match op {
                B::Gt => B::Lt,
                B::GtEq => B::LtEq,
                B::Lt => B::Gt,
                B::LtEq => B::GtEq,
                other => other.clone(),
            };
            (flipped, oa - ob)
        };
        match op {
            B::GtEq => Some((true, v)),
            B::Gt => Some((true, v + 1)),
            B::LtEq => Some((false, v)),
            B::Lt => Some((false, v - 1)),
            _ => None,
        }
    };
    match c {
        Expr::Nested(x) => time_bounds(x, ls, rs, lt, rt),
        Expr::BinaryOp { left, op, right } if matches!(op, B::Gt | B::GtEq | B::Lt | B::LtEq) => {
            compare(left, op, right).map(|b| vec![b])
        }
        Expr::Between {
            expr,
            negated: false,
            low,
            high,
        } => Some(vec![
            compare(expr, &B::GtEq, low)?,
            compare(expr, &B::LtEq, high)?,
        ]),
        _ => None,
    }
}

/// `l` and `r` as one row, if the join's other conditions hold for it.
fn joined_row(l: &Row, r: &Row, checks: &[Eval]) -> Option<Row> {
    let mut values = Vec::with_capacity(l.values.len() + r.values.len());
    values.extend(l.values.iter().cloned());
    values.extend(r.values.iter().cloned());
    let row = Row::insert(values);
    checks
        .iter()
        .all(|c| c(&row) == Value::Bool(true))
        .then_some(row)
}

/// `stream` with its rows' event time from column `rowtime`, if there is one.
fn stamped(stream: DataStream<Row>, rowtime: Option<usize>) -> DataStream<Row> {
    match rowtime {
        Some(t) => stream.with_event_time(move |r: &Row| ts_ns(r.get(t))),
        None => stream,
    }
}

/// An integer literal's value.
fn int_literal(e: &Expr) -> Option<i64> {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => n.parse::<i64>().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// How `a` and `b` compare by ORDER BY keys (and whether each is descending); NULLs
/// last, whichever the direction.
fn order_cmp(order: &[(Eval, bool)], a: &Row, b: &Row) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for (key, desc) in order {
        let (x, y) = (key(a), key(b));
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {
                let o = x.sql_cmp(&y).unwrap_or(Ordering::Equal);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

/// The Top-N operator: per partition, its first `n` rows by `order`.
#[derive(Clone)]
struct TopN {
    n: usize,
    /// Order keys, and whether each is descending.
    order: Arc<Vec<(Eval, bool)>>,
    /// Where the rank column goes in an output row (`None`: no rank column, as for
    /// `ORDER BY ... LIMIT n`).
    rank_at: Option<usize>,
}

/// Per partition: its top rows, in order (keyed state: checkpoints write it).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TopNState {
    rows: Vec<Row>,
}

impl TopN {
    /// Whether `a` comes before `b`. Ties keep arrival order (a later row goes after).
    fn before(&self, a: &Row, b: &Row) -> bool {
        order_cmp(&self.order, a, b).is_lt()
    }

    fn ranked(&self, r: &Row, rank: usize, kind: RowKind) -> Row {
        let mut values = r.values.clone();
        if let Some(at) = self.rank_at {
            values.insert(at.min(values.len()), Value::Int(rank as i64));
        }
        Row { kind, values }
    }
}

impl KeyedProcessFunction for TopN {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = TopNState;

    fn process_element(
        &mut self,
        value: Row,
        state: &mut TopNState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        let pos = state
            .rows
            .iter()
            .position(|r| self.before(&value, r))
            .unwrap_or(state.rows.len());
        if pos >= self.n {
            return;
        }
        state.rows.insert(pos, value);
        let evicted = if state.rows.len() > self.n {
            state.rows.pop()
        } else {
            None
        };
        if self.n == 1 {
            // Deduplication: the kept row replaced.
            if let Some(old) = &evicted {
                ctx.collect(self.ranked(old, 1, RowKind::UpdateBefore));
                ctx.collect(self.ranked(&state.rows[0], 1, RowKind::UpdateAfter));
            } else {
                ctx.collect(self.ranked(&state.rows[0], 1, RowKind::Insert));
            }
            return;
        }
        if let Some(old) = &evicted {
            ctx.collect(self.ranked(old, self.n, RowKind::Delete));
        }
        // Rows after the new one moved down a rank (the evicted one is gone), from
        // the last up, so that a consumer keyed by rank finds each rank free.
        // Without a rank column they are unchanged.
        let last = if self.rank_at.is_some() {
            state.rows.len()
        } else {
            0
        };
        for k in (pos + 1..last).rev() {
            let r = &state.rows[k];
            ctx.collect(self.ranked(r, k, RowKind::UpdateBefore));
            ctx.collect(self.ranked(r, k + 1, RowKind::UpdateAfter));
        }
        ctx.collect(self.ranked(&state.rows[pos], pos + 1, RowKind::Insert));
    }
}

/// The regular join's operator; as a window join (`ends`: where each side's rows hold
/// their window's end, which the key includes), a key's rows are dropped when the
/// watermark passes the window's end, and an outer side's rows that met none go with
/// NULLs then (append-only, as Flink's window outer join).
#[derive(Clone)]
struct RegularJoin {
    /// Conditions of ON besides the key equalities, over the joined row.
    checks: Arc<Vec<Eval>>,
    ends: Option<(usize, usize)>,
    /// Whether the left and the right side keep their unmatched rows.
    outer: (bool, bool),
    /// Columns of each side (for the NULLs of an unmatched row's other side).
    arity: (usize, usize),
}

/// Per key: the rows of each side so far, and (for outer joins) how many partners
/// each has (keyed state: checkpoints write it).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct JoinState {
    left: Vec<Row>,
    right: Vec<Row>,
    left_matches: Vec<u32>,
    right_matches: Vec<u32>,
}

/// `row` with NULLs for the other side's `n` columns (after it, or before it).
fn padded(row: &Row, n: usize, before: bool, kind: RowKind) -> Row {
    let mut values = Vec::with_capacity(row.values.len() + n);
    if before {
        values.extend(std::iter::repeat_n(Value::Null, n));
        values.extend(row.values.iter().cloned());
    } else {
        values.extend(row.values.iter().cloned());
        values.extend(std::iter::repeat_n(Value::Null, n));
    }
    Row { kind, values }
}

impl RegularJoin {
    /// A window join's first row of a key: its state goes at the window's end.
    fn expire(
        &self,
        state: &JoinState,
        row: &Row,
        end_col: usize,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if state.left.is_empty() && state.right.is_empty() {
            ctx.register_event_time_timer(ts_ns(row.get(end_col)).saturating_sub(1));
        }
    }
}

impl spate_dataplane::operator::keyed::KeyedCoProcessFunction for RegularJoin {
    type Key = Vec<Value>;
    type In1 = Row;
    type In2 = Row;
    type Out = Row;
    type State = JoinState;

    fn process_element1(
        &mut self,
        value: Row,
        state: &mut JoinState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        // NULL equals nothing: such a row joins no row (an outer side keeps it).
        if ctx.current_key().iter().any(Value::is_null) {
            if self.outer.0 {
                ctx.collect(padded(&value, self.arity.1, false, RowKind::Insert));
            }
            return;
        }
        if let Some((l, _)) = self.ends {
            self.expire(state, &value, l, ctx);
        }
        // (A window join pads its unmatched rows at the window's end instead.)
        let eager = self.ends.is_none();
        let mut matches = 0u32;
        for (k, r) in state.right.iter().enumerate() {
            if let Some(row) = joined_row(&value, r, &self.checks) {
                if eager && self.outer.1 && state.right_matches.get(k) == Some(&0) {
                    // The right row had no partner: its NULL-padded row goes.
                    ctx.collect(padded(r, self.arity.0, true, RowKind::Delete));
                }
                if let Some(m) = state.right_matches.get_mut(k) {
                    *m += 1;
                }
                matches += 1;
                ctx.collect(row);
            }
        }
        if eager && self.outer.0 && matches == 0 {
            ctx.collect(padded(&value, self.arity.1, false, RowKind::Insert));
        }
        state.left.push(value);
        if self.outer != (false, false) {
            state.left_matches.push(matches);
        }
    }

    fn process_element2(
        &mut self,
        value: Row,
        state: &mut JoinState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if ctx.current_key().iter().any(Value::is_null) {
            if self.outer.1 {
                ctx.collect(padded(&value, self.arity.0, true, RowKind::Insert));
            }
            return;
        }
        if let Some((_, r)) = self.ends {
            self.expire(state, &value, r, ctx);
        }
        let eager = self.ends.is_none();
        let mut matches = 0u32;
        for (k, l) in state.left.iter().enumerate() {
            if let Some(row) = joined_row(l, &value, &self.checks) {
                if eager && self.outer.0 && state.left_matches.get(k) == Some(&0) {
                    ctx.collect(padded(l, self.arity.1, false, RowKind::Delete));
                }
                if let Some(m) = state.left_matches.get_mut(k) {
                    *m += 1;
                }
                matches += 1;
                ctx.collect(row);
            }
        }
        if eager && self.outer.1 && matches == 0 {
            ctx.collect(padded(&value, self.arity.0, true, RowKind::Insert));
        }
        state.right.push(value);
        if self.outer != (false, false) {
            state.right_matches.push(matches);
        }
    }

    fn on_timer(&mut self, _: u64, state: &mut JoinState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        // A window's end: an outer side's rows that met none go with NULLs.
        if self.outer.0 {
            for (l, m) in state.left.iter().zip(&state.left_matches) {
                if *m == 0 {
                    ctx.collect(padded(l, self.arity.1, false, RowKind::Insert));
                }
            }
        }
        if self.outer.1 {
            for (r, m) in state.right.iter().zip(&state.right_matches) {
                if *m == 0 {
                    ctx.collect(padded(r, self.arity.0, true, RowKind::Insert));
                }
            }
        }
        ctx.clear_state();
    }
}

/// Calls `f` with each operand of `e` that the planner looks into (function
/// arguments, operands of operators, CASE, BETWEEN, IN lists, LIKE).
fn for_each_operand<'e>(e: &'e Expr, mut f: impl FnMut(&'e Expr)) {
    match e {
        Expr::Function(func) => {
            if let FunctionArguments::List(l) = &func.args {
                for a in &l.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a {
                        f(x);
                    }
                }
            }
        }
        Expr::BinaryOp { left, right, .. } => {
            f(left);
            f(right);
        }
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. }
        | Expr::IsNull(expr)
        | Expr::IsNotNull(expr)
        | Expr::IsTrue(expr)
        | Expr::IsFalse(expr) => f(expr),
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            if let Some(o) = operand {
                f(o);
            }
            for c in conditions {
                f(&c.condition);
                f(&c.result);
            }
            if let Some(x) = else_result {
                f(x);
            }
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            f(expr);
            f(low);
            f(high);
        }
        Expr::In {
            expr,
            target: sqlparser::ast::InTarget::List(list),
            ..
        } => {
            f(expr);
            list.iter().for_each(f);
        }
        Expr::Like { expr, pattern, .. } => {
            f(expr);
            f(pattern);
        }
        _ => {}
    }
}

/// The column names an expression refers to.
fn column_names(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Identifier(i) => out.push(i.value.clone()),
        Expr::CompoundIdentifier(p) => out.extend(p.last().map(|i| i.value.clone())),
        other => for_each_operand(other, |x| column_names(x, out)),
    }
}

/// The aggregate calls in `e` (not inside another aggregate).
fn collect_aggregates<'e>(e: &'e Expr, out: &mut Vec<&'e sqlparser::ast::Function>) {
    match e {
        Expr::Function(f)
            if f.over.is_none() && AGGREGATES.contains(&expr::function_name(f).as_str()) =>
        {
            out.push(f)
        }
        other => for_each_operand(other, |x| collect_aggregates(x, out)),
    }
}

/// The aggregate calls with OVER in `e`.
fn collect_over<'e>(e: &'e Expr, out: &mut Vec<&'e sqlparser::ast::Function>) {
    match e {
        Expr::Function(f)
            if f.over.is_some() && AGGREGATES.contains(&expr::function_name(f).as_str()) =>
        {
            out.push(f)
        }
        other => for_each_operand(other, |x| collect_over(x, out)),
    }
}

/// A projected expression's name when it has no alias: a column keeps its name,
/// anything else is `EXPR$n` (as Flink names them).
fn output_name(e: &Expr, n: usize) -> String {
    match e {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
        Expr::Nested(x) => output_name(x, n),
        _ => format!("EXPR${n}"),
    }
}

fn describe_columns(cols: &[Column]) -> String {
    cols.iter()
        .map(|c| format!("{} {}", c.name, c.ty))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Rel {
    /// Applies a pending window table function without aggregating it: each row once
    /// per window it falls in, with the window's columns appended.
    fn materialize(self) -> Result<Rel, SqlError> {
        let this = self.flush();
        let Some(tvf) = this.window.clone() else {
            return Ok(this);
        };
        let s = this;
        if matches!(tvf.kind, WindowKind::Session { .. }) {
            return Err(SqlError::new(
                "unsupported: SESSION windows without an aggregate (spate runs them in a window aggregate: GROUP BY window_start, window_end)",
            ));
        }
        let t = tvf.time_col;
        let assigner = tvf.assigner().map_err(SqlError::new)?;
        let stream = s
            .stream
            .flat_map(
                move |r: Row, out: &mut spate_dataplane::operator::Collector<'_, '_, Row>| {
                    let ts = ts_ns(r.get(t));
                    let mut windows: smallvec_like::Windows = Default::default();
                    assigner.assign(ts, |w| windows.push(w));
                    for w in windows.iter().rev() {
                        let mut row = r.clone();
                        row.values.push(ms(w.start));
                        row.values.push(ms(w.end));
                        row.values.push(ms(w.end.saturating_sub(1_000_000)));
                        out.collect(row);
                    }
                },
            )
            .name("WindowTableFunction");
        let stream = stamped(stream, s.rowtime);
        Ok(Rel {
            stream,
            window: None,
            ..s
        })
    }

    /// Applies the pending calculation: one operator that filters the input rows and
    /// projects those that pass.
    pub(crate) fn flush(self) -> Rel {
        let Some(calc) = self.calc else {
            return self;
        };
        let filters = calc.filters;
        let mut stream = match calc.project {
            None => {
                let all = filters.clone();
                self.stream
                    .filter(move |r: &Row| all.iter().all(|f| f(r) == Value::Bool(true)))
                    .name("Calc")
            }
            Some(project) => {
                let projection = match calc
                    .refs
                    .as_deref()
                    .filter(|r| r.len() == project.len())
                    .and_then(|r| r.iter().copied().collect::<Option<Vec<usize>>>())
                {
                    // Every column a plain copy of an input column: each value moves
                    // out of the input row at its last use (cloned before that), with
                    // no expression called and no reference count touched.
                    Some(refs) => Projection::Moves(
                        refs.iter()
                            .enumerate()
                            .map(|(k, &i)| (i, !refs[k + 1..].contains(&i)))
                            .collect(),
                    ),
                    None => Projection::Evals(project),
                };
                let mut scratch = Vec::new();
                self.stream
                    .flat_map(
                        move |mut r: Row,
                              out: &mut spate_dataplane::operator::Collector<'_, '_, Row>| {
                            if filters.iter().all(|f| f(&r) == Value::Bool(true)) {
                                projection.apply(&mut r, &mut scratch);
                                out.collect(r);
                            }
                        },
                    )
                    .name("Calc")
            }
        };
        if let Some(t) = self.rowtime {
            stream = stream.with_event_time(move |r: &Row| ts_ns(r.get(t)));
        }
        Rel {
            stream,
            calc: None,
            ..self
        }
    }

    /// Keeps the rows for which `predicate` is true.
    fn filter(self, predicate: &Expr) -> Result<Rel, SqlError> {
        // Over a pending window, WHERE sees only the input's own columns.
        let cols = if self.window.is_some() {
            &self.schema[..self.schema.len() - 3]
        } else {
            &self.schema[..]
        };
        let bindings = self.calc.as_ref().and_then(|c| c.project.clone());
        let scope = Scope {
            bindings: bindings.as_deref().map(|b| &b[..]),
            ..Scope::new(cols)
        };
        let c = expr::compile(predicate, &scope)?;
        if !matches!(c.ty, DataType::Boolean | DataType::Null) {
            return Err(err_at(
                predicate,
                format!("WHERE must be a BOOLEAN, not {}", c.ty),
            ));
        }
        let mut calc = self.calc.clone().unwrap_or_default();
        calc.filters.push(c.eval);
        Ok(Rel {
            plan: PlanNode::new(
                format!("Calc(where=[{predicate}])"),
                vec![self.plan.clone()],
            ),
            calc: Some(calc),
            ..self
        })
    }

    /// `SELECT items` over this relation's columns.
    fn project(self, items: &[SelectItem]) -> Result<Rel, SqlError> {
        let bindings = self.calc.as_ref().and_then(|c| c.project.clone());
        let scope = Scope {
            bindings: bindings.as_deref().map(|b| &b[..]),
            ..Scope::new(&self.schema)
        };
        let binding = |i: usize| -> Eval {
            match bindings.as_deref().and_then(|b| b.get(i)) {
                Some(e) => e.clone(),
                None => Arc::new(move |r: &Row| r.get(i).clone()),
            }
        };
        // Which input column column `i` of this relation copies, if it is a copy.
        let prior_refs = self.calc.as_ref().and_then(|c| c.refs.clone());
        let binding_ref = |i: usize| -> Option<usize> {
            match (&bindings, &prior_refs) {
                (None, _) => Some(i),
                (Some(_), Some(r)) => r.get(i).copied().flatten(),
                (Some(_), None) => None,
            }
        };
        let mut refs: Vec<Option<usize>> = Vec::new();
        let mut evals: Vec<Eval> = Vec::new();
        let mut schema = Vec::new();
        let mut rowtime = None;
        let mut identity = true;
        for item in items {
            match item {
                SelectItem::QualifiedWildcard(kind, _) => {
                    // `q.*`: the columns of the FROM item `q` (of a join), by their
                    // own names.
                    // (`kind` shows as `q.*`.)
                    let q = format!("{kind}").trim_end_matches('*').to_ascii_lowercase();
                    let before = schema.len();
                    for (i, c) in self.schema.iter().enumerate() {
                        if !c.name.to_ascii_lowercase().starts_with(&q) {
                            continue;
                        }
                        if self.rowtime == Some(i) {
                            rowtime = Some(schema.len());
                        }
                        identity = false;
                        let mut c = c.clone();
                        c.name = c.name[q.len()..].to_string();
                        schema.push(c);
                        evals.push(binding(i));
                        refs.push(binding_ref(i));
                    }
                    if schema.len() == before
                        && self.schema.iter().any(|c| {
                            c.name.contains('.') && !c.name.to_ascii_lowercase().starts_with(&q)
                        })
                        && self.schema.iter().all(|c| c.name.contains('.'))
                    {
                        return Err(err_at(item, format!("{kind} names no table of FROM")));
                    }
                    if schema.len() == before {
                        // The only FROM item's alias (its columns are not qualified).
                        for (i, c) in self.schema.iter().enumerate() {
                            if self.rowtime == Some(i) {
                                rowtime = Some(schema.len());
                            }
                            identity &= schema.len() == i;
                            schema.push(c.clone());
                            evals.push(binding(i));
                            refs.push(binding_ref(i));
                        }
                    }
                }
                SelectItem::Wildcard(_) => {
                    for (i, c) in self.schema.iter().enumerate() {
                        if self.rowtime == Some(i) {
                            rowtime = Some(schema.len());
                        }
                        identity &= schema.len() == i;
                        schema.push(c.clone());
                        evals.push(binding(i));
                        refs.push(binding_ref(i));
                    }
                }
                SelectItem::ExprWithAliases { expr: e, .. } => {
                    return Err(err_at(e, "unsupported: several aliases for one expression"));
                }
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    let alias = match item {
                        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                        _ => None,
                    };
                    let c = expr::compile(e, &scope)?;
                    let col = scope.resolve(e);
                    if col.is_some() && col == self.rowtime {
                        rowtime = Some(schema.len());
                    }
                    identity &= col == Some(schema.len());
                    let name = alias.unwrap_or_else(|| output_name(e, schema.len()));
                    let source = col.and_then(|i| self.schema.get(i));
                    let proctime = expr::is_proctime_call(e) || source.is_some_and(|c| c.proctime);
                    schema.push(if proctime {
                        Column::proctime(name)
                    } else {
                        Column::new(name, c.ty).with_bound(source.and_then(|c| c.bound))
                    });
                    evals.push(c.eval);
                    refs.push(col.and_then(binding_ref));
                }
            }
        }
        if identity && schema.len() == self.schema.len() {
            return Ok(Rel { schema, ..self });
        }
        let mut calc = self.calc.clone().unwrap_or_default();
        calc.project = Some(Arc::new(evals));
        calc.refs = Some(Arc::new(refs));
        let label = format!(
            "Calc(select=[{}])",
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Rel {
            stream: self.stream,
            schema,
            rowtime,
            append_only: self.append_only,
            plan: PlanNode::new(label, vec![self.plan]),
            window: None,
            calc: Some(calc),
        })
    }
}

mod smallvec_like {
    /// The windows of one record (a sliding window's count is small): a fixed array
    /// before it spills to the heap.
    #[derive(Default)]
    pub struct Windows {
        inline: [Option<spate_dataplane::operator::window::Window>; 8],
        n: usize,
        more: Vec<spate_dataplane::operator::window::Window>,
    }
    impl Windows {
        pub fn push(&mut self, w: spate_dataplane::operator::window::Window) {
            if self.n < self.inline.len() {
                self.inline[self.n] = Some(w);
                self.n += 1;
            } else {
                self.more.push(w);
            }
        }
        pub fn iter(
            &self,
        ) -> impl DoubleEndedIterator<Item = &spate_dataplane::operator::window::Window> {
            self.inline[..self.n]
                .iter()
                .flatten()
                .chain(self.more.iter())
        }
    }
}

// ---------------------------------------------------------------------------------
// Aggregates

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// One aggregate call, compiled.
#[derive(Clone)]
struct AggCall {
    kind: AggKind,
    /// `None` for `COUNT(*)`.
    arg: Option<Eval>,
    filter: Option<Eval>,
    distinct: bool,
    /// Sums and averages in floating point.
    double: bool,
    /// The input retracts rows (a changelog): MIN, MAX and DISTINCT keep counts of
    /// their values, so that a retracted value leaves.
    retracting: bool,
    out_ty: DataType,
    text: String,
}

impl AggCall {
    fn compile(f: &sqlparser::ast::Function, cols: &[Column]) -> Result<Self, SqlError> {
        let name = expr::function_name(f);
        let kind = match name.as_str() {
            "COUNT" => AggKind::Count,
            "SUM" => AggKind::Sum,
            "MIN" => AggKind::Min,
            "MAX" => AggKind::Max,
            "AVG" => AggKind::Avg,
            _ => return Err(err_at(&f.name, format!("unknown aggregate {name}"))),
        };
        if f.over.is_some() {
            return Err(err_at(
                &f.name,
                format!("unsupported: {name}(...) OVER (...) (OVER aggregates are open work)"),
            ));
        }
        let distinct = matches!(
            &f.args,
            FunctionArguments::List(l)
                if matches!(l.duplicate_treatment, Some(sqlparser::ast::DuplicateTreatment::Distinct))
        );
        let args = expr::function_args(f)?;
        let scope = Scope::new(cols);
        let arg = match args.as_slice() {
            [None] if kind == AggKind::Count && !distinct => None,
            [Some(a)] => {
                let mut inner = Vec::new();
                collect_aggregates(a, &mut inner);
                if let Some(x) = inner.first() {
                    return Err(err_at(*x, "aggregate calls cannot nest"));
                }
                Some(expr::compile(a, &scope)?)
            }
            _ => return Err(err_at(&f.name, format!("{name} takes one argument"))),
        };
        let in_ty = arg.as_ref().map_or(DataType::BigInt, |c| c.ty);
        if matches!(kind, AggKind::Sum | AggKind::Avg)
            && !in_ty.is_numeric()
            && in_ty != DataType::Null
        {
            return Err(err_at(
                f,
                format!("{name} takes a numeric argument, not {in_ty}"),
            ));
        }
        let out_ty = match kind {
            AggKind::Count => DataType::BigInt,
            _ => in_ty,
        };
        let filter = match &f.filter {
            Some(x) => {
                let c = expr::compile(x, &scope)?;
                if !matches!(c.ty, DataType::Boolean | DataType::Null) {
                    return Err(err_at(x.as_ref(), "FILTER (WHERE ...) must be a BOOLEAN"));
                }
                Some(c.eval)
            }
            None => None,
        };
        Ok(Self {
            kind,
            arg: arg.map(|c| c.eval),
            filter,
            distinct,
            double: matches!(in_ty, DataType::Float | DataType::Double),
            retracting: false,
            out_ty,
            text: Expr::Function(f.clone()).to_string(),
        })
    }

    /// The same call without DISTINCT and FILTER (what a DISTINCT call feeds its new
    /// values to).
    fn plain(&self) -> AggCall {
        AggCall {
            distinct: false,
            filter: None,
            ..self.clone()
        }
    }

    fn fresh(&self) -> Acc {
        if self.distinct {
            if self.retracting {
                return Acc::DistinctCounted {
                    counts: HashMap::new(),
                    inner: Box::new(self.plain().fresh()),
                };
            }
            return Acc::Distinct {
                seen: HashSet::new(),
                inner: Box::new(self.plain().fresh()),
            };
        }
        match self.kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Sum | AggKind::Avg => Acc::Sum {
                int: 0,
                double: 0.0,
                n: 0,
            },
            AggKind::Min | AggKind::Max if self.retracting => Acc::Counted {
                counts: HashMap::new(),
                best: Value::Null,
            },
            AggKind::Min | AggKind::Max => Acc::Best(Value::Null),
        }
    }

    /// Adds a row's value (nothing if the filter rejects it or the value is NULL).
    fn add(&self, row: &Row, acc: &mut Acc) {
        if let Some(v) = self.value_of(row) {
            self.add_value(v, acc);
        }
    }

    /// Takes a retracted row's value back out.
    fn retract(&self, row: &Row, acc: &mut Acc) {
        if let Some(v) = self.value_of(row) {
            self.retract_value(v, acc);
        }
    }

    /// The value a row gives the call (`None`: filtered out, or NULL).
    fn value_of(&self, row: &Row) -> Option<Value> {
        if let Some(f) = &self.filter {
            if f(row) != Value::Bool(true) {
                return None;
            }
        }
        let v = match &self.arg {
            None => Value::Int(1),
            Some(a) => a(row),
        };
        (!v.is_null()).then_some(v)
    }

    /// Whether `v` should replace `best` (MIN or MAX).
    fn better(&self, v: &Value, best: &Value) -> bool {
        match v.sql_cmp(best) {
            _ if best.is_null() => true,
            Some(o) => {
                (self.kind == AggKind::Min && o.is_lt()) || (self.kind == AggKind::Max && o.is_gt())
            }
            None => false,
        }
    }

    fn add_value(&self, v: Value, acc: &mut Acc) {
        match acc {
            Acc::Count(n) => *n += 1,
            Acc::Sum { int, double, n } => {
                match v {
                    Value::Int(i) => {
                        *int = int.wrapping_add(i);
                        *double += i as f64;
                    }
                    Value::Double(d) => *double += d,
                    _ => return,
                }
                *n += 1;
            }
            Acc::Best(b) => {
                if self.better(&v, b) {
                    *b = v;
                }
            }
            Acc::Counted { counts, best } => {
                if self.better(&v, best) {
                    *best = v.clone();
                }
                *counts.entry(v).or_insert(0) += 1;
            }
            Acc::Distinct { seen, inner } => {
                if !seen.contains(&v) {
                    seen.insert(v.clone());
                    self.plain().add_value(v, inner);
                }
            }
            Acc::DistinctCounted { counts, inner } => {
                let n = counts.entry(v.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.plain().add_value(v, inner);
                }
            }
        }
    }

    fn retract_value(&self, v: Value, acc: &mut Acc) {
        match acc {
            Acc::Count(n) => *n -= 1,
            Acc::Sum { int, double, n } => {
                match v {
                    Value::Int(i) => {
                        *int = int.wrapping_sub(i);
                        *double -= i as f64;
                    }
                    Value::Double(d) => *double -= d,
                    _ => return,
                }
                *n -= 1;
            }
            // Only a retracting call's accumulators see retractions.
            Acc::Best(_) | Acc::Distinct { .. } => {}
            Acc::Counted { counts, best } => {
                let gone = match counts.get_mut(&v) {
                    Some(n) => {
                        *n -= 1;
                        *n <= 0
                    }
                    None => false,
                };
                if gone {
                    counts.remove(&v);
                    if v == *best {
                        // The best left: the next best of what is still counted.
                        *best = Value::Null;
                        for k in counts.keys() {
                            if self.better(k, best) {
                                *best = k.clone();
                            }
                        }
                    }
                }
            }
            Acc::DistinctCounted { counts, inner } => {
                let gone = match counts.get_mut(&v) {
                    Some(n) => {
                        *n -= 1;
                        *n <= 0
                    }
                    None => false,
                };
                if gone {
                    counts.remove(&v);
                    self.plain().retract_value(v, inner);
                }
            }
        }
    }

    fn result(&self, acc: &Acc) -> Value {
        match acc {
            Acc::Count(n) => Value::Int(*n),
            Acc::Sum { int, double, n } => {
                if *n == 0 {
                    return Value::Null;
                }
                match (self.kind, self.double) {
                    (AggKind::Sum, true) => Value::Double(*double),
                    (AggKind::Sum, false) => Value::Int(*int),
                    (_, true) => Value::Double(*double / *n as f64),
                    // Flink's AVG of an integer type is of that type (it truncates).
                    (_, false) => Value::Int(*int / *n),
                }
            }
            Acc::Best(b) | Acc::Counted { best: b, .. } => b.clone(),
            Acc::Distinct { inner, .. } | Acc::DistinctCounted { inner, .. } => {
                self.plain().result(inner)
            }
        }
    }
}

/// An aggregate's accumulator (part of keyed state: checkpoints write it).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Acc {
    /// `COUNT`.
    Count(i64),
    /// `SUM` and `AVG`: integer and floating sums and the count of values.
    Sum {
        /// Integer sum.
        int: i64,
        /// Floating sum.
        double: f64,
        /// Values added.
        n: i64,
    },
    /// `MIN` or `MAX` so far.
    Best(Value),
    /// A `DISTINCT` aggregate: the values seen, and the aggregate of each once.
    Distinct {
        /// The distinct values.
        seen: HashSet<Value>,
        /// The plain aggregate over them.
        inner: Box<Acc>,
    },
    /// `MIN` or `MAX` of a changelog: how often each value is in, and the best.
    Counted {
        /// Each value's count.
        counts: HashMap<Value, i64>,
        /// The best of them.
        best: Value,
    },
    /// A `DISTINCT` aggregate of a changelog: how often each value is in.
    DistinctCounted {
        /// Each value's count.
        counts: HashMap<Value, i64>,
        /// The plain aggregate over the values counted.
        inner: Box<Acc>,
    },
}

fn merge(call: &AggCall, a: Acc, b: Acc) -> Acc {
    match (a, b) {
        (Acc::Count(x), Acc::Count(y)) => Acc::Count(x + y),
        (
            Acc::Sum {
                int: i1,
                double: d1,
                n: n1,
            },
            Acc::Sum {
                int: i2,
                double: d2,
                n: n2,
            },
        ) => Acc::Sum {
            int: i1.wrapping_add(i2),
            double: d1 + d2,
            n: n1 + n2,
        },
        (Acc::Best(x), Acc::Best(y)) => {
            let mut acc = Acc::Best(x);
            if !y.is_null() {
                call.add_value(y, &mut acc);
            }
            acc
        }
        (Acc::Distinct { seen: mut x, .. }, Acc::Distinct { seen: y, .. }) => {
            x.extend(y);
            let plain = call.plain();
            let mut inner = plain.fresh();
            for v in &x {
                plain.add_value(v.clone(), &mut inner);
            }
            Acc::Distinct {
                seen: x,
                inner: Box::new(inner),
            }
        }
        (a, _) => a,
    }
}

/// The window aggregate: every call's accumulator per key and window.
#[derive(Clone)]
struct SqlAggregate {
    calls: Arc<Vec<AggCall>>,
}

impl AggregateFunction for SqlAggregate {
    type In = Row;
    type Acc = Vec<Acc>;
    type Out = Vec<Value>;

    fn create_accumulator(&self) -> Vec<Acc> {
        self.calls.iter().map(AggCall::fresh).collect()
    }

    fn add(&self, value: &Row, acc: &mut Vec<Acc>) {
        for (c, a) in self.calls.iter().zip(acc.iter_mut()) {
            c.add(value, a);
        }
    }

    fn get_result(&self, acc: &Vec<Acc>) -> Vec<Value> {
        self.calls
            .iter()
            .zip(acc)
            .map(|(c, a)| c.result(a))
            .collect()
    }

    fn merge(&self, a: Vec<Acc>, b: Vec<Acc>) -> Vec<Acc> {
        self.calls
            .iter()
            .zip(a.into_iter().zip(b))
            .map(|(c, (x, y))| merge(c, x, y))
            .collect()
    }
}

/// From a grouped row `[keys, window columns, aggregates]` to the projected values
/// (`None` when HAVING rejects it).
type Finish = Arc<dyn Fn(&Row) -> Option<Vec<Value>> + Send + Sync>;

/// The unbounded `GROUP BY`: per key, the accumulators and the last row it emitted.
#[derive(Clone)]
struct GroupAggregate {
    calls: Arc<Vec<AggCall>>,
    finish: Finish,
    /// `table.exec.mini-batch.enabled`: a key's change goes out once per input batch
    /// (at its end) instead of once per row.
    mini_batch: bool,
}

/// A `GROUP BY` that includes a window's end (rows of windows already assigned):
/// per group, the accumulators until the watermark passes the window's end; then
/// the group's one row, and its state is dropped.
#[derive(Clone)]
struct WindowGroupAggregate {
    calls: Arc<Vec<AggCall>>,
    finish: Finish,
    /// Where the window's end is in the key.
    end: usize,
}

impl KeyedProcessFunction for WindowGroupAggregate {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = Vec<Acc>;

    fn process_element(
        &mut self,
        value: Row,
        accs: &mut Vec<Acc>,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if accs.len() != self.calls.len() {
            // The window's last instant: all its rows are in by then.
            let end = ts_ns(&ctx.current_key()[self.end]).saturating_sub(1);
            if end <= ctx.current_watermark() {
                // Late: the window's row went out already (Flink drops it too).
                ctx.clear_state();
                return;
            }
            *accs = self.calls.iter().map(AggCall::fresh).collect();
            ctx.register_event_time_timer(end);
        }
        for (c, a) in self.calls.iter().zip(accs.iter_mut()) {
            c.add(&value, a);
        }
    }

    fn on_timer(&mut self, _: u64, accs: &mut Vec<Acc>, ctx: &mut Context<'_, Vec<Value>, Row>) {
        if accs.len() == self.calls.len() {
            let mut values = ctx.current_key().clone();
            values.extend(self.calls.iter().zip(accs.iter()).map(|(c, a)| c.result(a)));
            if let Some(o) = (self.finish)(&Row::insert(values)) {
                ctx.collect(Row::insert(o));
            }
        }
        ctx.clear_state();
    }
}

/// Per-key state of [`GroupAggregate`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GroupState {
    accs: Vec<Acc>,
    last: Option<Vec<Value>>,
    /// Rows in the group (insertions less retractions).
    rows: i64,
    /// Mini-batch: the key changed in the current batch (its update is due at the
    /// batch's end; never true between batches, so never in a checkpoint).
    #[serde(skip)]
    pending: bool,
}

impl KeyedProcessFunction for GroupAggregate {
    type Key = Vec<Value>;
    type In = Row;
    type Out = Row;
    type State = GroupState;

    fn process_element(
        &mut self,
        value: Row,
        state: &mut GroupState,
        ctx: &mut Context<'_, Vec<Value>, Row>,
    ) {
        if state.accs.len() != self.calls.len() {
            state.accs = self.calls.iter().map(AggCall::fresh).collect();
        }
        let retract = matches!(value.kind, RowKind::UpdateBefore | RowKind::Delete);
        if retract {
            for (c, a) in self.calls.iter().zip(state.accs.iter_mut()) {
                c.retract(&value, a);
            }
            state.rows -= 1;
        } else {
            for (c, a) in self.calls.iter().zip(state.accs.iter_mut()) {
                c.add(&value, a);
            }
            state.rows += 1;
        }
        if self.mini_batch {
            if !state.pending {
                state.pending = true;
                ctx.defer_to_batch_end();
            }
        } else {
            self.emit(state, ctx);
        }
    }

    fn on_batch_end(&mut self, state: &mut GroupState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        state.pending = false;
        self.emit(state, ctx);
    }
}

impl GroupAggregate {
    /// The group's change since its last output: `+I`, `-U`/`+U`, `-D` or nothing.
    fn emit(&self, state: &mut GroupState, ctx: &mut Context<'_, Vec<Value>, Row>) {
        let out = if state.rows > 0 {
            let mut values = ctx.current_key().clone();
            values.extend(self.calls.iter().zip(&state.accs).map(|(c, a)| c.result(a)));
            (self.finish)(&Row::insert(values))
        } else {
            // The group's last row was retracted: the group is gone (its state too,
            // once its deletion went out).
            ctx.clear_state();
            None
        };
        match (state.last.take(), &out) {
            (None, Some(o)) => ctx.collect(Row::insert(o.clone())),
            (Some(l), Some(o)) if l != *o => {
                ctx.collect(Row {
                    kind: RowKind::UpdateBefore,
                    values: l,
                });
                ctx.collect(Row {
                    kind: RowKind::UpdateAfter,
                    values: o.clone(),
                });
            }
            (Some(l), None) => ctx.collect(Row {
                kind: RowKind::Delete,
                values: l,
            }),
            _ => {}
        }
        state.last = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_stars_are_told_from_counts_and_products() {
        for t in [
            "SELECT * FROM t",
            "SELECT DISTINCT * FROM t",
            "SELECT a, * FROM t",
            "SELECT t.* FROM t",
            "SELECT x FROM (SELECT * FROM t)",
        ] {
            assert!(selects_all(t), "{t}");
        }
        for t in [
            "SELECT COUNT(*) FROM t",
            "SELECT a * b FROM t",
            "SELECT 0.9 * price, (a) * 2, 'x' * 1 FROM t",
        ] {
            assert!(!selects_all(t), "{t}");
        }
    }

    fn query(sql: &str) -> Query {
        let dialect = sqlparser::dialect::GenericDialect {};
        match sqlparser::parser::Parser::parse_sql(&dialect, sql)
            .unwrap()
            .remove(0)
        {
            sqlparser::ast::Statement::Query(q) => *q,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn views_are_narrowed_only_where_no_row_or_name_changes() {
        let names: HashSet<String> = ["k".to_string()].into();
        let narrowed = |sql: &str| narrowed_view(&query(sql), &names).to_string();
        assert_eq!(narrowed("SELECT k, v, w AS x FROM t"), "SELECT k FROM t");
        // Nothing named: one column stays; wildcards and odd names stay.
        assert_eq!(narrowed("SELECT v, w FROM t"), "SELECT v FROM t");
        assert_eq!(
            narrowed("SELECT *, v, w AS `a b` FROM t"),
            "SELECT *, w AS `a b` FROM t"
        );
        for sql in [
            "SELECT k, COUNT(*) AS n FROM t",
            "SELECT k, SUM(v) OVER (PARTITION BY k ORDER BY ts) AS s FROM t",
            "SELECT k, v * 2, v * 3 FROM t",
            "SELECT DISTINCT k, v FROM t",
            "SELECT k, v FROM t GROUP BY k, v",
        ] {
            assert_eq!(narrowed(sql), query(sql).to_string(), "{sql}");
        }
    }

    #[test]
    fn words_carry_the_row_they_are_a_field_of() {
        let q = |s: &str| Some(s.to_string());
        assert_eq!(
            qualified_words("SELECT bid.price, `bid`.`url`, x FROM t"),
            vec![
                (None, "select".into()),
                (None, "bid".into()),
                (q("bid"), "price".into()),
                (None, "bid".into()),
                (q("bid"), "url".into()),
                (None, "x".into()),
                (None, "from".into()),
                (None, "t".into()),
            ]
        );
    }

    #[test]
    fn relations_are_named_after_from_join_table_or_a_comma() {
        for (t, n) in [
            ("SELECT a FROM bid WHERE x", "bid"),
            ("SELECT a FROM x JOIN `Bid` ON 1", "bid"),
            (
                "SELECT a FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts)))",
                "bid",
            ),
            ("SELECT a FROM x, bid", "bid"),
            ("SELECT * FROM `db`.`nx`", "db.nx"),
        ] {
            assert!(reads_relation(t, n), "{t}");
        }
        for (t, n) in [
            ("SELECT auction FROM bid", "auction"),
            ("SELECT bid.auction FROM b", "bid"),
            ("SELECT a FROM bids", "bid"),
            ("SELECT MOD(auction, 2) FROM bid", "auction"),
        ] {
            assert!(!reads_relation(t, n), "{t}");
        }
    }
}
