//! The command-line definition, shared by the binary and by the tools that generate the man
//! page and shell completions from it. Parsing only; no behaviour.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bearerd",
    version,
    about = "Keeps OAuth 2.0 access tokens fresh on disk"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short = 'c',
        long = "config",
        env = "BEARERD_CONFIG",
        default_value = crate::config::DEFAULT_PATH,
        global = true
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Keep every client's token fresh on disk (the daemon).
    Run {
        /// Fetch every token once, write the files and exit (for init containers).
        #[arg(long)]
        once: bool,
        /// With --once: how long to ride out transient failures.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, requires = "once")]
        deadline: Duration,
    },
    /// Validate the configuration and print what it would do; no network.
    Check,
    /// Fetch one token now and print it to stdout.
    Token {
        /// The client's name in the configuration.
        name: String,
    },
}
