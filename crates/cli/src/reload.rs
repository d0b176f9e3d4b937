//! Reloading `wms up`: SIGHUP reads the app again, and `--watch` rebuilds a component when its
//! `build.watch` files change (and reloads when the manifest does). The server side, loading
//! in the background and swapping versions, is `wms_server::launch::serve_app_reloading`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use wms_manifest::{App, BuildSpec, Providers};
use wms_server::launch::{ReloadLoader, ReloadRequest};

/// How long the watched files must stay quiet before a change is acted on: an editor's save or
/// a `git checkout` is many events.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Forwards each SIGHUP as a reload request (several before the reload starts are one).
pub fn on_sighup(requests: UnboundedSender<ReloadRequest>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if requests.send(ReloadRequest::because("SIGHUP")).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Reads a local app again: its manifest, then (for `--watch`) the build commands the request
/// names or the manifest's change calls for, then the runtime config file and `.env`.
pub fn local_loader(
    manifest: PathBuf,
    runtime_config: Option<PathBuf>,
    first: &App,
) -> ReloadLoader {
    let built: Mutex<Vec<(String, Option<BuildSpec>)>> = Mutex::new(build_specs(first));
    Arc::new(move |request: &ReloadRequest| {
        let app = wms_manifest::load(&manifest)?;
        let mut build: BTreeSet<String> = request
            .build
            .iter()
            .filter(|id| app.components.contains_key(*id))
            .cloned()
            .collect();
        let specs = build_specs(&app);
        if request.manifest_changed {
            // A new or changed build, or a source the build has yet to make.
            let before = built.lock().unwrap_or_else(|e| e.into_inner());
            for (id, spec) in &specs {
                let Some(spec) = spec else { continue };
                let same = before
                    .iter()
                    .any(|(i, s)| i == id && s.as_ref() == Some(spec));
                if !same || !app.components[id].source.is_file() {
                    build.insert(id.clone());
                }
            }
        }
        for id in &build {
            crate::build_component(id, &app.components[id], crate::BuildOutput::Log)?;
        }
        *built.lock().unwrap_or_else(|e| e.into_inner()) = specs;
        Ok((app, providers(runtime_config.as_deref())?))
    })
}

/// The same app (an image's is not fetched again), with its variables' providers read again.
pub fn image_loader(app: App, runtime_config: Option<PathBuf>) -> ReloadLoader {
    Arc::new(move |_: &ReloadRequest| {
        tracing::info!(
            target: "wms",
            "the app is an image: its components stay; the runtime config file and .env are read again"
        );
        Ok((app.clone(), providers(runtime_config.as_deref())?))
    })
}

/// Where variables get their values, as Spin's default: the runtime config file's providers,
/// then the environment, then `.env` in the current directory.
pub fn providers(runtime_config: Option<&Path>) -> anyhow::Result<Providers> {
    let runtime_config = match runtime_config {
        Some(path) => Some(wms_manifest::runtime_config::load(path)?),
        None => None,
    };
    Ok(Providers::new(
        runtime_config.as_ref(),
        std::env::vars_os(),
        Some(Path::new(".env")),
    )?)
}

fn build_specs(app: &App) -> Vec<(String, Option<BuildSpec>)> {
    app.components
        .iter()
        .map(|(id, c)| (id.clone(), c.build.clone()))
        .collect()
}

/// What `--watch` watches: the manifest, and each component's `build.watch` patterns made
/// absolute against its workdir.
struct WatchSet {
    manifest: PathBuf,
    components: Vec<(String, Vec<glob::Pattern>)>,
    /// Directories to watch, and whether recursively.
    dirs: Vec<(PathBuf, RecursiveMode)>,
}

impl WatchSet {
    fn of(manifest: &Path, app: Option<&App>) -> Self {
        let mut set = WatchSet {
            manifest: manifest.to_path_buf(),
            components: Vec::new(),
            // Its directory, not the file: editors save by replacing the file.
            dirs: vec![(
                manifest.parent().unwrap_or(Path::new("/")).to_path_buf(),
                RecursiveMode::NonRecursive,
            )],
        };
        let Some(app) = app else { return set };
        for (id, c) in &app.components {
            let Some(build) = &c.build else { continue };
            let mut patterns = Vec::new();
            for w in &build.watch {
                let absolute = build.workdir.join(w);
                let Ok(pattern) = glob::Pattern::new(&absolute.to_string_lossy()) else {
                    continue;
                };
                patterns.push(pattern);
                set.add_dir(watch_root(&absolute));
            }
            if !patterns.is_empty() {
                set.components.push((id.clone(), patterns));
            }
        }
        set
    }

    fn add_dir(&mut self, (dir, mode): (PathBuf, RecursiveMode)) {
        match self.dirs.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, m)) => {
                if mode == RecursiveMode::Recursive {
                    *m = mode;
                }
            }
            None => self.dirs.push((dir, mode)),
        }
    }

    /// What a changed path asks for: the manifest, or the components whose patterns match it.
    fn classify(&self, path: &Path, request: &mut ReloadRequest) {
        if path == self.manifest {
            request.manifest_changed = true;
            request.reasons.push(format!("{} changed", path.display()));
        }
        for (id, patterns) in &self.components {
            if patterns.iter().any(|p| p.matches_path(path)) && request.build.insert(id.clone()) {
                request
                    .reasons
                    .push(format!("{} changed (component `{id}`)", path.display()));
            }
        }
    }
}

