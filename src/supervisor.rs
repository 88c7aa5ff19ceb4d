//! The event loop: owns one worker task per client, applies reloads with [`plan`], and
//! publishes [`Status`]. Everything that can make bearerd act arrives here as one `Event`.
//! It never fetches, writes token files or talks to the OS itself.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::config::{ClientName, Config, ConfigError};
use crate::events::{Event, ReloadCause};
use crate::hooks;
use crate::metrics::{Metrics, RequestResult};
use crate::preflight;
use crate::worker::{Command, Mode, Origin, Report, Reporter, Start, Worker, WorkerContext};

/// What every observer (readiness, metrics, systemd) knows about the clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Status {
    clients: BTreeMap<ClientName, ClientStatus>,
    /// Bumped on every successful reload.
    generation: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ClientStatus {
    /// At least one attempt finished (success or failure) since the client started.
    tried: bool,
    expires_at: Option<SystemTime>,
    next_refresh: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    refreshes_ok: u64,
    refreshes_failed: u64,
    /// The last attempt sent nothing because a token file was unusable: which and why.
    token_file_problem: Option<String>,
}

impl Status {
    /// Every client has been tried once.
    fn all_tried(&self) -> bool {
        self.clients.values().all(|client| client.tried)
    }

    /// Clients without an unexpired token on disk.
    pub(crate) fn unready(&self, now: SystemTime) -> Vec<&ClientName> {
        self.clients
            .iter()
            .filter(|(_, client)| client.expires_at.is_none_or(|expires_at| expires_at <= now))
            .map(|(name, _)| name)
            .collect()
    }

    /// Why an unready client's last attempt sent nothing, when a token file was the reason.
    pub(crate) fn token_file_problem(&self, client: &ClientName) -> Option<&str> {
        self.clients.get(client)?.token_file_problem.as_deref()
    }

    /// One line for `systemctl status`: "3 clients, 3 fresh, next refresh in 4m".
    pub(crate) fn summary(&self, now: SystemTime) -> String {
        let total = self.clients.len();
        let fresh = total - self.unready(now).len();
        let failing = self
            .clients
            .values()
            .filter(|client| client.last_error.is_some())
            .count();
        let mut line = format!("{total} clients, {fresh} fresh");
        if failing > 0 {
            line.push_str(&format!(", {failing} failing"));
        }
        if let Some(next) = self.clients.values().filter_map(|c| c.next_refresh).min() {
            let left = next.duration_since(now).unwrap_or(Duration::ZERO);
            line.push_str(&format!(
                ", next refresh in {}",
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ));
        }
        line
    }
}

/// What a reload does, decided from the old and the new configuration alone.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Untouched: same settings, same worker, same timers.
    keep: Vec<ClientName>,
    stop: Vec<ClientName>,
    /// Each with how it begins: [`Start::ReuseSaved`] when the client is new or only files,
    /// hooks or `[agent]` changed; [`Start::Fetch`] when what its token request sends changed.
    start: Vec<(ClientName, Start)>,
}

/// Decides a reload. A change of `[agent]` restarts every worker, but lets them reuse their
/// saved tokens; a change to what a token request sends (including the secret) refetches.
fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    let agent_changed = old.agent != new.agent;
    for client in &old.clients {
        if new.client(client.name.as_str()).is_none() {
            plan.stop.push(client.name.clone());
        }
    }
    for client in &new.clients {
        match old.client(client.name.as_str()) {
            None => plan.start.push((client.name.clone(), Start::ReuseSaved)),
            Some(previous) if previous == client && !agent_changed => {
                plan.keep.push(client.name.clone());
            }
            Some(previous) => {
                plan.stop.push(client.name.clone());
                let start = if previous.request == client.request {
                    Start::ReuseSaved
                } else {
                    Start::Fetch
                };
                plan.start.push((client.name.clone(), start));
            }
        }
    }
    plan
}

/// Reads and validates configs on a thread of its own, so that a slow load never stalls the
/// event loop, nor the admin endpoint on the same thread. One long-lived thread rather than the
/// blocking pool: loads spread over the pool's threads each left a malloc arena holding a
/// config's worth of memory (the resident set of the `load::` test tripled). The thread ends
/// when the supervisor drops `paths`.
struct Loader {
    paths: std::sync::mpsc::Sender<PathBuf>,
    loaded: mpsc::UnboundedReceiver<Result<Config, ConfigError>>,
}

