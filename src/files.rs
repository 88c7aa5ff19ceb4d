//! Reading files that may be hostile: the config and every file it names are read here, only
//! if they are regular files (symlinks followed) and within a size cap for what they hold; and
//! the files bearerd wrote itself (state and lock files) are opened here, trusted only if they
//! are regular files of its own user that no one else can write (symlinks not followed).
//! It reads bytes and names problems; it never interprets content nor logs it (secrets pass).

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// What a file holds: names it in messages and sets its size cap (see docs/configuration.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Config,
    ClientSecret,
    PrivateKey,
    TlsKey,
    TlsCert,
    CaFile,
    /// The system's CA bundle (e.g. `/etc/ssl/certs/ca-certificates.crt`).
    SystemRoots,
    Template,
    /// A token made by someone else, by the config key that names it: re-read at every use.
    ClientAssertion,
    SubjectToken,
    ActorToken,
    Assertion,
    /// Any file watched for changes: read to notice a change of content, so the largest cap.
    Watched,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl Kind {
    /// How the file is called in messages: its config key where it has one.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Config => "config file",
            Self::ClientSecret => "secret file",
            Self::PrivateKey => "private_key_file",
            Self::TlsKey => "tls_key_file",
            Self::TlsCert => "tls_cert_file",
            Self::CaFile => "ca_file",
            Self::SystemRoots => "system CA bundle",
            Self::Template => "template file",
            Self::ClientAssertion => "client_assertion_file",
            Self::SubjectToken => "subject_token_file",
            Self::ActorToken => "actor_token_file",
            Self::Assertion => "assertion_file",
            Self::Watched => "watched file",
        }
    }

    /// The most bytes such a file may hold.
    fn cap(self) -> u64 {
        match self {
            // 10,000 clients take about 2 MiB; this leaves room for 80,000.
            Self::Config | Self::Watched => 16 * MIB,
            // A secret is a few hundred bytes; an RSA-16384 key in PEM is about 12 KiB.
            // A JWT (a projected service-account token, a JWT-SVID) is one or two KiB.
            Self::ClientSecret
            | Self::PrivateKey
            | Self::TlsKey
            | Self::Template
            | Self::ClientAssertion
            | Self::SubjectToken
            | Self::ActorToken
            | Self::Assertion => 64 * KIB,
            // Debian's whole CA bundle is about 220 KiB.
            Self::TlsCert | Self::CaFile | Self::SystemRoots => 4 * MIB,
        }
    }
}

/// Why a file was not read.
#[derive(Debug)]
pub(crate) struct FileError {
    path: PathBuf,
    kind: Kind,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Io(std::io::Error),
    NotRegular(&'static str),
    TooLarge,
    NotUtf8,
}

impl FileError {
    /// The message without the path, for a caller that shows the path already: "config file
    /// is a FIFO, not a regular file".
    pub(crate) fn without_path(&self) -> String {
        self.message(None)
    }

    fn message(&self, path: Option<&Path>) -> String {
        let name = self.kind.name();
        let what = match path {
            Some(path) => format!("{name} {}", path.display()),
            None => name.to_owned(),
        };
        match &self.problem {
            Problem::Io(error) => format!("cannot read {what}: {error}"),
            Problem::NotRegular(file_type) => format!("{what} is {file_type}, not a regular file"),
            Problem::TooLarge => format!("{what} is larger than {}", size(self.kind.cap())),
            Problem::NotUtf8 => format!("{what} is not valid UTF-8"),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(Some(&self.path)))
    }
}

impl std::error::Error for FileError {}

fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

/// Reads a regular file of at most `kind.cap()` bytes. The open cannot block (a FIFO is opened
/// non-blocking and then refused), and no more than the cap plus one byte is ever read, so
/// `/dev/zero` or a file that grows while it is read costs nothing.
pub(crate) fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, FileError> {
    let fail = |problem| FileError {
        path: path.to_owned(),
        kind,
        problem,
    };
    let cap = kind.cap();
    let check = |stat: &rustix::fs::Stat| match not_regular(stat) {
        Some(file_type) => Err(fail(Problem::NotRegular(file_type))),
        None if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > cap => {
            Err(fail(Problem::TooLarge))
        }
        None => Ok(()),
    };
    // Checked before the open, so that a device is never opened, and again after it, on
    // what was opened, in case the path was swapped in between.
    check(&rustix::fs::stat(path).map_err(|errno| fail(Problem::Io(errno.into())))?)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|errno| fail(Problem::Io(errno.into())))?;
    check(&rustix::fs::fstat(&fd).map_err(|errno| fail(Problem::Io(errno.into())))?)?;
    let mut bytes = Vec::new();
    File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| fail(Problem::Io(error)))?;
    if bytes.len() as u64 > cap {
        return Err(fail(Problem::TooLarge));
    }
    Ok(bytes)
}

fn not_regular(stat: &rustix::fs::Stat) -> Option<&'static str> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Socket => Some("a socket"),
        FileType::Symlink | FileType::Unknown => Some("not a file"),
    }
}

/// [`read`], for files that hold text.
pub(crate) fn read_text(path: &Path, kind: Kind) -> Result<String, FileError> {
    let bytes = read(path, kind)?;
    String::from_utf8(bytes).map_err(|_| FileError {
        path: path.to_owned(),
        kind,
        problem: Problem::NotUtf8,
    })
}

/// How [`open_own`] opens a file bearerd writes itself.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Own {
    /// A file that must exist, of at most `cap` bytes (a state file).
    Existing { cap: u64 },
    /// The file, created with mode 0600 when it is missing (a lock file).
    Create,
}

