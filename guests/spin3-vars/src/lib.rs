//! Under the component's route (`spin-path-info`), `GET /get/NAME`: `spin_sdk::variables::get(NAME)` (spin:variables/variables@3.0.0): 200 and
//! the value, or 500 and the error as the SDK reports it.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    // The path under the component's route.
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|h| h.to_str().ok())
        .unwrap_or(req.uri().path())
        .to_string();
    let (status, body) = match path.strip_prefix("/get/") {
        Some(name) => match spin_sdk::variables::get(name).await {
            Ok(v) => (200, v),
            Err(e) => (500, format!("{e:?}")),
        },
        None => (404, "no such route".to_string()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body))
}
