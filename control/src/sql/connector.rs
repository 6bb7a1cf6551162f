//! Table connectors (`'connector' = '...'`): `datagen` and `nexmark` generate,
//! `filesystem` reads and writes, `print` and `blackhole` write. Each checks its options when the table is created: an unknown
//! option or a bad value is an error that names it.

use super::plan::{PlanNode, Rel};
use super::types::{format_double, format_timestamp, parse_timestamp, DataType, Row, Value};
use super::{Column, SqlError, TableDef};
use crate::api::{DataStream, StreamExecutionEnvironment};
use spate_dataplane::checkpoint::{decode_state, encode_state, StateError};
use spate_dataplane::operator::source::{Source, SourceStatus};
use spate_dataplane::operator::SubtaskInfo;
use spate_dataplane::record::{DecodeError, Wire};
use spate_dataplane::slot::TaskError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CONNECTORS: &str = "datagen, nexmark, print, blackhole, filesystem, socket";

fn connector(def: &TableDef) -> Result<&str, SqlError> {
    def.options
        .get("connector")
        .map(String::as_str)
        .ok_or_else(|| {
            SqlError::new(format!(
                "table '{}' has no 'connector' option (one of {CONNECTORS})",
                def.name
            ))
        })
}

pub(crate) fn unknown_option(def: &TableDef, key: &str, takes: &str) -> SqlError {
    SqlError::new(format!(
        "table '{}': unknown option '{key}' for connector '{}' (it takes {takes})",
        def.name,
        def.options.get("connector").map_or("", String::as_str)
    ))
}

/// Checks a table's connector and options.
pub fn validate(def: &TableDef) -> Result<(), SqlError> {
    match connector(def)? {
        "datagen" => Datagen::from_table(def).map(|_| ()),
        "nexmark" => super::nexmark::Nexmark::from_table(def).map(|_| ()),
        "print" | "blackhole" => {
            for k in def.options.keys() {
                if k != "connector" {
                    return Err(unknown_option(def, k, "no options"));
                }
            }
            Ok(())
        }
        "filesystem" => FileFormat::from_table(def).map(|_| ()),
        "socket" => SocketOptions::from_table(def).map(|_| ()),
        other => Err(SqlError::new(format!(
            "table '{}': unknown connector '{other}' (spate has {CONNECTORS})",
            def.name
        ))),
    }
}

/// The rows of a source table.
pub fn source(
    env: &StreamExecutionEnvironment,
    def: &TableDef,
    _config: &BTreeMap<String, String>,
) -> Result<DataStream<Row>, SqlError> {
    match connector(def)? {
        "datagen" => Ok(indexed_source(env, def, Datagen::from_table(def)?)),
        "nexmark" => Ok(indexed_source(
            env,
            def,
            super::nexmark::Nexmark::from_table(def)?,
        )),
        "socket" => {
            let opts = SocketOptions::from_table(def)?;
            let cols = Arc::new(def.physical.clone());
            let name = format!("Source: {}", def.name);
            Ok(env.add_source(&name, true, move |_| {
                Ok(SocketSource {
                    opts: opts.clone(),
                    cols: cols.clone(),
                    stream: None,
                    pending: Vec::new(),
                    line: 0,
                    ended: false,
                })
            }))
        }
        "filesystem" => {
            let table = Arc::new(FileTable::of(def)?);
            let name = format!("Source: {}", def.name);
            Ok(env.add_split_source(&name, true, move |info: SubtaskInfo| {
                Ok(FileSource::new(table.clone(), info))
            }))
        }
        other => Err(SqlError::new(format!(
            "table '{}': connector '{other}' is a sink only; it cannot be read",
            def.name
        ))),
    }
}

/// How long a lookup join keeps a filesystem table's rows before it reads the
/// files again: `'lookup.join.cache.ttl'`, Flink's key, 60 minutes unless set.
fn lookup_ttl(def: &TableDef) -> Result<Duration, SqlError> {
    let Some(v) = def.options.get("lookup.join.cache.ttl") else {
        return Ok(Duration::from_secs(3600));
    };
    crate::config::parse_duration(v)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            SqlError::new(format!(
                "table '{}': 'lookup.join.cache.ttl' = '{v}' is not a positive duration (for instance '10 min' or '500 ms')",
                def.name
            ))
        })
}

/// A `filesystem` table as a lookup join reads it: whole, and again each time its
/// cache's time to live has passed.
#[derive(Debug)]
pub struct LookupSource {
    table: FileTable,
    name: String,
    ttl: Duration,
}

impl LookupSource {
    /// The table `def` as a lookup join reads it.
    pub fn of(def: &TableDef) -> Result<Self, SqlError> {
        Ok(Self {
            table: FileTable::of(def)?,
            name: def.name.clone(),
            ttl: lookup_ttl(def)?,
        })
    }

    /// How long rows read are used before the files are read again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every row of the table's files, as they are now.
    pub fn read(&self) -> Result<Vec<Row>, String> {
        self.table
            .read_all()
            .map_err(|e| format!("lookup table '{}': {e}", self.name))
    }
}

