//! One log setup for every stolon binary.
//!
//! The default layout is Stolon's: zap's console encoder with zap's development encoder config,
//! as Stolon configures it, on stderr:
//!
//! ```text
//! 2026-01-02T15:04:05.123Z<TAB>INFO<TAB>stolon-keeper/runtime.rs:42<TAB>our db requested role is master<TAB>{"keeper": "k1"}
//! ```
//!
//! (`<TAB>` is a tab; time with milliseconds, capital level, coloured on a terminal or with `--log-color`, the
//! caller as `<crate>/<file>:<line>`, the message, then the fields as one JSON object).
//! `--log-format json` writes one JSON object per line instead, for log pipelines.
//!
//! Fatal errors go through [`fatal`]: one line at level FATAL, then exit 1. Warnings found
//! before it are logged first ([`warn_all`]), so nothing a user needs is lost.

use std::fmt::{Display, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::OnceLock;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log line layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Stolon's console layout (tab-separated).
    #[default]
    Console,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `--log-format` (`console` or `json`).
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "" | "console" => Ok(LogFormat::Console),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "invalid log format: {other:?} (valid: console, json)"
            )),
        }
    }
}

/// How a binary logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// Colour the level; `None`: only when stderr is a terminal (Stolon's rule).
    pub color: Option<bool>,
    /// Layout.
    pub format: LogFormat,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            level: "info".into(),
            color: None,
            format: LogFormat::Console,
        }
    }
}

/// The layout every line of this process uses (also for [`fatal`] before [`init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Colour the level.
    pub color: bool,
    /// Console or JSON.
    pub format: LogFormat,
}

static LAYOUT: OnceLock<Layout> = OnceLock::new();

fn layout() -> Layout {
    LAYOUT.get().copied().unwrap_or(Layout {
        color: std::io::stderr().is_terminal(),
        format: LogFormat::Console,
    })
}

/// Installs the global subscriber: `opts.level` for stolon's own lines, warnings only from the
/// network libraries; `RUST_LOG`, when set, replaces the filter.
pub fn init(opts: &LogOptions) {
    let lay = Layout {
        color: opts
            .color
            .unwrap_or_else(|| std::io::stderr().is_terminal()),
        format: opts.format,
    };
    let _ = LAYOUT.set(lay);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::try_new(format!(
            "{},h2=warn,tower=warn,hyper=warn,hyper_util=warn,tonic=warn,kube=warn,rustls=warn",
            opts.level
        ))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(ZapFormat(lay))
        .try_init();
}

