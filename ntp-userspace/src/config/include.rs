//! The files `include` and `confdir` name: only these read directories.

use std::path::{Path, PathBuf};

/// `include` takes a glob pattern; only `*` in the file name is supported, as in chrony's
/// typical use (`include /etc/chrony/conf.d/*.conf`).
pub(super) fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return Ok(vec![path.to_owned()]);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.len() >= prefix.len() + suffix.len()
                            && n.starts_with(prefix)
                            && n.ends_with(suffix)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    matches.sort();
    Ok(matches)
}

/// The files of `dir` with the extension `ext`, sorted; none if the directory is missing.
pub(super) fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
