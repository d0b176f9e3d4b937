//! End-to-end tests: the real `wms` binary on `127.0.0.1:0`, real HTTP clients, guests built
//! from source by `wms-test-artifacts`.

mod aot;
mod board;
mod chaining;
mod hardening;
mod harness;
mod kv;
mod limits;
mod memory;
mod oci;
mod ops;
mod outbound;
mod p3;
mod reload;
mod run;
mod serving;
mod shim;
mod sockets;
mod startup;
mod traces;
mod variables;
mod wagi;
