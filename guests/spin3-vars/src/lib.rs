//! Paths under the component's route (`spin-path-info`), parameters in the query string:
//! `GET /get/NAME`: `spin_sdk::variables::get(NAME)` (spin:variables/variables@3.0.0): 200 and
//! the value.
//! `/kv/set?store=&key=&value=`, `/kv/get?store=&key=` (404 for none), `/kv/delete`,
//! `/kv/exists` (`true`/`false`), `/kv/keys` (read from the stream one at a time, then its
//! result; one key a line, sorted): `spin_sdk::key_value` (spin:key-value/key-value@3.0.0);
//! `store` defaults to `default`.
//! Every error is 500 with the error as the SDK reports it (`{:?}`).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;

/// Decodes `%XX` and `+` in a query string value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn fail(e: impl std::fmt::Debug) -> (u16, String) {
    (500, format!("{e:?}"))
}

async fn kv(op: &str, get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    let store = match Store::open(get("store").unwrap_or_else(|| "default".into())).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let key = get("key").unwrap_or_default();
    match op {
        "set" => match store.set(&key, get("value").unwrap_or_default()).await {
            Ok(()) => (200, "ok".into()),
            Err(e) => fail(e),
        },
        "get" => match store.get(&key).await {
            Ok(Some(v)) => (200, String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => (404, "none".into()),
            Err(e) => fail(e),
        },
        "delete" => match store.delete(&key).await {
            Ok(()) => (200, "ok".into()),
            Err(e) => fail(e),
        },
        "exists" => match store.exists(&key).await {
            Ok(b) => (200, b.to_string()),
            Err(e) => fail(e),
        },
        "keys" => {
            let mut keys = store.get_keys().await;
            let mut all = Vec::new();
            while let Some(k) = keys.next().await {
                all.push(k);
            }
            if let Err(e) = keys.result().await {
                return fail(e);
            }
            all.sort();
            (200, all.iter().map(|k| format!("{k}\n")).collect())
        }
        _ => (404, "no such route".into()),
    }
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    // The path under the component's route.
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|h| h.to_str().ok())
        .unwrap_or(req.uri().path())
        .to_string();
    let params = params(req.uri().query().unwrap_or(""));
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (status, body) = if let Some(name) = path.strip_prefix("/get/") {
        match spin_sdk::variables::get(name).await {
            Ok(v) => (200, v),
            Err(e) => fail(e),
        }
    } else if let Some(op) = path.strip_prefix("/kv/") {
        kv(op, get).await
    } else {
        (404, "no such route".to_string())
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body))
}
