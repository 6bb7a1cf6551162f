//! The Table API: relational programs written in Rust instead of SQL text.
//!
//! ```no_run
//! use spate::api::StreamExecutionEnvironment;
//! use spate::sql::table::{col, lit, TableEnvironment};
//! let env = StreamExecutionEnvironment::new("table api");
//! let tenv = TableEnvironment::create(&env);
//! tenv.execute_sql(
//!     "CREATE TABLE bids (auction BIGINT, price BIGINT) \
//!      WITH ('connector' = 'datagen', 'number-of-rows' = '1000')",
//! )
//! .unwrap();
//! let per_auction = tenv
//!     .from_path("bids")
//!     .filter(col("price").gt(lit(100)))
//!     .group_by(&[col("auction")])
//!     .select(&[col("auction"), col("price").sum().as_("total")]);
//! per_auction.to_changelog_stream().unwrap().print();
//! ```
//!
//! A [`Table`] is a query: each operation composes the SQL it stands for, and the
//! result is planned by the same planner as SQL text, into the same operators
//! ([`Table::explain`] shows the plan; [`Table::to_sql`] the SQL). Tables convert to
//! and from `DataStream<Row>`.

use super::plan::{Planner, Rel};
use super::types::Row;
use super::{parse, Column, Outcome, Session, SqlError, StreamTable};
use crate::api::{DataStream, StreamExecutionEnvironment};
use std::cell::RefCell;
use std::rc::Rc;

struct Inner {
    env: StreamExecutionEnvironment,
    session: RefCell<Session>,
    names: std::cell::Cell<usize>,
}

impl Inner {
    fn fresh_name(&self, what: &str) -> String {
        let n = self.names.get() + 1;
        self.names.set(n);
        format!("_{what}_{n}")
    }
}

/// Where tables are declared and queried: a SQL session bound to an execution
/// environment (Flink's `StreamTableEnvironment`).
#[derive(Clone)]
pub struct TableEnvironment {
    inner: Rc<Inner>,
}

impl TableEnvironment {
    /// A table environment whose jobs are declared on `env`.
    pub fn create(env: &StreamExecutionEnvironment) -> Self {
        Self {
            inner: Rc::new(Inner {
                env: env.clone(),
                session: RefCell::new(Session::new()),
                names: Default::default(),
            }),
        }
    }

    /// Runs SQL statements: DDL and `SET` change the session; an `INSERT` declares its
    /// pipeline on the environment; a `SELECT` is an error (use [`Self::sql_query`]).
    pub fn execute_sql(&self, sql: &str) -> Result<(), SqlError> {
        for p in parse::script(sql)? {
            let outcome = self
                .inner
                .session
                .borrow_mut()
                .execute(&self.inner.env, &p)?;
            if let Outcome::Query(_) = outcome {
                return Err(SqlError::at(
                    "execute_sql runs statements: a query is a Table, from sql_query",
                    p.line,
                    p.column,
                ));
            }
        }
        Ok(())
    }

    /// A query's result as a table.
    pub fn sql_query(&self, sql: &str) -> Result<Table, SqlError> {
        let statements = parse::script(sql)?;
        let [p] = statements.as_slice() else {
            return Err(SqlError::new("sql_query takes one query"));
        };
        if !matches!(p.statement, sqlparser::ast::Statement::Query(_)) {
            return Err(SqlError::at("sql_query takes a SELECT", p.line, p.column));
        }
        let t = Table {
            tenv: self.clone(),
            from: format!("({})", p.text),
        };
        t.schema()?;
        Ok(t)
    }

    /// The table or view registered as `name`.
    pub fn from_path(&self, name: &str) -> Table {
        Table {
            tenv: self.clone(),
            from: quote_name(name),
        }
    }

