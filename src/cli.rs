//! The command-line definition, shared by the binary and by the tools that generate the man
//! page and shell completions from it. Parsing only; no behaviour.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Print one client's token to stdout.
    ///
    /// Fetched now, or with --cached the saved one while it is not due for refresh (for
    /// scripts, cron and kubectl). Writes no token files.
    Token {
        /// Reuse the token saved in the client's state file (shared with a daemon of the same
        /// config) until its refresh point, else fetch one and save it. Concurrent callers
        /// take turns on a lock beside the state file, so they send one request.
        #[arg(long)]
        cached: bool,
        /// What to print.
        #[arg(long, value_enum, default_value_t)]
        format: TokenFormat,
        /// The client's name in the configuration.
        name: String,
    },
}

/// What `bearerd token --format` prints: the output formats' exact bytes, or a Kubernetes
/// `ExecCredential`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
// The variants' docs are `--help` and man page text, printed as written: `<token>` is a
// placeholder there, not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
pub enum TokenFormat {
    /// The bare access token, no newline.
    #[default]
    Token,
    /// VARIABLE=<token> and VARIABLE_EXPIRES_AT=<unix seconds> lines (the variable of the
    /// client's first env output, else NAME_TOKEN).
    Env,
    /// An "Authorization: Bearer <token>" line.
    Header,
    /// {"access_token","token_type","expires_at","expires_in","scope"} and a newline.
    Json,
    /// A client.authentication.k8s.io ExecCredential for a kubeconfig exec entry, in the
    /// apiVersion KUBERNETES_EXEC_INFO asks for (v1 or v1beta1; v1beta1 when it is unset).
    ExecCredential,
}
