//! Dropping privileges once ntpxd holds what needed them: the program loaded and attached, the
//! sockets bound. ntpxd then runs as its own user with only the capabilities it still uses:
//! CAP_SYS_TIME while it disciplines the clock, and CAP_BPF where the kernel wants it for
//! every map operation (before Linux 6.5, with unprivileged BPF disabled). And the process's
//! limit on open descriptors, raised as far as it may go.

use anyhow::{Context as _, bail};
use caps::{CapSet, Capability, CapsHashSet};
pub use nix::unistd::User;
use nix::{
    sys::resource::{Resource, getrlimit, setrlimit},
    unistd::Uid,
};

/// The user ntpxd runs as when the configuration names none, if it exists (the package
/// creates it).
pub const DEFAULT_USER: &str = "_ntpx";

/// The user to run as: `user` from the configuration, else `_ntpx` when it exists. None:
/// stay as started.
pub fn target_user(configured: Option<&str>) -> anyhow::Result<Option<User>> {
    match configured {
        Some(name) => User::from_name(name)
            .with_context(|| format!("looking up user {name}"))?
            .with_context(|| format!("user {name} does not exist"))
            .map(Some),
        None => Ok(User::from_name(DEFAULT_USER).unwrap_or(None)),
    }
}

/// `user`, if ntpxd changes to it: when started as root, and `user` is not root.
pub fn switching_to(user: Option<&User>) -> Option<&User> {
    user.filter(|user| !user.uid.is_root() && Uid::effective().is_root())
}

/// Becomes `user` (when started as root) and keeps only the capabilities `needed` says. Root
/// staying root (no user, or `user root`) keeps everything, as chronyd does. Must run while
/// the process has one thread: capabilities and IDs belong to threads.
pub fn drop_privileges(
    user: Option<&User>,
    needed: impl FnOnce() -> anyhow::Result<CapsHashSet>,
) -> anyhow::Result<()> {
    let switching = switching_to(user);
    if Uid::effective().is_root() && switching.is_none() {
        tracing::info!("running as root: privileges kept");
        return Ok(());
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |tasks| tasks.count());
    if threads != 1 {
        bail!("dropping privileges needs a single thread, and there are {threads}");
    }
    if let Some(user) = switching {
        // Keeps the permitted capabilities across the change of user, to choose from after.
        nix::sys::prctl::set_keepcaps(true).context("PR_SET_KEEPCAPS")?;
        nix::unistd::setgroups(&[user.gid]).context("setgroups")?;
        nix::unistd::setresgid(user.gid, user.gid, user.gid).context("setresgid")?;
        nix::unistd::setresuid(user.uid, user.uid, user.uid).context("setresuid")?;
        nix::sys::prctl::set_keepcaps(false).context("PR_SET_KEEPCAPS")?;
        // The effective set was cleared: what the checks below need comes back from the
        // permitted set.
        caps::set(None, CapSet::Effective, &caps::read(None, CapSet::Permitted)?)?;
    }
    let keep = needed()?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let missing: Vec<_> = keep.difference(&permitted).collect();
    if !missing.is_empty() {
        bail!("ntpxd needs {missing:?}, which it was not given");
    }
    let reduce = || -> Result<(), caps::errors::CapsError> {
        caps::clear(None, CapSet::Ambient)?;
        caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
        caps::set(None, CapSet::Effective, &keep)?;
        caps::set(None, CapSet::Permitted, &keep)
    };
    reduce().context("giving up capabilities (capset)")?;
    tracing::info!(
        uid = Uid::effective().as_raw(),
        capabilities = ?keep,
        "privileges dropped"
    );
    Ok(())
}

/// Whether `operation` works without CAP_BPF in the effective set (the capability is restored
/// afterwards if it was there).
pub fn works_without_bpf_capability(operation: impl FnOnce() -> bool) -> anyhow::Result<bool> {
    let had = caps::has_cap(None, CapSet::Effective, Capability::CAP_BPF)?;
    if had {
        caps::drop(None, CapSet::Effective, Capability::CAP_BPF)?;
    }
    let works = operation();
    if had {
        caps::raise(None, CapSet::Effective, Capability::CAP_BPF)?;
    }
    Ok(works)
}

/// Raises the soft limit on open descriptors to the hard limit, which any process may (most
/// shells and services start with a soft limit of 1024, which a many-core host nears before
/// any client connects); returns the limit in force. Where it cannot (a system call filter),
/// the soft limit stays, with a warning.
pub fn raise_open_files_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the limit on open descriptors");
            Ok(soft)
        }
    }
}

/// How many descriptors the process has open.
pub fn open_descriptors() -> std::io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// Gives `path` to `user` and its group.
pub fn give_to(path: &std::path::Path, user: &User) -> nix::Result<()> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
}

/// Whether a peer running as `uid` may change ntpxd's state: root, or ntpxd's own user (as
/// chronyd lets only root and its user through its socket).
pub fn may_change_state(uid: Option<u32>) -> bool {
    uid.is_some_and(|uid| uid == 0 || uid == nix::unistd::geteuid().as_raw())
}
