//! The `unwind` binary: parses the command line, sets up logging, and runs the command.

use std::process::ExitCode;

use clap::Parser;
use unwind::cli::{Cli, CliError, Command};
use unwind::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for every client (database, JWKS fetches): aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unwind: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unwind: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            init_logging(&config);
            unwind::service::run(config, unwind::service::shutdown_signal())
                .await
                .map_err(|e| match e {
                    unwind::service::ServiceError::Config(c) => CliError::Usage(c.to_string()),
                    other => CliError::Failed(other.to_string()),
                })
        }
        Command::Migrate(args) => {
            let config = load_config(&args)?;
            init_logging(&config);
            unwind::service::open_store(&config, true)
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?;
            println!(
                "unwind: migrations applied to {}",
                redact(&config.database_url())
            );
            Ok(())
        }
        Command::Keys(cmd) => unwind::cli::ect::keys(cmd).await,
        Command::Ect(cmd) => unwind::cli::ect::ect(cmd).await,
        Command::Bench(cmd) => unwind::cli::bench::run(cmd).await,
        Command::BlastRadius(args) => unwind::cli::rollback::blast_radius(args).await,
        Command::Rollback(cmd) => unwind::cli::rollback::run(cmd).await,
        Command::Dag(args) => unwind::cli::dag::run(args).await,
        Command::Export(args) => unwind::cli::audit::export(args).await,
        Command::Verify(args) => unwind::cli::audit::verify(args).await,
        Command::Demo(args) => {
            // The tour prints its own story; logs only for what goes wrong.
            let mut quiet = Config::default();
            quiet.log.level = "error".into();
            init_logging(&quiet);
            unwind::cli::demo::run(args).await
        }
        Command::Openapi => {
            let doc = unwind::api::openapi()
                .to_pretty_json()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            println!("{doc}");
            Ok(())
        }
    }
}

fn load_config(args: &unwind::cli::ServeArgs) -> Result<Config, CliError> {
    Config::load(args.config.as_deref(), &args.overrides())
        .map_err(|e| CliError::Usage(e.to_string()))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
