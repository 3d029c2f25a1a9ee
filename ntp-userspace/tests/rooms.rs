//! The rooms' rules the compiler cannot keep (see ARCHITECTURE.md): only `sys` names the
//! system-call crates.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Whether `line` names `libc::` or `nix::` (not `unix::` and the like).
fn names_a_system_crate(line: &str) -> bool {
    ["libc::", "nix::"].iter().any(|name| {
        line.match_indices(name).any(|(at, _)| {
            !line[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn only_sys_names_libc_or_nix() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sys = src.join("sys");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "the sources were not found: {}", src.display());
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| !file.starts_with(&sys))
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .filter(|(_, line)| names_a_system_crate(line))
                .map(|(number, line)| format!("{}:{}: {line}", file.display(), number + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(offenders.is_empty(), "system calls outside sys/:\n{}", offenders.join("\n"));
    assert!(
        names_a_system_crate("    let fd = libc::socket(") && !names_a_system_crate("unix::net")
    );
}
