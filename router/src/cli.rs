//! What `routerctl` and the applications' subcommands ([`crate::apps::AppCmd`]) share to
//! print answers.

use serde_json::Value;

/// Print a line; a closed stdout (`routerctl stats | head`) ends the program quietly, as a
/// Unix filter should, instead of println!'s panic.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
