//! SQL values, rows and their types.
//!
//! A [`Row`] carries its changelog kind (Flink's `RowKind`: `+I`, `-U`, `+U`, `-D`) and
//! its values; it crosses rings through an explicit, length-prefixed encoding that
//! never trusts the bytes (a malformed frame is a [`DecodeError`]).

use spate_dataplane::record::{DecodeError, Wire};
use std::fmt;
use std::sync::Arc;

/// A column's type (Flink's names; `DESCRIBE` shows them so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DataType {
    /// `BOOLEAN`.
    Boolean,
    /// `TINYINT`.
    TinyInt,
    /// `SMALLINT`.
    SmallInt,
    /// `INT`.
    Int,
    /// `BIGINT`.
    BigInt,
    /// `FLOAT`.
    Float,
    /// `DOUBLE`.
    Double,
    /// `STRING` (`VARCHAR`, `CHAR`).
    String,
    /// `TIMESTAMP(3)`: milliseconds since the epoch, shown in UTC.
    Timestamp,
    /// `TIMESTAMP_LTZ(3)`: milliseconds since the epoch (the session zone is UTC).
    TimestampLtz,
    /// An `INTERVAL` literal (milliseconds); no column has this type.
    Interval,
    /// The type of a bare `NULL` literal.
    Null,
}

impl DataType {
    /// Integer types.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Self::TinyInt | Self::SmallInt | Self::Int | Self::BigInt
        )
    }
    /// Numeric types.
    pub fn is_numeric(self) -> bool {
        self.is_integer() || matches!(self, Self::Float | Self::Double)
    }
    /// Timestamps (with or without a local time zone).
    pub fn is_timestamp(self) -> bool {
        matches!(self, Self::Timestamp | Self::TimestampLtz)
    }
    /// The wider of two numeric types (for arithmetic and comparison).
    pub fn wider(a: Self, b: Self) -> Self {
        fn rank(t: DataType) -> u8 {
            match t {
                DataType::TinyInt => 1,
                DataType::SmallInt => 2,
                DataType::Int => 3,
                DataType::BigInt => 4,
                DataType::Float => 5,
                DataType::Double => 6,
                _ => 0,
            }
        }
        if a == Self::Null {
            return b;
        }
        if b == Self::Null || rank(a) >= rank(b) {
            a
        } else {
            b
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Boolean => "BOOLEAN",
            Self::TinyInt => "TINYINT",
            Self::SmallInt => "SMALLINT",
            Self::Int => "INT",
            Self::BigInt => "BIGINT",
            Self::Float => "FLOAT",
            Self::Double => "DOUBLE",
            Self::String => "STRING",
            Self::Timestamp => "TIMESTAMP(3)",
            Self::TimestampLtz => "TIMESTAMP_LTZ(3)",
            Self::Interval => "INTERVAL",
            Self::Null => "NULL",
        })
    }
}

/// One value of a row.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// SQL `NULL`.
    #[default]
    Null,
    /// A `BOOLEAN`.
    Bool(bool),
    /// Any integer type.
    Int(i64),
    /// `FLOAT` or `DOUBLE`.
    Double(f64),
    /// A string.
    Str(Arc<str>),
    /// A timestamp or an interval, in milliseconds.
    Ts(i64),
}

impl Value {
    /// Whether this is `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }
    /// The value as an `i64`, if it is an integer or a timestamp.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) | Self::Ts(i) => Some(*i),
            _ => None,
        }
    }
    /// The value as an `f64`, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Double(d) => Some(*d),
            _ => None,
        }
    }
    /// The value as a `bool` (`None` for `NULL`).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// SQL's ordering of two non-null values of comparable types (`None` when either is
    /// `NULL` or they do not compare).
    pub fn sql_cmp(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) | (Self::Ts(a), Self::Ts(b)) => Some(a.cmp(b)),
            (Self::Int(_) | Self::Double(_), Self::Int(_) | Self::Double(_)) => {
                self.as_f64()?.partial_cmp(&other.as_f64()?)
            }
            (Self::Str(a), Self::Str(b)) => Some(a.cmp(b)),
            (Self::Bool(a), Self::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// Formats the value as Flink shows one of type `ty` (timestamps as
    /// `yyyy-MM-dd HH:mm:ss.SSS`, `NULL` as `<NULL>` in tables, `null` in rows).
    pub fn display(&self, ty: DataType) -> String {
        match self {
            Self::Null => "<NULL>".into(),
            Self::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
            Self::Int(i) => i.to_string(),
            Self::Double(d) => format_double(*d),
            Self::Str(s) => s.to_string(),
            Self::Ts(ms) if ty == DataType::Interval => format!("{ms} ms"),
            Self::Ts(ms) => format_timestamp(*ms),
        }
    }
}