/// The directory to watch for a pattern: the part before its first glob character, recursively
/// when that is a directory; where it does not exist yet, its nearest existing ancestor, not
/// recursively.
fn watch_root(pattern: &Path) -> (PathBuf, RecursiveMode) {
    let mut base = PathBuf::new();
    for part in pattern.components() {
        if part
            .as_os_str()
            .to_string_lossy()
            .contains(['*', '?', '[', ']'])
        {
            break;
        }
        base.push(part);
    }
    if base.is_dir() {
        return (base, RecursiveMode::Recursive);
    }
    let mut dir = base.parent().map(Path::to_path_buf).unwrap_or_default();
    while !dir.is_dir() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => return (PathBuf::from("/"), RecursiveMode::NonRecursive),
        }
    }
    (dir, RecursiveMode::NonRecursive)
}

/// Starts `--watch`: a change to a component's `build.watch` files asks for its build and a
/// reload, a change to the manifest for a reload. Runs until the process ends.
pub fn watch(app: &App, requests: UnboundedSender<ReloadRequest>) -> anyhow::Result<()> {
    let manifest = std::path::absolute(&app.manifest_path)
        .with_context(|| format!("--watch: cannot resolve {}", app.manifest_path.display()))?;
    let (events, mut incoming): (UnboundedSender<notify::Event>, UnboundedReceiver<_>) =
        tokio::sync::mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) => {
                let _ = events.send(e);
            }
            Err(e) => tracing::warn!(target: "wms", "--watch: {e}"),
        })
        .context("--watch: cannot start watching files")?;
    let mut set = WatchSet::of(&manifest, Some(app));
    let mut watched = apply(&mut watcher, &set, &[]);
    let components: Vec<&str> = set.components.iter().map(|(id, _)| id.as_str()).collect();
    tracing::info!(
        target: "wms",
        "--watch: watching {} and the build.watch files of {}",
        manifest.display(),
        if components.is_empty() {
            "no component (none has build.watch)".to_string()
        } else {
            components.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        }
    );
    tokio::spawn(async move {
        while let Some(first) = incoming.recv().await {
            let mut batch = vec![first];
            loop {
                match tokio::time::timeout(DEBOUNCE, incoming.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let mut request = ReloadRequest::default();
            for event in &batch {
                // Reading a file (the build reads its sources) is no change.
                if matches!(event.kind, EventKind::Access(_)) {
                    continue;
                }
                for path in &event.paths {
                    set.classify(path, &mut request);
                }
            }
            if request.reasons.is_empty() {
                continue;
            }
            let manifest_changed = request.manifest_changed;
            if requests.send(request).is_err() {
                return;
            }
            if manifest_changed {
                // The patterns may have changed; a manifest that does not parse keeps them.
                if let Ok(app) = wms_manifest::load(&manifest) {
                    set = WatchSet::of(&manifest, Some(&app));
                    watched = apply(&mut watcher, &set, &watched);
                }
            }
        }
    });
    Ok(())
}

/// Watches `set`'s directories, unwatching those of `before` no longer in it; returns what is
/// watched now.
fn apply(
    watcher: &mut notify::RecommendedWatcher,
    set: &WatchSet,
    before: &[(PathBuf, RecursiveMode)],
) -> Vec<(PathBuf, RecursiveMode)> {
    for old in before {
        if !set.dirs.contains(old) {
            let _ = watcher.unwatch(&old.0);
        }
    }
    let mut now = Vec::new();
    for (dir, mode) in &set.dirs {
        if before.contains(&(dir.clone(), *mode)) {
            now.push((dir.clone(), *mode));
            continue;
        }
        match watcher.watch(dir, *mode) {
            Ok(()) => now.push((dir.clone(), *mode)),
            Err(e) => tracing::warn!(target: "wms", "--watch: cannot watch {}: {e}", dir.display()),
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_watched_from_its_literal_part() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let (root, mode) = watch_root(&dir.path().join("src/**/*.rs"));
        assert_eq!(
            (root, mode),
            (dir.path().join("src"), RecursiveMode::Recursive)
        );
        // A file: its directory, alone.
        let (root, mode) = watch_root(&dir.path().join("Cargo.toml"));
        assert_eq!(
            (root, mode),
            (dir.path().to_path_buf(), RecursiveMode::NonRecursive)
        );
        // Not there yet: the nearest ancestor that is.
        let (root, _) = watch_root(&dir.path().join("gen/deep/*.txt"));
        assert_eq!(root, dir.path().to_path_buf());
    }
}
