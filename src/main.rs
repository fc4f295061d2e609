//! `pystrands-server`: flags -> [`Config`] -> [`Server::run`].

use std::process::ExitCode;

use pystrands::config::{Args, Config};
use pystrands::server::Server;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let name = argv.first().map_or("pystrands-server", String::as_str);
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let args = match <Args as argh::FromArgs>::from_args(&[name], &rest) {
        Ok(args) => args,
        Err(exit) => {
            return if exit.status.is_ok() {
                println!("{}", exit.output);
                ExitCode::SUCCESS
            } else {
                let message = exit.output.trim_end().replace('\n', " ");
                eprintln!("pystrands-server: error: {message} (see --help)");
                ExitCode::from(2)
            };
        }
    };
    let config = match Config::from_args(args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pystrands-server: error: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(config.log_level)
        .format_target(false)
        .init();
    match pystrands::server::raise_fd_limit() {
        Ok((before, after)) => {
            log::info!("open-file limit: soft {before} raised to {after} (the hard limit)")
        }
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("pystrands-server: error: {e}");
            return ExitCode::from(2);
        }
    };
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("poll failed, stopping: {e}");
            ExitCode::FAILURE
        }
    }
}
