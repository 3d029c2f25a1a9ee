//! Test support for ntpx: frames and the frame-level oracle, network namespaces with veth pairs,
//! and the real programs the tests run in them (ntpxd, chronyd, ntpdig).

pub mod client;
pub mod frame;
pub mod guest;
pub mod netns;
pub mod peers;
pub mod upstream;

/// Whether privileged tests can run. `cargo xtask test` sets `NTPX_REQUIRE_PRIVILEGED=1`, and
/// then a missing privilege fails the test; a plain `cargo test` without root skips it, saying why.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("NTPX_REQUIRE_PRIVILEGED").is_some_and(|v| v != "0") {
        panic!(
            "{test} needs root (BPF and network namespaces), and NTPX_REQUIRE_PRIVILEGED is set"
        );
    }
    eprintln!(
        "skipping {test}: it needs root (BPF and network namespaces); `cargo xtask test` runs it"
    );
    false
}
