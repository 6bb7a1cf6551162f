//! `spate sql`: the SQL client. Runs a script (`-f FILE`, or standard input), or an
//! interactive session on a terminal: DDL and `SET` change the session, `SHOW
//! TABLES`, `DESCRIBE` and `EXPLAIN` print, and each `SELECT`, `INSERT` or statement
//! set runs as a job, on an embedded MiniCluster or (with `-m`) on a cluster.
//!
//! A job is the `sql` built-in job whose argument is the session's DDL and `SET`s
//! followed by the statement: what a cluster's TaskManagers declare is what the client
//! checked.

use crate::config::Config;
use crate::jobs::JobSpec;
use crate::minicluster::MiniCluster;
use crate::sql::parse::{self, Parsed};
use crate::sql::{self, Outcome, Session, SqlError};
use anyhow::{Context, Result};
use sqlparser::ast::Statement;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `spate sql`'s options.
#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// Run the statements of this file (stops at the first error).
    #[arg(short = 'f', long = "file", value_name = "SQL_FILE")]
    file: Option<PathBuf>,
    /// Run these SQL files first (table and view definitions), then the session.
    #[arg(short = 'i', long = "init", value_name = "SQL_FILE")]
    init: Vec<PathBuf>,
    /// Submit jobs to the JobManager's REST API at HOST:PORT (INSERTs detached)
    /// instead of running them on an embedded MiniCluster.
    #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
    jobmanager: Option<String>,
    /// Parallelism of the jobs (below `SET 'parallelism.default'`).
    #[arg(short = 'p', long)]
    parallelism: Option<usize>,
    /// Override a configuration key (repeatable).
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    defines: Vec<String>,
    /// Configuration directory (default: $SPATE_CONF_DIR, else ./conf).
    #[arg(long)]
    config_dir: Option<PathBuf>,
}

struct Client {
    args: SqlArgs,
    config: Config,
    session: Session,
    /// The DDL and `SET` statements that built the session, replayed before each job.
    history: Vec<String>,
    cancel: Arc<AtomicBool>,
}

/// Runs the SQL client; `Ok(false)` when a statement of a script failed.
pub fn main(args: SqlArgs) -> Result<bool> {
    let config = Config::load(&Config::dir(args.config_dir.as_deref()), &args.defines)?;
    crate::cli_client::use_secret_of(&config);
    spate_dataplane::clock::init();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    ctrlc::set_handler(move || c2.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let mut client = Client {
        args,
        config,
        session: Session::new(),
        history: vec![format!("SET '{}' = 'tableau'", sql::RESULT_MODE)],
        cancel,
    };
    client
        .session
        .config
        .insert(sql::RESULT_MODE.into(), "tableau".into());
    for path in client.args.init.clone() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if !client.script(&text)? {
            return Ok(false);
        }
    }
    if let Some(path) = client.args.file.clone() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return client.script(&text);
    }
    if !std::io::stdin().is_terminal() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading standard input")?;
        return client.script(&text);
    }
    client.interactive()
}

fn print_error(e: &SqlError) {
    println!("[ERROR] Could not execute SQL statement. Reason:\n{e}\n");
}

impl Client {
    fn script(&mut self, text: &str) -> Result<bool> {
        let statements = match parse::script(text) {
            Ok(s) => s,
            Err(e) => {
                print_error(&e);
                return Ok(false);
            }
        };
        self.run_all(statements)
    }

    /// Runs parsed statements in order (a statement set's INSERTs as one job); stops
    /// at the first error.
    fn run_all(&mut self, statements: Vec<Parsed>) -> Result<bool> {
        let mut i = 0;
        while i < statements.len() {
            let set = statements[i].statement_set;
            let mut j = i + 1;
            if set.is_some() {
                while j < statements.len() && statements[j].statement_set == set {
                    j += 1;
                }
            }
            let ok = match self.run(&statements[i..j]) {
                Ok(()) => true,
                Err(e) => {
                    print_error(&e);
                    false
                }
            };
            if !ok {
                return Ok(false);
            }
            i = j;
        }
        Ok(true)
    }