/// Sends `rel` into the table `def`.
pub fn sink(rel: &Rel, def: &TableDef) -> Result<PlanNode, SqlError> {
    let c = connector(def)?;
    let label = format!("Sink(table=[[{}]], connector=[{c}])", def.name);
    let name = format!("Sink: {}", def.name);
    match c {
        "print" => {
            rel.stream.print().name(&name);
        }
        "blackhole" => {
            rel.stream.discard().name(&name);
        }
        "filesystem" => {
            if !rel.append_only {
                return Err(SqlError::new(format!(
                    "table '{}': the filesystem sink takes only insertions, and the query produces updates (an unbounded GROUP BY): write it to 'print' or 'blackhole', or use a window aggregate",
                    def.name
                )));
            }
            let format = FileFormat::from_table(def)?;
            let path = format.path.clone();
            if def.partition_keys.is_empty() {
                let cols = def.physical.clone();
                rel.stream
                    .map(move |r: Row| Line(format.line(&cols, &r)))
                    .name("Format")
                    .sink_to_files(path)
                    .name(&name);
            } else {
                // Each row into its partition's directory, without the partition
                // columns (their values name the directory).
                let table = FileTable::of(def)?;
                let keys = table.keys.clone();
                let names: Vec<String> = keys.iter().map(|&k| table.cols[k].name.clone()).collect();
                let data = table.data.clone();
                rel.stream
                    .map(move |mut r: Row| {
                        let mut dir = String::new();
                        for (n, &k) in names.iter().zip(&keys) {
                            if !dir.is_empty() {
                                dir.push('/');
                            }
                            dir.push_str(n);
                            dir.push('=');
                            match r.values.get(k) {
                                None | Some(Value::Null) => dir.push_str(DEFAULT_PARTITION),
                                Some(v) => dir.push_str(&escape_partition(&plain(v))),
                            }
                        }
                        let mut i = 0;
                        r.values.retain(|_| {
                            i += 1;
                            !keys.contains(&(i - 1))
                        });
                        PartitionLine(format!("{dir}\n{}", format.line(&data, &r)))
                    })
                    .name("Format")
                    .sink_to_bucketed_files(path, |l: &PartitionLine| l.dir().to_string())
                    .name(&name);
            }
        }
        other => {
            return Err(SqlError::new(format!(
                "table '{}': connector '{other}' is a source only; it cannot be written",
                def.name
            )))
        }
    }
    Ok(PlanNode {
        label,
        inputs: vec![rel.plan.clone()],
    })
}

/// Prints a query's changelog (a `SELECT` in a script run as a job).
pub fn print_rel(rel: &Rel) {
    rel.stream.print().name("Sink: print");
}

/// A formatted output line (written as is).
#[derive(Clone, PartialEq, Eq)]
pub struct Line(pub String);

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Wire for Line {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn encode(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.0.as_bytes());
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        std::str::from_utf8(buf)
            .map(|s| Line(s.to_owned()))
            .map_err(|_| DecodeError {
                ty: "Line",
                len: buf.len(),
                reason: "invalid UTF-8",
            })
    }
}

/// A formatted line and its partition's directory (`dir\nline`): written as the
/// line, into the directory.
#[derive(Clone, PartialEq, Eq)]
pub struct PartitionLine(pub String);

impl PartitionLine {
    fn dir(&self) -> &str {
        self.0.split_once('\n').map_or("", |(d, _)| d)
    }
}

impl std::fmt::Debug for PartitionLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.split_once('\n').map_or(&self.0[..], |(_, l)| l))
    }
}

impl Wire for PartitionLine {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn encode(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.0.as_bytes());
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Line::decode(buf).map(|l| PartitionLine(l.0))
    }
}

// ---------------------------------------------------------------------------------
// filesystem

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Csv,
    Json,
}

#[derive(Clone, Debug)]
struct FileFormat {
    path: String,
    format: Format,
}

impl FileFormat {
    fn from_table(def: &TableDef) -> Result<Self, SqlError> {
        for k in def.options.keys() {
            if !matches!(
                k.as_str(),
                "connector" | "path" | "format" | "lookup.join.cache.ttl"
            ) {
                return Err(unknown_option(
                    def,
                    k,
                    "'path', 'format' and 'lookup.join.cache.ttl'",
                ));
            }
        }
        lookup_ttl(def)?;
        let path = def
            .options
            .get("path")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                SqlError::new(format!(
                    "table '{}': the filesystem connector needs a 'path' (a directory)",
                    def.name
                ))
            })?;
        let path = path.strip_prefix("file://").unwrap_or(path).to_string();
        crate::security::check_job_path(
            std::path::Path::new(&path),
            &format!("table '{}': the path", def.name),
        )
        .map_err(SqlError::new)?;
        let format = match def.options.get("format").map(String::as_str) {
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            Some(f) => {
                return Err(SqlError::new(format!(
                    "table '{}': unknown format '{f}' (csv or json)",
                    def.name
                )))
            }
            None => {
                return Err(SqlError::new(format!(
                    "table '{}': the filesystem connector needs a 'format' (csv or json)",
                    def.name
                )))
            }
        };
        Ok(Self { path, format })
    }

    fn line(&self, cols: &[Column], r: &Row) -> String {
        let mut s = String::new();
        match self.format {
            Format::Csv => {
                for (i, v) in r.values.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    match v {
                        // NULL is an empty field; an empty string is quoted ("").
                        Value::Null => {}
                        Value::Str(x) if x.is_empty() || x.contains([',', '"', '\n', '\r']) => {
                            s.push('"');
                            s.push_str(&x.replace('"', "\"\""));
                            s.push('"');
                        }
                        v => s.push_str(&plain(v)),
                    }
                }
            }
            Format::Json => {
                s.push('{');
                for (i, (c, v)) in cols.iter().zip(&r.values).enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&json_string(&c.name));
                    s.push(':');
                    match v {
                        Value::Null => s.push_str("null"),
                        Value::Str(x) => s.push_str(&json_string(x)),
                        Value::Ts(_) => s.push_str(&json_string(&plain(v))),
                        Value::Double(d) if !d.is_finite() => s.push_str("null"),
                        v => s.push_str(&plain(v)),
                    }
                }
                s.push('}');
            }
        }
        s
    }
}

