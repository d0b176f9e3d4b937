//! What a wasm binary is, read without running it: core module or component, its WASI version,
//! its imports and exports, and the WIT world it targets.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// Summary of one wasm binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmInfo {
    /// `wasip2` for a component, `wasip1` for a core module.
    pub os: &'static str,
    /// Present for components.
    pub component: Option<ComponentInfo>,
}

/// The `component` object of the wasm artifact config (field names as the TAG Runtime spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub target: Option<String>,
}

/// Reads `bytes`; `what` names them in errors.
pub fn inspect(bytes: &[u8], what: &str) -> anyhow::Result<WasmInfo> {
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Ok(WasmInfo {
            os: "wasip1",
            component: None,
        });
    }
    if !wasmparser::Parser::is_component(bytes) {
        bail!("{what} is not a WebAssembly module or component (bad magic number or version)");
    }
    let decoded = wit_component::decode(bytes)
        .with_context(|| format!("{what}: cannot read the component's interface"))?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        bail!("{what} is a WIT package, not a runnable component");
    };
    let w = &resolve.worlds[world];
    let exports: Vec<String> = w
        .exports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    let imports: Vec<String> = w
        .imports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    let target = target_world(&exports);
    Ok(WasmInfo {
        os: "wasip2",
        component: Some(ComponentInfo {
            exports,
            imports,
            target,
        }),
    })
}

/// The standard world a component's exports imply: `wasi:http/proxy` for an HTTP handler,
/// `wasi:cli/command` for a command.
pub(crate) fn target_world(exports: &[String]) -> Option<String> {
    exports.iter().find_map(|e| {
        let (name, version) = e.split_once('@').unwrap_or((e, ""));
        let world = match name {
            "wasi:http/incoming-handler" => "wasi:http/proxy",
            "wasi:cli/run" => "wasi:cli/command",
            _ => return None,
        };
        Some(if version.is_empty() {
            world.to_string()
        } else {
            format!("{world}@{version}")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_follows_from_the_exports() {
        let http = vec!["wasi:http/incoming-handler@0.2.3".to_string()];
        assert_eq!(
            target_world(&http).as_deref(),
            Some("wasi:http/proxy@0.2.3")
        );
        let cli = vec!["wasi:cli/run@0.2.0".to_string()];
        assert_eq!(
            target_world(&cli).as_deref(),
            Some("wasi:cli/command@0.2.0")
        );
        assert_eq!(target_world(&["my:pkg/thing".to_string()]), None);
    }

    #[test]
    fn a_core_module_is_wasip1_and_garbage_is_refused() {
        let module = b"\0asm\x01\0\0\0";
        assert_eq!(inspect(module, "m").unwrap().os, "wasip1");
        let err = inspect(b"hello", "x.wasm").unwrap_err().to_string();
        assert!(err.contains("x.wasm"), "{err}");
    }
}