/// A double as Java's `Double.toString` shows common values (`1.0`, `0.25`, `1.0E10`).
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = d.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        let s = format!("{d:E}");
        // Java writes at least one digit after the point: 1.0E10.
        return match s.split_once('E') {
            Some((m, e)) if !m.contains('.') => format!("{m}.0E{e}"),
            _ => s,
        };
    }
    let s = format!("{d}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) as days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as `yyyy-MM-dd HH:mm:ss.SSS` (UTC).
pub fn format_timestamp(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Milliseconds since the epoch as Java's `LocalDateTime.toString` shows them (as
/// Flink prints rows): `2024-01-01T00:00`, `2024-01-01T00:00:05`,
/// `2024-01-01T00:00:05.250`.
pub fn java_local_date_time(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}",
        rem / 3_600_000,
        rem / 60_000 % 60
    );
    let (sec, milli) = (rem / 1000 % 60, rem % 1000);
    if sec != 0 || milli != 0 {
        s.push_str(&format!(":{sec:02}"));
    }
    if milli != 0 {
        s.push_str(&format!(".{milli:03}"));
    }
    s
}

/// Parses `yyyy-MM-dd[ HH:mm[:ss[.SSS]]]` (or with a `T`) as milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    // Years 0000-9999 (as SQL's TIMESTAMP): nothing a user types overflows below.
    if dp.next().is_some()
        || !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(t) = time {
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let mut tp = hms.split(':');
        let h: i64 = tp.next()?.parse().ok()?;
        let mi: i64 = tp.next()?.parse().ok()?;
        let sec: i64 = match tp.next() {
            Some(x) => x.parse().ok()?,
            None => 0,
        };
        if tp.next().is_some()
            || !(0..=23).contains(&h)
            || !(0..=59).contains(&mi)
            || !(0..=59).contains(&sec)
        {
            return None;
        }
        ms += (h * 3600 + mi * 60 + sec) * 1000;
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits: String = f.chars().chain(std::iter::repeat('0')).take(3).collect();
            ms += digits.parse::<i64>().ok()?;
        }
    }
    Some(ms)
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Null, Self::Null) => true,
            (Self::Bool(a), Self::Bool(b)) => a == b,
            (Self::Int(a), Self::Int(b)) | (Self::Ts(a), Self::Ts(b)) => a == b,
            // Keys compare by bits, so that NaN groups with itself.
            (Self::Double(a), Self::Double(b)) => a.to_bits() == b.to_bits(),
            (Self::Str(a), Self::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Self::Null => 0u8.hash(h),
            Self::Bool(b) => (1u8, b).hash(h),
            Self::Int(i) => (2u8, i).hash(h),
            Self::Double(d) => (3u8, d.to_bits()).hash(h),
            Self::Str(s) => (4u8, s).hash(h),
            Self::Ts(t) => (5u8, t).hash(h),
        }
    }
}

/// A changelog row's kind (Flink's `RowKind`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum RowKind {
    /// `+I`: an insertion.
    #[default]
    Insert,
    /// `-U`: the row an update retracts.
    UpdateBefore,
    /// `+U`: the row an update brings.
    UpdateAfter,
    /// `-D`: a deletion.
    Delete,
}

impl RowKind {
    /// Flink's short string: `+I`, `-U`, `+U`, `-D`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Insert => "+I",
            Self::UpdateBefore => "-U",
            Self::UpdateAfter => "+U",
            Self::Delete => "-D",
        }
    }
    /// Whether the row adds to a result (`+I`, `+U`) rather than retracts from it.
    pub fn is_accumulate(self) -> bool {
        matches!(self, Self::Insert | Self::UpdateAfter)
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Insert,
            1 => Self::UpdateBefore,
            2 => Self::UpdateAfter,
            3 => Self::Delete,
            _ => return None,
        })
    }
}

/// A row of a dynamic table: its changelog kind and its values.
#[derive(Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// `+I`, `-U`, `+U` or `-D`.
    pub kind: RowKind,
    /// The values, in the schema's column order.
    pub values: Vec<Value>,
}

impl Row {
    /// An insertion of `values`.
    pub fn insert(values: Vec<Value>) -> Self {
        Self {
            kind: RowKind::Insert,
            values,
        }
    }
    /// The value at `i` (`NULL` past the end).
    pub fn get(&self, i: usize) -> &Value {
        static NULL: Value = Value::Null;
        self.values.get(i).unwrap_or(&NULL)
    }
}

/// Flink's print format: `+I[1, abc, 2024-01-01 00:00:00.000]` (`null` for NULL).
impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.kind.short())?;
        for (i, v) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match v {
                Value::Null => f.write_str("null")?,
                Value::Ts(ms) => f.write_str(&java_local_date_time(*ms))?,
                Value::Bool(b) => write!(f, "{b}")?,
                v => f.write_str(&v.display(DataType::Null))?,
            }
        }
        f.write_str("]")
    }
}

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_DOUBLE: u8 = 4;
const TAG_STR: u8 = 5;
const TAG_TS: u8 = 6;

