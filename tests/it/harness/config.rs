//! A bearerd config for a test, built in a few chained calls and rendered as TOML text, so no
//! test writes TOML by hand. It is a test data builder: it checks nothing (bearerd's parser does),
//! and keys without a method of their own go in as raw lines.

use std::fmt;
use std::path::Path;

use super::pki::Pki;

/// A TOML basic string holding `value` (JSON string escapes are valid TOML ones).
fn quoted(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// A TOML array of basic strings.
fn quoted_list(values: &[&str]) -> String {
    let values: Vec<String> = values.iter().map(|value| quoted(value)).collect();
    format!("[{}]", values.join(", "))
}

fn quoted_path(path: &Path) -> String {
    quoted(path.to_str().expect("UTF-8 path"))
}

/// The lines of one TOML table; setting a key again replaces its line where it stands.
#[derive(Clone, Debug, Default)]
struct Table(Vec<(String, String)>);

impl Table {
    fn set(&mut self, key: &str, value: String) {
        self.line(&format!("{key} = {value}"));
    }

    /// A raw `key = value` line.
    fn line(&mut self, line: &str) {
        let key = line.split('=').next().unwrap_or_default().trim().to_owned();
        match self.0.iter_mut().find(|(known, _)| *known == key) {
            Some(entry) => entry.1 = line.to_owned(),
            None => self.0.push((key, line.to_owned())),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(known, _)| known != key);
    }

    /// `header` and the lines, then a blank line; nothing when there are no lines.
    fn render(&self, header: &str, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(out, "{header}")?;
        for (_, line) in &self.0 {
            writeln!(out, "{line}")?;
        }
        writeln!(out)
    }
}

/// A whole config: `[agent]` settings and the clients, in the order they were added.
/// `to_string()` is the TOML text.
#[derive(Clone, Debug, Default)]
pub struct Config {
    agent: Table,
    clients: Vec<Client>,
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// A raw `[agent]` line, e.g. `max_concurrent_requests = 64`.
    pub fn agent(mut self, line: &str) -> Self {
        self.agent.line(line);
        self
    }

    pub fn backoff(mut self, min: &str, max: &str) -> Self {
        self.agent.set("backoff_min", quoted(min));
        self.agent.set("backoff_max", quoted(max));
        self
    }

    pub fn http_timeout(mut self, timeout: &str) -> Self {
        self.agent.set("http_timeout", quoted(timeout));
        self
    }

    /// `listen`, the address of the `/healthz`, `/readyz` and `/metrics` endpoint.
    pub fn listen(mut self, address: &str) -> Self {
        self.agent.set("listen", quoted(address));
        self
    }

    pub fn log_format(mut self, format: &str) -> Self {
        self.agent.set("log_format", quoted(format));
        self
    }

    pub fn client(mut self, client: Client) -> Self {
        self.clients.push(client);
        self
    }

    pub fn clients(self, clients: impl IntoIterator<Item = Client>) -> Self {
        clients.into_iter().fold(self, Self::client)
    }

    /// The client named `name`, changed by `change`.
    pub fn edit(mut self, name: &str, change: impl FnOnce(Client) -> Client) -> Self {
        let index = self
            .clients
            .iter()
            .position(|client| client.name == name)
            .unwrap_or_else(|| panic!("no client {name:?} to edit"));
        let client = self.clients.remove(index);
        self.clients.insert(index, change(client));
        self
    }
}

impl fmt::Display for Config {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.agent.render("[agent]", out)?;
        for client in &self.clients {
            client.render(out)?;
        }
        Ok(())
    }
}

/// One `[clients.NAME]` with its outputs and its `on_refresh`.
#[derive(Clone, Debug)]
pub struct Client {
    name: String,
    settings: Table,
    on_refresh: Table,
    outputs: Vec<Table>,
}

