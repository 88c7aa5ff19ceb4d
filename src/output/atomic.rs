//! Putting bytes on disk so that a reader sees the old complete file or the new complete file,
//! never a mix, with exactly the configured mode: [`write_atomic`] and its temporary files, their
//! sweep after a crash, [`write_if_changed`] (its temporary file made durable, then renamed, and
//! its directory synced by `dirsync`, once per batch), [`remove_output`]. It must not render, log or decide what to write, and no error it
//! returns contains file contents.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::dirsync::{RenamedIn, sync_dir, sync_then};

/// A failed file operation: what was being done, to which path, and the OS's reason.
/// It never contains file contents.
#[derive(Debug)]
pub(crate) struct WriteError {
    action: &'static str,
    path: PathBuf,
    error: io::Error,
}

impl WriteError {
    fn new(action: &'static str, path: &Path, error: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            error,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for WriteError {}

/// What marks a temporary file as ours: `.<file name>` + this + 16 lower-case hex digits.
const TEMP_MARKER: &str = ".bearerd-tmp-";

const TEMP_SUFFIX_LEN: usize = 16;

/// How many bytes longer a temporary file's name is than the name of the file it replaces.
pub(crate) const TEMP_NAME_EXTRA: usize = 1 + TEMP_MARKER.len() + TEMP_SUFFIX_LEN;

/// Whether `name` (a file name, not a path) is one of our temporary files.
fn is_temp_file_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    let marker = TEMP_MARKER.as_bytes();
    let Some(stem_and_marker) = name.len().checked_sub(TEMP_SUFFIX_LEN) else {
        return false;
    };
    let (head, suffix) = name.split_at(stem_and_marker);
    name.first() == Some(&b'.')
        && head.len() > 1 + marker.len()
        && head.ends_with(marker)
        && suffix
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn temp_file_name(file_name: &OsStr) -> OsString {
    let mut name = OsString::from(".");
    name.push(file_name);
    name.push(TEMP_MARKER);
    name.push(format!("{:016x}", rand::random::<u64>()));
    name
}

/// The directory `path` is in (`.` for a bare file name) and its file name.
fn split_path(path: &Path) -> Result<(&Path, &OsStr), WriteError> {
    let Some(file_name) = path.file_name() else {
        return Err(WriteError::new(
            "write",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        ));
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((dir, file_name))
}

/// Replaces the file at `path` with `bytes`, atomically and durably, with permission bits
/// exactly `mode` whatever the umask (SPEC "Writing files"):
/// missing parent directories are created with mode 0700 (less whatever the umask removes);
/// a temporary file (see [`TEMP_MARKER`]) is created in the same directory, owner-only, then
/// set to `mode` before any byte is written, written, fsynced and renamed over `path`; then
/// the directory is fsynced. On failure the temporary file is removed and `path` is untouched
/// (unless only the final directory sync failed: then the new content is in place but may not
/// survive a crash). A symlink at `path` is replaced, not followed.
///
/// Blocking; run it where cancellation cannot interrupt it (e.g. `spawn_blocking`). Token
/// files are written by [`write_if_changed`], which leaves the sync (of the temporary file and
/// of the directory) and the rename between them to `dirsync`.
#[cfg(test)]
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_atomic_as(path, bytes, mode, Durability::Durable)
}

/// Whether a write must survive a power loss, or only be atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// fsync the file before the rename and the directory after it: token files.
    Durable,
    /// No fsync: still atomic (readers and a SIGKILL see old or new bytes), but a power loss
    /// may lose it. For files that are only a cache, such as the state file, where losing
    /// one costs a refetch; it halves the fsyncs of a refresh.
    Cache,
}

/// [`write_atomic`], with the durability chosen by the caller.
pub(crate) fn write_atomic_as(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), WriteError> {
    let dir = replace(path, bytes, mode, durability)?;
    if durability == Durability::Cache {
        return Ok(());
    }
    sync_dir(dir).map_err(|error| WriteError::new("sync directory", dir, error))
}

/// [`write_atomic`] up to the rename (the temporary file is fsynced when `durability` says
/// so); returns the directory, whose sync is the caller's.
fn replace<'a>(
    path: &'a Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<&'a Path, WriteError> {
    let (dir, file_name) = split_path(path)?;
    let (file, temp) = create_temp(dir, file_name, path)?;
    if let Err(error) = fill_and_rename(file, &temp, path, bytes, mode, durability) {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    Ok(dir)
}

/// Creates `dir` if need be, and in it a new temporary file for `path`, owner-only. The
/// directory is made only when the file cannot be created for want of it: a batch of 1,000
/// writes into one directory then costs no `mkdir` each.
fn create_temp(dir: &Path, file_name: &OsStr, path: &Path) -> Result<(File, PathBuf), WriteError> {
    let temp = dir.join(temp_file_name(file_name));
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
    };
    let file = match create() {
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| WriteError::new("create directory", dir, error))?;
            create()
        }
        created => created,
    }
    .map_err(|error| WriteError::new("create a temporary file for", path, error))?;
    Ok((file, temp))
}

