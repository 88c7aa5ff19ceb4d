//! What is wrong with a config file: each [`Diagnostic`] located by line and column, and the
//! [`ConfigError`] that keeps the first [`SHOWN_PROBLEMS`] and counts the rest. It finds no
//! problem itself; the validator reports them here.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file, located where the TOML gives a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based; `None` when the problem has no place in the text (e.g. an unreadable file).
    pub(crate) location: Option<(usize, usize)>,
    /// The dotted key, e.g. `clients.tasklist.output[1].mode`; empty for syntax errors.
    pub(crate) key: String,
    pub(crate) message: String,
}

/// How many problems a [`ConfigError`] keeps and shows; the rest are only counted, so that a
/// file with a million mistakes costs neither a million messages nor the time to locate them.
pub const SHOWN_PROBLEMS: usize = 100;

/// The problems found in a config file: the first [`SHOWN_PROBLEMS`], in the order found, and
/// how many more there were. `Display` prints one `file:line:col: key: message` line per
/// problem kept, then `file: and N more problems (…)` if there were more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
    /// Problems found beyond `diagnostics`.
    pub more: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some((line, column)) = diagnostic.location {
                write!(f, ":{line}:{column}")?;
            }
            if diagnostic.key.is_empty() {
                write!(f, ": {}", diagnostic.message)?;
            } else {
                write!(f, ": {}: {}", diagnostic.key, diagnostic.message)?;
            }
        }
        if self.more > 0 {
            let problems = if self.more == 1 {
                "problem"
            } else {
                "problems"
            };
            write!(
                f,
                "\n{}: and {} more {problems} (only the first {} are shown)",
                self.path.display(),
                self.more,
                self.diagnostics.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem counted, the first [`SHOWN_PROBLEMS`] kept. `len` counts them all, so a
/// section can tell whether it found any.
#[derive(Default)]
pub(super) struct Problems {
    pub(super) kept: Vec<Diagnostic>,
    pub(super) found: usize,
}

impl Problems {
    pub(super) fn len(&self) -> usize {
        self.found
    }

    pub(super) fn is_empty(&self) -> bool {
        self.found == 0
    }

    pub(super) fn keeps_next(&self) -> bool {
        self.kept.len() < SHOWN_PROBLEMS
    }

    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        if self.keeps_next() {
            self.kept.push(diagnostic);
        }
        self.found += 1;
    }

    /// The last problem pushed, if it was kept.
    pub(super) fn last_mut(&mut self) -> Option<&mut Diagnostic> {
        if self.found == self.kept.len() {
            self.kept.last_mut()
        } else {
            None
        }
    }
}

/// Line and column of a byte offset in the config text; the line starts are found once, at the
/// first problem.
pub(super) struct LineIndex<'a> {
    text: &'a str,
    /// Where each line of `text` starts, computed at the first problem.
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            line_starts: std::cell::OnceCell::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset: a binary search in the line
    /// starts, then a count within the line, so that many problems cost linear time in all.
    pub(super) fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(index, _)| index + 1))
                .collect()
        });
        let line = starts.partition_point(|&start| start <= offset);
        let line_start = starts[line.saturating_sub(1)];
        // Characters are the bytes that do not continue a UTF-8 sequence.
        let column = self.text.as_bytes()[line_start..offset]
            .iter()
            .filter(|&&byte| byte & 0xC0 != 0x80)
            .count();
        (line, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{errors, parse};

    #[test]
    fn columns_count_characters_and_problems_past_the_hundredth_are_only_counted() {
        let lines = errors("[agent]\n\"é€\" = 1\n");
        assert_eq!(
            lines,
            [
                "/etc/bearerd/bearerd.toml:2:1: agent.é€: unknown key; expected one of: \
              refresh_at, listen, log_format, http_timeout, max_concurrent_requests, \
              max_requests_per_second, default_lifetime, backoff_min, backoff_max, state_dir"
            ]
        );
        let lines = errors("\nagent = { \"é\" = 1, refresh_at = 2.0 }\n");
        assert!(
            lines[1].starts_with("/etc/bearerd/bearerd.toml:2:33: agent.refresh_at:"),
            "{lines:?}"
        );

        let mut text = String::from("[agent]\n");
        for number in 0..SHOWN_PROBLEMS + 1 {
            text.push_str(&format!("\"é{number:03}\" = 1\n"));
        }
        let Err(error) = parse(&text) else {
            panic!("expected errors")
        };
        assert_eq!((error.diagnostics.len(), error.more), (SHOWN_PROBLEMS, 1));
        assert_eq!(error.diagnostics[99].location, Some((101, 1)));
        assert_eq!(
            error.to_string().lines().last(),
            Some("/etc/bearerd/bearerd.toml: and 1 more problem (only the first 100 are shown)")
        );
    }
}
