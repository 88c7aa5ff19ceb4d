//! Writes the man pages and shell completions that the Debian package ships, generated from the
//! clap definition in `bearerd::cli`: `cargo run --example gen-assets [-- OUT_DIR]` (default
//! `target/assets`). It only renders what the definition says; it never builds or installs.

// An example talks to a person on stdout, and writes its own config files plainly.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bearerd::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/assets"), PathBuf::from);
    let man_dir = out.join("man");
    let completions_dir = out.join("completions");
    for dir in [&man_dir, &completions_dir] {
        std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    }

    // bearerd-run.1, bearerd-check.1, bearerd-token.1 (and a plain bearerd.1, replaced below).
    clap_mangen::generate_to(Cli::command(), &man_dir)
        .map_err(|error| format!("{}: {error}", man_dir.display()))?;
    // No `help` subcommand in the pages: bearerd-help(1) would be a dangling reference.
    let page = Cli::command().disable_help_subcommand(true);
    write_file(&man_dir.join("bearerd.1"), |writer| {
        main_page(&page, writer)
    })?;

    let mut command = Cli::command();

    for (shell, name) in [
        (Shell::Bash, "bearerd.bash"),
        (Shell::Zsh, "_bearerd"),
        (Shell::Fish, "bearerd.fish"),
    ] {
        write_file(&completions_dir.join(name), |writer| {
            clap_complete::generate(shell, &mut command, "bearerd", writer);
            Ok(())
        })?;
    }
    eprintln!("wrote man pages and completions under {}", out.display());
    Ok(())
}

fn write_file(
    path: &Path,
    render: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), String> {
    let file = File::create(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut writer = BufWriter::new(file);
    render(&mut writer)
        .and_then(|()| writer.flush())
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// clap's sections, then what an operator looks for in a daemon's man page.
fn main_page(command: &clap::Command, writer: &mut dyn Write) -> std::io::Result<()> {
    let man = Man::new(command.clone()).manual("bearerd manual");
    man.render_title(writer)?;
    man.render_name_section(writer)?;
    man.render_synopsis_section(writer)?;
    man.render_description_section(writer)?;
    man.render_options_section(writer)?;
    man.render_subcommands_section(writer)?;

    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"])
        .control("TP", [])
        .text([bold("0")])
        .text([roman("success")])
        .control("TP", [])
        .text([bold("1")])
        .text([roman(
            "a runtime failure: run --once with any client failed, or token failed",
        )])
        .control("TP", [])
        .text([bold("2")])
        .text([roman("a usage or configuration error")]);
    roff.control("SH", ["SIGNALS"])
        .control("TP", [])
        .text([bold("SIGTERM"), roman(", "), bold("SIGINT")])
        .text([roman("stop within a second; no file is left half-written")])
        .control("TP", [])
        .text([bold("SIGHUP")])
        .text([roman("reload the configuration")])
        .control("TP", [])
        .text([bold("SIGUSR1")])
        .text([roman(
            "refresh every client now (a client whose last request ended less than a second \
             ago waits for that second)",
        )]);
    roff.control("SH", ["ENVIRONMENT"])
        .control("TP", [])
        .text([bold("BEARERD_CONFIG")])
        .text([roman("the configuration file when -c is not given")])
        .control("TP", [])
        .text([bold("RUST_LOG")])
        .text([roman(
            "log filter: a level, target=level pairs or both, comma-separated; default info; logs go to standard error",
        )])
        .control("TP", [])
        .text([bold("CREDENTIALS_DIRECTORY")])
        .text([roman(
            "set by systemd for LoadCredential=; use it in the configuration as ${CREDENTIALS_DIRECTORY}",
        )]);
    roff.control("SH", ["FILES"])
        .control("TP", [])
        .text([italic(bearerd::config::DEFAULT_PATH)])
        .text([roman("the configuration")])
        .control("TP", [])
        .text([italic("/run/bearerd/")])
        .text([roman(
            "where the packaged configuration's examples write token files (the unit's RuntimeDirectory)",
        )]);
    roff.control("SH", ["SEE ALSO"]).text([
        roman("systemd.exec(5), "),
        italic("/usr/share/doc/bearerd/"),
        roman(" (README, configuration.md, operating.md)"),
    ]);
    roff.to_writer(writer)?;
    man.render_version_section(writer)
}
