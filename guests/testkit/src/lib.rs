//! A wasi:http component whose behaviour is chosen by the last path segment, so one build
//! exercises every way a guest can succeed or fail. The query carries arguments.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Testkit;

fn query_arg(path: &str, key: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[(
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    )])
    .unwrap();
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).unwrap();
    let out_body = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let mut stream = out_body.write().unwrap();
    stream.write_all(body).unwrap();
    drop(stream);
    OutgoingBody::finish(out_body, None).unwrap();
}

fn sleep_ms(ms: u64) {
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn outbound(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = url.split_once("://").ok_or("url without scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).unwrap();
    req.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }))
    .unwrap();
    req.set_authority(Some(authority)).unwrap();
    req.set_path_with_query(Some(path)).unwrap();
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .expect("ready")
        .expect("first get")
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().unwrap();
    let mut stream = body.stream().unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok((status, bytes))
}

impl wasip2::exports::http::incoming_handler::Guest for Testkit {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let action = path
            .split('?')
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        match action.as_str() {
            "trap" => panic!("testkit was asked to trap"),
            "loop" => {
                // Tests wait for this line to know the guest holds its slot.
                eprintln!("testkit: loop started");
                #[expect(clippy::empty_loop, reason = "the point is a guest that never yields")]
                loop {}
            }
            "headers-then-loop" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().unwrap();
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().unwrap();
                stream.blocking_write_and_flush(b"partial").unwrap();
                loop {
                    std::hint::black_box(&stream);
                }
            }
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "no-response" => drop(out),
            "slow" => {
                let ms = query_arg(&path, "ms")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1000);
                eprintln!("testkit: slow started");
                sleep_ms(ms);
                respond(out, 200, format!("slept {ms}ms").as_bytes());
            }
            "env" => {
                let mut text = String::new();
                for (k, v) in std::env::vars() {
                    text.push_str(&format!("{k}={v}\n"));
                }
                respond(out, 200, text.as_bytes());
            }
            "read" => {
                let file = query_arg(&path, "path").unwrap_or_default();
                match std::fs::read(&file) {
                    Ok(bytes) => respond(out, 200, &bytes),
                    Err(e) => respond(out, 404, format!("read {file}: {e}").as_bytes()),
                }
            }
            "write" => {
                let file = query_arg(&path, "path").unwrap_or_default();
                match std::fs::write(&file, b"overwritten") {
                    Ok(()) => respond(out, 200, b"written"),
                    Err(e) => respond(out, 403, format!("write {file}: {e}").as_bytes()),
                }
            }
            "outbound" => {
                let url = query_arg(&path, "url").unwrap_or_default();
                match outbound(&url) {
                    Ok((status, body)) => {
                        let mut text = format!("upstream {status}: ").into_bytes();
                        text.extend_from_slice(&body);
                        respond(out, 200, &text)
                    }
                    Err(e) => respond(out, 502, format!("outbound error: {e}").as_bytes()),
                }
            }
            "headers" => {
                // The request as the guest sees it: its authority, then each header.
                let mut text = format!(
                    "authority: {}\n",
                    request.authority().unwrap_or_default()
                );
                for (k, v) in request.headers().entries() {
                    text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(&v)));
                }
                respond(out, 200, text.as_bytes());
            }
            "recurse" => {
                // Calls itself through a relative URL, as a Spin SDK sends it, until refused.
                match outbound(&format!("http://:80{path}")) {
                    Ok((status, body)) => {
                        let mut text = format!("upstream {status}: ").into_bytes();
                        text.extend_from_slice(&body);
                        respond(out, 200, &text)
                    }
                    Err(e) => respond(out, 502, format!("outbound error: {e}").as_bytes()),
                }
            }
            "log" => {
                println!("to stdout from the guest");
                eprintln!("to stderr from the guest");
                respond(out, 200, b"logged");
            }
            "hoard-files" => {
                // Opens a file again and again, keeping every handle, until an open fails;
                // then holds them for `ms` so hoarders overlap.
                let file = query_arg(&path, "path").unwrap_or_else(|| "/wms.toml".to_string());
                let ms = query_arg(&path, "ms")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                let mut held = Vec::new();
                let error = loop {
                    if held.len() >= 100_000 {
                        break "no error".to_string();
                    }
                    match std::fs::File::open(&file) {
                        Ok(f) => held.push(f),
                        Err(e) => break e.to_string(),
                    }
                };
                sleep_ms(ms);
                respond(
                    out,
                    500,
                    format!("opened {} files, then: {error}", held.len()).as_bytes(),
                );
            }
            "hoard-streams" => {
                // Opens the mounted wms.toml again and again through wasi:filesystem, keeps a
                // read stream of each and drops the descriptor: the stream keeps the host file
                // open, so this must count against the cap like a held descriptor.
                use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
                let dirs = wasip2::filesystem::preopens::get_directories();
                let (dir, _) = dirs.first().expect("a mounted directory");
                let mut held = Vec::new();
                let error = loop {
                    if held.len() >= 100_000 {
                        break "no error".to_string();
                    }
                    match dir.open_at(
                        PathFlags::empty(),
                        "wms.toml",
                        OpenFlags::empty(),
                        DescriptorFlags::READ,
                    ) {
                        Ok(fd) => match fd.read_via_stream(0) {
                            Ok(stream) => held.push(stream),
                            Err(e) => break format!("{e:?}"),
                        },
                        Err(e) => break format!("{e:?}"),
                    }
                };
                respond(
                    out,
                    500,
                    format!("opened {} files, then: {error}", held.len()).as_bytes(),
                );
            }
            "log-flood" => {
                // Text that would colour a terminal or forge a log line, a long line, then
                // more lines than the log lets through.
                println!("\x1b[31mred\x1b[0m and\rINFO wms: forged line");
                println!("{}", "y".repeat(10_000));
                let n: u32 = query_arg(&path, "lines")
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(1000);
                for i in 0..n {
                    println!("flood line {i}");
                }
                respond(out, 200, b"flooded");
            }
            "download" => {
                let n: u64 = query_arg(&path, "bytes")
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0);
                let headers = Fields::from_list(&[(
                    "content-length".to_string(),
                    n.to_string().into_bytes(),
                )])
                .unwrap();
                let response = OutgoingResponse::new(headers);
                let body = response.body().unwrap();
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().unwrap();
                let chunk = vec![b'x'; 4096];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    stream.blocking_write_and_flush(&chunk[..k]).unwrap();
                    left -= k as u64;
                }
                drop(stream);
                OutgoingBody::finish(body, None).unwrap();
            }
            "consume" => {
                // Reads the whole body before answering, as most handlers do; a body error
                // becomes a 422 of its own, which the host must not let stand for its limits.
                let body = request.consume().unwrap();
                let stream = body.stream().unwrap();
                let mut n = 0usize;
                let result = loop {
                    match stream.blocking_read(64 * 1024) {
                        Ok(chunk) => n += chunk.len(),
                        Err(wasip2::io::streams::StreamError::Closed) => break Ok(n),
                        Err(e) => break Err(format!("{e:?}")),
                    }
                };
                match result {
                    Ok(n) => respond(out, 200, format!("consumed {n} bytes").as_bytes()),
                    Err(e) => respond(out, 422, format!("body error after {n} bytes: {e}").as_bytes()),
                }
            }
            other => respond(out, 200, format!("testkit: {other}").as_bytes()),
        }
    }
}

wasip2::http::proxy::export!(Testkit);