    /// A stream of rows as a table of `schema` (Flink's `fromDataStream`). If the
    /// rows' event time is the column `rowtime`, give it: the stream must carry that
    /// event time with watermarks (`assign_timestamps_and_watermarks` upstream).
    pub fn from_data_stream(
        &self,
        stream: &DataStream<Row>,
        schema: &[Column],
        rowtime: Option<&str>,
    ) -> Result<Table, SqlError> {
        let rowtime = match rowtime {
            None => None,
            Some(name) => {
                let i = schema.iter().position(|c| c.name == name).ok_or_else(|| {
                    SqlError::new(format!(
                        "from_data_stream: no column '{name}' in the schema"
                    ))
                })?;
                if !schema[i].ty.is_timestamp() {
                    return Err(SqlError::new(format!(
                        "from_data_stream: the rowtime column '{name}' is a TIMESTAMP, not {}",
                        schema[i].ty
                    )));
                }
                Some(i)
            }
        };
        let name = self.inner.fresh_name("stream");
        self.inner.session.borrow_mut().catalog.streams.insert(
            name.clone(),
            StreamTable {
                stream: stream.clone(),
                schema: schema.to_vec(),
                rowtime,
            },
        );
        Ok(self.from_path(&name))
    }

    /// The names of the tables, views and registered streams (Flink's `listTables`).
    pub fn list_tables(&self) -> Vec<String> {
        let session = self.inner.session.borrow();
        let c = &session.catalog;
        c.tables
            .keys()
            .chain(c.views.keys())
            .chain(c.streams.keys())
            .cloned()
            .collect()
    }

