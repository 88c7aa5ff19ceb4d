//! The `bearerd` command: parse arguments, set up logging, call one library entry point and
//! map its result to an exit code (0 success, 1 runtime failure, 2 usage or configuration).
//! No logic of its own lives here.

use std::io::Write;
use std::process::ExitCode;

use bearerd::cli::{Cli, Command};
use bearerd::config::{Config, LogFormat};
use clap::Parser;

/// Threads for file writes and DNS lookups: as many as the default `max_concurrent_requests`
/// (and so writers). With tokio's default, 512, 1,000 clients starting at once spawned
/// hundreds of threads (+2.3 MiB resident) for writes that all wait on the same disk anyway;
/// with 8, each thread's malloc arena kept ~14 MB at 100,000 clients (BENCHMARKS.md).
const BLOCKING_THREADS: usize = 4;

fn main() -> ExitCode {
    // First, before a secret is read: a non-dumpable process leaves no core dump, and other
    // processes of its user can neither ptrace it nor read its /proc files (environ, memory).
    let dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            init_logging(LogFormat::Text);
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.agent.log_format);
    if let Err(error) = dumpable {
        tracing::warn!(%error, "cannot make the process non-dumpable; a core dump could hold secrets");
    }
    bearerd::preflight::warn_about_permissions(&config);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bearerd: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Check => {
            let report = bearerd::check(&config);
            print_stdout(report.as_bytes())
        }
        Command::Token {
            name,
            cached,
            format,
        } => {
            let options = bearerd::TokenOptions {
                cached,
                format,
                exec_info: std::env::var_os(bearerd::exec_credential::EXEC_INFO_VARIABLE),
            };
            let clock = bearerd::clock::Clock::system();
            match runtime.block_on(bearerd::token(&config, &name, &options, clock)) {
                Ok(printout) => print_stdout(printout.expose().as_bytes()),
                Err(error) => {
                    tracing::error!("{error}");
                    match error {
                        bearerd::TokenError::UnknownClient(_) | bearerd::TokenError::Usage(_) => {
                            ExitCode::from(2)
                        }
                        bearerd::TokenError::Failed(_) => ExitCode::from(1),
                    }
                }
            }
        }
        Command::Run {
            once: true,
            deadline,
        } => {
            bearerd::preflight::raise_descriptor_limit();
            let clock = bearerd::clock::Clock::system();
            match runtime.block_on(bearerd::run_once(&config, deadline, clock)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    for (client, message) in &failure.failed {
                        tracing::error!(client = %client, error = %message, "no token");
                    }
                    tracing::error!("{failure}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { once: false, .. } => {
            bearerd::preflight::raise_descriptor_limit();
            let daemon = async move {
                let inputs = bearerd::Inputs::from_os(&config).await?;
                bearerd::run(config, bearerd::clock::Clock::system(), inputs).await;
                Ok::<(), String>(())
            };
            match runtime.block_on(daemon) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    tracing::error!("{message}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_stdout(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bearerd: cannot write to stdout: {error}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`): a level, `target=level` pairs, or
/// both, comma-separated (tracing-subscriber's `Targets`: no regex engine in the binary, whose
/// every page costs resident memory); one it cannot parse means the default.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let result = match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(false).with_filter(filter))
            .try_init(),
        LogFormat::Json => registry
            .with(layer.json().with_current_span(true).with_filter(filter))
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("bearerd: cannot set up logging: {error}");
    }
}
