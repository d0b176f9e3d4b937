//! Fuzz targets for the manifest parser and the router (run by `cargo test`, bounded in time;
//! `cargo bolero test -p wms-manifest fuzz::NAME` runs one coverage-guided where a nightly
//! toolchain is available). A failure prints `BOLERO_RANDOM_SEED=...` to replay it; each crash
//! found becomes a regression test below.
//!
//! Random bytes rarely get past the TOML syntax, so the manifest target assembles documents
//! from the manifest's own sections and keys with random values, reaching validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{FileMount, ImageLayers, MAX_CONCURRENT_REQUESTS, MAX_MEMORY, MAX_TIMEOUT};

/// Time each target gets per `cargo test` run.
const BUDGET: Duration = Duration::from_secs(3);

const SECTIONS: &[&str] = &[
    "",
    "[application]",
    "[application.tool.wms]",
    "[application.trigger.http]",
    "[[trigger.http]]",
    "[component.web]",
    "[component.web.tool.wms]",
    "[component.web.build]",
    "[[component.web.files]]",
    "[component.api]",
    "[variables]",
];

const KEYS: &[&str] = &[
    "spin_manifest_version",
    "name",
    "route",
    "component",
    "source",
    "files",
    "destination",
    "exclude_files",
    "timeout",
    "max_memory",
    "max_concurrent_requests",
    "max_outbound_connections",
    "allowed_outbound_hosts",
    "environment",
    "executor",
    "base",
    "command",
    "workdir",
    "key_value_stores",
    "private",
    "digest",
];

/// A value of one of the shapes the manifest uses, built around `s`.
fn value(kind: u8, s: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    match kind % 10 {
        0 => q(s),
        1 => ["0", "1", "-1", "2", "65536", "65537", "9223372036854775807"][s.len() % 7].into(),
        2 => format!("[{}]", q(s)),
        3 => format!("{{ digest = {} }}", q(s)),
        4 => format!("{{ source = {}, destination = {} }}", q(s), q(s)),
        5 => format!(
            "[{{ source = {{ digest = {} }}, destination = \"/\" }}]",
            q(s)
        ),
        6 => format!("{{ type = {} }}", q(s)),
        7 => q(&format!(
            "{}{s}",
            ["1", "5000000000000000h", "0ms", "4GiB", "1TiB", "/.."][s.len() % 6]
        )),
        8 => "true".into(),
        // Raw text: whatever TOML makes of it.
        _ => s.to_string(),
    }
}

/// A document from `lines` (section, key, value shape, text). Each table is opened once and
/// each key set once per table, so most documents are valid TOML and reach validation; with
/// `base` (two in three) they start from a working manifest, local or from an image, so they
/// get far into it.
fn document(lines: &[(u8, u8, u8, String)], base: u8) -> String {
    let mut doc = String::new();
    let mut opened: Vec<&str> = Vec::new();
    let valid_base = !base.is_multiple_of(3);
    if valid_base {
        // A local manifest's source is a path, an image's a layer digest.
        let source = if base % 3 == 1 {
            "\"web.wasm\""
        } else {
            "{ digest = \"sha256:00\" }"
        };
        doc.push_str(&format!("spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = {source}\n"));
        opened.extend(["", "[application]", "[component.web]"]);
    }
    let mut keys: Vec<&str> = if valid_base {
        vec!["source"]
    } else {
        Vec::new()
    };
    for (section, key, kind, s) in lines.iter().take(8) {
        let section = SECTIONS[*section as usize % SECTIONS.len()];
        if !section.is_empty() && (section.starts_with("[[") || !opened.contains(&section)) {
            doc.push_str(section);
            doc.push('\n');
            opened.push(section);
            keys.clear();
        }
        let key = KEYS[*key as usize % KEYS.len()];
        if keys.contains(&key) {
            continue;
        }
        keys.push(key);
        let s: String = s.chars().take(24).collect();
        doc.push_str(&format!("{key} = {}\n", value(*kind, &s)));
    }
    doc
}

/// Layers that exist for any digest: whatever the manifest names resolves under `/layers`.
struct AnyLayer;

impl ImageLayers for AnyLayer {
    fn component(&self, digest: &str) -> Result<PathBuf, String> {
        if digest.is_empty() {
            return Err("empty digest".into());
        }
        Ok(Path::new("/layers").join(digest.replace('/', "_")))
    }
    fn files(&self, digest: &str) -> Result<PathBuf, String> {
        self.component(digest)
    }
}

fn check_app(app: &crate::App, from_image: bool) {
    assert!((1..=MAX_CONCURRENT_REQUESTS).contains(&app.max_concurrent_requests));
    for c in app.components.values() {
        assert!(c.limits.timeout <= MAX_TIMEOUT && !c.limits.timeout.is_zero());
        assert!(c.limits.max_memory <= MAX_MEMORY);
        if let Some(n) = c.limits.max_concurrent_requests {
            assert!((1..=MAX_CONCURRENT_REQUESTS).contains(&n));
        }
        if from_image {
            // Nothing but the image's own layers, whatever the manifest says.
            assert!(c.source.starts_with("/layers"), "{:?}", c.source);
            assert!(c.build.is_none());
            for f in &c.files {
                match f {
                    FileMount::Directory { source, .. } => {
                        assert!(source.starts_with("/layers"), "{source:?}")
                    }
                    FileMount::Pattern { pattern } => panic!("pattern {pattern} from an image"),
                }
            }
        }
        for f in &c.files {
            if let FileMount::Directory { destination, .. } = f {
                assert!(destination.starts_with('/') && !destination.contains("/../"));
            }
        }
    }
}

#[test]
fn manifest() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_max_len(512)
        .with_type::<(u8, Vec<(u8, u8, u8, String)>)>()
        .for_each(|(base, lines)| {
            let text = document(lines, *base);
            if let Ok(app) = crate::parse(Path::new("/nonexistent/app/wms.toml"), &text) {
                check_app(&app, false);
            }
            if let Ok(app) = crate::parse_image(
                Path::new("image (app manifest layer)"),
                Path::new("/store/app"),
                &text,
                &AnyLayer,
            ) {
                check_app(&app, true);
            }
        });
}

#[test]
fn manifest_bytes() {
    bolero::check!()
        .with_test_time(BUDGET)
        .for_each(|bytes: &[u8]| {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = crate::parse(Path::new("/nonexistent/wms.toml"), text);
                let _ = crate::parse_image(Path::new("image"), Path::new("/s"), text, &AnyLayer);
            }
        });
}

#[test]
fn router() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_type::<(String, String, String)>()
        .for_each(|(base, route, path)| {
            for base in [base.as_str(), "/", "/api"] {
                let Ok(pattern) = crate::RoutePattern::parse(base, route) else {
                    continue;
                };
                let _ = pattern.matches(path);
                let _ = pattern.without_wildcard();
                // A route without parameters or wildcard matches its own path.
                if !pattern.raw().contains(':') && !pattern.raw().contains("...") {
                    assert!(
                        pattern.matches(pattern.raw()).is_some(),
                        "{} does not match itself",
                        pattern.raw()
                    );
                }
            }
        });
}

#[test]
fn allowed_outbound_hosts() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_type::<(String, String, String, u16)>()
        .for_each(|(entry, scheme, host, port)| {
            if let Ok(a) = crate::AllowedHost::parse(entry) {
                let _ = crate::outbound::is_allowed(std::slice::from_ref(&a), scheme, host, *port);
                let _ = a.to_string();
            }
        });
}
