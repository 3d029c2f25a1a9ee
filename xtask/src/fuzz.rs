//! `cargo xtask fuzz`: the cargo-fuzz targets under fuzz/, each started from its seeds in
//! tests/fuzz/TARGET (the corpus grows under target/fuzz/corpus, crashes land in
//! target/fuzz/artifacts). A crash fails the run.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    process::{run, workspace},
    setup,
};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 9] = [
    "wire",
    "responder",
    "config",
    "control",
    "chronyc",
    "upstream_reply",
    "leap_seconds",
    "nts",
    "nts_keys",
];

/// Runs `target` (or all of them) for `seconds` each.
pub fn fuzz(target: Option<&str>, seconds: u32) -> anyhow::Result<()> {
    let targets: Vec<&str> = match target {
        Some(target) if TARGETS.contains(&target) => vec![target],
        Some(target) => anyhow::bail!("no fuzz target {target}; there are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let fuzz_dir = workspace().join("target/fuzz");
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let seeds = workspace().join("tests/fuzz").join(target);
        println!("xtask: fuzzing {target} for {seconds} s (seeds from {})", seeds.display());
        // Release builds with overflow checks and debug assertions: an overflow is a crash.
        run(cargo_nightly()
            .args(["fuzz", "run", "--release", "--debug-assertions", "--fuzz-dir"])
            .arg(workspace().join("fuzz"))
            .arg("--target-dir")
            .arg(fuzz_dir.join("build"))
            .arg(target)
            // New inputs go to the first directory only: the seeds stay as committed.
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display())))
        .with_context(|| {
            format!("fuzz target {target} failed; the input is in {}", artifacts.display())
        })?;
    }
    Ok(())
}

/// `cargo +nightly` through rustup (cargo-fuzz needs nightly), not the toolchain xtask runs on.
fn cargo_nightly() -> Command {
    let cargo = setup::cargo_bin("cargo").unwrap_or_else(|| PathBuf::from("cargo"));
    let mut command = Command::new(cargo);
    for variable in ["CARGO", "RUSTC", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_TARGET_DIR"] {
        command.env_remove(variable);
    }
    command.current_dir(workspace()).arg("+nightly");
    command
}
