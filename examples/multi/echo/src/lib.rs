//! Echoes a request back so the host's translation can be checked both ways:
//! - `x-echo-method`, `x-echo-path` (path and query), `x-echo-authority` and `x-echo-scheme`
//!   carry the request line;
//! - every request header `NAME: VALUE` comes back as `x-echo-header-NAME: VALUE`, in order;
//! - the request body streams back as the response body, chunk by chunk, never held whole;
//! - `?status=NNN` in the query sets the response status.

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::StreamError;

struct Echo;

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let status = path
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("status=")))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let scheme = match request.scheme() {
            Some(Scheme::Http) => "http".to_string(),
            Some(Scheme::Https) => "https".to_string(),
            Some(Scheme::Other(s)) => s,
            None => String::new(),
        };
        let mut list = vec![
            ("x-echo-method".to_string(), method_name(&request.method()).into_bytes()),
            ("x-echo-path".to_string(), path.clone().into_bytes()),
            ("x-echo-authority".to_string(), request.authority().unwrap_or_default().into_bytes()),
            ("x-echo-scheme".to_string(), scheme.into_bytes()),
        ];
        for (name, value) in request.headers().entries() {
            if name == "content-length" {
                list.push(("content-length".to_string(), value.clone()));
            }
            list.push((format!("x-echo-header-{name}"), value));
        }
        let headers = Fields::from_list(&list).expect("echo headers are valid");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).expect("valid status");
        let out_body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let in_body = request.consume().expect("body is consumed once");
        let input = in_body.stream().expect("stream is taken once");
        let output = out_body.write().expect("stream is taken once");
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    for piece in chunk.chunks(4096) {
                        output.blocking_write_and_flush(piece).expect("write response body");
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    panic!("reading request body: {}", e.to_debug_string())
                }
            }
        }
        drop(input);
        IncomingBody::finish(in_body);
        drop(output);
        OutgoingBody::finish(out_body, None).expect("finish body");
    }
}

wasip2::http::proxy::export!(Echo);
