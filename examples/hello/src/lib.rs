//! The smallest useful wasi:http component: answers every request with a greeting.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        const BODY: &[u8] = b"Hello from wms!\n";
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("content-length".to_string(), BODY.len().to_string().into_bytes()),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream is taken once");
        out.write_all(BODY).expect("write body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

wasip2::http::proxy::export!(Hello);