/// Why [`open_own`] or [`read_own`] gave no file.
#[derive(Debug)]
pub(crate) enum OwnFileError {
    /// Nothing is at the path (never with [`Own::Create`]).
    Missing,
    /// Something is, but bearerd cannot trust it or cannot read it: why, in words ("a symbolic
    /// link", "owned by uid 4242, not by bearerd's uid 1000").
    Refused(String),
}

impl fmt::Display for OwnFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no such file"),
            Self::Refused(reason) => f.write_str(reason),
        }
    }
}

/// Opens a file that bearerd wrote itself and trusts it only as such: a symbolic link is not
/// followed and a FIFO does not block the open; then what was opened (fstat, so a swap cannot
/// race the check) must be a regular file, within the cap of [`Own::Existing`], owned by
/// bearerd's own user and writable by no one else.
pub(crate) fn open_own(path: &Path, how: Own) -> Result<File, OwnFileError> {
    let refused = |reason: String| OwnFileError::Refused(reason);
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if let Own::Create = how {
        flags |= OFlags::CREATE;
    }
    let file = match rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) if matches!(how, Own::Existing { .. }) => {
            return Err(OwnFileError::Missing);
        }
        Err(rustix::io::Errno::LOOP) => return Err(refused("a symbolic link".to_owned())),
        Err(errno) => return Err(refused(io::Error::from(errno).to_string())),
    };
    let metadata = file
        .metadata()
        .map_err(|error| refused(error.to_string()))?;
    if !metadata.file_type().is_file() {
        return Err(refused("not a regular file".to_owned()));
    }
    if let Own::Existing { cap } = how
        && metadata.len() > cap
    {
        return Err(refused(format!("larger than {} KiB", cap / KIB)));
    }
    if let Some(reason) = not_own(&metadata) {
        return Err(refused(reason));
    }
    Ok(file)
}

/// The bytes of a file bearerd wrote itself (see [`open_own`]) of at most `cap` bytes; no more
/// than the cap plus one byte is read, in case it grows meanwhile.
pub(crate) fn read_own(path: &Path, cap: u64) -> Result<Vec<u8>, OwnFileError> {
    let file = open_own(path, Own::Existing { cap })?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|error| OwnFileError::Refused(error.to_string()))?;
    if bytes.len() as u64 > cap {
        return Err(OwnFileError::Refused(format!(
            "grew past {} KiB while being read",
            cap / KIB
        )));
    }
    Ok(bytes)
}

/// Why a file bearerd opened may have been written by someone else: it is owned by another
/// user, or its group or others can write it.
fn not_own(metadata: &Metadata) -> Option<String> {
    let own = rustix::process::geteuid().as_raw();
    if metadata.uid() != own {
        return Some(format!(
            "owned by uid {}, not by bearerd's uid {own}",
            metadata.uid()
        ));
    }
    let mode = metadata.permissions().mode();
    (mode & 0o022 != 0).then(|| format!("group or others can write it: mode {:04o}", mode & 0o7777))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_symlinks_to_them_are_read() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert_eq!(read(&link, Kind::ClientSecret).expect("read"), b"s3cret\n");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let cases = [
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
            (fifo.as_path(), "a FIFO"),
        ];
        for (path, file_type) in cases {
            let error = read(path, Kind::Template).expect_err("refused");
            assert_eq!(
                error.to_string(),
                format!(
                    "template file {} is {file_type}, not a regular file",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn the_cap_is_exact() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("key");
        let cap = usize::try_from(Kind::PrivateKey.cap()).expect("cap");
        std::fs::write(&file, vec![b'k'; cap]).expect("write");
        assert_eq!(read(&file, Kind::PrivateKey).expect("read").len(), cap);
        std::fs::write(&file, vec![b'k'; cap + 1]).expect("write");
        let error = read(&file, Kind::PrivateKey).expect_err("too large");
        assert_eq!(
            error.to_string(),
            format!("private_key_file {} is larger than 64 KiB", file.display())
        );
        assert_eq!(
            error.without_path(),
            "private_key_file is larger than 64 KiB"
        );
    }

    #[test]
    fn own_files_are_trusted_only_as_bearerd_wrote_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("api.json");
        let refused = |result: Result<Vec<u8>, OwnFileError>| match result {
            Err(OwnFileError::Refused(reason)) => reason,
            other => panic!("not refused: {other:?}"),
        };
        assert!(matches!(read_own(&state, 4096), Err(OwnFileError::Missing)));
        std::fs::write(&state, [b' '; 2049]).expect("write");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_own(&state, 4096).expect("read").len(), 2049);
        assert_eq!(refused(read_own(&state, 2048)), "larger than 2 KiB");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o620)).expect("chmod");
        assert_eq!(
            refused(read_own(&state, 4096)),
            "group or others can write it: mode 0620"
        );
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&state, &link).expect("symlink");
        assert_eq!(refused(read_own(&link, 4096)), "a symbolic link");
        assert_eq!(refused(read_own(dir.path(), 4096)), "not a regular file");

        let lock = dir.path().join("api.lock");
        open_own(&lock, Own::Create).expect("created");
        let mode = std::fs::metadata(&lock).expect("lock").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        open_own(&lock, Own::Create).expect("opened again");
    }

    #[test]
    fn text_must_be_utf8_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("bearerd.toml");
        std::fs::write(&file, b"\xff").expect("write");
        assert_eq!(
            read_text(&file, Kind::Config)
                .expect_err("not text")
                .without_path(),
            "config file is not valid UTF-8"
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            read(&missing, Kind::CaFile)
                .expect_err("missing")
                .to_string(),
            format!(
                "cannot read ca_file {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }
}
