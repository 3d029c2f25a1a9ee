//! Files ntpxd writes, often as root into directories others may write to: none of them
//! follows a symbolic link planted in its place, and the pidfile is a lock, not a guess.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};

/// Replaces `path` with a file holding `contents`, so that a crash leaves the old file or the
/// new one, never half of one. The temporary file is created new (never opened through a link
/// someone left there), and the rename replaces a link at `path` rather than following it.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically_with_mode(path, contents, 0o644)
}

/// As [`write_atomically`], readable by its owner alone (keys).
pub fn write_secret_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically_with_mode(path, contents, 0o600)
}

fn write_atomically_with_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&temporary)
    };
    let mut file = match create() {
        // Left by a crash of a process with this pid, or planted: removing a link removes only
        // the link.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&temporary)?;
            create()?
        }
        result => result?,
    };
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(())
}

/// A secret's bytes from `path`, refused if others than its owner may read it (its mode has
/// group or other bits) or if it is not a plain file (a link is not followed).
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let metadata = file.metadata()?;
    let mode = metadata.permissions().mode() & 0o777;
    if !metadata.is_file() {
        bail!("{} is not a file", path.display());
    }
    if mode & 0o077 != 0 {
        bail!("{} has mode {mode:04o}: a secret is its owner's alone (chmod 600)", path.display());
    }
    let mut secret = Vec::new();
    file.read_to_end(&mut secret)?;
    Ok(secret)
}

/// Opens a log file for appending, refusing a symbolic link in its place; readable by its
/// owner and group only when created.
pub fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o640)
        .open(path)
}

/// The pidfile, locked (flock) for as long as ntpxd runs and removed when dropped. A second
/// ntpxd finds it locked and stops, naming the first; it never removes the first one's file.
pub struct Pidfile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Pidfile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("opening the pidfile {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                bail!("ntpxd is already running (pid {}, {})", text.trim(), path.display());
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("locking {}", path.display()));
            }
        };
        // Ours now: whatever a dead ntpxd left in it goes.
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        // Readable by all, as pidfiles are, whatever the umask.
        lock.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(Self { path: path.to_owned(), _lock: lock })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // Removed while still locked: no other ntpxd can have taken it over.
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "removing the pidfile");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A directory with a file that must never be written through a planted link.
    fn victim() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        (dir, victim)
    }

    fn untouched(victim: &Path) -> bool {
        std::fs::read_to_string(victim).unwrap() == "precious\n"
    }

    #[test]
    fn an_atomic_write_replaces_a_planted_link_instead_of_following_it() {
        let (dir, victim) = victim();
        let path = dir.path().join("drift");
        symlink(&victim, &path).unwrap();
        let temporary = dir.path().join(format!(".drift.{}.tmp", std::process::id()));
        symlink(&victim, &temporary).unwrap();
        symlink(&victim, dir.path().join("drift.tmp")).unwrap();
        write_atomically(&path, b"1.0 0.1\n").unwrap();
        assert!(untouched(&victim));
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1.0 0.1\n");
        assert!(!temporary.exists());
    }

    #[test]
    fn a_log_file_is_not_opened_through_a_link() {
        let (dir, victim) = victim();
        let path = dir.path().join("ntpxd.log");
        symlink(&victim, &path).unwrap();
        assert!(open_log(&path).is_err());
        assert!(untouched(&victim));
        std::fs::remove_file(&path).unwrap();
        open_log(&path).unwrap().write_all(b"a line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a line\n");
    }

    #[test]
    fn a_pidfile_is_not_written_through_a_link() {
        let (dir, victim) = victim();
        let path = dir.path().join("ntpxd.pid");
        symlink(&victim, &path).unwrap();
        assert!(Pidfile::create(&path).is_err());
        assert!(untouched(&victim));
    }

    #[test]
    fn a_second_ntpxd_finds_the_pidfile_locked_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ntpxd.pid");
        let first = Pidfile::create(&path).unwrap();
        let pid = format!("{}\n", std::process::id());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pid);
        let error = Pidfile::create(&path).err().expect("the pidfile is locked");
        assert_eq!(
            error.to_string(),
            format!("ntpxd is already running (pid {}, {})", pid.trim(), path.display())
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pid, "the first one's file stays");
        drop(first);
        assert!(!path.exists());
        // A stale pidfile (a killed ntpxd left it, unlocked) is taken over.
        std::fs::write(&path, "999999\n").unwrap();
        let _second = Pidfile::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pid);
    }
}
