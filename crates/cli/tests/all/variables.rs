//! Spin's application variables through the real `wms up`: guests built from source with the
//! Spin Rust SDK 5 (Spin 2's `fermyon:spin/variables@2.0.0` and `wasi:config/store`, a
//! wasm32-wasip1 module adapted at start) and SDK 7 (Spin 3's `spin:variables/variables@3.0.0`,
//! a wasi:http 0.3 component); values from defaults, the environment (`SPIN_VARIABLE_NAME`,
//! `WMS_VARIABLE_NAME`) and the runtime config file.

use std::path::Path;
use std::process::Command;

use crate::harness::{Registry, Server, artifacts, client, rt, wms_command};

/// The app: both guests, each with the same component variables over the app's variables.
fn manifest(extra_v2: &str) -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "vars"

[variables]
greeting = {{ default = "hello" }}
api_token = {{ required = true, secret = true }}
upstream = {{ default = "http://127.0.0.1:1" }}

[[trigger.http]]
route = "/v2/..."
component = "v2"

[[trigger.http]]
route = "/v3/..."
component = "v3"

[component.v2]
source = {v2:?}
{extra_v2}
[component.v2.variables]
message = "{{{{ greeting }}}}, world"
token = "Bearer {{{{ api_token }}}}"
target = "{{{{ upstream }}}}"
literal = "v1"

[component.v3]
source = {v3:?}
[component.v3.variables]
message = "{{{{ greeting }}}}, world"
"#,
        v2 = artifacts::SPIN_VARS,
        v3 = artifacts::SPIN3_VARS,
    )
}

/// Starts the app in a temporary directory with `env` set for wms and `args` after `up`.
fn serve(manifest: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Server::with_manifest_runner(manifest, args, move |cmd: &mut Command| {
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    })
}

