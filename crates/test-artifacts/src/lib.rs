//! Paths of the wasm guests built from source by this crate's build script.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The example apps of this checkout.
pub const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
/// `examples/hello`, built where its manifest expects it.
pub const HELLO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/target/wasm32-wasip2/release/hello.wasm"
);
/// The echo component of `examples/multi`.
pub const ECHO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/target/wasm32-wasip2/release/echo.wasm"
);
/// `examples/spin-hello`, a Spin SDK module, where its unchanged spin.toml expects it.
pub const SPIN_HELLO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/spin-hello/target/wasm32-wasip1/release/spin_hello.wasm"
);
