//! Paths under the component's route (`spin-path-info`):
//! `GET /get/NAME`: `spin_sdk::variables::get(NAME)` (fermyon:spin/variables@2.0.0): 200 and the
//! value, or 500 and the error as the SDK reports it.
//! `GET /config/NAME`: wasi:config/store `get`: 200 and the value, 404 for `none`, or 500.
//! `GET /config-all`: wasi:config/store `get-all`, one `name=value` a line, sorted.
//! `GET /fetch/NAME`: a GET to the URL in variable NAME: 200 and the upstream status, or 502 and
//! the error (a denied host).

use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::wit::wasi::config::store;

fn reply(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build()
}

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    // The path under the component's route.
    let path = req
        .header("spin-path-info")
        .and_then(|h| h.as_str())
        .unwrap_or(req.path())
        .to_string();
    if let Some(name) = path.strip_prefix("/get/") {
        return Ok(match spin_sdk::variables::get(name) {
            Ok(v) => reply(200, v),
            Err(e) => reply(500, format!("{e:?}")),
        });
    }
    if let Some(name) = path.strip_prefix("/config/") {
        return Ok(match store::get(name) {
            Ok(Some(v)) => reply(200, v),
            Ok(None) => reply(404, "none".to_string()),
            Err(e) => reply(500, format!("{e:?}")),
        });
    }
    if path == "/config-all" {
        return Ok(match store::get_all() {
            Ok(mut all) => {
                all.sort();
                let lines: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                reply(200, lines.concat())
            }
            Err(e) => reply(500, format!("{e:?}")),
        });
    }
    if let Some(name) = path.strip_prefix("/fetch/") {
        let url = match spin_sdk::variables::get(name) {
            Ok(v) => v,
            Err(e) => return Ok(reply(500, format!("{e:?}"))),
        };
        let request = Request::builder().method(Method::Get).uri(url).build();
        return Ok(match spin_sdk::http::send::<_, Response>(request).await {
            Ok(resp) => reply(200, resp.status().to_string()),
            Err(e) => reply(502, format!("{e:?}")),
        });
    }
    Ok(reply(404, "no such route".to_string()))
}
