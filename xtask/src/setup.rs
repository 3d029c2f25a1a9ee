//! `cargo xtask setup`: everything building and testing ntpx needs, installed idempotently.
//!
//! - the nightly toolchain's rust-src (the eBPF crate builds `core` for the BPF target);
//! - bpf-linker, built against Debian's LLVM of the same major version as nightly rustc's;
//! - the Debian packages the tests run: chrony, ntpsec-ntpdate (ntpdig), iproute2, ethtool,
//!   prometheus (promtool, which checks /metrics), gpsd (a reference clock's writer), bird2
//!   (the fleet's routing daemon), debootstrap for the guest VM's image, rpm (rpmbuild) and
//!   rpmlint for the RPM;
//! - cargo-deb, which builds the .deb, and cargo-fuzz, which runs the fuzz targets;
//! - qemu, unpacked from Debian's packages into target/vm/qemu (see `guest`).
//!
//! Without root, it prints the commands to run instead of failing obscurely.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    guest,
    process::{command_output, is_root, run},
};

/// Debian packages the tests and the demo run (tzdata: the leap seconds list; util-linux:
/// setpriv, to act as an unprivileged user; prometheus: promtool, installed without starting
/// its server).
const TEST_PACKAGES: &[&str] = &[
    "chrony",
    "ntpsec-ntpdate",
    "iproute2",
    "ethtool",
    "debootstrap",
    "e2fsprogs",
    "tzdata",
    "util-linux",
    "prometheus",
    "gpsd",
    "bird2",
    "rpm",
    "rpmlint",
];

/// The cargo subcommands setup builds: (binary, crate pinned, how long it takes). Pinned:
/// newer releases may need a newer rustc than these machines have.
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    ("cargo-deb", "cargo-deb@3.8.0", "about two minutes"),
    ("cargo-fuzz", "cargo-fuzz@0.13.2", "about a minute"),
];

/// One thing setup provides.
struct Step {
    what: String,
    missing: bool,
}

/// Whether anything is missing (so that build, run, demo and test can call setup first).
pub fn is_complete() -> bool {
    steps().map(|steps| steps.iter().all(|s| !s.missing)).unwrap_or(false)
}

fn steps() -> anyhow::Result<Vec<Step>> {
    let llvm = llvm_major()?;
    let mut steps = vec![
        Step { what: "rust-src for the nightly toolchain".into(), missing: !has_rust_src()? },
        Step { what: format!("bpf-linker (LLVM {llvm})"), missing: bpf_linker().is_none() },
        Step { what: "qemu (target/vm/qemu)".into(), missing: !guest::has_qemu() },
    ];
    for (tool, _, _) in CARGO_TOOLS {
        steps.push(Step { what: (*tool).to_owned(), missing: cargo_bin(tool).is_none() });
    }
    for package in TEST_PACKAGES {
        steps.push(Step {
            what: format!("Debian package {package}"),
            missing: !is_installed(package),
        });
    }
    Ok(steps)
}

pub fn setup() -> anyhow::Result<()> {
    let llvm = llvm_major()?;
    println!("setup: nightly rustc uses LLVM {llvm}");
    let mut packages: Vec<String> = TEST_PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    let need_linker = bpf_linker().is_none();
    if need_linker {
        packages.push(format!("llvm-{llvm}-dev"));
        packages.push(format!("libpolly-{llvm}-dev"));
    }
    let missing_packages: Vec<&str> =
        packages.iter().map(String::as_str).filter(|p| !is_installed(p)).collect();
    let rust_src = has_rust_src()?;

    if !is_root() && !missing_packages.is_empty() {
        println!("setup: these steps need root; run them, then `cargo xtask setup` again:");
        println!("  apt-get update");
        println!(
            "  DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
            missing_packages.join(" ")
        );
        if !rust_src {
            println!("  rustup component add rust-src --toolchain nightly");
        }
        if need_linker {
            println!("  {}", install_linker_command(llvm).join(" "));
        }
        bail!("setup is incomplete");
    }

    if rust_src {
        println!("setup: rust-src for nightly ... present");
    } else {
        println!("setup: rust-src for nightly ... installing");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if missing_packages.is_empty() {
        println!("setup: Debian packages ({}) ... present", packages.join(", "));
    } else {
        println!("setup: Debian packages ... installing {}", missing_packages.join(" "));
        apt_install(&missing_packages)?;
    }

    for (tool, pinned, duration) in CARGO_TOOLS {
        match cargo_bin(tool) {
            Some(path) => println!("setup: {tool} ... present ({})", path.display()),
            None => {
                println!("setup: {tool} ... building {pinned} ({duration})");
                run(Command::new("cargo").args(["install", "--locked", pinned]))?;
            }
        }
    }

    if guest::has_qemu() {
        println!("setup: qemu ... present ({})", guest::qemu_dir().display());
    } else {
        println!(
            "setup: qemu ... unpacking Debian's packages into {}",
            guest::qemu_dir().display()
        );
        guest::install_qemu()?;
    }

    match bpf_linker() {
        Some(path) => println!("setup: bpf-linker ... present ({})", path.display()),
        None => {
            println!("setup: bpf-linker ... building against LLVM {llvm} (about a minute)");
            let command = install_linker_command(llvm);
            let llvm_bin = format!("/usr/lib/llvm-{llvm}/bin");
            let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
            run(Command::new(&command[0]).args(&command[1..]).env("PATH", path))?;
        }
    }
    for step in steps()? {
        if step.missing {
            bail!("setup: {} is still missing", step.what);
        }
    }
    println!("setup: complete");
    Ok(())
}

fn install_linker_command(llvm: u32) -> Vec<String> {
    ["cargo", "install", "bpf-linker", "--no-default-features", "--features"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("llvm-{llvm}")])
        .collect()
}

/// apt-get install, non-interactive, without starting any service the packages bring (chrony
/// would otherwise start disciplining this machine's clock where systemd runs).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let installed_policy = !policy.exists();
    if installed_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# ntpx setup: no service starts during installation\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = (|| {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    })();
    if installed_policy {
        std::fs::remove_file(policy).context("removing the temporary policy-rc.d")?;
    }
    result
}

fn is_installed(package: &str) -> bool {
    command_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

fn has_rust_src() -> anyhow::Result<bool> {
    let installed = command_output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup: is the nightly toolchain installed?")?;
    Ok(installed.lines().any(|line| line.starts_with("rust-src")))
}

/// The LLVM major version inside the nightly rustc.
fn llvm_major() -> anyhow::Result<u32> {
    let version = command_output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("running rustc +nightly -vV (is the nightly toolchain installed?)")?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .context("rustc +nightly -vV does not say its LLVM version")
}

fn bpf_linker() -> Option<PathBuf> {
    cargo_bin("bpf-linker")
}

/// A program on PATH or in cargo's bin directory.
pub fn cargo_bin(name: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
