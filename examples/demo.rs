//! The README's first command: `cargo run --release --example demo`.
//!
//! Starts a local token endpoint on 127.0.0.1 (in-process, 4-second tokens), writes a config
//! with two clients into `demo/`, runs `run --once`, then the daemon for a few refreshes and
//! one live reload, printing what happens on disk.

// An example talks to a person on stdout, and writes its own config files plainly.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bearerd::clock::Clock;
use bearerd::config::Config;
use bearerd::events::Event;
use bearerd_idp::{Idp, IdpSettings};

const LIFETIME: Duration = Duration::from_secs(4);
const DAEMON_FOR: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let idp = Idp::start(IdpSettings::default()).await?;
    idp.add_client("tasklist-bot", "tasklist secret", LIFETIME);
    idp.add_client("reports-bot", "reports secret", LIFETIME);

    let dir = std::env::current_dir()?.join("demo");
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("bearerd.toml");
    std::fs::write(&config_path, config_text(&idp, ""))?;
    let config = Config::load(&config_path)?;

    println!(
        "== bearerd demo: a local token endpoint at {}",
        idp.token_url()
    );
    println!("== config: {}\n", config_path.display());
    print!("{}", bearerd::check(&config));

    println!("\n== bearerd run --once");
    if let Err(failure) = bearerd::run_once(&config, Duration::from_secs(10), Clock::system()).await
    {
        return Err(failure.to_string().into());
    }
    show(&dir);

    println!(
        "\n== bearerd run: {}-second tokens are refreshed at 80 % of their life; \
         watching for {} s",
        LIFETIME.as_secs(),
        DAEMON_FOR.as_secs()
    );
    let inputs = bearerd::Inputs::from_os(&config).await?;
    let shutdown = inputs.events.sender();
    let daemon = tokio::spawn(bearerd::run(config, Clock::system(), inputs));
    let token_file = dir.join("tasklist.token");
    let started = Instant::now();
    let mut last = std::fs::read_to_string(&token_file).unwrap_or_default();
    let mut reloaded = false;
    while started.elapsed() < DAEMON_FOR {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = std::fs::read_to_string(&token_file).unwrap_or_default();
        if now != last {
            println!(
                "  {:>4.1}s  tasklist.token changed: {}…",
                started.elapsed().as_secs_f64(),
                now.get(..12).unwrap_or(&now)
            );
            last = now;
        }
        if !reloaded && started.elapsed() > DAEMON_FOR / 2 {
            reloaded = true;
            println!(
                "  {:>4.1}s  editing the config: reports gets scope \"reports:read\" \
                 (a live reload; tasklist keeps its token)",
                started.elapsed().as_secs_f64()
            );
            std::fs::write(&config_path, config_text(&idp, "reports:read"))?;
        }
    }
    let _ = shutdown.send(Event::Shutdown);
    daemon.await?;
    println!(
        "\n== done: the token endpoint answered {} token requests. Read the files with:",
        idp.token_request_count()
    );
    println!("  cat {}", dir.join("tasklist.token").display());
    println!(
        "  . {} && echo \"$TASKLIST_TOKEN\"",
        dir.join("tasklist.env").display()
    );
    println!(
        "  curl -H @{} https://api.example.com/",
        dir.join("reports.header").display()
    );
    Ok(())
}

fn config_text(idp: &Idp, reports_scope: &str) -> String {
    let scope = if reports_scope.is_empty() {
        String::new()
    } else {
        format!("scope = \"{reports_scope}\"\n")
    };
    format!(
        r#"# Written by the bearerd demo.
[agent]
refresh_at = 0.8

[clients.tasklist]
token_url = "{url}"
client_id = "tasklist-bot"
client_secret = "tasklist secret"
auth_method = "client_secret_json"
audience = "tasklist.camunda.io"

[[clients.tasklist.output]]
path = "tasklist.token"

[[clients.tasklist.output]]
path = "tasklist.env"
format = "env"

[clients.reports]
token_url = "{url}"
client_id = "reports-bot"
client_secret = "reports secret"
auth_method = "client_secret_basic"
{scope}
[[clients.reports.output]]
path = "reports.header"
format = "header"

[[clients.reports.output]]
path = "reports.json"
format = "json"
"#,
        url = idp.token_url()
    )
}

fn show(dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name.ends_with(".toml") {
            continue;
        }
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        println!("  {}:", file.display());
        for line in content.lines() {
            println!("    {line}");
        }
        if !content.ends_with('\n') {
            println!("    (no trailing newline)");
        }
    }
}
