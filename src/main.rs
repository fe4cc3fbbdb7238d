//! The `tern` binary: parse the command line, load the configuration, set up
//! logging, and hand over to [`tern::server::run`].

use std::process::ExitCode;

use clap::Parser;
use tern::cli::{self, Cli, Command};
use tern::config::Config;

fn main() -> ExitCode {
    let args = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &args.command {
        return cli::check_config(file);
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
    if let Some(Command::Credentials { user, ttl, json }) = &args.command {
        return cli::print_credentials(&config, user, *ttl, *json);
    }
    cli::init_logging(&args, Some(&config));
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = tern::shutdown::signal();
        let embedded = config.generated_secret;
        let server = tern::server::Server::bind(config)?;
        if embedded {
            cli::print_startup_credentials(&server);
        }
        server.run(shutdown).await?;
        Ok(())
    })
}
