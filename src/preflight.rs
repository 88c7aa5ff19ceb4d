//! What bearerd checks and tidies before it starts work: the directories it writes token and
//! state files into (swept of a crash's temporary files, checked for other users' write bits),
//! credential files that other users can read, and the open-file limit. It only warns and
//! tidies; it never refuses to start, and never writes a token or state file.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Config;
use crate::output;

/// The directories bearerd writes token and state files into.
fn file_directories(config: &Config) -> BTreeSet<&Path> {
    let mut dirs: BTreeSet<&Path> = config
        .clients
        .iter()
        .flat_map(|client| client.outputs.iter())
        .filter_map(|output| output.path.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .collect();
    if let Some(state_dir) = &config.agent.state_dir {
        dirs.insert(state_dir);
    }
    dirs
}

/// Removes temporary files that a crash left in the output and state directories of `config`.
/// Call it before any worker of `config` writes (see [`output::sweep_stale_temps`]).
pub(crate) fn sweep_stale_temps(config: &Config) {
    for dir in file_directories(config) {
        match output::sweep_stale_temps(dir) {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed a temporary file left by a crash");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot clean up temporary files"),
        }
    }
}

/// What is wrong with a directory that [`writable_directories`] returns.
pub(crate) const WRITABLE_DIRECTORY: &str = "directory of token or state files is writable by \
    other users, who could plant or replace files in it; chmod go-w it";

/// The output and state directories that other users can write to (a group or others write
/// bit, sticky or not), with their modes: they could plant a state file there, and without the
/// sticky bit swap a token file under its readers.
pub(crate) fn writable_directories(config: &Config) -> Vec<(&Path, u32)> {
    file_directories(config)
        .into_iter()
        .filter_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
            (mode & 0o022 != 0).then_some((dir, mode))
        })
        .collect()
}

/// Warns when the config file, a secret file or a private key can be read by other users, and
/// when an output or state directory can be written by them.
pub fn warn_about_permissions(config: &Config) {
    for file in config.credential_files() {
        if let Ok(metadata) = std::fs::metadata(&file)
            && metadata.permissions().mode() & 0o004 != 0
        {
            tracing::warn!(
                path = %file.display(),
                mode = %format!("{:04o}", metadata.permissions().mode() & 0o7777),
                "file with credentials is readable by every user; chmod o-r it"
            );
        }
    }
    for (dir, mode) in writable_directories(config) {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:04o}"),
            "{WRITABLE_DIRECTORY}"
        );
    }
}

/// Raises the soft limit on open files to the hard limit, as systemd advises programs that need
/// more than its default soft limit of 1,024 (kept low for `select()`; bearerd uses epoll).
/// Under the packaged unit both are `LimitNOFILE=`, so this changes nothing there.
pub fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = current, to = maximum, "raised the open-file limit"),
            Err(error) => {
                tracing::warn!(%error, limit = current, "cannot raise the open-file limit")
            }
        }
    }
}
