//! Fuzz targets for what a registry sends: image manifests, indexes, configs, app manifest
//! layers, tar layers and references (random inputs for a few seconds under `cargo test`;
//! `cargo bolero test -p wms-oci fuzz::NAME` runs one coverage-guided where nightly exists).
//! A failure prints `BOLERO_RANDOM_SEED=...` to replay it; each crash becomes a regression
//! test.

use std::time::Duration;

use oci_client::manifest::{OciImageIndex, OciImageManifest};

const BUDGET: Duration = Duration::from_secs(3);

fn reference() -> oci_client::Reference {
    crate::parse_reference("127.0.0.1:5000/fuzz/app:1").expect("a valid reference")
}

#[test]
fn image_manifest_config_and_app_manifest() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_type::<(Vec<u8>, Vec<u8>, String)>()
        .for_each(|(manifest, config, app_manifest)| {
            // A JSON document that is almost a manifest reaches further than raw bytes.
            let prefixed = [
                br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:00","size":1},"layers":["#.as_slice(),
                manifest,
                b"]}",
            ]
            .concat();
            for bytes in [manifest.as_slice(), prefixed.as_slice()] {
                let Ok(m) = serde_json::from_slice::<OciImageManifest>(bytes) else {
                    continue;
                };
                let _ = crate::ImageKind::classify(&m);
                let inspection =
                    crate::describe(&reference(), "sha256:00", &m, config, Some(app_manifest));
                let _ = inspection.to_string();
            }
            let _ = serde_json::from_slice::<crate::image::WasmConfig>(config);
        });
}

#[test]
fn image_index() {
    bolero::check!()
        .with_test_time(BUDGET)
        .for_each(|bytes: &[u8]| {
            if let Ok(index) = serde_json::from_slice::<OciImageIndex>(bytes) {
                let _ = crate::registry::wasm_entry(&index);
            }
        });
}

#[test]
fn references() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_type::<String>()
        .for_each(|s| {
            let _ = crate::parse_reference(s);
        });
}

/// Tar layers: raw bytes, and archives assembled from hostile entries (names with `..` or a
/// leading `/`, links, devices). Whatever the input, nothing is written outside the output
/// directory, and only regular files and directories are written.
#[test]
fn files_layer() {
    bolero::check!()
        .with_test_time(BUDGET)
        .with_type::<(Vec<u8>, Vec<(u8, u8, String, Vec<u8>)>)>()
        .for_each(|(raw, entries)| {
            let root = tempfile::tempdir().unwrap();
            let out = root.path().join("out");
            let _ = crate::extract_tar(raw.as_slice(), &out);

            let mut b = tar::Builder::new(Vec::new());
            for (kind, prefix, name, data) in entries.iter().take(8) {
                let name = format!(
                    "{}{}",
                    ["", "../", "/", "a/../../", "./", "a/"][*prefix as usize % 6],
                    name.chars().take(40).collect::<String>()
                );
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(
                    [
                        tar::EntryType::Regular,
                        tar::EntryType::Directory,
                        tar::EntryType::Symlink,
                        tar::EntryType::Link,
                        tar::EntryType::Char,
                        tar::EntryType::Fifo,
                    ][*kind as usize % 6],
                );
                let _ = h.set_link_name("/etc/passwd");
                // Written into the header as is: the builder's own path checks would refuse
                // the hostile names a registry can still send.
                let raw_name = name.as_bytes();
                let n = raw_name.len().min(99);
                h.as_old_mut().name[..n].copy_from_slice(&raw_name[..n]);
                h.set_cksum();
                let _ = b.append(&h, data.as_slice());
            }
            let bytes = b.into_inner().unwrap_or_default();
            let _ = crate::extract_tar(bytes.as_slice(), &out);

            for entry in walkdir::WalkDir::new(root.path()).min_depth(1) {
                let entry = entry.unwrap();
                assert!(
                    entry.path().starts_with(&out),
                    "written outside the output directory: {}",
                    entry.path().display()
                );
                let t = entry.file_type();
                assert!(
                    t.is_file() || t.is_dir(),
                    "not a file or directory: {}",
                    entry.path().display()
                );
            }
        });
}
