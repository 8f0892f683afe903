//! rasputind: the Rasputin DB server.

use std::process::ExitCode;

use rasputin_server::{config, logging, run};

fn main() -> ExitCode {
    let configuration = match config::parse(std::env::args_os()) {
        Ok(configuration) => configuration,
        Err(error) => error.exit(),
    };
    let flags = &configuration.flags;
    let node_id = flags.membership().ok().map(|membership| membership.node_id);
    if let Err(message) = logging::init(flags, node_id) {
        eprintln!("rasputind: {message}");
        return ExitCode::from(2);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %configuration.describe(),
        "rasputind starting"
    );
    match run(configuration.flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "rasputind stopped");
            eprintln!("rasputind: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}
