//! `[clients.NAME.on_refresh]`: the command (and the variables it may see) or the signal that
//! tells a consumer new files are in place, into an [`OnRefresh`]. It runs and signals nothing.

use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::{Checker, Span, key_span};
use crate::config::OnRefresh;
use crate::output;

const ON_REFRESH_KEYS: &[&str] = &["command", "signal", "pid_file", "timeout", "pass_env"];

const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", signal_hook::consts::SIGHUP),
    ("SIGINT", signal_hook::consts::SIGINT),
    ("SIGQUIT", signal_hook::consts::SIGQUIT),
    ("SIGTERM", signal_hook::consts::SIGTERM),
    ("SIGUSR1", signal_hook::consts::SIGUSR1),
    ("SIGUSR2", signal_hook::consts::SIGUSR2),
    ("SIGWINCH", signal_hook::consts::SIGWINCH),
];

impl Checker<'_> {
    pub(super) fn on_refresh(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        prefix: &str,
    ) -> Option<OnRefresh> {
        self.unknown_keys(table, prefix, ON_REFRESH_KEYS);
        let errors_before = self.diagnostics.len();
        let timeout = self
            .duration(table, prefix, "timeout")
            .unwrap_or(Duration::from_secs(30));
        let command = self.string_array(table, prefix, "command");
        let signal = self.string(table, prefix, "signal");
        let pid_file = self.string(table, prefix, "pid_file");
        let pass_env = self.pass_env(table, prefix);
        let action = match (command, signal) {
            (Some((argv, span)), None) => {
                if argv.is_empty() || argv[0].is_empty() {
                    self.error(
                        &span,
                        &format!("{prefix}.command"),
                        "expected a non-empty argv array such as [\"systemctl\", \"reload\", \"nginx\"]",
                    );
                    None
                } else {
                    if let Some(span) = key_span(table, "pid_file") {
                        self.error(
                            &span,
                            &format!("{prefix}.pid_file"),
                            "only used with signal",
                        );
                    }
                    Some(OnRefresh::Command {
                        argv,
                        timeout,
                        pass_env,
                    })
                }
            }
            (None, Some((name, span))) => {
                if let Some(span) = key_span(table, "pass_env") {
                    self.error(
                        &span,
                        &format!("{prefix}.pass_env"),
                        "only used with command",
                    );
                }
                let upper = name.to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                let signal = SIGNALS.iter().find(|(known, _)| *known == full);
                match (signal, pid_file) {
                    (Some((signal_name, signal)), Some((pid_file, _))) => Some(OnRefresh::Signal {
                        signal: *signal,
                        signal_name: (*signal_name).to_owned(),
                        pid_file: self.resolve(&pid_file),
                    }),
                    (None, _) => {
                        let names: Vec<&str> = SIGNALS.iter().map(|(name, _)| *name).collect();
                        self.error(
                            &span,
                            &format!("{prefix}.signal"),
                            format!("expected one of {}; found {name:?}", names.join(", ")),
                        );
                        None
                    }
                    (Some(_), None) => {
                        self.error(
                            &span,
                            &format!("{prefix}.pid_file"),
                            "missing pid_file: signal needs the file holding the process id",
                        );
                        None
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.signal"),
                    "expected either command or signal, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("command") && !table.contains_key("signal") {
                    self.error(&span, prefix, "expected command or signal");
                }
                None
            }
        };
        (self.diagnostics.len() == errors_before)
            .then_some(action)
            .flatten()
    }

    /// `pass_env`: names of variables a command may see; `BEARERD_*` are bearerd's own.
    fn pass_env(&mut self, table: &DeTable<'_>, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let Some(value) = table.get("pass_env") else {
            return names;
        };
        let key = format!("{prefix}.pass_env");
        let DeValue::Array(array) = value.get_ref() else {
            self.error(
                &value.span(),
                &key,
                format!(
                    "expected an array of variable names such as [\"HOME\"], found {}",
                    value.get_ref().type_str()
                ),
            );
            return names;
        };
        for (index, item) in array.iter().enumerate() {
            let item_key = format!("{key}[{index}]");
            let Some(name) = self.expect_string(item, &item_key) else {
                continue;
            };
            if !output::is_env_variable(&name) {
                self.error(
                    &item.span(),
                    &item_key,
                    format!("expected a variable name ([A-Za-z_][A-Za-z0-9_]*), found {name:?}"),
                );
            } else if name.starts_with("BEARERD_") {
                self.error(
                    &item.span(),
                    &item_key,
                    format!("{name:?} is reserved: bearerd sets the BEARERD_* variables itself"),
                );
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}
