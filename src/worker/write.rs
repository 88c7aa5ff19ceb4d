//! Putting a client's token on disk from a worker: every output rendered and written on a
//! blocking thread, handed to the syncers, then the state saved ([`write_and_save`]), and the
//! wait for writes under way at a clean exit ([`settle_writes`]). The files themselves are
//! `output`'s; the schedule and the reports are the worker's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::config::ClientSpec;
use crate::output;
use crate::state;
use crate::token::Token;

/// Renders and writes every output of `spec`; returns whether any file changed, once the
/// files' directories are durable. The writes run on a blocking thread, so cancelling the
/// caller cannot interrupt one half-way.
pub async fn write_outputs(spec: &Arc<ClientSpec>, token: &Token) -> Result<bool, String> {
    let (changed, synced) = hand_over_outputs(spec, token).await?;
    synced.wait().await?;
    Ok(changed)
}

/// The longest a clean exit waits for token writes on their way to their files.
const SETTLE_BOUND: Duration = Duration::from_secs(5);

/// For a clean exit, once every worker has stopped: waits (up to [`SETTLE_BOUND`]) for the
/// writes already begun, on blocking threads or in the syncers' hands, to be renamed into place
/// and their directories synced, so that a stop leaves no temporary file behind.
pub(crate) async fn settle_writes() {
    let settled = tokio::task::spawn_blocking(|| output::settle(SETTLE_BOUND))
        .await
        .unwrap_or(false);
    if !settled {
        warn!(
            "token writes were still in progress after {} s; their temporary files are swept at the next start",
            SETTLE_BOUND.as_secs()
        );
    }
}

/// [`write_outputs`] up to the hand-over: the files written (on a blocking thread) and handed
/// to the syncers; returns whether any changed and the sync to wait for.
pub(super) async fn hand_over_outputs(
    spec: &Arc<ClientSpec>,
    token: &Token,
) -> Result<(bool, output::DirSync), String> {
    let (spec, token) = (Arc::clone(spec), token.clone());
    let coming = output::WriteComing::new();
    let (changed, synced) = tokio::task::spawn_blocking(move || {
        let mut renamed = output::RenamedIn::default();
        let changed = write_each_output(&spec, &token, &mut renamed);
        let synced = renamed.request_sync();
        drop(coming);
        (changed, synced)
    })
    .await
    .map_err(|error| format!("writer task failed: {error}"))?;
    Ok((changed?, synced))
}

/// What [`write_and_save`] did once the token's files were written.
pub(super) struct Written {
    /// Whether any file changed (so `on_refresh` runs).
    pub(super) changed: bool,
    /// The state file's save, which may fail without failing the refresh.
    pub(super) state: Result<(), String>,
    /// The sync of the files' directories, to wait for before the token counts as written.
    pub(super) synced: output::DirSync,
}

/// Writes every output of `spec`, then saves the state, in one task on a blocking thread (its
/// fsyncs must not stall every other client on the runtime's one thread). One task, so that
/// aborting the worker (a reload, SIGTERM) once the files are being written cannot lose the
/// state save: a blocking task that has started runs to its end, even at runtime shutdown,
/// while one still queued then is dropped whole, files and state alike. The directories'
/// syncs are asked for before `coming` is dropped, so the syncer's round covers them.
pub(super) async fn write_and_save(
    state_path: &Path,
    spec: &Arc<ClientSpec>,
    token: &Token,
    coming: output::WriteComing,
) -> Result<Written, String> {
    let (state_path, spec, token) = (state_path.to_path_buf(), Arc::clone(spec), token.clone());
    tokio::task::spawn_blocking(move || {
        let mut renamed = output::RenamedIn::default();
        let changed = write_each_output(&spec, &token, &mut renamed);
        let synced = renamed.request_sync();
        drop(coming);
        Ok(Written {
            changed: changed?,
            state: state::save(&state_path, &spec, &token),
            synced,
        })
    })
    .await
    .map_err(|error| format!("writer task failed: {error}"))?
}

/// Renders and writes every output of `spec` on this thread; returns whether any file changed.
/// The directories of the files replaced are added to `renamed`, for their sync.
pub(super) fn write_each_output(
    spec: &ClientSpec,
    token: &Token,
    renamed: &mut output::RenamedIn,
) -> Result<bool, String> {
    let mut changed = false;
    let mut errors = Vec::new();
    for output in &spec.outputs {
        let bytes = output::render(&output.format, token, spec.name.as_str());
        match output::write_if_changed(&output.path, &bytes, output.mode, renamed) {
            Ok(wrote) => changed |= wrote,
            Err(error) => errors.push(error.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(changed)
    } else {
        Err(errors.join("; "))
    }
}

pub(super) fn remove_outputs(spec: &ClientSpec) {
    for output in &spec.outputs {
        if let Err(error) = output::remove_output(&output.path) {
            warn!(%error, "cannot remove an expired token file");
        }
    }
}
