//! rasputind: the Rasputin DB server.

use std::process::ExitCode;

use clap::Parser;
use rasputin_server::{run, Flags};

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Err(message) = init_logging(&flags) {
        eprintln!("rasputind: {message}");
        return ExitCode::from(2);
    }
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "rasputind stopped");
            eprintln!("rasputind: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}

/// Structured logs to --logfile (appending) or standard error; RUST_LOG sets the level.
fn init_logging(flags: &Flags) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match &flags.logfile {
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
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
