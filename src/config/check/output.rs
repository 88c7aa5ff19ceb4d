//! A client's outputs: each `[[clients.NAME.output]]` (path, format, mode, template) into an
//! [`OutputSpec`], and no two outputs sharing a path. It renders nothing and writes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Checker, Span, Value, key_span};
use crate::config::{ClientName, ClientSpec};
use crate::files;
use crate::output::{self, Format, OutputSpec, Template};

const OUTPUT_KEYS: &[&str] = &[
    "path",
    "format",
    "variable",
    "mode",
    "template",
    "template_file",
];

impl Checker<'_> {
    pub(super) fn outputs(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
        client: &ClientName,
    ) -> Option<Vec<OutputSpec>> {
        let key = format!("{prefix}.output");
        let Some(value) = table.get("output") else {
            self.error(
                span,
                prefix,
                "missing output: add at least one [[clients.NAME.output]] with a path",
            );
            return None;
        };
        let items: Vec<&Value<'_>> = match value.get_ref() {
            DeValue::Array(array) => array.iter().collect(),
            DeValue::Table(_) => vec![value],
            other => {
                self.error(
                    &value.span(),
                    &key,
                    format!(
                        "expected an array of tables ([[{key}]]), found {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        if items.is_empty() {
            self.error(&value.span(), &key, "expected at least one output");
            return None;
        }
        let mut outputs = Vec::new();
        let mut failed = false;
        for (index, item) in items.into_iter().enumerate() {
            let key = format!("{key}[{index}]");
            match self.as_table(item, &key) {
                Some(table) => match self.output(table, item.span(), &key, client) {
                    Some(output) => outputs.push(output),
                    None => failed = true,
                },
                None => failed = true,
            }
        }
        outputs.shrink_to_fit();
        (!failed).then_some(outputs)
    }

    fn output(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        prefix: &str,
        client: &ClientName,
    ) -> Option<OutputSpec> {
        self.unknown_keys(table, prefix, OUTPUT_KEYS);
        let errors_before = self.diagnostics.len();
        let path = match self.required_string(table, &span, prefix, "path") {
            Some(text) => {
                let resolved = self.resolve(&text);
                match check_output_path(&text, &resolved) {
                    Ok(()) => Some(resolved),
                    Err(message) => {
                        let path_span = table.get("path").map_or(span.clone(), Spanned::span);
                        self.error(&path_span, &format!("{prefix}.path"), message);
                        None
                    }
                }
            }
            None => None,
        };
        let format_name = self
            .string(table, prefix, "format")
            .unwrap_or(("token".to_owned(), span.clone()));
        let mode = match self.string(table, prefix, "mode") {
            None => 0o600,
            Some((text, span)) => match parse_mode(&text) {
                Some(mode) if mode & 0o022 != 0 => {
                    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                        (true, true) => "the group and others",
                        (true, false) => "the group",
                        _ => "others",
                    };
                    self.error(
                        &span,
                        &format!("{prefix}.mode"),
                        format!(
                            "expected a mode that lets only the owner write, such as \"0600\" \
                             or \"0640\"; {text:?} lets {who} write the file"
                        ),
                    );
                    0o600
                }
                Some(mode) => mode,
                None => {
                    self.error(
                        &span,
                        &format!("{prefix}.mode"),
                        format!("expected an octal file mode such as \"0640\", found {text:?}"),
                    );
                    0o600
                }
            },
        };
        if let Some(value) = table.get("mode")
            && !matches!(value.get_ref(), DeValue::String(_))
        {
            // `string` already reported the type; add the hint that matters for modes.
            if let Some(last) = self.diagnostics.last_mut() {
                last.message
                    .push_str(" (write the mode as an octal string such as \"0640\")");
            }
        }
        let variable = self.string(table, prefix, "variable");
        let template = self.string(table, prefix, "template");
        let template_file = self.string(table, prefix, "template_file");
        let (format_name, format_span) = format_name;
        let format_key = format!("{prefix}.format");
        let only_for = |checker: &mut Self, key: &str, format: &str| {
            if let Some(span) = key_span(table, key) {
                checker.error(
                    &span,
                    &format!("{prefix}.{key}"),
                    format!("only used with format = \"{format}\""),
                );
            }
        };
        let format = match format_name.as_str() {
            "token" | "header" | "json" | "env" | "template" => {
                if format_name != "env" {
                    only_for(self, "variable", "env");
                }
                if format_name != "template" {
                    only_for(self, "template", "template");
                    only_for(self, "template_file", "template");
                }
                match format_name.as_str() {
                    "token" => Some(Format::Token),
                    "header" => Some(Format::Header),
                    "json" => Some(Format::Json),
                    "env" => match variable {
                        None => Some(Format::Env {
                            variable: client.env_variable(),
                        }),
                        Some((variable, span)) if output::is_env_variable(&variable) => {
                            let _ = span;
                            Some(Format::Env { variable })
                        }
                        Some((variable, span)) => {
                            self.error(
                                &span,
                                &format!("{prefix}.variable"),
                                format!(
                                    "expected a shell variable name ([A-Za-z_][A-Za-z0-9_]*), \
                                     found {variable:?}"
                                ),
                            );
                            None
                        }
                    },
                    _ => self.template(template, template_file, &span, prefix),
                }
            }
            _ => {
                self.error(
                    &format_span,
                    &format_key,
                    format!(
                        "expected one of token, env, header, json, template; found {format_name:?}"
                    ),
                );
                None
            }
        };
        if self.diagnostics.len() != errors_before {
            return None;
        }
        Some(OutputSpec {
            path: path?,
            format: format?,
            mode,
        })
    }

    fn template(
        &mut self,
        inline: Option<(String, Span)>,
        file: Option<(String, Span)>,
        span: &Span,
        prefix: &str,
    ) -> Option<Format> {
        let (text, span, key) = match (inline, file) {
            (Some((text, span)), None) => (text, span, format!("{prefix}.template")),
            (None, Some((path, span))) => {
                let key = format!("{prefix}.template_file");
                let path = self.resolve(&path);
                match files::read_text(&path, files::Kind::Template) {
                    Ok(text) => (text, span, key),
                    Err(error) => {
                        self.error(&span, &key, error.to_string());
                        return None;
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.template_file"),
                    "expected either template or template_file, not both",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    span,
                    prefix,
                    "format = \"template\" needs template or template_file",
                );
                return None;
            }
        };
        match Template::parse(&text) {
            Ok(template) => Some(Format::Template(template)),
            Err(message) => {
                self.error(&span, &key, message);
                None
            }
        }
    }

    pub(super) fn duplicate_paths(&mut self, clients: &[Arc<ClientSpec>], root: &DeTable<'_>) {
        let mut seen: HashMap<&Path, String> = HashMap::new();
        for client in clients {
            for (index, output) in client.outputs.iter().enumerate() {
                let key = format!("clients.{}.output[{index}].path", client.name);
                if let Some(first) = seen.get(output.path.as_path()) {
                    let span = output_path_span(root, &client.name, index).unwrap_or(0..0);
                    self.error(
                        &span,
                        &key,
                        format!(
                            "{} is already written by {first}; two outputs cannot share a path",
                            output.path.display()
                        ),
                    );
                } else {
                    seen.insert(&output.path, key);
                }
            }
        }
    }
}

/// Longest name of a file in a directory (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest path a system call takes, its terminating NUL included (Linux `PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Why an output at `path` (as written: `text`) could never be written, if so. bearerd writes
/// `DIR/.NAME.bearerd-tmp-XXXXXXXXXXXXXXXX` and renames it to `path`, so that temporary name
/// must fit the system's limits too.
fn check_output_path(text: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if text.contains('\0') {
        return Err("contains a NUL byte, which no path can hold".to_owned());
    }
    if text.ends_with('/') {
        return Err(format!(
            "expected the path of a file, found {text:?}, which ends with /"
        ));
    }
    let last = text.rsplit('/').next().unwrap_or(text);
    if last == "." || last == ".." {
        return Err(format!(
            "expected the path of a file, found {text:?}, which ends with {last:?}"
        ));
    }
    let bytes = path.as_os_str().as_bytes();
    if let Some(long) = bytes
        .split(|&byte| byte == b'/')
        .find(|component| component.len() > NAME_MAX)
    {
        return Err(format!(
            "a name in the path is {} bytes long; the system allows at most {NAME_MAX} \
             (NAME_MAX)",
            long.len()
        ));
    }
    let name_len = bytes
        .rsplit(|&byte| byte == b'/')
        .next()
        .map_or(0, <[u8]>::len);
    let name_max = NAME_MAX - output::TEMP_NAME_EXTRA;
    if name_len > name_max {
        return Err(format!(
            "the file name is {name_len} bytes long; at most {name_max}, so that the name of \
             its temporary file ({extra} bytes longer) fits in {NAME_MAX} (NAME_MAX)",
            extra = output::TEMP_NAME_EXTRA
        ));
    }
    let path_max = PATH_MAX - 1 - output::TEMP_NAME_EXTRA;
    if bytes.len() > path_max {
        return Err(format!(
            "the path is {} bytes long; at most {path_max}, so that the path of its temporary \
             file ({extra} bytes longer) fits in {PATH_MAX} bytes with a NUL (PATH_MAX)",
            bytes.len(),
            extra = output::TEMP_NAME_EXTRA
        ));
    }
    Ok(())
}

/// `"0640"`, `"640"` or `"0o640"` → 0o640; at most 0o777.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

fn output_path_span(root: &DeTable<'_>, client: &ClientName, index: usize) -> Option<Span> {
    let clients = root.get("clients")?.get_ref().as_table()?;
    let outputs = clients
        .get(client.as_str())?
        .get_ref()
        .as_table()?
        .get("output")?;
    let item = match outputs.get_ref() {
        DeValue::Array(array) => array.get(index)?,
        DeValue::Table(_) => outputs,
        _ => return None,
    };
    item.get_ref().as_table()?.get("path").map(Spanned::span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("7777"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(parse_mode("rw-r-----"), None);
    }
}