impl Client {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            settings: Table::default(),
            on_refresh: Table::default(),
            outputs: Vec::new(),
        }
    }

    /// `key = "value"`, for a string key without a method of its own.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.settings.set(key, quoted(value));
        self
    }

    /// A raw `key = value` line, e.g. `bogus = 1`.
    pub fn line(mut self, line: &str) -> Self {
        self.settings.line(line);
        self
    }

    /// The client without `key` (set by any method).
    pub fn without(mut self, key: &str) -> Self {
        self.settings.remove(key);
        self
    }

    pub fn token_url(self, url: &str) -> Self {
        self.set("token_url", url)
    }

    pub fn issuer(self, url: &str) -> Self {
        self.set("issuer", url)
    }

    pub fn client_id(self, id: &str) -> Self {
        self.set("client_id", id)
    }

    /// `client_secret`.
    pub fn secret(self, secret: &str) -> Self {
        self.set("client_secret", secret)
    }

    /// `client_secret_file`.
    pub fn secret_file(mut self, path: impl AsRef<Path>) -> Self {
        self.settings
            .set("client_secret_file", quoted_path(path.as_ref()));
        self
    }

    pub fn auth_method(self, method: &str) -> Self {
        self.set("auth_method", method)
    }

    pub fn scope(self, scope: &str) -> Self {
        self.set("scope", scope)
    }

    pub fn audience(self, audience: &str) -> Self {
        self.set("audience", audience)
    }

    /// `extra_params = { KEY = "VALUE", … }`.
    pub fn extra_params(mut self, params: &[(&str, &str)]) -> Self {
        let pairs: Vec<String> = params
            .iter()
            .map(|(key, value)| format!("{key} = {}", quoted(value)))
            .collect();
        self.settings
            .set("extra_params", format!("{{ {} }}", pairs.join(", ")));
        self
    }

    /// `auth_method = "private_key_jwt"` signing with the key in `key_file`, named `key_id`.
    pub fn private_key_jwt(self, key_file: impl AsRef<Path>, key_id: &str) -> Self {
        self.auth_method("private_key_jwt")
            .private_key_file(key_file)
            .set("key_id", key_id)
    }

    /// `private_key_file` alone (no `auth_method`, no `key_id`).
    pub fn private_key_file(mut self, path: impl AsRef<Path>) -> Self {
        self.settings
            .set("private_key_file", quoted_path(path.as_ref()));
        self
    }

    /// `ca_file`: the CA that signs the server's certificate.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.settings.set("ca_file", quoted_path(path.as_ref()));
        self
    }

    /// `tls_client_auth` with `pki`'s client certificate, trusting `pki`'s CA.
    pub fn tls_client_auth(self, pki: &Pki) -> Self {
        self.auth_method("tls_client_auth")
            .ca_file(&pki.ca_cert)
            .tls_identity(&pki.client_cert, &pki.client_key)
    }

    /// `tls_cert_file` and `tls_key_file`, the client certificate and its key.
    pub fn tls_identity(mut self, cert_file: impl AsRef<Path>, key_file: impl AsRef<Path>) -> Self {
        self.settings
            .set("tls_cert_file", quoted_path(cert_file.as_ref()));
        self.settings
            .set("tls_key_file", quoted_path(key_file.as_ref()));
        self
    }

    /// `on_refresh` runs `command` for at most `timeout`.
    pub fn on_refresh_command(mut self, command: &[&str], timeout: &str) -> Self {
        self = self.on_refresh_run(command);
        self.on_refresh.set("timeout", quoted(timeout));
        self
    }

    /// `on_refresh` runs `command` with no `timeout` of its own (bearerd's default).
    pub fn on_refresh_run(mut self, command: &[&str]) -> Self {
        self.on_refresh.set("command", quoted_list(command));
        self
    }

    /// `on_refresh.pass_env`: the variables of bearerd's own environment the command also gets.
    pub fn pass_env(mut self, names: &[&str]) -> Self {
        self.on_refresh.set("pass_env", quoted_list(names));
        self
    }

    /// `on_refresh` sends `signal` to the process in `pid_file`.
    pub fn on_refresh_signal(mut self, signal: &str, pid_file: &Path) -> Self {
        self.on_refresh.set("signal", quoted(signal));
        self.on_refresh.set("pid_file", quoted_path(pid_file));
        self
    }

    /// An output in the default format, `token`.
    pub fn output(self, path: impl AsRef<Path>) -> Self {
        self.output_with(path, &[])
    }

    /// An output in `format` (`env`, `header`, `json`, …).
    pub fn output_as(self, path: impl AsRef<Path>, format: &str) -> Self {
        self.output_with(path, &[&format!("format = {}", quoted(format))])
    }

    /// An output in the `template` format rendering the file `template_file`.
    pub fn output_template_file(
        self,
        path: impl AsRef<Path>,
        template_file: impl AsRef<Path>,
    ) -> Self {
        let template_file = quoted_path(template_file.as_ref());
        self.output_with(
            path,
            &[
                "format = \"template\"",
                &format!("template_file = {template_file}"),
            ],
        )
    }

    /// An output with raw lines after its `path`, e.g. `mode = "0640"`.
    pub fn output_with(mut self, path: impl AsRef<Path>, lines: &[&str]) -> Self {
        let mut output = Table::default();
        output.set("path", quoted_path(path.as_ref()));
        for line in lines {
            output.line(line);
        }
        self.outputs.push(output);
        self
    }

    fn render(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        self.settings.render(&format!("[clients.{name}]"), out)?;
        self.on_refresh
            .render(&format!("[clients.{name}.on_refresh]"), out)?;
        for output in &self.outputs {
            output.render(&format!("[[clients.{name}.output]]"), out)?;
        }
        Ok(())
    }
}
