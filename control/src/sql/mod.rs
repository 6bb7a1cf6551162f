//! Flink SQL on spate: a catalog of tables and views, statements, and a planner that
//! compiles queries to the DataStream API's operators.
//!
//! ```no_run
//! use spate::api::StreamExecutionEnvironment;
//! use spate::sql::Session;
//! let env = StreamExecutionEnvironment::new("sql");
//! let mut session = Session::new();
//! session
//!     .declare_script(
//!         &env,
//!         "CREATE TABLE t (x BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '10');
//!          SELECT x * 2 FROM t WHERE x > 0;",
//!     )
//!     .unwrap();
//! ```
//!
//! The script is parsed with sqlparser (Flink's own syntax it lacks is handled in
//! [`parse`]); [`plan`] type-checks each query against the catalog, compiles its
//! expressions once into closures over a [`Row`](types::Row), and declares operators:
//! a filter and a map per `SELECT`, a window operator per window aggregate, a keyed
//! process function per unbounded `GROUP BY`.

pub mod connector;
pub mod expr;
pub mod functions;
pub mod lookup;
pub mod nexmark;
pub mod parse;
pub mod plan;
pub mod table;
pub mod types;

use crate::api::{RuntimeMode, StreamExecutionEnvironment};
use parse::{Parsed, TableExtras};
use sqlparser::ast::{
    CreateTableOptions, Expr, ObjectName, Query, SqlOption, Statement, Value as SqlValue,
};
use std::collections::BTreeMap;
use types::DataType;

/// A SQL error: what is wrong and, when known, where (1-based line and column of the
/// script; 0 when the error has no position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SqlError {
    /// What is wrong.
    pub message: String,
    /// Line, from 1 (0: no position).
    pub line: u64,
    /// Column, from 1 (0: no position).
    pub column: u64,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if self.line > 0 {
            write!(f, " (at line {}, column {})", self.line, self.column)?;
        }
        Ok(())
    }
}

impl SqlError {
    /// An error at a position.
    pub fn at(message: impl Into<String>, line: u64, column: u64) -> Self {
        Self {
            message: message.into(),
            line,
            column,
        }
    }
    /// An error without a position.
    pub fn new(message: impl Into<String>) -> Self {
        Self::at(message, 0, 0)
    }
}

/// A named, typed column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: DataType,
    /// Whether it is a processing-time attribute (`PROCTIME()`, or a column that
    /// passes one on): windows over it follow the wall clock, not event time.
    pub proctime: bool,
    /// Which bound of an event-time window it holds, under whatever name (a window
    /// table function's or window aggregate's `window_start` or `window_end`): a
    /// join or an aggregate on a window's end runs per window, and drops the
    /// window's state as the watermark passes its end.
    pub bound: Option<WindowBound>,
}

/// A bound of a window (see [`Column::bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowBound {
    /// `window_start`.
    Start,
    /// `window_end`.
    End,
}

impl Column {
    /// A column.
    pub fn new(name: impl Into<String>, ty: DataType) -> Self {
        Self {
            name: name.into(),
            ty,
            proctime: false,
            bound: None,
        }
    }

    /// The column holding a bound of its windows.
    pub fn with_bound(self, bound: Option<WindowBound>) -> Self {
        Self { bound, ..self }
    }

    /// A processing-time attribute column.
    pub fn proctime(name: impl Into<String>) -> Self {
        Self {
            proctime: true,
            ..Self::new(name, DataType::Timestamp)
        }
    }
}

/// A table of the catalog (`CREATE TABLE`).
#[derive(Debug, Clone)]
pub struct TableDef {
    /// Its name.
    pub name: String,
    /// The columns its connector reads or writes.
    pub physical: Vec<Column>,
    /// Flink's computed columns and watermark.
    pub extras: TableExtras,
    /// The `WITH` options.
    pub options: BTreeMap<String, String>,
    /// `CREATE TEMPORARY TABLE`.
    pub temporary: bool,
    /// `PARTITIONED BY (...)`: a filesystem table's partition columns, whose values
    /// name its directories (`k=v/...`) instead of being written in its files.
    pub partition_keys: Vec<String>,
}