/// The files of a filesystem table: the file at `path`, or the files of the
/// directory at `path` in name order (hidden files and files in progress, whose names
/// start with `.` or `_`, skipped; subdirectories read in turn).
fn files_of(path: &str) -> Result<Vec<std::path::PathBuf>, String> {
    let p = std::path::Path::new(path);
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read '{path}': {e}"))?;
    if meta.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![p.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| format!("cannot list '{}': {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|e| {
                e.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && !n.starts_with('_'))
            })
            .collect();
        entries.sort();
        for e in entries.into_iter().rev() {
            if e.is_dir() {
                dirs.push(e);
            } else {
                out.push(e);
            }
        }
    }
    // The stack took directories last-first: restore name order overall.
    out.sort();
    Ok(out)
}

/// The fields of a CSV line: `None` for an empty unquoted field (NULL); quoted fields
/// may hold commas and doubled quotes.
fn csv_fields(line: &str) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut f = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        f.push('"');
                    }
                    Some('"') => break,
                    Some(c) => f.push(c),
                    None => return Err("a quoted field has no closing quote".into()),
                }
            }
            out.push(Some(f));
            match chars.next() {
                None => return Ok(out),
                Some(',') => {}
                Some(c) => return Err(format!("'{c}' after a quoted field")),
            }
        } else {
            let mut f = String::new();
            let mut end = true;
            for c in chars.by_ref() {
                if c == ',' {
                    end = false;
                    break;
                }
                f.push(c);
            }
            out.push((!f.is_empty()).then_some(f));
            if end {
                return Ok(out);
            }
        }
    }
}

/// A field's text as a value of `ty`.
fn parse_field(text: &str, ty: DataType) -> Result<Value, String> {
    let v = super::expr::convert(Value::Str(text.into()), DataType::String, ty);
    if v.is_null() {
        return Err(format!("'{text}' is not a valid {ty}"));
    }
    Ok(v)
}

impl FileFormat {
    /// A line of a file as a row of `cols`.
    fn parse(&self, cols: &[Column], line: &str) -> Result<Row, String> {
        let mut values = Vec::with_capacity(cols.len());
        match self.format {
            Format::Csv => {
                let fields = csv_fields(line)?;
                if fields.len() != cols.len() {
                    return Err(format!(
                        "{} fields, and the table has {} columns",
                        fields.len(),
                        cols.len()
                    ));
                }
                for (f, c) in fields.iter().zip(cols) {
                    values.push(match f {
                        None => Value::Null,
                        Some(t) if c.ty == DataType::String => Value::Str(t.as_str().into()),
                        Some(t) => parse_field(t, c.ty).map_err(|e| format!("{}: {e}", c.name))?,
                    });
                }
            }
            Format::Json => {
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
                for c in cols {
                    values.push(match obj.get(&c.name) {
                        None | Some(serde_json::Value::Null) => Value::Null,
                        Some(serde_json::Value::String(t)) if c.ty == DataType::String => {
                            Value::Str(t.as_str().into())
                        }
                        Some(serde_json::Value::String(t)) => {
                            parse_field(t, c.ty).map_err(|e| format!("{}: {e}", c.name))?
                        }
                        Some(serde_json::Value::Bool(b)) if c.ty == DataType::Boolean => {
                            Value::Bool(*b)
                        }
                        Some(serde_json::Value::Number(n)) if !c.ty.is_timestamp() => {
                            let v = match (n.as_i64(), n.as_f64()) {
                                (Some(i), _) => Value::Int(i),
                                (None, Some(d)) => Value::Double(d),
                                _ => Value::Null,
                            };
                            let from = if matches!(v, Value::Int(_)) {
                                DataType::BigInt
                            } else {
                                DataType::Double
                            };
                            let v = super::expr::convert(v, from, c.ty);
                            if v.is_null() || c.ty == DataType::Boolean {
                                return Err(format!("{}: {n} is not a {}", c.name, c.ty));
                            }
                            v
                        }
                        Some(other) => {
                            return Err(format!("{}: {other} is not a {}", c.name, c.ty));
                        }
                    });
                }
            }
        }
        Ok(Row::insert(values))
    }
}

/// A filesystem table as read: its format, columns, and partition columns (whose
/// values come from the directories, `k=v/...`, not the lines).
#[derive(Debug)]
struct FileTable {
    format: FileFormat,
    cols: Vec<Column>,
    /// The columns the lines hold (all but the partition columns).
    data: Vec<Column>,
    /// The partition columns' positions.
    keys: Vec<usize>,
}

impl FileTable {
    fn of(def: &TableDef) -> Result<Self, SqlError> {
        let keys: Vec<usize> = def
            .partition_keys
            .iter()
            .filter_map(|k| def.physical.iter().position(|c| c.name == *k))
            .collect();
        Ok(Self {
            format: FileFormat::from_table(def)?,
            cols: def.physical.clone(),
            data: def
                .physical
                .iter()
                .enumerate()
                .filter(|(i, _)| !keys.contains(i))
                .map(|(_, c)| c.clone())
                .collect(),
            keys,
        })
    }