    /// Registers `table` as a temporary view named `name`.
    pub fn create_temporary_view(&self, name: &str, table: &Table) -> Result<(), SqlError> {
        self.execute_sql(&format!(
            "CREATE TEMPORARY VIEW {} AS {}",
            quote_name(name),
            table.to_sql()
        ))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_name(name: &str) -> String {
    quote_ident(name)
}

/// A query, built by composing operations.
#[derive(Clone)]
pub struct Table {
    tenv: TableEnvironment,
    /// A FROM item: a quoted name, a parenthesized query, or a window table function.
    from: String,
}

impl Table {
    fn derive(&self, sql: String) -> Table {
        let alias = self.tenv.inner.fresh_name("t");
        Table {
            tenv: self.tenv.clone(),
            from: format!("({sql}) AS {alias}"),
        }
    }

    /// The SQL this table stands for.
    pub fn to_sql(&self) -> String {
        format!("SELECT * FROM {}", self.from)
    }

    /// Keeps the rows for which `predicate` is true (`WHERE`).
    pub fn filter(&self, predicate: Expr) -> Table {
        self.derive(format!("SELECT * FROM {} WHERE {}", self.from, predicate.0))
    }

    /// The expressions `exprs` of each row (`SELECT`; aggregates make it a global
    /// aggregation).
    pub fn select(&self, exprs: &[Expr]) -> Table {
        self.derive(format!("SELECT {} FROM {}", list(exprs), self.from))
    }

    /// Groups by `keys`: continue with [`GroupedTable::select`].
    pub fn group_by(&self, keys: &[Expr]) -> GroupedTable {
        GroupedTable {
            table: self.clone(),
            keys: list(keys),
        }
    }

    /// Tumbling event-time windows of `size` on the rowtime column `time_col`
    /// (`TUMBLE`): the table gains `window_start`, `window_end` and `window_time`;
    /// group by `window_start` and `window_end` (and keys) to aggregate per window.
    pub fn tumble(&self, time_col: &str, size: std::time::Duration) -> Result<Table, SqlError> {
        self.window_tvf(format!(
            "TUMBLE(TABLE {{}}, DESCRIPTOR({}), INTERVAL '{}' MILLISECOND)",
            quote_ident(time_col),
            size.as_millis()
        ))
    }

    /// Sliding windows of `size`, one every `slide` (`HOP`).
    pub fn hop(
        &self,
        time_col: &str,
        slide: std::time::Duration,
        size: std::time::Duration,
    ) -> Result<Table, SqlError> {
        self.window_tvf(format!(
            "HOP(TABLE {{}}, DESCRIPTOR({}), INTERVAL '{}' MILLISECOND, INTERVAL '{}' MILLISECOND)",
            quote_ident(time_col),
            slide.as_millis(),
            size.as_millis()
        ))
    }

    fn window_tvf(&self, call: String) -> Result<Table, SqlError> {
        // A window function reads a named table: name this one.
        let name = self.tenv.inner.fresh_name("view");
        self.tenv.create_temporary_view(&name, self)?;
        Ok(Table {
            tenv: self.tenv.clone(),
            from: format!("TABLE({})", call.replacen("{}", &quote_name(&name), 1)),
        })
    }

    /// The table planned on `env`.
    fn plan_on(&self, env: &StreamExecutionEnvironment) -> Result<Rel, SqlError> {
        let statements = parse::script(&self.to_sql())?;
        let Some(sqlparser::ast::Statement::Query(q)) = statements.first().map(|p| &p.statement)
        else {
            return Err(SqlError::new("internal: a table that is not a query"));
        };
        let session = self.tenv.inner.session.borrow();
        Planner::new(&session.catalog, &session.config).query(env, q)
    }

    /// The table planned on its environment (its operators join the job).
    fn plan(&self) -> Result<Rel, SqlError> {
        self.plan_on(&self.tenv.inner.env)
    }

    /// The columns of the table.
    pub fn schema(&self) -> Result<Vec<Column>, SqlError> {
        Ok(self
            .plan_on(&StreamExecutionEnvironment::new("schema"))?
            .schema)
    }

    /// The plan, as `EXPLAIN` shows it.
    pub fn explain(&self) -> Result<String, SqlError> {
        Ok(self
            .plan_on(&StreamExecutionEnvironment::new("explain"))?
            .plan
            .render())
    }

    /// The rows as a stream (Flink's `toDataStream`): for tables that only insert; a
    /// table with updates is an error (use [`Self::to_changelog_stream`]).
    pub fn to_data_stream(&self) -> Result<DataStream<Row>, SqlError> {
        let rel = self.plan()?;
        if !rel.append_only {
            return Err(SqlError::new(
                "to_data_stream takes a table that only inserts; this one updates (use to_changelog_stream)",
            ));
        }
        Ok(rel.stream)
    }

    /// The changelog as a stream of rows with their kinds (`+I`, `-U`, `+U`, `-D`).
    pub fn to_changelog_stream(&self) -> Result<DataStream<Row>, SqlError> {
        Ok(self.plan()?.stream)
    }

    /// Writes the rows into the table `sink` (`INSERT INTO`), on the environment.
    pub fn execute_insert(&self, sink: &str) -> Result<(), SqlError> {
        self.tenv.execute_sql(&format!(
            "INSERT INTO {} {}",
            quote_name(sink),
            self.to_sql()
        ))
    }
}

/// A table grouped by keys.
pub struct GroupedTable {
    table: Table,
    keys: String,
}

impl GroupedTable {
    /// Keys and aggregates per group (`SELECT ... GROUP BY`).
    pub fn select(&self, exprs: &[Expr]) -> Table {
        self.table.derive(format!(
            "SELECT {} FROM {} GROUP BY {}",
            list(exprs),
            self.table.from,
            self.keys
        ))
    }
}

fn list(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(|e| e.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An expression of the Table API.
#[derive(Clone, Debug)]
pub struct Expr(String);

/// A column (`bid.price` reads a ROW column's field).
pub fn col(name: &str) -> Expr {
    Expr(
        name.split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A literal value.
pub fn lit(v: impl Into<Literal>) -> Expr {
    Expr(match v.into() {
        Literal::Int(i) => i.to_string(),
        Literal::Double(d) if d.is_finite() => format!("{d:?}"),
        Literal::Double(_) => "NULL".into(),
        Literal::Str(s) => format!("'{}'", s.replace('\'', "''")),
        Literal::Bool(b) => b.to_string().to_ascii_uppercase(),
    })
}

/// A call of a SQL function by name (built-in or registered).
pub fn call(name: &str, args: &[Expr]) -> Expr {
    Expr(format!("{name}({})", list(args)))
}

/// A literal's value.
pub enum Literal {
    /// An integer.
    Int(i64),
    /// A double.
    Double(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

impl From<i64> for Literal {
    fn from(v: i64) -> Self {
        Literal::Int(v)
    }
}
impl From<i32> for Literal {
    fn from(v: i32) -> Self {
        Literal::Int(i64::from(v))
    }
}
impl From<f64> for Literal {
    fn from(v: f64) -> Self {
        Literal::Double(v)
    }
}
impl From<&str> for Literal {
    fn from(v: &str) -> Self {
        Literal::Str(v.to_string())
    }
}
impl From<bool> for Literal {
    fn from(v: bool) -> Self {
        Literal::Bool(v)
    }
}

impl Expr {
    fn bin(&self, op: &str, other: Expr) -> Expr {
        Expr(format!("({} {op} {})", self.0, other.0))
    }
    fn agg(&self, f: &str) -> Expr {
        Expr(format!("{f}({})", self.0))
    }
    /// `self > other`.
    pub fn gt(&self, other: Expr) -> Expr {
        self.bin(">", other)
    }
    /// `self >= other`.
    pub fn ge(&self, other: Expr) -> Expr {
        self.bin(">=", other)
    }
    /// `self < other`.
    pub fn lt(&self, other: Expr) -> Expr {
        self.bin("<", other)
    }
    /// `self <= other`.
    pub fn le(&self, other: Expr) -> Expr {
        self.bin("<=", other)
    }
    /// `self = other`.
    pub fn is_equal(&self, other: Expr) -> Expr {
        self.bin("=", other)
    }
    /// `self <> other`.
    pub fn is_not_equal(&self, other: Expr) -> Expr {
        self.bin("<>", other)
    }
    /// `self AND other`.
    pub fn and(&self, other: Expr) -> Expr {
        self.bin("AND", other)
    }
    /// `self OR other`.
    pub fn or(&self, other: Expr) -> Expr {
        self.bin("OR", other)
    }
    /// `NOT self`.
    pub fn not(&self) -> Expr {
        Expr(format!("(NOT {})", self.0))
    }
    /// `self + other`.
    pub fn plus(&self, other: Expr) -> Expr {
        self.bin("+", other)
    }
    /// `self - other`.
    pub fn minus(&self, other: Expr) -> Expr {
        self.bin("-", other)
    }
    /// `self * other`.
    pub fn times(&self, other: Expr) -> Expr {
        self.bin("*", other)
    }
    /// `self / other`.
    pub fn divided_by(&self, other: Expr) -> Expr {
        self.bin("/", other)
    }
    /// `self IS NULL`.
    pub fn is_null(&self) -> Expr {
        Expr(format!("({} IS NULL)", self.0))
    }
    /// `self LIKE pattern`.
    pub fn like(&self, pattern: &str) -> Expr {
        self.bin("LIKE", lit(pattern))
    }
    /// `COUNT(self)`.
    pub fn count(&self) -> Expr {
        self.agg("COUNT")
    }
    /// `COUNT(DISTINCT self)`.
    pub fn count_distinct(&self) -> Expr {
        Expr(format!("COUNT(DISTINCT {})", self.0))
    }
    /// `SUM(self)`.
    pub fn sum(&self) -> Expr {
        self.agg("SUM")
    }
    /// `AVG(self)`.
    pub fn avg(&self) -> Expr {
        self.agg("AVG")
    }
    /// `MIN(self)`.
    pub fn min(&self) -> Expr {
        self.agg("MIN")
    }
    /// `MAX(self)`.
    pub fn max(&self) -> Expr {
        self.agg("MAX")
    }
    /// `UPPER(self)`.
    pub fn upper_case(&self) -> Expr {
        self.agg("UPPER")
    }
    /// `LOWER(self)`.
    pub fn lower_case(&self) -> Expr {
        self.agg("LOWER")
    }
    /// The result named `name` (`AS`).
    pub fn as_(&self, name: &str) -> Expr {
        Expr(format!("{} AS {}", self.0, quote_ident(name)))
    }
}

/// `COUNT(*)`.
pub fn count_star() -> Expr {
    Expr("COUNT(*)".into())
}
