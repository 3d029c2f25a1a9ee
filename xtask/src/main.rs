//! `cargo xtask`: sets up, builds, runs, demonstrates and tests ntpx. It orchestrates only:
//! the eBPF program is built by ntp-userspace's build.rs, the test bed lives in `tests/`.

mod fuzz;
mod guest;
mod process;
mod setup;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::process::{is_root, run, workspace};

#[derive(Parser)]
#[command(about = "Set up, build, run, demonstrate and test ntpx")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build target/release/ntpxd and target/release/ntpxc.
    Build,
    /// Run ntpxd in the foreground, serving this machine's loopback (needs root).
    Run {
        /// More arguments for ntpxd.
        #[arg(last = true)]
        ntpxd_args: Vec<String>,
    },
    /// ntpxd serving a chronyd client across a veth pair between network namespaces (needs root).
    Demo,
    /// Every test, the privileged ones and the guest VM's included (needs root; fails rather
    /// than skips).
    Test,
    /// Build target/debian/ntpx_VERSION_amd64.deb (cargo-deb), man pages included.
    Deb,
    /// Build target/rpm/ntpx-VERSION-1.x86_64.rpm (rpmbuild, ntp-userspace/rpm/ntpx.spec) for
    /// RHEL, CentOS and Fedora, and lint it with rpmlint.
    Rpm,
    /// The guest VM tests alone: the .deb installed in a Debian guest under qemu, its own kernel
    /// clock disciplined (needs root; the first run builds the guest image, a few minutes).
    Vmtest {
        /// Only the scenarios whose names contain this.
        filter: Option<String>,
    },
    /// The load benchmark: ntpxd (XDP and slow path), chronyd and a reflector swept in
    /// namespaces; writes target/bench/results.json and sweep.svg (needs root; a few minutes).
    Bench {
        /// Seconds per rate step.
        #[arg(long, default_value_t = 1.0)]
        step: f64,
    },
    /// ntpxd under saturating load with a million clients cycling through its client log,
    /// reloaded and reconfigured as it serves; reports answers, invalid replies, memory,
    /// descriptors and gaps, into target/bench/soak.json (needs root).
    Soak {
        #[arg(default_value_t = 10.0)]
        minutes: f64,
    },
    /// The fuzz targets (cargo-fuzz, nightly), each from its seeds in tests/fuzz; a crash fails.
    Fuzz {
        /// One target (wire, responder, config, control, chronyc, upstream_reply, leap_seconds,
        /// nts, nts_keys); all when left out.
        target: Option<String>,
        /// Seconds per target.
        #[arg(default_value_t = 60)]
        seconds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Task::Setup => setup::setup(),
        Task::Build => build(),
        Task::Run { ntpxd_args } => run_loopback(&ntpxd_args),
        Task::Demo => demo(),
        Task::Test => test(),
        Task::Deb => deb().map(drop),
        Task::Rpm => rpm().map(drop),
        Task::Vmtest { filter } => {
            require_root("vmtest")?;
            vmtest(filter.as_deref())
        }
        Task::Bench { step } => bench(&["all", "--step", &step.to_string()]),
        Task::Soak { minutes } => bench(&["soak", "--minutes", &minutes.to_string()]),
        Task::Fuzz { target, seconds } => {
            ensure_setup()?;
            fuzz::fuzz(target.as_deref(), seconds)
        }
    }
}

/// A cargo command in the workspace, with cargo's bin directory (bpf-linker) on PATH.
fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace()).args(args);
    if let Some(home) = std::env::var_os("HOME") {
        let bin = Path::new(&home).join(".cargo/bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(bin).chain(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths).expect("a valid PATH"));
    }
    command
}

fn ensure_setup() -> anyhow::Result<()> {
    if !setup::is_complete() {
        println!("xtask: something is missing; running setup first");
        setup::setup()?;
    }
    Ok(())
}

fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` needs root (XDP, BPF maps, network namespaces): run it with sudo"
        );
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    ensure_setup()?;
    run(&mut cargo(&["build", "--release", "--package", "ntp-userspace", "--bins"]))?;
    println!("xtask: built target/release/ntpxd and target/release/ntpxc");
    Ok(())
}

fn run_loopback(ntpxd_args: &[String]) -> anyhow::Result<()> {
    require_root("run")?;
    build()?;
    let config = workspace().join("ntp-userspace/conf/loopback.conf");
    let release = workspace().join("target/release");
    println!("xtask: starting ntpxd on the loopback ({}); stop it with Ctrl-C", config.display());
    println!("xtask: then try `ntpdig 127.0.0.1` and `{}/ntpxc serverstats`", release.display());
    println!(
        "xtask: on loopback the kernel leaves UDP checksums for offload to complete, so the XDP \
         program passes local requests to the slow path (`XDP passed, bad checksum`); \
         `ethtool -K lo tx off` makes them complete and lets XDP answer. A real NIC needs nothing."
    );
    let mut ntpxd = Command::new(release.join("ntpxd"));
    ntpxd.args(["-d", "-x", "-f"]).arg(&config).args(ntpxd_args);
    run(&mut ntpxd)
}

fn demo() -> anyhow::Result<()> {
    require_root("demo")?;
    ensure_setup()?;
    run(&mut cargo(&["build", "--package", "ntp-userspace", "--bins"]))?;
    let bin_dir = workspace().join("target/debug");
    run(cargo(&["run", "--quiet", "--package", "ntpx-tests", "--bin", "ntpx-demo"])
        .env("NTPX_BIN_DIR", bin_dir))
}

/// Seconds each fuzz target runs within `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u32 = 10;

fn test() -> anyhow::Result<()> {
    require_root("test")?;
    ensure_setup()?;
    // The end-to-end tests run the daemon's binaries as they ship: optimised (the package is
    // built from the same release build). In a debug build, sealing an NTS reply after its
    // transmit timestamp takes a hundred microseconds, which its clients see as offset.
    run(&mut cargo(&["build", "--release", "--package", "ntp-userspace", "--bins"]))?;
    let bin_dir = workspace().join("target/release");
    // The privileged tests are ignored under a plain `cargo test`; the guest's need vmtest's setup.
    run(cargo(&["test", "--workspace", "--exclude", "ntp-ebpf", "--"])
        .args(["--include-ignored", "--skip", "in_guest::"])
        .env("NTPX_BIN_DIR", bin_dir))?;
    // A smoke run of every fuzz target: the seeds, then a few seconds of new inputs.
    fuzz::fuzz(None, FUZZ_SMOKE_SECONDS)?;
    vmtest(None)?;
    println!("xtask: all tests passed, privileged and guest VM ones included");
    Ok(())
}

