//! The files a component sees: `files` patterns and directory mappings, expanded to a list of
//! host files and the guest paths they appear at. `wms up` stages pattern files from it and
//! `wms push` packs a component's whole file tree from it.

use std::path::{Path, PathBuf};

use crate::{Component, FileMount};

/// A host file and where the guest sees it (an absolute guest path, `/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub host: PathBuf,
    pub guest: String,
}

/// Files a pattern or mapping could not be expanded into.
#[derive(Debug, thiserror::Error)]
#[error("component `{component}`: {message}\n  help: {help}")]
pub struct FilesError {
    pub component: String,
    pub message: String,
    pub help: String,
}

/// Expands the `files` patterns (relative to `app_dir`) of component `id`, without the
/// `exclude_files` matches. A pattern matching nothing is an error: it is almost always a typo.
pub fn pattern_files(
    app_dir: &Path,
    id: &str,
    patterns: &[String],
    exclude: &[String],
) -> Result<Vec<GuestFile>, FilesError> {
    let err = |message: String, help: &str| FilesError {
        component: id.to_string(),
        message,
        help: help.to_string(),
    };
    let excluded: Vec<glob::Pattern> = exclude
        .iter()
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| {
                err(
                    format!("bad exclude_files pattern `{p}`: {e}"),
                    "fix the pattern",
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let is_excluded = |rel: &Path| excluded.iter().any(|x| x.matches_path(rel));
    let mut out = Vec::new();
    for pattern in patterns {
        let full = app_dir.join(pattern);
        let entries = glob::glob(&full.to_string_lossy()).map_err(|e| {
            err(
                format!("bad files pattern `{pattern}`: {e}"),
                "fix the pattern",
            )
        })?;
        let mut matched = 0;
        for entry in entries {
            let path = entry.map_err(|e| {
                err(
                    format!("cannot read {}: {}", e.path().display(), e.error()),
                    "check the permissions",
                )
            })?;
            let rel = path.strip_prefix(app_dir).unwrap_or(&path).to_path_buf();
            if is_excluded(&rel) {
                continue;
            }
            matched += 1;
            if path.is_dir() {
                for f in walk(&path).map_err(|e| {
                    err(
                        format!("cannot read {}: {e}", path.display()),
                        "check the permissions",
                    )
                })? {
                    let rel = rel.join(&f);
                    if !is_excluded(&rel) {
                        out.push(GuestFile {
                            host: path.join(&f),
                            guest: guest_path("/", &rel),
                        });
                    }
                }
            } else {
                out.push(GuestFile {
                    guest: guest_path("/", &rel),
                    host: path,
                });
            }
        }
        if matched == 0 {
            return Err(err(
                format!(
                    "files pattern `{pattern}` matches nothing under {}",
                    app_dir.display()
                ),
                "fix the pattern or remove it",
            ));
        }
    }
    Ok(out)
}

/// Every file component `c` sees, patterns and directory mappings together.
pub fn guest_files(app_dir: &Path, c: &Component) -> Result<Vec<GuestFile>, FilesError> {
    let mut patterns = Vec::new();
    let mut out = Vec::new();
    for f in &c.files {
        match f {
            FileMount::Pattern { pattern } => patterns.push(pattern.clone()),
            FileMount::Directory {
                source,
                destination,
            } => {
                let files = walk(source).map_err(|e| FilesError {
                    component: c.id.clone(),
                    message: format!("cannot read {}: {e}", source.display()),
                    help: "check that the directory exists and is readable".into(),
                })?;
                out.extend(files.into_iter().map(|rel| GuestFile {
                    guest: guest_path(destination, &rel),
                    host: source.join(rel),
                }));
            }
        }
    }
    if !patterns.is_empty() {
        out.extend(pattern_files(app_dir, &c.id, &patterns, &c.exclude_files)?);
    }
    out.sort_by(|a, b| a.guest.cmp(&b.guest));
    out.dedup_by(|a, b| a.guest == b.guest);
    Ok(out)
}

/// Regular files under `dir`, as paths relative to it, sorted (symbolic links are followed).
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            if std::fs::metadata(entry.path())?.is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn guest_path(base: &str, rel: &Path) -> String {
    let rel: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let base = base.trim_end_matches('/');
    format!("{base}/{}", rel.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_to_guest_paths_without_excluded_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("static/css")).unwrap();
        std::fs::write(dir.path().join("static/index.html"), "x").unwrap();
        std::fs::write(dir.path().join("static/css/a.css"), "x").unwrap();
        std::fs::write(dir.path().join("static/secret.key"), "x").unwrap();
        let files = pattern_files(
            dir.path(),
            "web",
            &["static".to_string()],
            &["**/*.key".to_string()],
        )
        .unwrap();
        let guest: Vec<&str> = files.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(guest, ["/static/css/a.css", "/static/index.html"]);
        let err = pattern_files(dir.path(), "web", &["nope/*".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("`web`"), "{err}");
    }
}
