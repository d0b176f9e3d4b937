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

#[test]
fn variables_resolve_from_providers_then_defaults() {
    let text = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
api_host = { default = "api.example.com" }
api_token = { required = true, secret = true }
hidden = { default = "d3fault", secret = true }
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["https://{{ api_host }}", "http://127.0.0.1:1"]
[component.web.variables]
auth = "Bearer {{ api_token }}"
version = "v1"
"#;
    let env = |pairs: &[(&str, &str)]| -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    };
    let parsed = wms_manifest::parse(Path::new("tests/wms.toml"), text).unwrap();
    assert_eq!(parsed.components["web"].outbound_templates.len(), 1);

    let mut app = parsed.clone();
    let providers = wms_manifest::Providers::new(None, env(&[]), None).unwrap();
    let e = app.resolve_variables(&providers).unwrap_err();
    assert_eq!(e.position, Some((7, 1)));
    assert!(
        e.to_string()
            .contains("variable `api_token` is required and has no value"),
        "{e}"
    );
    assert!(e.to_string().contains("SPIN_VARIABLE_API_TOKEN"), "{e}");

    let mut app = parsed.clone();
    let providers =
        wms_manifest::Providers::new(None, env(&[("SPIN_VARIABLE_API_TOKEN", "s3cret")]), None)
            .unwrap();
    let origins = app.resolve_variables(&providers).unwrap();
    assert_eq!(origins[0].origin, "default");
    assert_eq!(origins[1].origin, "SPIN_VARIABLE_API_TOKEN");
    let web = &app.components["web"];
    let values = &web.variable_values.as_ref().unwrap().0;
    assert_eq!(values["auth"], "Bearer s3cret");
    assert_eq!(values["version"], "v1");
    assert!(
        !format!("{app:?}").contains("s3cret"),
        "Debug shows no value"
    );
    let hosts: Vec<String> = web
        .allowed_outbound_hosts
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(hosts, ["http://127.0.0.1:1", "https://api.example.com"]);

    // A templated entry whose value is not an entry: named, the secret value not shown.
    let secret_host = text.replace("https://{{ api_host }}", "{{ api_token }}");
    let mut app = wms_manifest::parse(Path::new("tests/wms.toml"), &secret_host).unwrap();
    let e = app.resolve_variables(&providers).unwrap_err().to_string();
    assert!(
        e.contains("allowed_outbound_hosts entry `{{ api_token }}`"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}
