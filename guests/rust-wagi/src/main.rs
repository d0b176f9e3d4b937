//! A WAGI handler in Rust for `wasm32-wasip1`: plain std, CGI in and out.

use std::io::{Read, Write};

fn main() {
    let method = std::env::var("REQUEST_METHOD").unwrap_or_default();
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).unwrap();
    let mut out = std::io::stdout().lock();
    if path == "/smuggle" {
        // Framing headers that disagree with the body: a second response hidden in the first.
        write!(out, "content-type: text/plain\ncontent-length: 2\nconnection: keep-alive\ntransfer-encoding: identity\n\n").unwrap();
        write!(out, "okHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled").unwrap();
        return;
    }
    write!(out, "content-type: text/plain\nx-method: {method}\nx-path-info: {path}\n\n").unwrap();
    write!(out, "rust wagi got {} bytes: ", body.len()).unwrap();
    out.write_all(&body).unwrap();
}
