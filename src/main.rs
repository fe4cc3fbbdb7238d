//! The `tern` binary: parse the command line, load the configuration, set up
//! logging, and hand over to [`tern::server::run`].

use std::process::ExitCode;

use clap::Parser;
use tern::cli::{self, Cli, Command};
use tern::config::Config;

fn main() -> ExitCode {
    let args = Cli::parse();
    match &args.command {
        Some(Command::CheckConfig { file }) => return cli::check_config(file),
        Some(Command::Probe(probe)) => return cli::probe(probe),
        _ => {}
    }
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::embedded_default(),
    };
    if let Some(Command::Ctl(ctl)) = &args.command {
        let config = match &args.config {
            Some(path) => match Config::load(path) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        return cli::ctl(ctl, config.as_ref());
    }
    if let Some(Command::Credentials { user, ttl, json }) = &args.command {
        return cli::print_credentials(&config, user, *ttl, *json);
    }
    let log = cli::init_logging(&args, Some(&config));
    match cli::serve(&args, config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}
