//! User scalar functions, registered from Rust (Flink's `ScalarFunction`): a binary
//! registers them before it runs, so that every process of a cluster built from it
//! plans the same SQL.
//!
//! ```
//! use spate::sql::functions::register;
//! use spate::sql::types::{DataType, Value};
//! register("twice", Some(1), DataType::BigInt, |args| match args[0] {
//!     Value::Int(i) => Value::Int(i * 2),
//!     _ => Value::Null,
//! });
//! ```

use super::types::{DataType, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The most arguments a user function takes (they are passed on the stack).
pub const MAX_ARGS: usize = 8;

/// A function's body: argument values to the result.
pub type ScalarFn = Arc<dyn Fn(&[Value]) -> Value + Send + Sync>;

/// A registered function.
#[derive(Clone)]
pub struct UserFunction {
    /// Its argument count (`None`: any, up to [`MAX_ARGS`]).
    pub arity: Option<usize>,
    /// Its result type.
    pub returns: DataType,
    /// The function: argument values to the result.
    pub call: ScalarFn,
}

fn registry() -> &'static RwLock<HashMap<String, UserFunction>> {
    static R: OnceLock<RwLock<HashMap<String, UserFunction>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers `name` (case-insensitive; a later registration replaces an earlier one).
pub fn register(
    name: &str,
    arity: Option<usize>,
    returns: DataType,
    f: impl Fn(&[Value]) -> Value + Send + Sync + 'static,
) {
    let mut r = match registry().write() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    r.insert(
        name.to_ascii_uppercase(),
        UserFunction {
            arity,
            returns,
            call: Arc::new(f),
        },
    );
}

/// The function registered as `name` (upper case).
pub fn lookup(name: &str) -> Option<UserFunction> {
    match registry().read() {
        Ok(r) => r.get(name).cloned(),
        Err(p) => p.into_inner().get(name).cloned(),
    }
}
