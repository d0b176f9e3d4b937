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
/// Every match, and every file under a matched directory, must stay inside the app directory
/// once symbolic links are resolved: a `..` that a wildcard matched or a link that leaves the
/// app is refused, naming it, and so is a link loop.
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
    let root = app_dir.canonicalize().map_err(|e| {
        err(
            format!("cannot read the app directory {}: {e}", app_dir.display()),
            "check that it exists and is readable",
        )
    })?;
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
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(err(
                    format!(
                        "files pattern `{pattern}` matches {}, outside the app directory",
                        path.display()
                    ),
                    "write a pattern whose matches stay under the manifest's directory",
                ));
            }
            if is_excluded(&rel) {
                continue;
            }
            matched += 1;
            inside(&root, &path).map_err(|m| {
                err(
                    m,
                    "copy the file into the app directory instead of linking to it",
                )
            })?;
            if path.is_dir() {
                for f in walk(&root, &path).map_err(|m| {
                    err(
                        m,
                        "copy the files into the app directory instead of linking to them",
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
                let files = source
                    .canonicalize()
                    .map_err(|e| format!("cannot read {}: {e}", source.display()))
                    .and_then(|root| walk(&root, source))
                    .map_err(|message| FilesError {
                        component: c.id.clone(),
                        message,
                        help: "check that the directory exists and is readable, and that no symbolic link in it leaves it".into(),
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

/// Fails naming `path` unless it resolves (symbolic links followed) to a place under `root`
/// (canonical).
fn inside(root: &Path, path: &Path) -> Result<(), String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    if real.starts_with(root) {
        Ok(())
    } else {
        Err(format!(
            "{} leads to {}, outside {}",
            path.display(),
            real.display(),
            root.display()
        ))
    }
}

/// Regular files under `dir`, as paths relative to it, sorted. Symbolic links are followed
/// only while they stay under `root`; a link leaving it, or a loop, is an error naming it.
fn walk(root: &Path, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true).min_depth(1) {
        let entry = entry.map_err(|e| match e.loop_ancestor() {
            Some(a) => format!(
                "symbolic link loop: {} leads back to {}",
                e.path().map_or(dir, |p| p).display(),
                a.display()
            ),
            None => format!("cannot read {}: {e}", e.path().map_or(dir, |p| p).display()),
        })?;
        if entry.path_is_symlink() {
            inside(root, entry.path())?;
        }
        if !entry.file_type().is_dir() {
            let rel = entry
                .path()
                .strip_prefix(dir)
                .expect("walkdir yields paths under its root");
            out.push(rel.to_path_buf());
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

    /// An app directory `app` with a sibling `other/secret` outside it.
    fn app_with_sibling() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        std::fs::create_dir_all(app.join("static")).unwrap();
        std::fs::write(app.join("static/ok.txt"), "ok").unwrap();
        std::fs::create_dir_all(root.path().join("other")).unwrap();
        std::fs::write(root.path().join("other/secret"), "secret").unwrap();
        (root, app)
    }

    #[test]
    fn a_wildcard_matching_dot_dot_is_refused() {
        let (_root, app) = app_with_sibling();
        let err = pattern_files(&app, "web", &[".?/other/*".to_string()], &[]).unwrap_err();
        assert!(
            err.to_string().contains("outside the app directory"),
            "{err}"
        );
    }

    #[test]
    fn links_leaving_the_app_or_looping_are_refused() {
        let (root, app) = app_with_sibling();
        std::os::unix::fs::symlink(root.path().join("other"), app.join("static/out")).unwrap();
        let err = pattern_files(&app, "web", &["static".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("static/out leads to"), "{err}");
        let err = pattern_files(&app, "web", &["static/out".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        std::fs::remove_file(app.join("static/out")).unwrap();

        std::fs::create_dir_all(app.join("static/a")).unwrap();
        std::os::unix::fs::symlink(app.join("static"), app.join("static/a/up")).unwrap();
        let err = pattern_files(&app, "web", &["static".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("loop"), "{err}");
        std::fs::remove_file(app.join("static/a/up")).unwrap();

        // A link that stays inside is followed.
        std::os::unix::fs::symlink(app.join("static/ok.txt"), app.join("static/a/alias.txt"))
            .unwrap();
        let files = pattern_files(&app, "web", &["static".to_string()], &[]).unwrap();
        let guest: Vec<&str> = files.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(guest, ["/static/a/alias.txt", "/static/ok.txt"]);
    }
}
