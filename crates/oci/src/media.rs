//! Media types and annotations of the images wms reads and writes (see docs/oci.md).

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (a multi-platform image).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's schema 2 manifest, read for completeness.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// CNCF TAG Runtime wasm artifact: config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// CNCF TAG Runtime wasm artifact: the wasm layer (also used for components of wms apps).
pub const WASM_LAYER: &str = "application/wasm";
/// Older component layer type some tools wrote; read, never written.
pub const COMPONENT_LAYER_V0: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// Spin's component layer type; read, never written.
pub const SPIN_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// wms app image: OCI image config (architecture `wasm`), so generic tools can inspect it.
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// wms app image: the app manifest (Spin v2 TOML whose sources are digests).
pub const APP_MANIFEST: &str = "application/vnd.wms.app.manifest.v1+toml";
/// wms app image: a component's files, as a tar of guest paths.
pub const FILES_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// wms app image: Cranelift or Pulley code precompiled by `wms compile` for one target.
pub const PRECOMPILED: &str = "application/vnd.wms.precompiled.v1";

/// Spin's app images: the locked app, their last layer.
pub const SPIN_LOCKED_APP: &str = "application/vnd.fermyon.spin.application.v1+config";

/// Layer annotation: file name (OCI standard).
pub const ANN_TITLE: &str = "org.opencontainers.image.title";
/// Manifest annotation: creation time (OCI standard).
pub const ANN_CREATED: &str = "org.opencontainers.image.created";
/// Layer annotation: the component a layer belongs to.
pub const ANN_COMPONENT: &str = "dev.wms.component";
/// Layer annotation: `wasip1` (core module) or `wasip2` (component).
pub const ANN_WASI: &str = "dev.wms.wasi";
/// Layer annotation: the WIT world a component targets, when known.
pub const ANN_WORLD: &str = "dev.wms.world";
/// Precompiled layer annotation: the target (`x86_64`, `aarch64`, `riscv64gc`, `pulley64`, ...).
pub const ANN_TARGET: &str = "dev.wms.precompiled.target";
/// Precompiled layer annotation: digest of the wasm the code was compiled from.
pub const ANN_WASM_DIGEST: &str = "dev.wms.precompiled.wasm-digest";

/// Whether a layer of this type holds a wasm module or component.
pub fn is_wasm_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        WASM_LAYER | COMPONENT_LAYER_V0 | SPIN_WASM_LAYER
    )
}