    fn interactive(&mut self) -> Result<bool> {
        eprintln!(
            "spate SQL client: end statements with ';' (they may span lines), quit with QUIT; or Ctrl-D; Ctrl-C clears the line or cancels a running job."
        );
        // Line editing and history (kept in ~/.spate_sql_history) where the terminal
        // allows it, else plain lines from standard input.
        let mut editor = rustyline::DefaultEditor::new().ok();
        let history = std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".spate_sql_history"));
        if let (Some(ed), Some(h)) = (editor.as_mut(), &history) {
            let _ = ed.load_history(h);
        }
        let stdin = std::io::stdin();
        let mut buf = String::new();
        loop {
            let prompt = if buf.is_empty() { "spate SQL> " } else { "> " };
            let line = match editor.as_mut() {
                Some(ed) => match ed.readline(prompt) {
                    Ok(l) => {
                        if !l.trim().is_empty() {
                            let _ = ed.add_history_entry(l.as_str());
                        }
                        l + "\n"
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => {
                        buf.clear();
                        continue;
                    }
                    Err(rustyline::error::ReadlineError::Eof) => break,
                    Err(e) => return Err(anyhow::anyhow!("reading the terminal: {e}")),
                },
                None => {
                    eprint!("{prompt}");
                    std::io::stderr().flush().ok();
                    let mut l = String::new();
                    if stdin.lock().read_line(&mut l)? == 0 {
                        break;
                    }
                    l
                }
            };
            buf.push_str(&line);
            let t = buf.trim();
            if t.is_empty() {
                buf.clear();
                continue;
            }
            if !t.ends_with(';') {
                continue;
            }
            let stmt = std::mem::take(&mut buf);
            let upper = stmt
                .trim()
                .trim_end_matches(';')
                .trim()
                .to_ascii_uppercase();
            if upper == "QUIT" || upper == "EXIT" {
                break;
            }
            match parse::script(&stmt) {
                Ok(s) if s.iter().any(|p| p.statement_set.is_some()) && !upper.ends_with("END") => {
                    // A statement set goes on until its END.
                    buf = stmt;
                }
                Ok(s) => {
                    self.cancel.store(false, Ordering::Relaxed);
                    self.run_all(s)?;
                }
                Err(e) if e.message.contains("no END") => buf = stmt,
                Err(e) => print_error(&e),
            }
        }
        if let (Some(ed), Some(h)) = (editor.as_mut(), &history) {
            let _ = ed.save_history(h);
        }
        eprintln!();
        Ok(true)
    }

    /// Runs one statement, or the INSERTs of one statement set.
    fn run(&mut self, group: &[Parsed]) -> Result<(), SqlError> {
        let Some(first) = group.first() else {
            return Ok(());
        };
        // Check it (and learn its shape) on a scratch environment.
        let scratch = crate::api::StreamExecutionEnvironment::new("check");
        let mut outcomes = Vec::new();
        for p in group {
            outcomes.push(self.session.execute(&scratch, p)?);
        }
        match outcomes.remove(0) {
            Outcome::Done(msg) => {
                if matches!(
                    first.statement,
                    Statement::Set(sqlparser::ast::Set::SingleAssignment { .. })
                        | Statement::CreateTable(_)
                        | Statement::CreateView(_)
                        | Statement::Drop { .. }
                ) {
                    self.history.push(first.text.clone());
                }
                println!("{msg}\n");
            }
            Outcome::Table { header, rows } => println!("{}", sql::format_table(&header, &rows)),
            Outcome::Explain(text) => println!("{text}"),
            Outcome::Query(rel) => {
                let widths = sql::tableau_widths(&rel.schema);
                let mode = self
                    .session
                    .config
                    .get(sql::RESULT_MODE)
                    .map(String::as_str);
                let tableau = mode == Some("tableau");
                if mode == Some("table") && self.args.jobmanager.is_none() {
                    return self.table_result(&first.text, &rel.schema);
                }
                if tableau {
                    println!("{}", sql::tableau_header(&rel.schema, &widths));
                }
                let rows = self.job(&first.text, false)?;
                if tableau {
                    println!("{}", sql::tableau_footer(&widths));
                    if let Some(n) = rows {
                        println!(
                            "Received a total of {n} row{}\n",
                            if n == 1 { "" } else { "s" }
                        );
                    }
                }
            }
            Outcome::Insert { .. } => {
                let body = if group.len() > 1 || first.statement_set.is_some() {
                    let inner: Vec<&str> = group.iter().map(|p| p.text.as_str()).collect();
                    format!("EXECUTE STATEMENT SET BEGIN\n{};\nEND", inner.join(";\n"))
                } else {
                    first.text.clone()
                };
                println!("[INFO] Submitting SQL update statement to the cluster...");
                if let Some(n) = self.job(&body, true)? {
                    println!("[INFO] SQL update statement finished: {n} rows written.\n");
                }
            }
        }
        Ok(())
    }

    /// A `SELECT` in `table` result mode: the result kept as a table (the changelog
    /// applied), redrawn on a terminal as rows come, shown whole at the end.
    fn table_result(&mut self, statement: &str, schema: &[sql::Column]) -> Result<(), SqlError> {
        let buf: sql::TableBuffer = Arc::default();
        sql::set_table_sink(Some(buf.clone()));
        let mut view = TableView {
            schema: schema.to_vec(),
            rows: Vec::new(),
            live: std::io::stdout().is_terminal(),
            started: std::time::Instant::now(),
        };
        let result = self.job_with(statement, false, Duration::from_millis(200), &mut |_| {
            view.take(&buf);
            if view.live {
                view.draw(false);
            }
        });
        sql::set_table_sink(None);
        view.take(&buf);
        view.draw(true);
        result.map(|_| ())
    }

    /// Runs a job of the session's history and `statement` (an `insert` is submitted
    /// to a cluster detached); the rows its sinks took when it ran locally.
    fn job(&mut self, statement: &str, insert: bool) -> Result<Option<u64>, SqlError> {
        self.job_with(statement, insert, Duration::from_secs(1), &mut |_| {})
    }

    /// As [`Self::job`], calling `on_progress` every `interval` while it runs.
    fn job_with(
        &mut self,
        statement: &str,
        insert: bool,
        interval: Duration,
        on_progress: &mut dyn FnMut(&crate::minicluster::Progress),
    ) -> Result<Option<u64>, SqlError> {
        let mut script = self.history.join(";\n");
        script.push_str(";\n");
        script.push_str(statement);
        script.push_str(";\n");
        let fail = |e: String| SqlError::new(e);
        let mut spec = JobSpec::new("sql");
        spec.args = vec![script];
        spec.parallelism = self.args.parallelism;
        if let Some(m) = &self.args.jobmanager {
            spec.config = self.args.defines.clone();
            // A SELECT's rows come back through the JobManager as the job runs.
            let (ok, rows) = crate::cli_client::run_counting(m, &spec, insert)
                .map_err(|e| fail(format!("{e:#}")))?;
            if !ok {
                return Err(fail("the job failed".into()));
            }
            return Ok((!insert).then_some(rows));
        }
        spec.runtime_mode = Some(self.config.runtime_mode);
        spec.auto_watermark_interval_ns =
            Some(u64::try_from(self.config.auto_watermark_interval.as_nanos()).unwrap_or(u64::MAX));
        spec.max_parallelism = self.config.max_parallelism;
        let graph = spec
            .job_graph(self.config.default_parallelism, self.config.chaining)
            .map_err(fail)?;
        let mut cluster = MiniCluster::start(&self.config).map_err(|e| fail(e.to_string()))?;
        self.cancel.store(false, Ordering::Relaxed);
        let result = cluster
            .execute(&graph, &self.cancel, interval, on_progress)
            .map_err(|e| fail(e.to_string()))?;
        std::io::stdout().flush().ok();
        if let crate::minicluster::JobStatus::Failed(why) = &result.status {
            return Err(fail(format!("the job failed: {why}")));
        }
        Ok(Some(result.progress.records))
    }
}