impl Loader {
    fn start() -> std::io::Result<Self> {
        let (paths, requests) = std::sync::mpsc::channel::<PathBuf>();
        let (results, loaded) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("bearerd-config".to_owned())
            .spawn(move || {
                while let Ok(path) = requests.recv() {
                    if results.send(Config::load(&path)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { paths, loaded })
    }
}

struct Running {
    id: u64,
    abort: AbortHandle,
    commands: mpsc::UnboundedSender<Command>,
}

/// Something the supervisor tells the outside world about (systemd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Reloading,
    Stopping,
}

/// The daemon's core. `events` carries signals, file changes and clock steps (or a test's
/// stand-ins); returns after `Event::Shutdown` or when `events` closes, with no task left.
pub(crate) struct Supervisor {
    config: Config,
    context: Arc<WorkerContext>,
    workers: HashMap<ClientName, Running>,
    /// Per client, kept while the client is configured: its worker may be replaced while an
    /// `on_refresh` action runs.
    hooks: HashMap<ClientName, hooks::Gate>,
    tasks: JoinSet<()>,
    reports_tx: mpsc::UnboundedSender<(u64, Report)>,
    reports: mpsc::UnboundedReceiver<(u64, Report)>,
    next_worker: u64,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    notices: mpsc::UnboundedSender<Notice>,
    /// Started at the first reload.
    loader: Option<Loader>,
    /// The loader is reading and validating the config.
    loading: bool,
    /// A reload was asked for while `loading`: load once more after it, so the last change wins.
    reload_again: bool,
    /// Files to watch changed after a reload; read by the caller.
    pub(crate) watched_files: watch::Sender<Vec<PathBuf>>,
}

impl Supervisor {
    pub(crate) fn new(
        config: Config,
        clock: Clock,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let context = WorkerContext::new(config.agent.clone(), clock);
        let (watched_files, _) = watch::channel(config.watched_files());
        Self {
            context,
            workers: HashMap::new(),
            hooks: HashMap::new(),
            tasks: JoinSet::new(),
            reports_tx,
            reports,
            next_worker: 0,
            status: watch::channel(Status::default()).0,
            metrics: Arc::new(Metrics::default()),
            notices,
            loader: None,
            loading: false,
            reload_again: false,
            watched_files,
            config,
        }
    }

    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        preflight::sweep_stale_temps(&self.config);
        let names: Vec<ClientName> = self.config.clients.iter().map(|c| c.name.clone()).collect();
        for name in names {
            self.start(&name, Start::ReuseSaved);
        }
        let mut ready_sent = self.config.clients.is_empty();
        if ready_sent {
            let _ = self.notices.send(Notice::Ready);
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    None | Some(Event::Shutdown) => break,
                    Some(Event::Reload(cause)) => self.reload(cause),
                    Some(Event::FilesChanged(paths)) => self.files_changed(paths),
                    Some(Event::RefreshAll) => {
                        info!("refreshing every client now");
                        self.broadcast(Command::RefreshNow);
                    }
                    Some(Event::ClockChanged) => {
                        info!("the wall clock changed; re-checking every deadline");
                        self.broadcast(Command::ClockChanged);
                    }
                },
                Some((worker, report)) = self.reports.recv() => {
                    self.record(worker, report);
                    if !ready_sent && self.status.borrow().all_tried() {
                        ready_sent = true;
                        let _ = self.notices.send(Notice::Ready);
                    }
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        error!("a worker panicked: {error}");
                    }
                }
                loaded = async {
                    match self.loader.as_mut() {
                        Some(loader) => loader.loaded.recv().await,
                        None => std::future::pending().await,
                    }
                }, if self.loading => {
                    self.loading = false;
                    match loaded {
                        Some(loaded) => self.loaded(loaded),
                        None => {
                            self.loader = None;
                            error!("the configuration loader stopped; keeping the running one");
                            self.reload_done();
                        }
                    }
                }
            }
        }
        let _ = self.notices.send(Notice::Stopping);
        info!("stopping");
        self.tasks.shutdown().await;
    }

    fn start(&mut self, name: &ClientName, start: Start) {
        let Some(spec) = self.config.client(name.as_str()) else {
            return;
        };
        let spec = Arc::new(spec.clone());
        let (commands, commands_rx) = mpsc::unbounded_channel();
        self.next_worker += 1;
        let id = self.next_worker;
        let reporter = Reporter {
            worker: id,
            sender: self.reports_tx.clone(),
        };
        let gate = self.hooks.entry(name.clone()).or_default().clone();
        let worker = Worker::new(spec, Arc::clone(&self.context), Some(reporter)).with_hooks(gate);
        let abort = self.tasks.spawn(async move {
            let _ = worker.run(Mode::Daemon, start, commands_rx).await;
        });
        self.workers.insert(
            name.clone(),
            Running {
                id,
                abort,
                commands,
            },
        );
        self.status.send_modify(|status| {
            status.clients.insert(name.clone(), ClientStatus::default());
        });
    }

    fn stop(&mut self, name: &ClientName) {
        if let Some(running) = self.workers.remove(name) {
            running.abort.abort();
        }
        if self.config.client(name.as_str()).is_none() {
            self.hooks.remove(name);
        }
        self.metrics.forget(name);
        self.status.send_modify(|status| {
            status.clients.remove(name);
        });
    }

    fn broadcast(&self, command: Command) {
        for running in self.workers.values() {
            let _ = running.commands.send(command);
        }
    }

    /// Watched files changed: a token file retries the clients that read it and are waiting
    /// on a failure (it is read at every request, so the config is unchanged); any other file
    /// reloads.
    fn files_changed(&mut self, paths: Vec<PathBuf>) {
        let token_files = self.config.token_files();
        let (token_paths, others): (Vec<PathBuf>, Vec<PathBuf>) = paths
            .into_iter()
            .partition(|path| token_files.binary_search(path).is_ok());
        for path in &token_paths {
            for client in &self.config.clients {
                let reads = client
                    .request
                    .token_files()
                    .iter()
                    .any(|(_, file)| *file == path.as_path());
                if reads && let Some(running) = self.workers.get(&client.name) {
                    debug!(client = %client.name, path = %path.display(), "token file changed");
                    let _ = running.commands.send(Command::TokenFileChanged);
                }
            }
        }
        if let Some(first) = others.into_iter().next() {
            self.reload(ReloadCause::FileChanged(first));
        }
    }

    fn reload(&mut self, cause: ReloadCause) {
        match &cause {
            ReloadCause::Signal => info!("reloading (SIGHUP)"),
            ReloadCause::FileChanged(path) => {
                info!(path = %path.display(), "reloading (file changed)")
            }
        }
        if self.loading {
            self.reload_again = true;
            return;
        }
        let _ = self.notices.send(Notice::Reloading);
        self.load();
    }

    /// Hands the config's path to the loader (started if need be); its answer arrives in `run`.
    fn load(&mut self) {
        if self.loader.is_none() {
            match Loader::start() {
                Ok(loader) => self.loader = Some(loader),
                Err(error) => {
                    error!(
                        "cannot start a thread to load the configuration, keeping the running one: {error}"
                    );
                    self.reload_done();
                    return;
                }
            }
        }
        let path = self.config.path.clone();
        if self
            .loader
            .as_ref()
            .is_some_and(|loader| loader.paths.send(path).is_ok())
        {
            self.loading = true;
        } else {
            self.loader = None;
            error!("the configuration loader stopped; keeping the running one");
            self.reload_done();
        }
    }

    /// Loads again if a reload was asked for meanwhile, else tells systemd the reload is over.
    fn reload_done(&mut self) {
        if std::mem::take(&mut self.reload_again) {
            self.load();
        } else {
            let _ = self.notices.send(Notice::Ready);
        }
    }

    /// Applies a loaded config, or reports why it is refused.
    fn loaded(&mut self, loaded: Result<Config, ConfigError>) {
        match loaded {
            Err(error) => {
                self.metrics.config_reloaded(false);
                for line in error.to_string().lines() {
                    error!("invalid configuration, keeping the running one: {line}");
                }
            }
            Ok(new) => {
                self.metrics.config_reloaded(true);
                let plan = plan(&self.config, &new);
                if self.config.agent.listen != new.agent.listen {
                    warn!("a change of [agent] listen takes effect at the next restart");
                }
                if self.config.agent != new.agent {
                    self.context = self.context.renewed(new.agent.clone());
                } else {
                    // Certificates, keys and CA files may have changed in place.
                    self.context.http.forget();
                }
                self.config = new;
                for name in &plan.stop {
                    self.stop(name);
                }
                for (name, start) in &plan.start {
                    self.start(name, *start);
                }
                info!(
                    kept = plan.keep.len(),
                    started = plan.start.len(),
                    stopped = plan.stop.len(),
                    "configuration reloaded"
                );
                self.status.send_modify(|status| status.generation += 1);
                self.watched_files.send_replace(self.config.watched_files());
            }
        }
        self.reload_done();
    }

    fn record(&mut self, worker: u64, report: Report) {
        let client = match &report {
            Report::Fresh { client, .. }
            | Report::Failed { client, .. }
            | Report::Expired { client } => client.clone(),
        };
        if self
            .workers
            .get(&client)
            .is_none_or(|running| running.id != worker)
        {
            return; // a late report from a worker that was just stopped or replaced
        }
        let reads_token_files = self
            .config
            .client(client.as_str())
            .is_some_and(|spec| !spec.request.token_files().is_empty());
        match &report {
            Report::Fresh { .. } if reads_token_files => {
                self.metrics.token_files_checked(&client, true);
            }
            Report::Failed { token_file, .. } if reads_token_files => {
                self.metrics.token_files_checked(&client, !token_file);
            }
            _ => {}
        }
        match &report {
            Report::Fresh {
                expires_at, origin, ..
            } => {
                self.metrics.token_written(&client, *expires_at);
                if let Origin::Fetched { latency } = origin {
                    self.metrics
                        .request_finished(&client, RequestResult::Success, *latency);
                }
            }
            Report::Failed { at, latency, .. } => {
                self.metrics.request_failed_at(&client, *at);
                self.metrics
                    .request_finished(&client, RequestResult::Failure, *latency);
            }
            Report::Expired { .. } => {}
        }
        self.status.send_modify(|status| {
            let Some(entry) = status.clients.get_mut(&client) else {
                return;
            };
            entry.tried = true;
            match report {
                Report::Fresh {
                    expires_at,
                    next_refresh,
                    origin,
                    ..
                } => {
                    entry.expires_at = Some(expires_at);
                    entry.next_refresh = Some(next_refresh);
                    entry.last_error = None;
                    entry.token_file_problem = None;
                    if let Origin::Fetched { .. } = origin {
                        entry.refreshes_ok += 1;
                    }
                }
                Report::Failed {
                    message,
                    at,
                    retry_at,
                    token_file,
                    ..
                } => {
                    entry.token_file_problem = token_file.then(|| message.clone());
                    entry.last_error = Some(message);
                    entry.last_error_at = Some(at);
                    entry.next_refresh = Some(retry_at);
                    entry.refreshes_failed += 1;
                }
                Report::Expired { .. } => {
                    warn!(client = %client, "token expired");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            std::path::Path::new("/etc/bearerd/bearerd.toml"),
            text,
            &|_| Err(std::env::VarError::NotPresent),
        )
        .expect("valid config")
    }

    fn client(name: &str, extra: &str) -> String {
        format!(
            "[clients.{name}]\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"{name}\"\n\
             client_secret = \"s\"\n{extra}\n[[clients.{name}.output]]\npath = \"/run/{name}.token\"\n"
        )
    }

    fn names(list: &[ClientName]) -> Vec<&str> {
        list.iter().map(ClientName::as_str).collect()
    }

    #[test]
    fn an_unchanged_config_keeps_every_client() {
        let old = config(&format!("{}{}", client("a", ""), client("b", "")));
        let plan = plan(&old, &old.clone());
        assert_eq!(names(&plan.keep), ["a", "b"]);
        assert!(plan.stop.is_empty() && plan.start.is_empty());
    }

    #[test]
    fn added_removed_and_changed_clients_are_told_apart() {
        let old = config(&format!(
            "{}{}{}",
            client("kept", ""),
            client("gone", ""),
            client("scoped", "")
        ));
        let new = config(&format!(
            "{}{}{}",
            client("kept", ""),
            client("scoped", "scope = \"x\""),
            client("added", "")
        ));
        let plan = plan(&old, &new);
        assert_eq!(names(&plan.keep), ["kept"]);
        assert_eq!(names(&plan.stop), ["gone", "scoped"]);
        let start: Vec<(&str, Start)> = plan
            .start
            .iter()
            .map(|(name, start)| (name.as_str(), *start))
            .collect();
        // A new client may reuse a saved token; a changed request must be fetched again.
        assert_eq!(
            start,
            [("added", Start::ReuseSaved), ("scoped", Start::Fetch)]
        );
    }

    #[test]
    fn a_change_of_outputs_only_restarts_with_the_saved_token() {
        let old = config(&client("a", ""));
        let new =
            config(&client("a", "").replace("path = \"/run/a.token\"", "path = \"/run/a2.token\""));
        let plan = plan(&old, &new);
        assert_eq!(
            plan.start,
            [(ClientName::parse("a").expect("name"), Start::ReuseSaved)]
        );
    }

    #[test]
    fn a_changed_secret_is_fetched_again() {
        let old = config(&client("a", ""));
        let new =
            config(&client("a", "").replace("client_secret = \"s\"", "client_secret = \"t\""));
        assert_eq!(
            plan(&old, &new).start,
            [(ClientName::parse("a").expect("name"), Start::Fetch)]
        );
    }

    #[test]
    fn an_agent_change_restarts_everyone_with_saved_tokens() {
        let old = config(&client("a", ""));
        let new = config(&format!("[agent]\nrefresh_at = 0.5\n{}", client("a", "")));
        let plan = plan(&old, &new);
        assert!(plan.keep.is_empty());
        assert_eq!(names(&plan.stop), ["a"]);
        assert_eq!(
            plan.start,
            [(ClientName::parse("a").expect("name"), Start::ReuseSaved)]
        );
    }
}