/// Logs every warning, in order, at WARN.
pub fn warn_all<W: Display>(warnings: impl IntoIterator<Item = W>) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Logs `msg` at FATAL (one line, in the process's layout, caller = where `fatal` was called)
/// and exits with status 1.
#[track_caller]
pub fn fatal(msg: impl Display) -> ! {
    let loc = std::panic::Location::caller();
    let line = render(
        layout(),
        now(),
        "FATAL",
        &short_caller(loc.file(), Some(loc.line())),
        &msg.to_string(),
        &[],
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
    std::process::exit(1);
}

/// zap's `CapitalColorLevelEncoder` colours.
fn colored(level: &str) -> String {
    let code = match level {
        "DEBUG" => 35,
        "INFO" => 34,
        "WARN" => 33,
        _ => 31,
    };
    format!("\x1b[{code}m{level}\x1b[0m")
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// zap's ISO8601 encoder with milliseconds (`2006-01-02T15:04:05.000Z0700`), in UTC.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// zap's short caller (`package/file.go:line`) for Rust: `<crate>/<path under src>:<line>`
/// for workspace files, the last two path components otherwise.
pub fn short_caller(file: &str, line: Option<u32>) -> String {
    let file = file.replace('\\', "/");
    let short = match file.split_once("/src/") {
        Some((head, rest)) => {
            let krate = head.rsplit('/').next().unwrap_or(head);
            format!("{krate}/{rest}")
        }
        None => {
            let parts: Vec<&str> = file.rsplitn(3, '/').collect();
            match parts.as_slice() {
                [f, d, ..] => format!("{d}/{f}"),
                _ => file.clone(),
            }
        }
    };
    match line {
        Some(l) => format!("{short}:{l}"),
        None => short,
    }
}

/// One log line (no newline).
pub fn render(
    lay: Layout,
    t: time::OffsetDateTime,
    level: &str,
    caller: &str,
    msg: &str,
    fields: &[(String, Value)],
) -> String {
    let ts = format_time(t);
    match lay.format {
        LogFormat::Console => {
            let lvl = if lay.color {
                colored(level)
            } else {
                level.to_string()
            };
            let mut line = format!("{ts}\t{lvl}\t{caller}\t{msg}");
            if !fields.is_empty() {
                line.push_str("\t{");
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        line.push_str(", ");
                    }
                    let _ = write!(line, "{}: {}", Value::String(k.clone()), v);
                }
                line.push('}');
            }
            line
        }
        LogFormat::Json => {
            let mut m = serde_json::Map::new();
            m.insert("level".into(), Value::String(level.to_ascii_lowercase()));
            m.insert("ts".into(), Value::String(ts));
            m.insert("caller".into(), Value::String(caller.into()));
            m.insert("msg".into(), Value::String(msg.into()));
            for (k, v) in fields {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Value::Object(m).to_string()
        }
    }
}

/// The tracing event formatter producing [`render`]'s lines.
#[derive(Debug, Clone, Copy)]
pub struct ZapFormat(pub Layout);

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, v: Value) {
        if field.name() == "message" {
            self.message = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.push((field.name().to_string(), v));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, Value::String(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for ZapFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        let caller = match meta.file() {
            Some(f) => short_caller(f, meta.line()),
            None => meta.target().to_string(),
        };
        let mut f = Fields::default();
        event.record(&mut f);
        writeln!(
            w,
            "{}",
            render(self.0, now(), level, &caller, &f.message, &f.fields)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> time::OffsetDateTime {
        time::macros::datetime!(2026-01-02 15:04:05.123456 UTC)
    }

    #[test]
    fn console_layout_is_zaps() {
        let lay = Layout {
            color: false,
            format: LogFormat::Console,
        };
        assert_eq!(
            render(
                lay,
                t(),
                "INFO",
                "stolon-keeper/main.rs:7",
                "keeper uid",
                &[]
            ),
            "2026-01-02T15:04:05.123Z\tINFO\tstolon-keeper/main.rs:7\tkeeper uid"
        );
        let fields = vec![
            ("uid".to_string(), json!("k1")),
            ("n".to_string(), json!(3)),
        ];
        assert_eq!(
            render(lay, t(), "WARN", "c.rs:1", "m", &fields),
            "2026-01-02T15:04:05.123Z\tWARN\tc.rs:1\tm\t{\"uid\": \"k1\", \"n\": 3}"
        );
        let color = Layout { color: true, ..lay };
        assert_eq!(
            render(color, t(), "FATAL", "c.rs:1", "m", &[]),
            "2026-01-02T15:04:05.123Z\t\x1b[31mFATAL\x1b[0m\tc.rs:1\tm"
        );
        assert!(render(color, t(), "INFO", "c", "m", &[]).contains("\x1b[34mINFO\x1b[0m"));
    }

    #[test]
    fn json_layout_is_one_object() {
        let lay = Layout {
            color: true,
            format: LogFormat::Json,
        };
        let line = render(
            lay,
            t(),
            "ERROR",
            "c.rs:1",
            "boom",
            &[("k".into(), json!("v"))],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"level": "error", "ts": "2026-01-02T15:04:05.123Z", "caller": "c.rs:1", "msg": "boom", "k": "v"})
        );
        assert!(!line.contains('\x1b'), "never coloured");
    }

    #[test]
    fn callers_are_short() {
        assert_eq!(
            short_caller("crates/stolon-keeper/src/runtime.rs", Some(12)),
            "stolon-keeper/runtime.rs:12"
        );
        assert_eq!(
            short_caller("/x/crates/stolon-core/src/sentinel/mod.rs", Some(1)),
            "stolon-core/sentinel/mod.rs:1"
        );
        assert_eq!(short_caller("a/b/c.rs", None), "b/c.rs");
        assert_eq!(short_caller("c.rs", Some(2)), "c.rs:2");
    }

    #[test]
    fn formats_parse() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("console"), Ok(LogFormat::Console));
        assert_eq!(
            LogFormat::parse("xml").unwrap_err(),
            "invalid log format: \"xml\" (valid: console, json)"
        );
    }
}
