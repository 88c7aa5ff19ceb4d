//! Fuzz target: `Config::parse` on arbitrary text never panics, and every rejection is a
//! list of located `file:line:col: key: message` lines naming the config's path.
//! It does not touch the network; secret files resolve under a directory that does not exist.

#![no_main]

use std::env::VarError;
use std::path::Path;

use bearerd::config::Config;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/nonexistent-bearerd-fuzz/bearerd.toml";

fuzz_target!(|text: &str| {
    let env = |name: &str| {
        name.starts_with("SET")
            .then(|| format!("value-of-{name}"))
            .ok_or(VarError::NotPresent)
    };
    match Config::parse(Path::new(PATH), text, &env) {
        Ok(config) => {
            // A valid config describes itself without panicking.
            let _ = bearerd::check(&config);
            let _ = config.watched_files();
        }
        Err(error) => {
            assert!(
                !error.diagnostics.is_empty(),
                "an error without a diagnostic"
            );
            let shown = error.to_string();
            // One line per problem kept, and one counting the rest if there were more.
            assert!(error.diagnostics.len() <= bearerd::config::SHOWN_PROBLEMS);
            assert_eq!(
                shown.lines().count(),
                error.diagnostics.len() + usize::from(error.more > 0),
                "{shown}"
            );
            for line in shown.lines() {
                assert!(line.starts_with(PATH), "{line}");
            }
        }
    }
});
