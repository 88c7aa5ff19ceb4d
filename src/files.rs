//! Reading files that may be hostile: the config and every file it names are read here, only
//! if they are regular files (symlinks followed) and within a size cap for what they hold.
//! It reads bytes and names problems; it never interprets content nor logs it (secrets pass).

use std::fmt;
use std::fs::File;
use std::io::Read;
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
    Template,
    /// Any file watched for changes: read to notice a change of content, so the largest cap.
    Watched,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl Kind {
    /// How the file is called in messages: its config key where it has one.
    fn name(self) -> &'static str {
        match self {
            Self::Config => "config file",
            Self::ClientSecret => "secret file",
            Self::PrivateKey => "private_key_file",
            Self::TlsKey => "tls_key_file",
            Self::TlsCert => "tls_cert_file",
            Self::CaFile => "ca_file",
            Self::Template => "template file",
            Self::Watched => "watched file",
        }
    }

    /// The most bytes such a file may hold.
    fn cap(self) -> u64 {
        match self {
            // 10,000 clients take about 2 MiB; this leaves room for 80,000.
            Self::Config | Self::Watched => 16 * MIB,
            // A secret is a few hundred bytes; an RSA-16384 key in PEM is about 12 KiB.
            Self::ClientSecret | Self::PrivateKey | Self::TlsKey | Self::Template => 64 * KIB,
            // Debian's whole CA bundle is about 220 KiB.
            Self::TlsCert | Self::CaFile => 4 * MIB,
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
