//! Rebuild the program when bpf-linker changes: it is an undeclared build tool of this crate.
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
