//! `native-hello [ADDR]`: answers every request with the same bytes as `examples/hello`, using
//! the same hyper front-end setup as wms (HTTP/1.1 keep-alive and h2c), so the benchmark's
//! wms/native ratio measures what running the service as WebAssembly costs.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("Serving http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    let mut resp =
                        Response::new(Full::new(Bytes::from_static(b"Hello from wms!\n")));
                    resp.headers_mut()
                        .insert("content-type", "text/plain".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
