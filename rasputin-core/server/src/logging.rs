//! rasputind's logs: text, or one JSON object per line with the timestamp,
//! level, node id, target, message and fields, to --logfile or standard
//! error, filtered by --log-level.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Flags, LogFormat};

/// Starts logging as `flags` say. `node_id` is None when the flags name no
/// valid node; the daemon then reports that and stops.
pub fn init(flags: &Flags, node_id: Option<u64>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .map_err(|error| format!("--log-level {:?} is not a tracing filter: {error}", flags.log_level))?;
    let writer = match &flags.logfile {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| format!("cannot open --logfile {}: {error}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(writer);
    match flags.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines { node_id }).init(),
    }
    Ok(())
}

/// One JSON object per event. Written here rather than with
/// tracing-subscriber's json feature so that every line, from every
/// thread, carries the node's id.
struct JsonLines {
    node_id: Option<u64>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        line.insert("node_id".into(), self.node_id.map_or(Value::Null, Value::from));
        line.insert("target".into(), Value::String(metadata.target().to_string()));
        line.insert("message".into(), Value::String(fields.message));
        line.insert("fields".into(), Value::Object(fields.values));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's message, and its other fields as JSON values.
#[derive(Default)]
struct Fields {
    message: String,
    values: Map<String, Value>,
}

impl Fields {
    fn insert(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
        } else {
            self.values.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }
}
