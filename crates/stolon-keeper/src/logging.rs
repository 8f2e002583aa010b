//! Log output in the shape of Stolon's zap console encoder, because Stolon's tests grep it:
//! `<time>\t<LEVEL>\t<target>\t<message>\t{"key": "value", ...}` on stderr.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The zap-like event formatter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZapFormat;

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((
                field.name().to_string(),
                serde_json::Value::String(value.into()),
            ));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((
                field.name().to_string(),
                serde_json::Value::String(format!("{value:?}")),
            ));
        }
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
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "DEBUG",
        };
        let mut f = Fields::default();
        event.record(&mut f);
        let mut line = format!(
            "{ts}\t{level}\t{}\t{}",
            event.metadata().target(),
            f.message
        );
        if !f.fields.is_empty() {
            line.push('\t');
            line.push('{');
            for (i, (k, v)) in f.fields.iter().enumerate() {
                if i > 0 {
                    line.push_str(", ");
                }
                let _ = write!(line, "{}: {}", serde_json::Value::String(k.clone()), v);
            }
            line.push('}');
        }
        writeln!(w, "{line}")
    }
}

/// Installs the global subscriber writing to stderr at `level` (`debug`, `info`, `warn`,
/// `error`); `RUST_LOG` may refine it.
pub fn init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(ZapFormat)
        .try_init();
}
