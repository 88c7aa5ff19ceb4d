//! The sd_notify protocol: READY/RELOADING/STOPPING/STATUS/WATCHDOG datagrams to
//! `$NOTIFY_SOCKET`. It only reports what the supervisor tells it; it changes nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::supervisor::{Notice, Status};

/// A connection to systemd's notification socket, if there is one.
struct Notifier {
    socket: UnixDatagram,
    address: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    fn from_env() -> Option<Self> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let target = target.to_string_lossy().into_owned();
        let address = if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&target)
        };
        let address = match address {
            Ok(address) => address,
            Err(error) => {
                warn!(socket = %target, %error, "NOTIFY_SOCKET is not a usable address");
                return None;
            }
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Self { socket, address }),
            Err(error) => {
                warn!(%error, "cannot create the notification socket");
                None
            }
        }
    }

    fn send(&self, message: &str) {
        if let Err(error) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            debug!(%error, "sd_notify failed");
        }
    }
}

/// `WATCHDOG_USEC` (for this process, per `WATCHDOG_PID`) halved: how often to pet the dog.
fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

/// Relays notices and status summaries to systemd, and pets the watchdog, until `notices`
/// closes (after the supervisor's last word, `STOPPING=1`). When not run under systemd it only
/// drains the notices: it does not even watch the status, so no report wakes it.
pub(crate) fn spawn(
    mut notices: mpsc::UnboundedReceiver<Notice>,
    mut status: watch::Receiver<Status>,
    clock: Clock,
) -> JoinHandle<()> {
    let Some(notifier) = Notifier::from_env() else {
        drop(status);
        return tokio::spawn(async move { while notices.recv().await.is_some() {} });
    };
    let watchdog = watchdog_interval();
    tokio::spawn(async move {
        let mut status_open = true;
        let mut last_status = String::new();
        let mut ticker = watchdog.map(tokio::time::interval);
        loop {
            tokio::select! {
                notice = notices.recv() => {
                    let Some(notice) = notice else { return };
                    match notice {
                        Notice::Ready => notifier.send("READY=1"),
                        Notice::Reloading => notifier.send(&format!(
                            "RELOADING=1\nMONOTONIC_USEC={}",
                            monotonic_usec()
                        )),
                        Notice::Stopping => notifier.send("STOPPING=1"),
                    }
                }
                changed = status.changed(), if status_open => {
                    if changed.is_err() {
                        status_open = false;
                        continue;
                    }
                    let line = status.borrow_and_update().summary(clock.now());
                    if line != last_status {
                        notifier.send(&format!("STATUS={line}"));
                        last_status = line;
                    }
                }
                _ = async {
                    match ticker.as_mut() {
                        Some(ticker) => { ticker.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => notifier.send("WATCHDOG=1"),
            }
        }
    })
}