/// Sets the mode of the new temporary `file` and writes `bytes` into it.
fn fill(file: &mut File, path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    // fchmod, not the creation mode: the umask does not apply to it, and it happens before
    // the file holds anything worth reading.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|error| WriteError::new("set the mode of", path, error))?;
    file.write_all(bytes)
        .map_err(|error| WriteError::new("write", path, error))
}

fn fill_and_rename(
    mut file: File,
    temp: &Path,
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), WriteError> {
    fill(&mut file, path, bytes, mode)?;
    if durability == Durability::Durable {
        file.sync_all()
            .map_err(|error| WriteError::new("sync", path, error))?;
    }
    drop(file);
    fs::rename(temp, path).map_err(|error| WriteError::new("replace", path, error))
}

/// [`write_atomic`] unless `path` is already a regular file holding exactly `bytes` with
/// permission bits exactly `mode`, so that watchers of an unchanged output stay quiet; but the
/// temporary file, once written, is handed to `dirsync`, which makes it durable together with
/// the rest of its batch (one `syncfs`), renames it and syncs its directory. `path` holds the
/// new bytes once [`RenamedIn::request_sync`]'s wait has returned `Ok`; until then it holds
/// the old ones, and an error in that wait names `path` (the temporary file is then removed).
/// Returns whether the file is being written.
pub(crate) fn write_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    renamed: &mut RenamedIn,
) -> Result<bool, WriteError> {
    if unchanged(path, bytes, mode) {
        return Ok(false);
    }
    let (dir, file_name) = split_path(path)?;
    let (mut file, temp) = create_temp(dir, file_name, path)?;
    if let Err(error) = fill(&mut file, path, bytes, mode) {
        drop(file);
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    drop(file);
    let (dir, path, handed) = (dir.to_owned(), path.to_owned(), temp.clone());
    let finish = move |synced: io::Result<()>| {
        let renamed = synced
            .map_err(|error| WriteError::new("sync", &path, error))
            .and_then(|()| {
                fs::rename(&temp, &path).map_err(|error| WriteError::new("replace", &path, error))
            });
        match renamed {
            Ok(()) => Ok(dir),
            Err(error) => {
                let _ = fs::remove_file(&temp);
                Err(error.to_string())
            }
        }
    };
    sync_then(handed, Box::new(finish), renamed);
    Ok(true)
}

/// Whether `path` is a regular file (not a symlink) with exactly `bytes` and `mode`. Any
/// error reading it counts as "no": writing will then either succeed or say why not.
fn unchanged(path: &Path, bytes: &[u8], mode: u32) -> bool {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return false;
    };
    if !metadata.is_file()
        || metadata.permissions().mode() & 0o7777 != mode
        || metadata.len() != bytes.len() as u64
    {
        return false;
    }
    let mut current = Vec::with_capacity(bytes.len());
    File::open(path)
        .and_then(|file| file.take(bytes.len() as u64 + 1).read_to_end(&mut current))
        .is_ok_and(|_| current == bytes)
}