/// A `table` result: the rows a changelog leaves.
struct TableView {
    schema: Vec<sql::Column>,
    rows: Vec<Vec<sql::types::Value>>,
    /// Redrawn in place on a terminal.
    live: bool,
    started: std::time::Instant,
}

impl TableView {
    /// Applies the changes that came since the last call.
    fn take(&mut self, buf: &sql::TableBuffer) {
        use sql::types::RowKind;
        let changes = match buf.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(_) => return,
        };
        for r in changes {
            match r.kind {
                RowKind::Insert | RowKind::UpdateAfter => self.rows.push(r.values),
                RowKind::UpdateBefore | RowKind::Delete => {
                    if let Some(i) = self.rows.iter().position(|x| *x == r.values) {
                        self.rows.remove(i);
                    }
                }
            }
        }
    }

    /// Shows the table (on a terminal, over the last drawing; `last`: all of it).
    fn draw(&self, last: bool) {
        const SHOWN: usize = 40;
        let header: Vec<String> = self.schema.iter().map(|c| c.name.clone()).collect();
        let limit = if last { usize::MAX } else { SHOWN };
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .take(limit)
            .map(|r| {
                r.iter()
                    .zip(&self.schema)
                    .map(|(v, c)| {
                        if v.is_null() {
                            "<NULL>".to_string()
                        } else {
                            v.display(c.ty)
                        }
                    })
                    .collect()
            })
            .collect();
        let mut out = String::new();
        if self.live {
            // Home and clear: the table replaces the last drawing.
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&sql::format_table(&header, &cells));
        out.push('\n');
        if self.rows.len() > cells.len() {
            out.push_str(&format!(
                "... and {} more rows\n",
                self.rows.len() - cells.len()
            ));
        }
        let n = self.rows.len();
        if last {
            out.push_str(&format!(
                "{n} row{} in the result\n\n",
                if n == 1 { "" } else { "s" }
            ));
        } else {
            out.push_str(&format!(
                "Refresh: 200 ms   Rows: {n}   Running: {:.1} s   (Ctrl-C stops the query)\n",
                self.started.elapsed().as_secs_f64()
            ));
        }
        print!("{out}");
        std::io::stdout().flush().ok();
    }
}