/// A view of the catalog (`CREATE VIEW`).
#[derive(Debug, Clone)]
pub struct ViewDef {
    /// Its name.
    pub name: String,
    /// Its query.
    pub query: Box<Query>,
    /// `CREATE TEMPORARY VIEW`.
    pub temporary: bool,
}

/// A `DataStream<Row>` registered as a table (the Table API's `from_data_stream`).
#[derive(Clone)]
pub struct StreamTable {
    /// The rows.
    pub stream: crate::api::DataStream<types::Row>,
    /// Their columns.
    pub schema: Vec<Column>,
    /// The event-time column.
    pub rowtime: Option<usize>,
}

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable")
            .field("schema", &self.schema)
            .field("rowtime", &self.rowtime)
            .finish()
    }
}

/// Tables and views by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Tables.
    pub tables: BTreeMap<String, TableDef>,
    /// Views.
    pub views: BTreeMap<String, ViewDef>,
    /// Streams registered as tables.
    pub streams: BTreeMap<String, StreamTable>,
}

impl Catalog {
    /// The name under which `name` is registered: exact, else the only
    /// case-insensitive match.
    pub fn resolve(&self, name: &str) -> Option<String> {
        let all = || {
            self.tables
                .keys()
                .chain(self.views.keys())
                .chain(self.streams.keys())
        };
        if all().any(|k| k == name) {
            return Some(name.to_string());
        }
        let mut it = all().filter(|k| k.eq_ignore_ascii_case(name));
        match (it.next(), it.next()) {
            (Some(k), None) => Some(k.clone()),
            _ => None,
        }
    }
}

/// What a statement did.
pub enum Outcome {
    /// A statement that changed the session or the catalog; the message to show.
    Done(String),
    /// A result table to show (`SHOW TABLES`, `DESCRIBE`).
    Table {
        /// Column names.
        header: Vec<String>,
        /// Rows of shown values.
        rows: Vec<Vec<String>>,
    },
    /// `EXPLAIN`'s plan.
    Explain(String),
    /// A `SELECT`, declared on the environment: the caller gives it a sink.
    Query(plan::Rel),
    /// An `INSERT`, declared on the environment with its sink.
    Insert {
        /// The sink table.
        table: String,
    },
}

/// A SQL session: the catalog and the `SET` options.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Tables and views.
    pub catalog: Catalog,
    /// Options set with `SET 'key' = 'value'`.
    pub config: BTreeMap<String, String>,
}

fn object_name(n: &ObjectName) -> String {
    n.0.iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
        .collect::<Vec<_>>()
        .join(".")
}

