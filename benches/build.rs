//! Builds the benchmark's XDP programs (ntpx-bench-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, into OUT_DIR, where `programs.rs` embeds them. `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
use cargo_metadata::MetadataCommand;

fn main() -> anyhow::Result<()> {
    let metadata = MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "ntpx-bench-ebpf")
        .ok_or_else(|| anyhow!("ntpx-bench-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ntpx-bench-ebpf has no directory"))?
        .as_str();
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir, ..Default::default() }],
        Toolchain::default(),
    )
}