/// Removes our temporary files (by [`is_temp_file_name`]) left in `dir` by a crash, and
/// returns their paths. A missing `dir` is not an error. Call it before writes to `dir` start:
/// it cannot tell a crash's leftovers from a write in progress.
pub(crate) fn sweep_stale_temps(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(WriteError::new("list directory", dir, error)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| WriteError::new("list directory", dir, error))?;
        if !is_temp_file_name(&entry.file_name())
            || !entry.file_type().is_ok_and(|kind| kind.is_file())
        {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(WriteError::new("remove stale temporary file", &path, error)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Removes an output (`on_expiry = "remove"`); one that is already gone is fine.
pub(crate) fn remove_output(path: &Path) -> Result<(), WriteError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(WriteError::new("remove", path, error))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_creates_parents_0700_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/t.token");
        write_atomic(&path, b"one", 0o640).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        assert_eq!(mode_of(&path), 0o640);
        // The test process's umask may narrow 0700 but never widen it.
        assert_eq!(mode_of(&dir.path().join("a")) & !0o700, 0);
        assert_eq!(mode_of(&dir.path().join("a/b")) & !0o700, 0);
        write_atomic(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(names_in(&dir.path().join("a/b")), ["t.token"]);
    }

    #[test]
    fn write_atomic_accepts_a_bare_file_name_and_replaces_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write target");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_atomic(&link, b"new", 0o600).expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"keep");
        assert!(fs::symlink_metadata(&link).expect("metadata").is_file());
        assert!(split_path(Path::new("t.token")).is_ok_and(|(dir, _)| dir == Path::new(".")));
    }

    #[test]
    fn failed_writes_name_the_path_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let occupied = dir.path().join("occupied");
        fs::create_dir(&occupied).expect("mkdir");
        let error = write_atomic(&occupied, b"x", 0o600).expect_err("a directory is in the way");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot replace {}: Is a directory (os error 21)",
                occupied.display()
            )
        );
        assert_eq!(names_in(dir.path()), ["occupied"]);

        let file = dir.path().join("file");
        fs::write(&file, "").expect("write");
        let error = write_atomic(&file.join("t.token"), b"x", 0o600).expect_err("not a dir");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot create directory {}: ", file.display())),
            "{error}"
        );
        let error = write_atomic(Path::new("/"), b"x", 0o600).expect_err("no file name");
        assert_eq!(error.to_string(), "cannot write /: the path names no file");
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    /// [`write_if_changed`], then the wait for its rename and its directory's sync.
    fn written(path: &Path, bytes: &[u8], mode: u32) -> bool {
        let mut renamed = RenamedIn::default();
        let wrote = write_if_changed(path, bytes, mode, &mut renamed).expect("write");
        block_on(renamed.request_sync().wait()).expect("renamed and synced");
        wrote
    }

    #[test]
    fn write_if_changed_skips_identical_content_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.token");
        assert!(written(&path, b"abc", 0o600), "first write");
        let before = fs::metadata(&path).expect("metadata");

        assert!(!written(&path, b"abc", 0o600), "same");
        let after = fs::metadata(&path).expect("metadata");
        assert_eq!(
            (before.ino(), before.mtime(), before.mtime_nsec()),
            (after.ino(), after.mtime(), after.mtime_nsec())
        );

        assert!(written(&path, b"abc", 0o640), "mode differs");
        assert_eq!(mode_of(&path), 0o640);
        assert_ne!(fs::metadata(&path).expect("metadata").ino(), before.ino());

        assert!(written(&path, b"abd", 0o640), "bytes differ");
        assert!(written(&path, b"abdd", 0o640), "length differs");
        assert_eq!(fs::read(&path).expect("read"), b"abdd");
        assert!(!written(&path, b"abdd", 0o640), "same again");
        assert_eq!(names_in(dir.path()), ["t.token"]);
    }

    #[test]
    fn a_batch_handed_over_together_is_renamed_whole_with_no_temporary_file_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut renamed = RenamedIn::default();
        let mut expected = Vec::new();
        for index in 0..20 {
            let name = format!("c{index:02}.token");
            let path = dir.path().join(&name);
            let bytes = format!("token {index}");
            assert!(write_if_changed(&path, bytes.as_bytes(), 0o640, &mut renamed).expect("write"));
            expected.push((path, bytes));
        }
        block_on(renamed.request_sync().wait()).expect("renamed and synced");
        for (path, bytes) in &expected {
            assert_eq!(fs::read_to_string(path).expect("read"), *bytes);
            assert_eq!(mode_of(path), 0o640);
        }
        assert_eq!(names_in(dir.path()).len(), 20, "{:?}", names_in(dir.path()));
    }

    #[test]
    fn settle_returns_once_every_file_handed_over_is_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut renamed = RenamedIn::default();
        for index in 0..50 {
            let path = dir.path().join(format!("c{index:02}.token"));
            assert!(write_if_changed(&path, b"t", 0o600, &mut renamed).expect("write"));
        }
        // Nobody waits for the writes (their worker was stopped): what a clean exit leaves.
        drop(renamed);
        // Other tests' writes may keep the process from settling within the bound; ours are
        // done by then all the same.
        let settled = crate::output::settle(std::time::Duration::from_secs(10));
        let names = names_in(dir.path());
        assert_eq!(names.len(), 50, "settled: {settled}; {names:?}");
        assert!(
            names.iter().all(|name| name.ends_with(".token")),
            "{names:?}"
        );
    }

    #[test]
    fn a_rename_that_fails_after_the_sync_names_the_path_and_removes_the_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let occupied = dir.path().join("occupied");
        fs::create_dir(&occupied).expect("mkdir");
        let mut renamed = RenamedIn::default();
        assert!(write_if_changed(&occupied, b"x", 0o600, &mut renamed).expect("handed over"));
        let error = block_on(renamed.request_sync().wait()).expect_err("a directory is in the way");
        assert_eq!(
            error,
            format!(
                "cannot replace {}: Is a directory (os error 21)",
                occupied.display()
            )
        );
        assert_eq!(names_in(dir.path()), ["occupied"]);
    }

    #[test]
    fn temp_file_names_are_recognised_exactly() {
        let ours = temp_file_name(OsStr::new("t.token"));
        assert!(is_temp_file_name(&ours), "{ours:?}");
        assert!(ours.to_string_lossy().starts_with(".t.token.bearerd-tmp-"));
        for other in [
            "t.token",
            ".t.token.bearerd-tmp-",
            ".t.token.bearerd-tmp-0123456789abcde",
            ".t.token.bearerd-tmp-0123456789abcdef0",
            ".t.token.bearerd-tmp-0123456789ABCDEF",
            "t.token.bearerd-tmp-0123456789abcdef",
            "..bearerd-tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_file_name(OsStr::new(other)), "{other}");
        }
        assert!(is_temp_file_name(OsStr::new(
            ".t.token.bearerd-tmp-0123456789abcdef"
        )));
    }

    #[test]
    fn sweep_removes_only_our_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = [
            ".t.token.bearerd-tmp-0123456789abcdef",
            ".x.env.bearerd-tmp-fedcba9876543210",
        ];
        let theirs = [
            "t.token",
            ".t.token.swp",
            ".t.token.bearerd-tmp-short",
            "t.token.bearerd-tmp-0123456789abcdef",
        ];
        for name in ours.iter().chain(&theirs) {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        fs::create_dir(dir.path().join(".d.bearerd-tmp-0000000000000000")).expect("mkdir");

        let removed = sweep_stale_temps(dir.path()).expect("sweep");
        let expected: Vec<PathBuf> = ours.iter().map(|name| dir.path().join(name)).collect();
        assert_eq!(removed, expected);
        let mut left = theirs.to_vec();
        left.push(".d.bearerd-tmp-0000000000000000");
        left.sort_unstable();
        assert_eq!(names_in(dir.path()), left);

        assert_eq!(
            sweep_stale_temps(&dir.path().join("missing")).expect("missing dir"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn remove_output_ignores_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.token");
        fs::write(&path, "x").expect("write");
        remove_output(&path).expect("remove");
        assert!(!path.exists());
        remove_output(&path).expect("already gone");
        let error = remove_output(dir.path()).expect_err("a directory");
        assert!(error.to_string().starts_with("cannot remove "), "{error}");
    }

    /// Set by [`run_under_umask`] for the child process that runs [`umask_child`].
    const UMASK_CHILD: &str = "BEARERD_TEST_UMASK_CHILD";

    /// The umask is process-wide, so changing it here would race every other test. Instead
    /// this test binary re-runs itself, via `sh -c 'umask …; exec …'`, for one test only.
    fn run_under_umask(umask: &str) {
        let exe = std::env::current_exe().expect("test binary");
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" --exact output::atomic::tests::umask_child \
                 --test-threads=1 --nocapture"
            ))
            .arg(exe)
            .env(UMASK_CHILD, umask)
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "umask {umask}: {output:?}"
        );
    }

    #[test]
    fn modes_are_exact_under_umask_000() {
        run_under_umask("000");
    }

    #[test]
    fn modes_are_exact_under_umask_077() {
        run_under_umask("077");
    }

    /// Does nothing unless run by [`run_under_umask`].
    #[test]
    fn umask_child() {
        let Ok(umask) = std::env::var(UMASK_CHILD) else {
            return;
        };
        let umask = u32::from_str_radix(&umask, 8).expect("octal umask");
        let dir = tempfile::tempdir().expect("tempdir");

        // The umask really is in force here.
        let plain = dir.path().join("plain");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&plain)
            .expect("create");
        assert_eq!(mode_of(&plain), 0o666 & !umask);

        for mode in [0o600, 0o640, 0o644, 0o400] {
            let path = dir.path().join(format!("new/{mode:o}/t.token"));
            write_atomic(&path, b"abc", mode).expect("write");
            assert_eq!(mode_of(&path), mode, "mode {mode:o} under umask {umask:o}");
            assert_eq!(mode_of(path.parent().expect("parent")), 0o700);
            assert!(written(&path, b"abcd", mode), "rewrite");
            assert_eq!(mode_of(&path), mode, "mode {mode:o} under umask {umask:o}");
        }
    }
}