/// A string literal's text (`None` if `e` is not one).
pub(crate) fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Some(s.clone()),
            SqlValue::Number(n, _) => Some(n.clone()),
            SqlValue::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every statement of `script` against `env`: DDL and `SET` change the
    /// session, each `INSERT` declares its pipeline with its sink, and each `SELECT`
    /// prints its changelog (Flink's `print` format) — all in one job. At least one
    /// `INSERT` or `SELECT` must be there.
    pub fn declare_script(
        &mut self,
        env: &StreamExecutionEnvironment,
        script: &str,
    ) -> Result<(), SqlError> {
        self.declare_scripts(env, &[script])
    }

    /// [`Self::declare_script`] over several scripts in order (initialization scripts
    /// first, as `spate run -i init.sql -f query.sql` gives them), in one session and
    /// one job.
    pub fn declare_scripts(
        &mut self,
        env: &StreamExecutionEnvironment,
        scripts: &[&str],
    ) -> Result<(), SqlError> {
        let mut queries = 0;
        for p in scripts
            .iter()
            .map(|s| parse::script(s))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
        {
            match self.execute(env, &p)? {
                Outcome::Query(rel) => {
                    let mode = self.config.get(RESULT_MODE).map(String::as_str);
                    if let Some(buf) = mode.filter(|m| *m == "table").and(table_sink()) {
                        // The SQL client's own process: it shows the table.
                        rel.stream.collect(buf).name("Sink: table result");
                    } else {
                        // Rows as the client shows them. The JobManager and the
                        // TaskManagers declare the same graph; on a TaskManager the rows
                        // go to the client through the JobManager, elsewhere to the
                        // standard output.
                        let tableau = mode == Some("tableau");
                        let widths = tableau_widths(&rel.schema);
                        let lines = rel
                            .stream
                            .map(move |r: types::Row| {
                                connector::Line(if tableau {
                                    tableau_row(&widths, &r)
                                } else {
                                    format!("{r:?}")
                                })
                            })
                            .name("Format");
                        let name = if tableau {
                            "Sink: tableau"
                        } else {
                            "Sink: print"
                        };
                        let sink = match results::declaring() {
                            Some(job) => lines.collect(results::buffer(&job)).name(name),
                            None => lines.print().name(name),
                        };
                        if tableau {
                            sink.set_parallelism(1);
                        }
                    }
                    queries += 1;
                }
                Outcome::Insert { .. } => queries += 1,
                _ => {}
            }
        }
        if queries == 0 {
            return Err(SqlError::new(
                "the SQL has no INSERT or SELECT statement: nothing to run",
            ));
        }
        Ok(())
    }

    /// Applies one `SET` option to the environment where it names a job setting.
    fn apply_setting(
        &mut self,
        env: &StreamExecutionEnvironment,
        key: &str,
        value: &str,
    ) -> Result<(), SqlError> {
        match key {
            RESULT_MODE if !matches!(value, "table" | "tableau" | "changelog") => {
                return Err(SqlError::new(format!(
                    "'{RESULT_MODE}': '{value}' is not a result mode (table, tableau or changelog)"
                )));
            }
            "parallelism.default" => {
                let p: usize = value.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    SqlError::new(format!("'{key}' takes a positive integer, not '{value}'"))
                })?;
                env.set_parallelism(p);
            }
            "execution.runtime-mode" => {
                let m: RuntimeMode = value.parse().map_err(|_| {
                    SqlError::new(format!("'{key}' is STREAMING or BATCH, not '{value}'"))
                })?;
                env.set_runtime_mode(m);
            }
            "pipeline.auto-watermark-interval" => {
                let d = crate::config::parse_duration(value).ok_or_else(|| {
                    SqlError::new(format!("'{key}': '{value}' is not a duration"))
                })?;
                env.set_auto_watermark_interval(d);
            }
            "table.exec.source.idle-timeout" => {
                crate::config::parse_duration(value).ok_or_else(|| {
                    SqlError::new(format!("'{key}': '{value}' is not a duration"))
                })?;
            }
            _ => {}
        }
        self.config.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Executes one parsed statement.
    pub fn execute(
        &mut self,
        env: &StreamExecutionEnvironment,
        p: &Parsed,
    ) -> Result<Outcome, SqlError> {
        let at = |msg: String| SqlError::at(msg, p.line, p.column);
        match &p.statement {
            Statement::Set(set) => {
                use sqlparser::ast::Set;
                match set {
                    Set::SingleAssignment {
                        variable, values, ..
                    } => {
                        let key = object_name(variable);
                        let key = key.trim_matches(['\'', '"', '`']).to_string();
                        let [value] = values.as_slice() else {
                            return Err(at("SET takes one value: SET 'key' = 'value'".into()));
                        };
                        let value = string_literal(value)
                            .ok_or_else(|| at("SET takes a literal value".into()))?;
                        self.apply_setting(env, &key, &value)
                            .map_err(|e| SqlError::at(e.message, p.line, p.column))?;
                        Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()))
                    }
                    _ => {
                        let rows = self
                            .config
                            .iter()
                            .map(|(k, v)| vec![k.clone(), v.clone()])
                            .collect();
                        Ok(Outcome::Table {
                            header: vec!["key".into(), "value".into()],
                            rows,
                        })
                    }
                }
            }
            Statement::CreateTable(ct) => {
                let name = object_name(&ct.name);
                if self.catalog.resolve(&name).is_some() {
                    if ct.if_not_exists {
                        return Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()));
                    }
                    return Err(expr::err_at(
                        &ct.name,
                        format!("a table or view named '{name}' already exists"),
                    ));
                }
                if ct.query.is_some() {
                    return Err(expr::err_at(
                        &ct.name,
                        "CREATE TABLE ... AS SELECT is not supported: create the table, then INSERT INTO it",
                    ));
                }
                // The columns in declaration order: sqlparser's, ROW columns flattened
                // into `row.field` columns, and computed columns' final positions.
                let unsupported = |name: &str, t: &sqlparser::ast::DataType| {
                    format!(
                        "column '{name}': the type {t} is not supported (BOOLEAN, TINYINT, SMALLINT, INT, BIGINT, FLOAT, DOUBLE, DECIMAL, STRING/VARCHAR, TIMESTAMP(3), TIMESTAMP_LTZ(3), ROW<...> of those)"
                    )
                };
                let mut extras = p.extras.clone();
                let computed_at: Vec<usize> = extras.computed.iter().map(|c| c.0).collect();
                let elements = ct.columns.len() + computed_at.len() + extras.rows.len();
                let mut sql_columns = ct.columns.iter();
                let mut physical: Vec<Column> = Vec::new();
                let mut next = 0usize;
                for k in 0..elements {
                    if let Some(i) = computed_at.iter().position(|&c| c == k) {
                        extras.computed[i].0 = next;
                        next += 1;
                    } else if let Some((_, name, fields)) =
                        p.extras.rows.iter().find(|(r, _, _)| *r == k)
                    {
                        for (f, t) in fields {
                            let full = format!("{name}.{f}");
                            let ty = expr::data_type(t).ok_or_else(|| at(unsupported(&full, t)))?;
                            physical.push(Column::new(full, ty));
                            next += 1;
                        }
                    } else if let Some(c) = sql_columns.next() {
                        let ty = expr::data_type(&c.data_type).ok_or_else(|| {
                            expr::err_ident(&c.name, unsupported(&c.name.value, &c.data_type))
                        })?;
                        physical.push(Column::new(c.name.value.clone(), ty));
                        next += 1;
                    }
                }
                for (i, c) in physical.iter().enumerate() {
                    if physical[..i].iter().any(|x| x.name == c.name) {
                        return Err(expr::err_at(
                            &ct.name,
                            format!("the column '{}' is declared twice", c.name),
                        ));
                    }
                }
                let mut options = BTreeMap::new();
                if let CreateTableOptions::With(opts) = &ct.table_options {
                    for o in opts {
                        let SqlOption::KeyValue { key, value } = o else {
                            return Err(at("WITH takes 'key' = 'value' options".into()));
                        };
                        let k = key.to_string();
                        let k = k.trim_matches(['\'', '"', '`']).to_string();
                        let v = string_literal(value).ok_or_else(|| {
                            expr::err_at(value, format!("option '{k}' takes a string literal"))
                        })?;
                        options.insert(k, v);
                    }
                }
                let mut partition_keys = Vec::new();
                if let sqlparser::ast::HiveDistributionStyle::PARTITIONED { columns } =
                    &ct.hive_distribution
                {
                    if options.get("connector").map(String::as_str) != Some("filesystem") {
                        return Err(expr::err_at(
                            &ct.name,
                            "PARTITIONED BY is for 'filesystem' tables",
                        ));
                    }
                    for c in columns {
                        if !physical.iter().any(|p| p.name == c.name.value) {
                            return Err(expr::err_ident(
                                &c.name,
                                format!(
                                    "PARTITIONED BY: the table has no column '{}'",
                                    c.name.value
                                ),
                            ));
                        }
                        partition_keys.push(c.name.value.clone());
                    }
                    if partition_keys.len() >= physical.len() {
                        return Err(expr::err_at(
                            &ct.name,
                            "PARTITIONED BY takes some of the columns, not all",
                        ));
                    }
                }
                let def = TableDef {
                    name: name.clone(),
                    physical,
                    extras,
                    options,
                    temporary: ct.temporary,
                    partition_keys,
                };
                // Type-check computed columns and the watermark now.
                plan::table_schema(&def)?;
                connector::validate(&def).map_err(|e| match e.line {
                    0 => expr::err_at(&ct.name, e.message),
                    _ => e,
                })?;
                self.catalog.tables.insert(name, def);
                Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()))
            }
            Statement::CreateView(v) => {
                let name = object_name(&v.name);
                if self.catalog.resolve(&name).is_some() {
                    if v.if_not_exists {
                        return Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()));
                    }
                    return Err(expr::err_at(
                        &v.name,
                        format!("a table or view named '{name}' already exists"),
                    ));
                }
                // Plan it once in a scratch job, to report its errors now.
                let scratch = StreamExecutionEnvironment::new("check");
                plan::Planner::new(&self.catalog, &self.config).query(&scratch, &v.query)?;
                self.catalog.views.insert(
                    name.clone(),
                    ViewDef {
                        name,
                        query: v.query.clone(),
                        temporary: v.temporary,
                    },
                );
                Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()))
            }
            Statement::Drop {
                names,
                if_exists,
                object_type,
                ..
            } => {
                use sqlparser::ast::ObjectType;
                for n in names {
                    let name = object_name(n);
                    match self.catalog.resolve(&name) {
                        Some(k) => {
                            let is_view = self.catalog.views.contains_key(&k);
                            match object_type {
                                ObjectType::View if !is_view => {
                                    return Err(expr::err_at(
                                        n,
                                        format!("'{name}' is a table: DROP TABLE it"),
                                    ))
                                }
                                ObjectType::Table if is_view => {
                                    return Err(expr::err_at(
                                        n,
                                        format!("'{name}' is a view: DROP VIEW it"),
                                    ))
                                }
                                ObjectType::Table | ObjectType::View => {}
                                other => {
                                    return Err(expr::err_at(
                                        n,
                                        format!("unsupported: DROP {other}"),
                                    ))
                                }
                            }
                            self.catalog.tables.remove(&k);
                            self.catalog.views.remove(&k);
                            self.catalog.streams.remove(&k);
                        }
                        None if *if_exists => {}
                        None => return Err(expr::err_at(n, format!("no table or view '{name}'"))),
                    }
                }
                Ok(Outcome::Done("[INFO] Execute statement succeeded.".into()))
            }
            Statement::ShowTables { .. } => Ok(Outcome::Table {
                header: vec!["table name".into()],
                rows: self
                    .catalog
                    .tables
                    .keys()
                    .chain(self.catalog.views.keys())
                    .chain(self.catalog.streams.keys())
                    .map(|k| vec![k.clone()])
                    .collect(),
            }),
            Statement::ExplainTable { table_name, .. } => self.describe(table_name),
            Statement::Explain { statement, .. } => {
                let scratch = StreamExecutionEnvironment::new("explain");
                let planner = self.planner_for(statement);
                let text = match statement.as_ref() {
                    Statement::Query(q) => {
                        let rel = planner.query(&scratch, q)?;
                        rel.plan.render()
                    }
                    Statement::Insert(ins) => planner.insert(&scratch, ins)?.1.render(),
                    _ => return Err(at("EXPLAIN takes a SELECT or an INSERT".into())),
                };
                Ok(Outcome::Explain(format!(
                    "== Physical Execution Plan ==\n{text}"
                )))
            }
            Statement::Query(q) => {
                let rel = self.planner_for(&p.statement).query(env, q)?;
                Ok(Outcome::Query(rel))
            }
            Statement::Insert(ins) => {
                let (table, _) = self.planner_for(&p.statement).insert(env, ins)?;
                Ok(Outcome::Insert { table })
            }
            other => {
                let kind = other.to_string();
                let kind: String = kind
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(at(format!(
                    "unsupported statement ({kind} ...): spate runs CREATE TABLE, CREATE VIEW, DROP, INSERT INTO, SELECT, EXPLAIN, SET, SHOW TABLES, DESCRIBE and statement sets"
                )))
            }
        }
    }

    /// The planner of a SELECT or an INSERT: generated tables produce only the columns
    /// the statement may read and views only the columns it names, if the statement
    /// plans with every column (pruning must not make a bad statement good) and plans
    /// so too (both on a scratch environment); otherwise every column.
    fn planner_for(&self, statement: &Statement) -> plan::Planner<'_> {
        let plans = |p: &plan::Planner<'_>| {
            let scratch = StreamExecutionEnvironment::new("plan");
            match statement {
                Statement::Query(q) => p.query(&scratch, q).is_ok(),
                Statement::Insert(ins) => p.insert(&scratch, ins).is_ok(),
                _ => false,
            }
        };
        let whole = plan::Planner::new(&self.catalog, &self.config);
        if !plans(&whole) {
            return whole;
        }
        let refs = plan::referenced_names(&self.catalog, &statement.to_string());
        let pruning = plan::Planner::new(&self.catalog, &self.config).pruning(refs);
        if plans(&pruning) {
            pruning
        } else {
            whole
        }
    }

    fn describe(&self, name: &ObjectName) -> Result<Outcome, SqlError> {
        let n = object_name(name);
        let key = self
            .catalog
            .resolve(&n)
            .ok_or_else(|| expr::err_at(name, format!("no table or view '{n}'")))?;
        let header = ["name", "type", "null", "key", "extras", "watermark"]
            .map(String::from)
            .to_vec();
        let rows = if let Some(t) = self.catalog.tables.get(&key) {
            let schema = plan::table_schema(t)?;
            schema
                .columns
                .iter()
                .map(|c| {
                    let extras = t
                        .extras
                        .computed
                        .iter()
                        .find(|(_, n, _)| *n == c.name)
                        .map(|(_, _, e)| format!("AS {e}"))
                        .unwrap_or_default();
                    let wm = match &t.extras.watermark {
                        Some((col, e)) if *col == c.name => format!("{e}"),
                        _ => String::new(),
                    };
                    let proctime = t
                        .extras
                        .computed
                        .iter()
                        .any(|(_, n, e)| *n == c.name && expr::is_proctime_call(e));
                    let ty = match (&t.extras.watermark, c.ty) {
                        (Some((col, _)), ty) if *col == c.name => format!("{ty} *ROWTIME*"),
                        _ if proctime => "TIMESTAMP_LTZ(3) *PROCTIME*".to_string(),
                        (_, ty) => ty.to_string(),
                    };
                    vec![c.name.clone(), ty, "TRUE".into(), String::new(), extras, wm]
                })
                .collect()
        } else {
            let schema = match (self.catalog.views.get(&key), self.catalog.streams.get(&key)) {
                (Some(view), _) => {
                    let scratch = StreamExecutionEnvironment::new("describe");
                    plan::Planner::new(&self.catalog, &self.config)
                        .query(&scratch, &view.query)?
                        .schema
                }
                (None, Some(stream)) => stream.schema.clone(),
                (None, None) => return Err(expr::err_at(name, format!("no table or view '{n}'"))),
            };
            schema
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        if c.proctime {
                            "TIMESTAMP_LTZ(3) *PROCTIME*".to_string()
                        } else {
                            c.ty.to_string()
                        },
                        "TRUE".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]
                })
                .collect()
        };
        Ok(Outcome::Table { header, rows })
    }
}

