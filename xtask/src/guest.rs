//! The guest VM test bed's host side: qemu from Debian's packages, and a Debian guest image
//! built once by debootstrap and cached under `target/vm`, keyed by a hash of what goes into it.
//! The tests (`tests/src/guest.rs`) boot it; nothing here touches this machine's clock.
//!
//! qemu is not installed but unpacked: Debian's qemu-system-x86 conflicts with the qemu-utils
//! backport these machines carry (../shared/TOOLCHAIN.md), and a private copy needs neither.

use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::process::{is_root, run, workspace};

/// qemu-system-x86 and the libraries and firmware it needs that a build machine lacks.
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "librdmacm1",
    "libibverbs1",
    "libslirp0",
    "libvdeplug2",
    "libndctl6",
    "libdaxctl1",
    "libnl-3-200",
    "libnl-route-3-200",
];

/// The guest's Debian release and packages: systemd as PID 1 (timedatectl needs dbus), the
/// kernel and its initramfs (virtio, ext4 and 9p are modules), adduser for the package's
/// postinst, adjtimex to put the clock's frequency off, chrony: the daemon the package
/// takes over from, and the chronyc people check servers with; gpsd, a stratum 1 server's
/// reference clock; rpm, to install the RPM as the RPM family does, and firewalld (disabled
/// at boot: the scenario that needs it starts it).
const SUITE: &str = "bookworm";
const GUEST_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "iproute2",
    "kmod",
    "procps",
    "linux-image-amd64",
    "initramfs-tools",
    "adduser",
    "adjtimex",
    "tzdata",
    "chrony",
    "gpsd",
    "rpm",
    "firewalld",
    // What firewalld's polkitd needs as logind, which debootstrap does not pick by itself.
    "libpam-systemd",
];
/// Packages the scenarios install in the guest, downloaded into the image's
/// /var/cache/ntpx-test (systemd-timesyncd conflicts with chrony, so it cannot be preinstalled).
const GUEST_DEBS: &[&str] = &["systemd-timesyncd"];

/// The test bed's files in the guest: (path in the guest, contents, mode).
const GUEST_FILES: &[(&str, &str, u32)] = &[
    ("usr/local/sbin/ntpx-agent", include_str!("../../tests/guest/ntpx-agent"), 0o755),
    (
        "etc/systemd/system/ntpx-agent.service",
        include_str!("../../tests/guest/ntpx-agent.service"),
        0o644,
    ),
    (
        "etc/systemd/network/10-eth0.network",
        include_str!("../../tests/guest/10-eth0.network"),
        0o644,
    ),
];

/// Bump to rebuild every cached image.
const IMAGE_FORMAT: u32 = 1;
const IMAGE_SIZE: &str = "2G";

pub fn qemu_dir() -> PathBuf {
    workspace().join("target/vm/qemu")
}

pub fn has_qemu() -> bool {
    qemu_dir().join("usr/bin/qemu-system-x86_64").is_file()
}

/// Downloads Debian's qemu packages and unpacks them into `target/vm/qemu` (no root needed
/// but for refreshing apt's lists).
pub fn install_qemu() -> anyhow::Result<()> {
    let downloads = workspace().join("target/vm/qemu-debs");
    let unpacked = workspace().join("target/vm/qemu.partial");
    for dir in [&downloads, &unpacked] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }
    if is_root() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    run(Command::new("apt-get").arg("download").args(QEMU_PACKAGES).current_dir(&downloads))?;
    for entry in fs::read_dir(&downloads)? {
        run(Command::new("dpkg-deb").arg("-x").arg(entry?.path()).arg(&unpacked))?;
    }
    fs::rename(&unpacked, qemu_dir()).context("moving qemu into place")?;
    fs::remove_dir_all(&downloads)?;
    Ok(())
}

/// The guest image's directory (`rootfs.img`, `vmlinuz`, `initrd.img`), built if not cached.
pub fn image() -> anyhow::Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    (IMAGE_FORMAT, SUITE, GUEST_PACKAGES, GUEST_DEBS, GUEST_FILES).hash(&mut hasher);
    let dir = workspace().join(format!("target/vm/image-{:016x}", hasher.finish()));
    if dir.join("rootfs.img").is_file() {
        println!("vm: guest image {} ... cached", dir.display());
        return Ok(dir);
    }
    println!("vm: guest image {} ... building (debootstrap, a few minutes)", dir.display());
    let build = workspace().join("target/vm/image.partial");
    if build.exists() {
        fs::remove_dir_all(&build)?;
    }
    let rootfs = build.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", GUEST_PACKAGES.join(","))])
        .arg(SUITE)
        .arg(&rootfs)
        .arg(debian_mirror()?))?;
    configure_guest(&rootfs)?;
    let boot = rootfs.join("boot");
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
        let file = fs::read_dir(&boot)?
            .filter_map(Result::ok)
            .find(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            .with_context(|| format!("no {prefix}* in the guest's /boot"))?;
        fs::copy(file.path(), build.join(name))?;
    }
    println!("vm: writing the guest's ext4 image");
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "ntpx-guest", "-d"])
        .arg(&rootfs)
        .arg(build.join("rootfs.img"))
        .arg(IMAGE_SIZE))?;
    fs::remove_dir_all(&rootfs)?;
    // Older images are of no more use.
    for entry in fs::read_dir(workspace().join("target/vm"))?.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("image-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    fs::rename(&build, &dir)?;
    println!("vm: guest image ready");
    Ok(dir)
}

/// The test bed's agent and network, a console login without password (for debugging by
/// hand), and the packages the scenarios install later.
fn configure_guest(rootfs: &Path) -> anyhow::Result<()> {
    for (path, contents, mode) in GUEST_FILES {
        let path = rootfs.join(path);
        fs::create_dir_all(path.parent().expect("a directory"))?;
        fs::write(&path, contents)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))?;
    }
    fs::write(rootfs.join("etc/hostname"), "ntpx-guest\n")?;
    let chroot = |args: &[&str]| run(Command::new("chroot").arg(rootfs).args(args));
    chroot(&["systemctl", "enable", "--quiet", "ntpx-agent.service", "systemd-networkd.service"])?;
    chroot(&["systemctl", "disable", "--quiet", "firewalld.service"])?;
    chroot(&["passwd", "--delete", "root"])?;
    // With the lists debootstrap left, so the versions match what is installed.
    let cache = "/var/cache/ntpx-test";
    fs::create_dir_all(rootfs.join(cache.trim_start_matches('/')))?;
    run(Command::new("chroot").arg(rootfs).args([
        "sh",
        "-c",
        &format!("cd {cache} && apt-get download -q {}", GUEST_DEBS.join(" ")),
    ]))?;
    chroot(&["apt-get", "clean"])
}

/// The Debian mirror this machine's apt uses (deb822 `debian.sources`, or `sources.list`).
fn debian_mirror() -> anyhow::Result<String> {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field =
            |name: &str| stanza.lines().find_map(|line| line.strip_prefix(name).map(str::trim));
        if field("Suites:").is_some_and(|suites| suites.split_whitespace().any(|s| s == SUITE))
            && let Some(uris) = field("URIs:")
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Ok(uri.to_owned());
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["deb", uri, suite, ..] = fields.as_slice()
            && *suite == SUITE
        {
            return Ok((*uri).to_owned());
        }
    }
    bail!("no {SUITE} mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
}
