//! Test support for ntpx: frames and the frame-level oracle, network namespaces with veth pairs,
//! and the real programs the tests run in them (ntpxd, chronyd, ntpdig).

pub mod background;
pub mod client;
pub mod fleet;
pub mod frame;
pub mod gnss;
pub mod guest;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod upstream;

/// Fails a privileged test loudly when it cannot run. Those tests are `#[ignore = "needs root"]`:
/// a plain `cargo test` lists them as ignored, and `cargo xtask test` runs them as root with
/// `--include-ignored`, where a missing privilege is a failure, never a silent pass.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (BPF and network namespaces): run it with `sudo cargo xtask test`"
    );
}
