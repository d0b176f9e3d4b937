//! A wasi:cli command: a valid component that does not export wasi:http/incoming-handler.

fn main() {
    println!("I am a command, not an HTTP handler");
}