fn get(server: &Server, path: &str) -> (u16, String) {
    rt().block_on(async {
        let r = client().get(server.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn spin_2_and_3_guests_read_their_variables_from_defaults_and_the_environment() {
    let server = serve(
        &manifest(""),
        &[("SPIN_VARIABLE_API_TOKEN", "tok-from-spin-env")],
        &[],
    );
    // Spin 2's interface (SDK 5) and Spin 3's (SDK 7): a default through a template.
    assert_eq!(
        get(&server, "/v2/get/message"),
        (200, "hello, world".into())
    );
    assert_eq!(
        get(&server, "/v3/get/message"),
        (200, "hello, world".into())
    );
    assert_eq!(get(&server, "/v2/get/literal"), (200, "v1".into()));
    // A required secret from SPIN_VARIABLE_API_TOKEN.
    assert_eq!(
        get(&server, "/v2/get/token"),
        (200, "Bearer tok-from-spin-env".into())
    );
    // wasi:config/store: the same values; `none` for a name the component does not declare.
    assert_eq!(
        get(&server, "/v2/config/message"),
        (200, "hello, world".into())
    );
    assert_eq!(get(&server, "/v2/config/greeting"), (404, "none".into()));
    assert_eq!(get(&server, "/v2/config/Not-A-Name"), (404, "none".into()));
    assert_eq!(
        get(&server, "/v2/config-all"),
        (
            200,
            "literal=v1\nmessage=hello, world\ntarget=http://127.0.0.1:1\ntoken=Bearer tok-from-spin-env\n"
                .into()
        )
    );
    // The denied paths: an application variable the component does not declare itself (Spin's
    // `undefined`, on both interfaces), a variable of another component, a bad name.
    let (status, body) = get(&server, "/v2/get/greeting");
    assert_eq!(status, 500);
    assert!(
        body.ends_with(r#"Undefined("no variable for \"v2\".\"greeting\"")"#),
        "{body}"
    );
    let (status, body) = get(&server, "/v3/get/token");
    assert_eq!(status, 500);
    assert!(
        body.ends_with(r#"Undefined("no variable for \"v3\".\"token\"")"#),
        "{body}"
    );
    let (status, body) = get(&server, "/v2/get/Bad-Name");
    assert_eq!(status, 500);
    assert!(body.contains("InvalidName("), "{body}");
    let (status, body) = get(&server, "/v3/get/a__b");
    assert_eq!(status, 500);
    assert!(body.contains("InvalidName("), "{body}");

    // The start-up log names each component's variables and where each value came from, and
    // never shows a value of a secret.
    let log = server.wait_for_log("component=v3");
    assert!(
        log.contains("api_token [secret] (SPIN_VARIABLE_API_TOKEN)"),
        "{log}"
    );
    assert!(log.contains("greeting (default)"), "{log}");
    assert!(
        log.contains("variables: literal, message, target, token; key-value stores: none; SQLite databases: none; allowed outbound hosts: none"),
        "{log}"
    );
    assert!(!log.contains("tok-from-spin-env"), "{log}");
}

#[test]
fn wms_variable_wins_over_spin_variable() {
    let server = serve(
        &manifest(""),
        &[
            ("SPIN_VARIABLE_API_TOKEN", "spin"),
            ("WMS_VARIABLE_API_TOKEN", "wms"),
            ("SPIN_VARIABLE_GREETING", "hi"),
        ],
        &[],
    );
    assert_eq!(get(&server, "/v2/get/token"), (200, "Bearer wms".into()));
    assert_eq!(get(&server, "/v3/get/message"), (200, "hi, world".into()));
    let log = server.wait_for_log("component=v3");
    assert!(
        log.contains("api_token [secret] (WMS_VARIABLE_API_TOKEN)"),
        "{log}"
    );
}

#[test]
fn the_runtime_config_file_provides_values_before_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vars.env"),
        "APP_GREETING=\"from dotenv\"\n",
    )
    .unwrap();
    let config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        "[[config_provider]]\ntype = \"static\"\nvalues = { api_token = \"from-file\" }\n\n[[config_provider]]\ntype = \"env\"\nprefix = \"APP\"\ndotenv_path = \"vars.env\"\n",
    )
    .unwrap();
    let server = serve(
        &manifest(""),
        &[("SPIN_VARIABLE_API_TOKEN", "from-env")],
        &["--runtime-config-file", config.to_str().unwrap()],
    );
    assert_eq!(
        get(&server, "/v2/get/token"),
        (200, "Bearer from-file".into())
    );
    assert_eq!(
        get(&server, "/v3/get/message"),
        (200, "from dotenv, world".into())
    );

    // A bad file is an error at start naming it, the line and what to do.
    std::fs::write(&config, "[[config_provider]]\ntype = \"vault\"\n").unwrap();
    let (code, _, err) = wms_up_fails(
        &manifest(""),
        &[],
        &["--runtime-config-file", config.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "{}:1:1: [[config_provider]] #1: the `vault` variable provider is not supported by wms",
            config.display()
        )),
        "{err}"
    );
    std::fs::write(
        &config,
        "[key_value_store.default]\ntype = \"aws_dynamo\"\n",
    )
    .unwrap();
    let (_, _, err) = wms_up_fails(
        &manifest(""),
        &[],
        &["--runtime-config-file", config.to_str().unwrap()],
    );
    assert!(
        err.contains(
            "[key_value_store.default]: the `aws_dynamo` key-value store is not supported by wms"
        ),
        "{err}"
    );
}

/// Runs `wms up` on `manifest`, expecting it to stop at start; returns (code, stdout, stderr).
fn wms_up_fails(manifest: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wms.toml"), manifest).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = wms_command()
        .env("WMS_CACHE_DIR", cache.path())
        .env_remove("SPIN_VARIABLE_API_TOKEN")
        .env_remove("WMS_VARIABLE_API_TOKEN")
        .envs(env.iter().copied())
        .arg("up")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_required_variable_without_a_value_stops_the_start_naming_it() {
    let (code, out, err) = wms_up_fails(&manifest(""), &[], &[]);
    assert_ne!(code, 0);
    assert!(!out.contains("Serving"), "{out}");
    assert!(
        err.contains("variable `api_token` is required and has no value"),
        "{err}"
    );
    assert!(err.contains("SPIN_VARIABLE_API_TOKEN"), "{err}");
}

#[test]
fn allowed_outbound_hosts_take_templates() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in upstream.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    let allowed = "allowed_outbound_hosts = [\"{{ upstream }}\"]";
    let server = serve(
        &manifest(allowed),
        &[
            ("SPIN_VARIABLE_API_TOKEN", "t"),
            (
                "SPIN_VARIABLE_UPSTREAM",
                &format!("http://127.0.0.1:{port}"),
            ),
        ],
        &[],
    );
    // Allowed: the entry is the variable's value.
    assert_eq!(get(&server, "/v2/fetch/target"), (200, "204".into()));
    let log = server.wait_for_log("component=v2");
    assert!(
        log.contains(&format!(
            "allowed outbound hosts: {{{{ upstream }}}} = http://127.0.0.1:{port}"
        )),
        "{log}"
    );
    // Denied: the other component has no entry.
    drop(server);
    let other = serve(
        &manifest(""),
        &[
            ("SPIN_VARIABLE_API_TOKEN", "t"),
            (
                "SPIN_VARIABLE_UPSTREAM",
                &format!("http://127.0.0.1:{port}"),
            ),
        ],
        &[],
    );
    let (status, body) = get(&other, "/v2/fetch/target");
    assert_eq!(status, 502, "{body}");
    other.wait_for_log("denied: not in allowed_outbound_hosts");

    // A value that is not an entry stops the start, naming the entry; a secret's value is not
    // shown.
    let secret_host = manifest("allowed_outbound_hosts = [\"{{ api_token }}\"]");
    let (code, _, err) = wms_up_fails(&secret_host, &[("SPIN_VARIABLE_API_TOKEN", "hunter2")], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("component `v2`: allowed_outbound_hosts entry `{{ api_token }}`"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn inspect_shows_variable_names_stores_and_databases_but_no_secret() {
    let registry = Registry::start();
    let app = tempfile::tempdir().unwrap();
    let text = manifest("key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]")
        .replace(
            "api_token = { required = true, secret = true }",
            "api_token = { default = \"hunter2\", secret = true }",
        );
    std::fs::write(app.path().join("spin.toml"), text).unwrap();
    let home = tempfile::tempdir().unwrap();
    let reference = registry.reference("vars:1");
    let wms = |args: &[&str]| {
        let out = wms_command()
            .env("WMS_CACHE_DIR", home.path().join("cache"))
            .env("DOCKER_CONFIG", home.path().join("docker"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wms(&["push", app.path().to_str().unwrap(), &reference]);
    let text = wms(&["inspect", &reference]);
    // `wms push` writes the manifest again, its tables in name order.
    assert!(
        text.contains(
            "vars     literal, message, target, token\n    kv       default\n    sqlite   default\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("api_token [secret]  default (secret, not shown)"),
        "{text}"
    );
    assert!(text.contains("greeting  default \"hello\""), "{text}");
    let json = wms(&["inspect", "--json", &reference]);
    for out in [&text, &json] {
        assert!(!out.contains("hunter2"), "{out}");
    }
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["variables"][0]["name"], "api_token");
    assert_eq!(json["variables"][0]["secret"], true);
    assert_eq!(json["variables"][0]["default"], serde_json::Value::Null);
    assert_eq!(json["variables"][1]["default"], "hello");
    assert_eq!(json["components"][0]["variables"][3], "token");
    assert_eq!(json["components"][0]["key_value_stores"][0], "default");
    assert_eq!(
        json["components"][1]["sqlite_databases"],
        serde_json::json!([])
    );
    assert!(Path::new(&home.path().join("cache")).exists());
}