/// Builds the .deb and returns its path.
fn deb() -> anyhow::Result<PathBuf> {
    ensure_setup()?;
    man_pages()?;
    // cargo-deb builds the release binaries and prints the package's path last.
    let output = cargo(&["deb", "--package", "ntp-userspace", "--output", "target/debian/"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !output.status.success() {
        bail!("cargo deb failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .last()
        .map(|path| workspace().join(path))
        .context("cargo deb named no package")?;
    println!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Generates ntpxd(8) and ntpxc(1) from their command lines into target/man (both packages
/// ship them; ntpx.conf(5) is written by hand) and returns that directory.
fn man_pages() -> anyhow::Result<PathBuf> {
    let man = workspace().join("target/man");
    run(cargo(&["run", "--quiet", "--package", "ntp-userspace", "--example", "manpages", "--"])
        .arg(&man))?;
    Ok(man)
}

/// Builds target/rpm/ntpx-VERSION-1.x86_64.rpm with rpmbuild from ntp-userspace/rpm/ntpx.spec,
/// lints it (rpmlint's errors fail; the warnings left are explained in the README) and
/// returns its path.
fn rpm() -> anyhow::Result<PathBuf> {
    ensure_setup()?;
    run(&mut cargo(&["build", "--release", "--package", "ntp-userspace", "--bins"]))?;
    let man = man_pages()?;
    let top = workspace().join("target/rpmbuild");
    if top.exists() {
        fs::remove_dir_all(&top)?;
    }
    let sources = top.join("SOURCES");
    fs::create_dir_all(sources.join("examples"))?;
    let package = workspace().join("ntp-userspace");
    let release = workspace().join("target/release");
    // Stripped, as the .deb's are (Debian's rpmbuild strips only what `file` recognises).
    for binary in ["ntpxd", "ntpxc"] {
        run(Command::new("strip").arg("-o").arg(sources.join(binary)).arg(release.join(binary)))?;
    }
    let staged = [
        (package.join("conf/ntpx.conf"), "ntpx.conf"),
        (package.join("rpm/sysconfig"), "sysconfig"),
        (package.join("rpm/sysusers.conf"), "sysusers.conf"),
        (package.join("debian/ntpxd.service"), "ntpxd.service"),
        (package.join("debian/40-ntpx.list"), "40-ntpx.list"),
        (package.join("debian/ntpxd-refclock.conf"), "ntpxd-refclock.conf"),
        (package.join("firewalld/ntpx-nts.xml"), "ntpx-nts.xml"),
        (workspace().join("README.md"), "README.md"),
    ];
    for (from, name) in staged {
        fs::copy(&from, sources.join(name)).with_context(|| format!("{}", from.display()))?;
    }
    for example in fs::read_dir(package.join("doc/examples"))? {
        let example = example?;
        fs::copy(example.path(), sources.join("examples").join(example.file_name()))?;
    }
    // Gzipped, as the RPM family ships man pages; -n: no name or time in the header, so that
    // the package is the same from the same sources.
    for page in
        [man.join("man1/ntpxc.1"), man.join("man8/ntpxd.8"), package.join("man/ntpx.conf.5")]
    {
        let name = page.file_name().context("a man page's name")?.to_string_lossy().into_owned();
        let gzipped = fs::File::create(sources.join(format!("{name}.gz")))?;
        run(Command::new("gzip").args(["-9", "-n", "-c"]).arg(&page).stdout(gzipped))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    run(Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!("ntpx_version {version}"))
        .arg(package.join("rpm/ntpx.spec")))?;
    let name = format!("ntpx-{version}-1.x86_64.rpm");
    let rpm = workspace().join("target/rpm").join(&name);
    fs::create_dir_all(rpm.parent().expect("a directory"))?;
    fs::copy(top.join("RPMS/x86_64").join(&name), &rpm)?;
    run(Command::new("rpmlint").arg("--config").arg(package.join("rpm/rpmlint.toml")).arg(&rpm))?;
    println!("xtask: built {}", rpm.display());
    Ok(rpm)
}

/// The guest VM tests (tests/tests/guest.rs), one guest at a time: each runs qemu on a core;
/// those whose names contain `filter`, if given.
fn vmtest(filter: Option<&str>) -> anyhow::Result<()> {
    let deb = deb()?;
    let rpm = rpm()?;
    let image = guest::image()?;
    // The stratum 1 scenario's PPS line in the guest.
    run(&mut cargo(&["build", "--release", "--package", "ntpx-tests", "--bin", "ntpx-pulse"]))?;
    run(cargo(&[
        "test",
        "--package",
        "ntpx-tests",
        "--test",
        "guest",
        "--",
        "--include-ignored",
        "--test-threads=1",
    ])
    .args(filter)
    .env("NTPX_QEMU_DIR", guest::qemu_dir())
    .env("NTPX_GUEST_IMAGE", image)
    .env("NTPX_DEB", deb)
    .env("NTPX_RPM", rpm))
}

/// Runs ntpx-bench's `arguments` (release builds), writing into target/bench.
fn bench(arguments: &[&str]) -> anyhow::Result<()> {
    require_root("bench")?;
    ensure_setup()?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ntp-userspace",
        "--package",
        "ntpx-bench",
        "--bins",
    ]))?;
    let release = workspace().join("target/release");
    let out = workspace().join("target/bench");
    run(Command::new(release.join("ntpx-bench"))
        .args(arguments)
        .arg("--out")
        .arg(&out)
        .env("NTPX_BIN_DIR", &release))
}
