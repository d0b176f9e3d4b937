//! Golden tests: each `tests/ui/NAME.toml` is a bad manifest, `NAME.err` the exact diagnostic.
//! Run with `WMS_BLESS=1` to rewrite the `.err` files after an intended change, then review the diff.

use std::path::Path;

#[test]
fn bad_manifests_have_exact_diagnostics() {
    let dir = Path::new("tests/ui");
    let bless = std::env::var_os("WMS_BLESS").is_some();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 10,
        "golden cases missing from {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for manifest in entries {
        let actual = match wms_manifest::load(&manifest) {
            Ok(_) => "(loaded without error)\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let golden = manifest.with_extension("err");
        if bless {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                manifest.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_manifest_resolves_limits_routes_and_paths() {
    let text = r#"
spin_manifest_version = 2

[application]
name = "shop"
[application.tool.wms]
max_concurrent_requests = 64

[[trigger.http]]
route = "/..."
component = "web"

[[trigger.http]]
route = "/api/:id"
component = "api"

[component.web]
source = "web.wasm"
files = [{ source = ".", destination = "/static" }]

[component.api]
source = "target/api.wasm"
environment = { MODE = "test" }
allowed_outbound_hosts = ["http://127.0.0.1:*"]
[component.api.tool.wms]
timeout = "1500ms"
max_memory = "16MiB"
max_concurrent_requests = 4
"#;
    let app = wms_manifest::parse(Path::new("tests/wms.toml"), text).unwrap();
    assert_eq!(app.name, "shop");
    assert_eq!(app.max_concurrent_requests, 64);
    let api = &app.components["api"];
    assert_eq!(api.limits.timeout, std::time::Duration::from_millis(1500));
    assert_eq!(api.limits.max_memory, 16 << 20);
    assert_eq!(api.limits.max_concurrent_requests, Some(4));
    assert!(api.source.is_absolute() && api.source.ends_with("tests/target/api.wasm"));
    assert_eq!(
        app.components["web"].limits,
        wms_manifest::Limits::default()
    );
    let (route, m) = app.route("/api/7").unwrap();
    assert_eq!(route.component, "api");
    assert_eq!(m.params, vec![("id".to_string(), "7".to_string())]);
    assert_eq!(app.route("/other").unwrap().0.component, "web");
}