    /// The partition values of a file (from the `k=v` directories it is under).
    fn partition_values(&self, file: &std::path::Path) -> Result<Vec<Value>, String> {
        let mut out = Vec::with_capacity(self.keys.len());
        for &k in &self.keys {
            let c = &self.cols[k];
            // Only the directories under the table's own path name partitions.
            let under = file
                .strip_prefix(&self.format.path)
                .unwrap_or(file)
                .parent();
            let seg = under
                .into_iter()
                .flat_map(|p| p.components())
                .filter_map(|x| x.as_os_str().to_str())
                .filter_map(|x| x.split_once('='))
                .filter(|(n, _)| *n == c.name)
                .map(|(_, v)| v)
                .next_back();
            out.push(match seg {
                None | Some(DEFAULT_PARTITION) => Value::Null,
                Some(v) => {
                    let v = unescape_partition(v);
                    if c.ty == DataType::String {
                        Value::Str(v.as_str().into())
                    } else {
                        parse_field(&v, c.ty)
                            .map_err(|e| format!("{}: partition {}: {e}", file.display(), c.name))?
                    }
                }
            });
        }
        Ok(out)
    }

    /// A line of a file whose partition values are `parts`, as a row.
    fn row(&self, line: &str, parts: &[Value]) -> Result<Row, String> {
        let data = self.format.parse(&self.data, line)?;
        if self.keys.is_empty() {
            return Ok(data);
        }
        let mut data = data.values.into_iter();
        let values = (0..self.cols.len())
            .map(|i| match self.keys.iter().position(|&k| k == i) {
                Some(p) => parts[p].clone(),
                None => data.next().unwrap_or(Value::Null),
            })
            .collect();
        Ok(Row::insert(values))
    }

    /// Whether a CSV record read so far ends inside a quoted field (an odd number of
    /// quotes: its line break is the field's).
    fn continues(&self, record: &str) -> bool {
        self.format.format == Format::Csv && record.matches('"').count() % 2 == 1
    }

    /// Whether a line holds no record: blank JSON, or an empty CSV line of a table with
    /// several data columns (with one, it is a row whose value is NULL).
    fn blank(&self, line: &str) -> bool {
        match self.format.format {
            Format::Json => line.trim().is_empty(),
            Format::Csv => line.is_empty() && self.data.len() > 1,
        }
    }

    /// Every row of the table's files (a lookup table's contents).
    fn read_all(&self) -> Result<Vec<Row>, String> {
        let mut rows = Vec::new();
        for f in files_of(&self.format.path)? {
            let parts = self.partition_values(&f)?;
            let text = std::fs::read_to_string(&f)
                .map_err(|e| format!("cannot read '{}': {e}", f.display()))?;
            let mut lines = text.lines().enumerate();
            while let Some((n, first)) = lines.next() {
                // A quoted CSV field may hold line breaks: the record goes on.
                let mut record = first.to_string();
                while self.continues(&record) {
                    match lines.next() {
                        Some((_, more)) => {
                            record.push('\n');
                            record.push_str(more);
                        }
                        None => break,
                    }
                }
                if self.blank(&record) {
                    continue;
                }
                rows.push(
                    self.row(&record, &parts)
                        .map_err(|e| format!("{}, line {}: {e}", f.display(), n + 1))?,
                );
            }
        }
        Ok(rows)
    }
}

/// A NULL partition value's directory name (Flink's and Hive's).
const DEFAULT_PARTITION: &str = "__DEFAULT_PARTITION__";