/// The option that picks how a script's `SELECT` results show: `tableau` as the SQL
/// client's tables, `changelog` as Flink's `print` rows (`+I[...]`), `table` as a
/// table the SQL client keeps up to date (elsewhere, as `changelog`).
pub const RESULT_MODE: &str = "sql-client.execution.result-mode";

/// The rows of `SELECT`s that run on a cluster, on their way to the client: the
/// TaskManager declares a deployment's job with [`results::declaring_for`] set, the
/// job's `SELECT` sinks append formatted rows to the job's buffer, and the
/// TaskManager [`results::take`]s them to the JobManager, which serves them to the
/// client (`GET /jobs/:id/results`).
pub mod results {
    use super::connector::Line;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// Rows held for one job at most, on a TaskManager and on the JobManager (older
    /// ones are dropped).
    pub const HELD: usize = 100_000;

    /// Bytes of rows the JobManager holds for one job at most.
    pub const HELD_BYTES: usize = 32 << 20;

    thread_local! {
        static DECLARING: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    type Buffer = Arc<Mutex<Vec<Line>>>;
    static BUFFERS: Mutex<BTreeMap<String, Buffer>> = Mutex::new(BTreeMap::new());

    /// Marks the jobs this thread declares as job `job`'s (`None`: no job's).
    pub fn declaring_for(job: Option<String>) {
        DECLARING.with(|d| *d.borrow_mut() = job);
    }

    pub(super) fn declaring() -> Option<String> {
        DECLARING.with(|d| d.borrow().clone())
    }

    pub(super) fn buffer(job: &str) -> Buffer {
        let mut b = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
        b.entry(job.to_string()).or_default().clone()
    }

    /// The rows each job's sinks wrote since the last call, by job; buffers no sink
    /// holds any more are dropped once empty.
    pub fn take() -> Vec<(String, Vec<String>)> {
        let mut b = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        b.retain(|job, buf| {
            let mut rows = buf.lock().unwrap_or_else(|e| e.into_inner());
            if !rows.is_empty() {
                let skip = rows.len().saturating_sub(HELD);
                out.push((
                    job.clone(),
                    rows.drain(..).skip(skip).map(|l| l.0).collect(),
                ));
            }
            drop(rows);
            Arc::strong_count(buf) > 1
        });
        out
    }
}

/// Where a `SELECT` in `table` result mode sends its rows: the SQL client installs a
/// buffer before it runs the job in its own process, and shows the table from it.
static TABLE_SINK: std::sync::Mutex<Option<TableBuffer>> = std::sync::Mutex::new(None);

/// A `table` result's rows as they come (a changelog).
pub type TableBuffer = std::sync::Arc<std::sync::Mutex<Vec<types::Row>>>;

/// Installs (or removes) the buffer `table` results go to in this process.
pub fn set_table_sink(buf: Option<TableBuffer>) {
    if let Ok(mut s) = TABLE_SINK.lock() {
        *s = buf;
    }
}

fn table_sink() -> Option<TableBuffer> {
    TABLE_SINK.lock().ok().and_then(|s| s.clone())
}

/// The width of each column of a tableau result (after the `op` column), by type.
pub fn tableau_widths(schema: &[Column]) -> Vec<usize> {
    schema
        .iter()
        .map(|c| {
            let w = match c.ty {
                DataType::Boolean => 5,
                DataType::TinyInt => 4,
                DataType::SmallInt => 6,
                DataType::Int => 11,
                DataType::BigInt => 20,
                DataType::Float | DataType::Double => 22,
                DataType::Timestamp | DataType::TimestampLtz => 23,
                DataType::String | DataType::Interval | DataType::Null => 30,
            };
            w.max(c.name.chars().count())
        })
        .collect()
}

fn tableau_line(widths: &[usize]) -> String {
    let mut s = String::from("+----+");
    for w in widths {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
    }
    s
}

/// A tableau result's header: border, `| op | names |`, border.
pub fn tableau_header(schema: &[Column], widths: &[usize]) -> String {
    let line = tableau_line(widths);
    let mut h = String::from("| op |");
    for (c, w) in schema.iter().zip(widths) {
        h.push_str(&format!(" {:>w$} |", c.name));
    }
    format!("{line}\n{h}\n{line}")
}

/// A tableau result's closing border.
pub fn tableau_footer(widths: &[usize]) -> String {
    tableau_line(widths)
}

/// One row of a tableau result (values longer than their column end in `...`).
pub fn tableau_row(widths: &[usize], r: &types::Row) -> String {
    let mut s = format!("| {} |", r.kind.short());
    for (v, w) in r.values.iter().zip(widths) {
        let mut text = match v {
            types::Value::Null => "<NULL>".to_string(),
            v => v.display(DataType::Null),
        };
        if text.chars().count() > *w {
            text = text.chars().take(w.saturating_sub(3)).collect::<String>() + "...";
        }
        s.push_str(&format!(" {text:>w$} |"));
    }
    s
}

/// Formats a result table as Flink's SQL client shows one (`+---+` borders).
pub fn format_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, v) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(v.chars().count());
            }
        }
    }
    let line = {
        let mut s = String::from("+");
        for x in &w {
            s.push_str(&"-".repeat(x + 2));
            s.push('+');
        }
        s
    };
    let row = |vals: &[String]| {
        let mut s = String::from("|");
        for (i, x) in w.iter().enumerate() {
            let v = vals.get(i).map(String::as_str).unwrap_or("");
            s.push_str(&format!(" {v:>x$} |"));
        }
        s
    };
    let mut out = format!("{line}\n{}\n{line}\n", row(header));
    for r in rows {
        out.push_str(&row(r));
        out.push('\n');
    }
    out.push_str(&line);
    out.push('\n');
    let n = rows.len();
    out.push_str(&format!(
        "{n} row{} in set\n",
        if n == 1 { "" } else { "s" }
    ));
    out
}