/// Wire layout: kind (1 byte), value count (u16 LE), then per value a tag byte and its
/// payload (8 bytes LE for integers, doubles and timestamps; a u32 LE length and UTF-8
/// bytes for strings; nothing for NULL and booleans).
impl Wire for Row {
    fn encoded_len(&self) -> usize {
        3 + self
            .values
            .iter()
            .map(|v| match v {
                Value::Null | Value::Bool(_) => 1,
                Value::Int(_) | Value::Double(_) | Value::Ts(_) => 9,
                Value::Str(s) => 5 + s.len(),
            })
            .sum::<usize>()
    }

    fn encode(&self, buf: &mut [u8]) {
        let n = u16::try_from(self.values.len()).unwrap_or(u16::MAX);
        let mut w = Writer { buf, at: 0 };
        w.put(&[self.kind as u8]);
        w.put(&n.to_le_bytes());
        for v in self.values.iter().take(usize::from(n)) {
            match v {
                Value::Null => w.put(&[TAG_NULL]),
                Value::Bool(false) => w.put(&[TAG_FALSE]),
                Value::Bool(true) => w.put(&[TAG_TRUE]),
                Value::Int(i) => {
                    w.put(&[TAG_INT]);
                    w.put(&i.to_le_bytes());
                }
                Value::Double(d) => {
                    w.put(&[TAG_DOUBLE]);
                    w.put(&d.to_bits().to_le_bytes());
                }
                Value::Ts(t) => {
                    w.put(&[TAG_TS]);
                    w.put(&t.to_le_bytes());
                }
                Value::Str(s) => {
                    w.put(&[TAG_STR]);
                    w.put(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
                    w.put(s.as_bytes());
                }
            }
        }
    }

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let err = |reason| DecodeError {
            ty: "spate::sql::Row",
            len: buf.len(),
            reason,
        };
        let mut r = Reader { buf, at: 0 };
        let kind = RowKind::from_byte(r.byte().ok_or_else(|| err("no row kind"))?)
            .ok_or_else(|| err("unknown row kind"))?;
        let n = u16::from_le_bytes(r.array().ok_or_else(|| err("no value count"))?);
        let mut values = Vec::with_capacity(usize::from(n).min(buf.len()));
        for _ in 0..n {
            let v = match r.byte().ok_or_else(|| err("truncated value"))? {
                TAG_NULL => Value::Null,
                TAG_FALSE => Value::Bool(false),
                TAG_TRUE => Value::Bool(true),
                TAG_INT => Value::Int(i64::from_le_bytes(
                    r.array().ok_or_else(|| err("truncated integer"))?,
                )),
                TAG_DOUBLE => Value::Double(f64::from_bits(u64::from_le_bytes(
                    r.array().ok_or_else(|| err("truncated double"))?,
                ))),
                TAG_TS => Value::Ts(i64::from_le_bytes(
                    r.array().ok_or_else(|| err("truncated timestamp"))?,
                )),
                TAG_STR => {
                    let len = u32::from_le_bytes(r.array().ok_or_else(|| err("truncated string"))?);
                    let bytes = r
                        .take(usize::try_from(len).map_err(|_| err("string too long"))?)
                        .ok_or_else(|| err("truncated string"))?;
                    let s = std::str::from_utf8(bytes).map_err(|_| err("string not UTF-8"))?;
                    Value::Str(Arc::from(s))
                }
                _ => return Err(err("unknown value tag")),
            };
            values.push(v);
        }
        if r.at != buf.len() {
            return Err(err("bytes after the last value"));
        }
        Ok(Row { kind, values })
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_malformed_frames_are_errors() {
        let row = Row {
            kind: RowKind::UpdateAfter,
            values: vec![
                Value::Null,
                Value::Bool(true),
                Value::Int(-7),
                Value::Double(2.5),
                Value::Str("héllo".into()),
                Value::Ts(1_700_000_000_123),
            ],
        };
        let mut buf = vec![0u8; row.encoded_len()];
        row.encode(&mut buf);
        assert_eq!(Row::decode(&buf).unwrap(), row);
        for cut in 0..buf.len() {
            assert!(Row::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[0] = 9;
        assert!(Row::decode(&bad).is_err());
        let mut extra = buf.clone();
        extra.push(0);
        assert!(Row::decode(&extra).is_err());
    }

    #[test]
    fn timestamps_and_doubles_print_as_flink_prints_them() {
        assert_eq!(format_timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(
            format_timestamp(1_700_000_000_123),
            "2023-11-14 22:13:20.123"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999");
        assert_eq!(
            parse_timestamp("2023-11-14 22:13:20.123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_timestamp("2024-02-29"),
            Some(days_from_civil(2024, 2, 29) * 86_400_000)
        );
        assert_eq!(parse_timestamp("2024-13-01"), None);
        for d in [-100_000i64, -1, 0, 1, 59, 365, 10_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(format_double(1.0), "1.0");
        assert_eq!(format_double(0.25), "0.25");
        assert_eq!(format_double(1e10), "1.0E10");
        let r = Row::insert(vec![Value::Int(1), Value::Str("a".into()), Value::Null]);
        assert_eq!(format!("{r:?}"), "+I[1, a, null]");
    }
}