/// A partition value as a directory name: characters a path cannot hold (and `%`)
/// as `%XX`, as Flink's `PartitionPathUtils.escapePathName` writes them.
pub(crate) fn escape_partition(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            )
        {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape_partition(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One subtask's share of a filesystem table: of all its files' lines (in name
/// order), those whose number is its index modulo the parallelism. Its position is
/// the lines read.
struct FileSource {
    table: Arc<FileTable>,
    index: u64,
    parallelism: u64,
    /// The files, listed at the first poll.
    files: Option<Vec<std::path::PathBuf>>,
    /// The file being read (its position in `files`), its reader, the lines read
    /// from it, and its partition values.
    open: Option<(usize, std::io::BufReader<std::fs::File>, u64, Vec<Value>)>,
    next_file: usize,
    /// Lines read, over all files.
    lines: u64,
    /// Lines to read past before emitting (after a restore).
    skip_to: u64,
    buf: String,
}

impl FileSource {
    fn new(table: Arc<FileTable>, info: SubtaskInfo) -> Self {
        Self {
            table,
            index: info.index as u64,
            parallelism: info.parallelism.max(1) as u64,
            files: None,
            open: None,
            next_file: 0,
            lines: 0,
            skip_to: 0,
            buf: String::new(),
        }
    }
}

impl Source<Row> for FileSource {
    fn poll(&mut self, out: &mut Vec<Row>, max: usize, _: u64) -> Result<SourceStatus, TaskError> {
        use std::io::BufRead;
        if self.files.is_none() {
            self.files = Some(files_of(&self.table.format.path).map_err(TaskError)?);
        }
        let files = self.files.as_deref().unwrap_or_default();
        let mut emitted = 0;
        while emitted < max {
            if self.open.is_none() {
                let Some(f) = files.get(self.next_file) else {
                    return Ok(if emitted == 0 {
                        SourceStatus::Done
                    } else {
                        SourceStatus::Emitted(emitted)
                    });
                };
                let file = std::fs::File::open(f)
                    .map_err(|e| TaskError(format!("cannot read '{}': {e}", f.display())))?;
                let parts = self.table.partition_values(f).map_err(TaskError)?;
                self.open = Some((self.next_file, std::io::BufReader::new(file), 0, parts));
                self.next_file += 1;
            }
            let Some((k, reader, line_no, parts)) = self.open.as_mut() else {
                continue;
            };
            self.buf.clear();
            let n = reader
                .read_line(&mut self.buf)
                .map_err(|e| TaskError(format!("cannot read '{}': {e}", files[*k].display())))?;
            if n == 0 {
                self.open = None;
                continue;
            }
            *line_no += 1;
            let first_line = *line_no;
            // A quoted CSV field may hold line breaks: the record goes on.
            while self
                .table
                .continues(self.buf.trim_end_matches(['\n', '\r']))
            {
                let more = reader.read_line(&mut self.buf).map_err(|e| {
                    TaskError(format!("cannot read '{}': {e}", files[*k].display()))
                })?;
                if more == 0 {
                    break;
                }
                *line_no += 1;
            }
            let line_no = first_line;
            let line = self.buf.trim_end_matches(['\n', '\r']);
            if self.table.blank(line) {
                continue;
            }
            let mine = self.lines % self.parallelism == self.index;
            self.lines += 1;
            if !mine || self.lines <= self.skip_to {
                continue;
            }
            let row = self.table.row(line, parts).map_err(|e| {
                TaskError(format!("{}, line {}: {e}", files[*k].display(), line_no))
            })?;
            out.push(row);
            emitted += 1;
        }
        Ok(SourceStatus::Emitted(emitted))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&self.lines).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.skip_to = decode_state(state)?;
        self.lines = 0;
        self.open = None;
        self.next_file = 0;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// socket

/// The `socket` connector's options (Flink's: `hostname`, `port`, `byte-delimiter`,
/// `format`).
#[derive(Clone, Debug)]
struct SocketOptions {
    host: String,
    port: u16,
    delimiter: u8,
    format: FileFormat,
}

impl SocketOptions {
    fn from_table(def: &TableDef) -> Result<Self, SqlError> {
        for k in def.options.keys() {
            if !matches!(
                k.as_str(),
                "connector" | "hostname" | "port" | "byte-delimiter" | "format"
            ) {
                return Err(unknown_option(
                    def,
                    k,
                    "'hostname', 'port', 'byte-delimiter' and 'format'",
                ));
            }
        }
        let bad = |m: String| SqlError::new(format!("table '{}': {m}", def.name));
        let host = def
            .options
            .get("hostname")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("the socket connector needs a 'hostname'".into()))?
            .clone();
        let port = def
            .options
            .get("port")
            .ok_or_else(|| bad("the socket connector needs a 'port'".into()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(format!("'port': '{port}' is not a port (1 to 65535)")))?;
        let delimiter = match def.options.get("byte-delimiter") {
            None => b'\n',
            Some(d) => d
                .parse::<u8>()
                .map_err(|_| bad(format!("'byte-delimiter': '{d}' is not a byte (0 to 255)")))?,
        };
        let format = match def.options.get("format").map(String::as_str) {
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            Some(f) => return Err(bad(format!("unknown format '{f}' (csv or json)"))),
            None => {
                return Err(bad(
                    "the socket connector needs a 'format' (csv or json)".into()
                ))
            }
        };
        Ok(Self {
            host,
            port,
            delimiter,
            format: FileFormat {
                path: String::new(),
                format,
            },
        })
    }
}

/// Reads delimited records from a TCP server (as Flink's socket source: one
/// subtask, and its position is not checkpointed, so a restore reads on from where
/// the connection is then). The input ends when the server closes the connection.
struct SocketSource {
    opts: SocketOptions,
    cols: Arc<Vec<Column>>,
    stream: Option<std::net::TcpStream>,
    /// Bytes read and not yet a whole record.
    pending: Vec<u8>,
    /// Records read (for error messages).
    line: u64,
    /// The server closed the connection: the input ended.
    ended: bool,
}

impl SocketSource {
    fn connect(&self) -> Result<std::net::TcpStream, TaskError> {
        use std::net::ToSocketAddrs;
        let (host, port) = (&self.opts.host, self.opts.port);
        let fail = |e: std::io::Error| TaskError(format!("socket source {host}:{port}: {e}"));
        let mut last = None;
        for addr in (host.as_str(), port).to_socket_addrs().map_err(fail)? {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)) {
                Ok(s) => {
                    s.set_nonblocking(true).map_err(fail)?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(fail(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
        })))
    }

    /// Parses the whole records in `pending` (and, at the end, the rest).
    fn records(&mut self, out: &mut Vec<Row>, end: bool) -> Result<usize, TaskError> {
        let d = self.opts.delimiter;
        let mut n = 0;
        let mut start = 0;
        while let Some(k) = self.pending[start..].iter().position(|b| *b == d) {
            n += self.record(start, start + k, out)?;
            start += k + 1;
        }
        if end && start < self.pending.len() {
            n += self.record(start, self.pending.len(), out)?;
            start = self.pending.len();
        }
        self.pending.drain(..start);
        Ok(n)
    }

    fn record(&mut self, from: usize, to: usize, out: &mut Vec<Row>) -> Result<usize, TaskError> {
        self.line += 1;
        let text = String::from_utf8_lossy(&self.pending[from..to]);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return Ok(0);
        }
        let row = self.opts.format.parse(&self.cols, text).map_err(|e| {
            TaskError(format!(
                "socket source {}:{}, record {}: {e}",
                self.opts.host, self.opts.port, self.line
            ))
        })?;
        out.push(row);
        Ok(1)
    }
}

impl Source<Row> for SocketSource {
    fn poll(&mut self, out: &mut Vec<Row>, _max: usize, _: u64) -> Result<SourceStatus, TaskError> {
        use std::io::Read;
        if self.ended {
            return Ok(SourceStatus::Done);
        }
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(SourceStatus::Emitted(0));
        };
        let mut buf = [0u8; 16 * 1024];
        match stream.read(&mut buf) {
            Ok(0) => {
                let n = self.records(out, true)?;
                self.stream = None;
                self.ended = true;
                Ok(if n == 0 {
                    SourceStatus::Done
                } else {
                    SourceStatus::Emitted(n)
                })
            }
            Ok(k) => {
                self.pending.extend_from_slice(&buf[..k]);
                Ok(SourceStatus::Emitted(self.records(out, false)?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(SourceStatus::Emitted(0)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(SourceStatus::Emitted(0)),
            Err(e) => Err(TaskError(format!(
                "socket source {}:{}: {e}",
                self.opts.host, self.opts.port
            ))),
        }
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => format_double(*d),
        Value::Str(s) => s.to_string(),
        Value::Ts(ms) => format_timestamp(*ms),
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

// ---------------------------------------------------------------------------------
// datagen

#[derive(Clone, Debug)]
enum Gen {
    Sequence {
        start: i64,
    },
    Int {
        min: i64,
        max: i64,
    },
    Double {
        min: f64,
        max: f64,
    },
    Str {
        length: usize,
    },
    Bool,
    Timestamp {
        start_ms: Option<i64>,
        max_past_ms: i64,
    },
}

#[derive(Clone, Debug)]
struct Field {
    ty: DataType,
    gen: Gen,
    null_rate: f64,
}

/// Flink's `datagen` connector, deterministic: row `i` (counted over all subtasks) is
/// a function of the seed and `i` alone, so a replay, a restore or a reference
/// computation sees the same rows.
///
/// Options: `rows-per-second` (default 10000; `0`: as fast as possible),
/// `number-of-rows` (default: unbounded), `seed` (spate's, default 0), and per field
/// `fields.F.kind` (`random` or `sequence`), `.min`, `.max` (random numbers),
/// `.start`, `.end` (sequences; for a TIMESTAMP, `.start` is its first value),
/// `.length` (random strings, default 100), `.max-past` (how far a random TIMESTAMP
/// may lag the row's scheduled time), `.null-rate`.
///
/// Subtask `s` of `p` generates rows `s, s + p, s + 2p, …`. A sequence field is
/// `start + i`; the source ends when a sequence does, or after `number-of-rows`. A
/// TIMESTAMP field is the row's scheduled time, `start + i / rows-per-second` (one row
/// per millisecond when unpaced; `start` defaults to the wall clock when the job
/// starts), minus a random lag up to `max-past`.
#[derive(Clone, Debug)]
pub struct Datagen {
    fields: Vec<Field>,
    /// Values a row has room for: its fields and the table's computed columns, which
    /// the scan adds to the same row.
    row_capacity: usize,
    /// Rows in all (`None`: unbounded).
    pub rows: Option<u64>,
    rows_per_second: f64,
    seed: u64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Datagen {
    /// The generator a `datagen` table declares.
    pub fn from_table(def: &TableDef) -> Result<Self, SqlError> {
        let err = |m: String| SqlError::new(format!("table '{}': {m}", def.name));
        let opt = |k: &str| def.options.get(k).map(String::as_str);
        let num = |k: &str, v: &str| -> Result<f64, SqlError> {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(format!("option '{k}' takes a number, not '{v}'")))
        };
        let int = |k: &str, v: &str| -> Result<i64, SqlError> {
            v.trim()
                .parse::<i64>()
                .map_err(|_| err(format!("option '{k}' takes an integer, not '{v}'")))
        };
        for k in def.options.keys() {
            let ok = match k.as_str() {
                "connector" | "rows-per-second" | "number-of-rows" | "seed" => true,
                _ => match k.strip_prefix("fields.").and_then(|r| r.rsplit_once('.')) {
                    Some((field, attr)) => {
                        if !def.physical.iter().any(|c| c.name == field) {
                            return Err(err(format!(
                                "option '{k}': the table has no column '{field}'"
                            )));
                        }
                        matches!(
                            attr,
                            "kind"
                                | "min"
                                | "max"
                                | "start"
                                | "end"
                                | "length"
                                | "max-past"
                                | "null-rate"
                        )
                    }
                    None => false,
                },
            };
            if !ok {
                return Err(unknown_option(
                    def,
                    k,
                    "'rows-per-second', 'number-of-rows', 'seed' and 'fields.<column>.{kind, min, max, start, end, length, max-past, null-rate}'",
                ));
            }
        }
        let rows_per_second = match opt("rows-per-second") {
            Some(v) => {
                let r = num("rows-per-second", v)?;
                if r < 0.0 {
                    return Err(err("'rows-per-second' cannot be negative".into()));
                }
                r
            }
            None => 10_000.0,
        };
        let mut rows = match opt("number-of-rows") {
            Some(v) => Some(
                u64::try_from(int("number-of-rows", v)?)
                    .map_err(|_| err("'number-of-rows' cannot be negative".into()))?,
            ),
            None => None,
        };
        let seed = match opt("seed") {
            Some(v) => int("seed", v)? as u64,
            None => 0,
        };
        let mut fields = Vec::new();
        for c in &def.physical {
            let f = |a: &str| {
                def.options
                    .get(&format!("fields.{}.{a}", c.name))
                    .map(String::as_str)
            };
            let key = |a: &str| format!("fields.{}.{a}", c.name);
            let kind = f("kind").unwrap_or("random");
            let gen = match (kind, c.ty) {
                ("sequence", t) if t.is_integer() || t == DataType::String => {
                    let (Some(s), Some(e)) = (f("start"), f("end")) else {
                        return Err(err(format!(
                            "a sequence field needs '{}' and '{}'",
                            key("start"),
                            key("end")
                        )));
                    };
                    let (start, end) = (int(&key("start"), s)?, int(&key("end"), e)?);
                    if end < start {
                        return Err(err(format!("'{}' is below '{}'", key("end"), key("start"))));
                    }
                    let n =
                        u64::try_from(i128::from(end) - i128::from(start) + 1).unwrap_or(u64::MAX);
                    rows = Some(rows.map_or(n, |r| r.min(n)));
                    Gen::Sequence { start }
                }
                ("sequence", t) => {
                    return Err(err(format!(
                        "column '{}': a sequence is of an integer type or STRING, not {t}",
                        c.name
                    )))
                }
                ("random", t) if t.is_integer() => {
                    let (lo, hi) = match t {
                        DataType::TinyInt => (i64::from(i8::MIN), i64::from(i8::MAX)),
                        DataType::SmallInt => (i64::from(i16::MIN), i64::from(i16::MAX)),
                        DataType::Int => (i64::from(i32::MIN), i64::from(i32::MAX)),
                        _ => (i64::MIN, i64::MAX),
                    };
                    let min = f("min")
                        .map(|v| int(&key("min"), v))
                        .transpose()?
                        .unwrap_or(lo);
                    let max = f("max")
                        .map(|v| int(&key("max"), v))
                        .transpose()?
                        .unwrap_or(hi);
                    if max < min || min < lo || max > hi {
                        return Err(err(format!(
                            "column '{}': need {lo} <= min <= max <= {hi}",
                            c.name
                        )));
                    }
                    Gen::Int { min, max }
                }
                ("random", DataType::Float | DataType::Double) => {
                    let min = f("min")
                        .map(|v| num(&key("min"), v))
                        .transpose()?
                        .unwrap_or(0.0);
                    let max = f("max")
                        .map(|v| num(&key("max"), v))
                        .transpose()?
                        .unwrap_or(1.0);
                    if max < min {
                        return Err(err(format!("column '{}': max is below min", c.name)));
                    }
                    Gen::Double { min, max }
                }
                ("random", DataType::String) => {
                    let length = match f("length") {
                        Some(v) => usize::try_from(int(&key("length"), v)?)
                            .ok()
                            .filter(|l| *l <= 1 << 20)
                            .ok_or_else(|| err(format!("'{}' is out of range", key("length"))))?,
                        None => 100,
                    };
                    Gen::Str { length }
                }
                ("random", DataType::Boolean) => Gen::Bool,
                ("random", t) if t.is_timestamp() => {
                    let start_ms = match f("start") {
                        Some(v) => Some(parse_timestamp(v).ok_or_else(|| {
                            err(format!(
                                "'{}' takes a timestamp as '2024-01-01 00:00:00', not '{v}'",
                                key("start")
                            ))
                        })?),
                        None => None,
                    };
                    let max_past_ms = match f("max-past") {
                        Some(v) => {
                            let d = crate::config::parse_duration(v).ok_or_else(|| {
                                err(format!("'{}': '{v}' is not a duration", key("max-past")))
                            })?;
                            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                        }
                        None => 0,
                    };
                    Gen::Timestamp {
                        start_ms,
                        max_past_ms,
                    }
                }
                ("random", t) => {
                    return Err(err(format!(
                        "column '{}': datagen cannot generate {t}",
                        c.name
                    )))
                }
                (k, _) => {
                    return Err(err(format!(
                        "'{}' is 'random' or 'sequence', not '{k}'",
                        key("kind")
                    )))
                }
            };
            let null_rate = match f("null-rate") {
                Some(v) => {
                    let r = num(&key("null-rate"), v)?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(err(format!("'{}' is between 0 and 1", key("null-rate"))));
                    }
                    r
                }
                None => 0.0,
            };
            fields.push(Field {
                ty: c.ty,
                gen,
                null_rate,
            });
        }
        Ok(Self {
            row_capacity: fields.len() + def.extras.computed.len(),
            fields,
            rows,
            rows_per_second,
            seed,
        })
    }

    /// Row `i`, with `now_ms` as the start of TIMESTAMP fields that declare none.
    pub fn row(&self, i: u64, now_ms: i64) -> Row {
        let mut values = Vec::with_capacity(self.row_capacity);
        for (k, f) in self.fields.iter().enumerate() {
            let h = splitmix(
                self.seed
                    ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
                    ^ i.wrapping_mul(0x9FB2_1C65_1E98_DF25),
            );
            if f.null_rate > 0.0 && unit(splitmix(h ^ 0x5555)) < f.null_rate {
                values.push(Value::Null);
                continue;
            }
            values.push(match &f.gen {
                Gen::Sequence { start, .. } => {
                    let v = start.saturating_add(i64::try_from(i).unwrap_or(i64::MAX));
                    if f.ty == DataType::String {
                        Value::Str(v.to_string().into())
                    } else {
                        Value::Int(v)
                    }
                }
                Gen::Int { min, max } => {
                    let span = (i128::from(*max) - i128::from(*min) + 1) as u128;
                    let off = u128::from(h) % span;
                    Value::Int((i128::from(*min) + off as i128) as i64)
                }
                Gen::Double { min, max } => {
                    let d = min + unit(h) * (max - min);
                    Value::Double(if f.ty == DataType::Float {
                        f64::from(d as f32)
                    } else {
                        d
                    })
                }
                Gen::Str { length } => {
                    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
                    let mut s = String::with_capacity(*length);
                    let mut x = h;
                    for n in 0..*length {
                        if n % 8 == 0 && n > 0 {
                            x = splitmix(x);
                        }
                        s.push(ALPHABET[(x % 36) as usize] as char);
                        x /= 36;
                    }
                    Value::Str(s.into())
                }
                Gen::Bool => Value::Bool(h & 1 == 1),
                Gen::Timestamp {
                    start_ms,
                    max_past_ms,
                } => {
                    let rate = if self.rows_per_second > 0.0 {
                        self.rows_per_second
                    } else {
                        1000.0
                    };
                    let at = (i as f64 * 1000.0 / rate) as i64;
                    let lag = if *max_past_ms > 0 {
                        (h % (*max_past_ms as u64 + 1)) as i64
                    } else {
                        0
                    };
                    Value::Ts(
                        start_ms
                            .unwrap_or(now_ms)
                            .saturating_add(at)
                            .saturating_sub(lag),
                    )
                }
            });
        }
        Row::insert(values)
    }
}

/// A table whose row `i` (counted over all subtasks) is a function of `i`: `datagen`
/// and `nexmark`.
pub(crate) trait IndexedRows: Send + Sync + 'static {
    /// Rows in all (`None`: unbounded).
    fn total(&self) -> Option<u64>;
    /// Rows per second over all subtasks to pace at (`None`: as fast as taken).
    fn pace(&self) -> Option<f64>;
    /// Row `i`; `now_ms` is when the source started, for event times of tables that
    /// declare no start of their own.
    fn row(&self, i: u64, now_ms: i64) -> Row;
}

impl IndexedRows for Datagen {
    fn total(&self) -> Option<u64> {
        self.rows
    }
    fn pace(&self) -> Option<f64> {
        (self.rows_per_second > 0.0).then_some(self.rows_per_second)
    }
    fn row(&self, i: u64, now_ms: i64) -> Row {
        Datagen::row(self, i, now_ms)
    }
}

/// The source of an [`IndexedRows`] table (parallel; bounded when the table is).
pub(crate) fn indexed_source<G: IndexedRows>(
    env: &StreamExecutionEnvironment,
    def: &TableDef,
    gen: G,
) -> DataStream<Row> {
    let name = format!("Source: {}", def.name);
    let bounded = gen.total().is_some();
    let gen = Arc::new(gen);
    let make = move |info: SubtaskInfo| Ok(IndexedSource::new(gen.clone(), info));
    env.add_split_source(&name, bounded, make)
}

/// One subtask's share of an [`IndexedRows`] table: rows `s, s + p, s + 2p, ...`,
/// paced at its share of the table's rate. Its position is the rows it emitted.
struct IndexedSource<G> {
    gen: Arc<G>,
    index: u64,
    parallelism: u64,
    /// Rows this subtask emitted.
    emitted: u64,
    /// When pacing started (ns, the task clock), set by the first poll.
    started_ns: Option<u64>,
    /// When the source first started (wall clock, ms), kept across restores.
    start_ms: i64,
}

impl<G> IndexedSource<G> {
    fn new(gen: Arc<G>, info: SubtaskInfo) -> Self {
        let start_ms = super::expr::now_ms();
        Self {
            gen,
            index: info.index as u64,
            parallelism: info.parallelism.max(1) as u64,
            emitted: 0,
            started_ns: None,
            start_ms,
        }
    }
}

impl<G: IndexedRows> Source<Row> for IndexedSource<G> {
    fn poll(
        &mut self,
        out: &mut Vec<Row>,
        max: usize,
        now_ns: u64,
    ) -> Result<SourceStatus, TaskError> {
        let mut n = max as u64;
        if let Some(total_rate) = self.gen.pace() {
            let rate = total_rate / self.parallelism as f64;
            let started = *self.started_ns.get_or_insert_with(|| {
                now_ns.saturating_sub((self.emitted as f64 / rate * 1e9) as u64)
            });
            let due = (now_ns.saturating_sub(started) as f64 * rate / 1e9) as u64 + 1;
            n = n.min(due.saturating_sub(self.emitted));
        }
        for k in 0..n {
            let i = self.index + self.emitted * self.parallelism;
            if self.gen.total().is_some_and(|t| i >= t) {
                return Ok(if k == 0 {
                    SourceStatus::Done
                } else {
                    SourceStatus::Emitted(k as usize)
                });
            }
            out.push(self.gen.row(i, self.start_ms));
            self.emitted += 1;
        }
        Ok(SourceStatus::Emitted(n as usize))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&(self.emitted, self.start_ms)).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (emitted, start_ms): (u64, i64) = decode_state(state)?;
        self.emitted = emitted;
        self.start_ms = start_ms;
        self.started_ns = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_fields_take_quotes_and_nulls() {
        let f = |l: &str| csv_fields(l).unwrap();
        assert_eq!(f("1,,x"), [Some("1".into()), None, Some("x".into())]);
        assert_eq!(f("\"a,b\",\"\""), [Some("a,b".into()), Some(String::new())]);
        assert_eq!(f("\"say \"\"hi\"\"\""), [Some("say \"hi\"".into())]);
        assert_eq!(f(""), [None]);
        assert!(csv_fields("\"open").is_err());
        assert!(csv_fields("\"a\"b").is_err());
    }
}
