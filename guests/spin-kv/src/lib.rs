//! Paths under the component's route (`spin-path-info`), parameters in the query string
//! (`store` defaults to `default`, `db` to `default`):
//! `/kv/set?store=&key=&value=`, `/kv/get?store=&key=` (404 for none), `/kv/delete`,
//! `/kv/exists` (`true`/`false`), `/kv/keys` (one key a line, sorted), `/kv/big?store=&key=&size=`
//! (sets a value of `size` bytes): `spin_sdk::key_value` (fermyon:spin/key-value@2.0.0).
//! `/wkv/set`, `/wkv/get`, `/wkv/keys`, `/wkv/incr?key=&by=`, `/wkv/cas?key=&from=&to=`:
//! the same through `wasi:keyvalue` store and atomics; `/wkv/many?key=&n=` gets `key` `n` times
//! in one `batch.get-many` and answers the total size of the values; `/wkv/cashoard?key=&n=`
//! holds `n` compare-and-swap handles on `key` at once (`held N`).
//! `/sqlite/exec?db=&sql=&p=...`: one statement through `spin_sdk::sqlite` with the `p`
//! parameters (as integers where they parse, else text); the columns then one row a line,
//! values `|`-separated and typed (`i:1`, `r:1.5`, `t:x`, `b:3 bytes`, `null`).
//! `/sqlite3/exec?db=&sql=`: one statement through `spin_sdk::sqlite3` (spin:sqlite@3.0.0):
//! `rows=N rowid=N changes=N`.
//! Every error is 500 with the error as the SDK reports it (`{:?}`).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};
use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store as wasi};

fn reply(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build()
}

fn fail(e: impl std::fmt::Debug) -> Response {
    reply(500, format!("{e:?}"))
}

/// Decodes `%XX` and `+` in a query string value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Never slicing through a multi-byte character after the `%`.
            b'%' => match s
                .get(i + 1..i + 3)
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

fn show(v: &Value) -> String {
    match v {
        Value::Integer(i) => format!("i:{i}"),
        Value::Real(r) => format!("r:{r}"),
        Value::Text(t) => format!("t:{t}"),
        Value::Blob(b) => format!("b:{} bytes", b.len()),
        Value::Null => "null".to_string(),
    }
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req
        .header("spin-path-info")
        .and_then(|h| h.as_str())
        .unwrap_or(req.path())
        .to_string();
    let params = params(req.query());
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let key = get("key").unwrap_or_default();
    let store_label = get("store").unwrap_or_else(|| "default".to_string());
    if let Some(op) = path.strip_prefix("/kv/") {
        let store = match Store::open(&store_label) {
            Ok(s) => s,
            Err(e) => return Ok(fail(e)),
        };
        return Ok(match op {
            "set" => match store.set(&key, get("value").unwrap_or_default().as_bytes()) {
                Ok(()) => reply(200, "ok".into()),
                Err(e) => fail(e),
            },
            "big" => {
                let size: usize = get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
                match store.set(&key, &vec![b'x'; size]) {
                    Ok(()) => reply(200, "ok".into()),
                    Err(e) => fail(e),
                }
            }
            "get" => match store.get(&key) {
                Ok(Some(v)) => reply(200, String::from_utf8_lossy(&v).into_owned()),
                Ok(None) => reply(404, "none".into()),
                Err(e) => fail(e),
            },
            "delete" => match store.delete(&key) {
                Ok(()) => reply(200, "ok".into()),
                Err(e) => fail(e),
            },
            "exists" => match store.exists(&key) {
                Ok(b) => reply(200, b.to_string()),
                Err(e) => fail(e),
            },
            "keys" => match store.get_keys() {
                Ok(mut keys) => {
                    keys.sort();
                    reply(200, keys.iter().map(|k| format!("{k}\n")).collect())
                }
                Err(e) => fail(e),
            },
            _ => reply(404, "no such route".into()),
        });
    }
    if let Some(op) = path.strip_prefix("/wkv/") {
        let bucket = match wasi::open(&store_label) {
            Ok(b) => b,
            Err(e) => return Ok(fail(e)),
        };
        return Ok(match op {
            "set" => match bucket.set(&key, get("value").unwrap_or_default().as_bytes()) {
                Ok(()) => reply(200, "ok".into()),
                Err(e) => fail(e),
            },
            "get" => match bucket.get(&key) {
                Ok(Some(v)) => reply(200, String::from_utf8_lossy(&v).into_owned()),
                Ok(None) => reply(404, "none".into()),
                Err(e) => fail(e),
            },
            "keys" => match bucket.list_keys(None) {
                Ok(r) => {
                    let mut keys = r.keys;
                    keys.sort();
                    reply(200, keys.iter().map(|k| format!("{k}\n")).collect())
                }
                Err(e) => fail(e),
            },
            "many" => {
                let n: usize = get("n").and_then(|s| s.parse().ok()).unwrap_or(1);
                match batch::get_many(&bucket, &vec![key.clone(); n]) {
                    Ok(values) => {
                        let total: usize = values.iter().filter_map(|(_, v)| v.as_ref()).map(Vec::len).sum();
                        reply(200, total.to_string())
                    }
                    Err(e) => fail(e),
                }
            }
            "incr" => {
                let by: i64 = get("by").and_then(|s| s.parse().ok()).unwrap_or(1);
                match atomics::increment(&bucket, &key, by) {
                    Ok(n) => reply(200, n.to_string()),
                    Err(e) => fail(e),
                }
            }
            "cashoard" => {
                // Holds `n` compare-and-swap handles on `key` at once.
                let n: usize = get("n").and_then(|s| s.parse().ok()).unwrap_or(1);
                let mut held = Vec::new();
                for _ in 0..n {
                    match atomics::Cas::new(&bucket, &key) {
                        Ok(c) => held.push(c),
                        Err(e) => return Ok(fail(e)),
                    }
                }
                reply(200, format!("held {}", held.len()))
            }
            "cas" => {
                let cas = match atomics::Cas::new(&bucket, &key) {
                    Ok(c) => c,
                    Err(e) => return Ok(fail(e)),
                };
                let current = cas.current().ok().flatten();
                if current.as_deref() != get("from").as_ref().map(|s| s.as_bytes()) {
                    return Ok(reply(409, "changed".into()));
                }
                match atomics::swap(cas, get("to").unwrap_or_default().as_bytes()) {
                    Ok(()) => reply(200, "swapped".into()),
                    Err(atomics::CasError::CasFailed(_)) => reply(409, "cas failed".into()),
                    Err(e) => fail(e),
                }
            }
            _ => reply(404, "no such route".into()),
        });
    }
    if path == "/sqlite/exec" {
        let db = get("db").unwrap_or_else(|| "default".to_string());
        let conn = match Connection::open(&db) {
            Ok(c) => c,
            Err(e) => return Ok(fail(e)),
        };
        let values: Vec<Value> = params
            .iter()
            .filter(|(k, _)| k == "p")
            .map(|(_, v)| match v.parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => Value::Text(v.clone()),
            })
            .collect();
        return Ok(
            match conn.execute(&get("sql").unwrap_or_default(), &values) {
                Ok(r) => {
                    let mut out = r.columns.join("|");
                    out.push('\n');
                    for row in &r.rows {
                        let cells: Vec<String> = row.values.iter().map(show).collect();
                        out.push_str(&cells.join("|"));
                        out.push('\n');
                    }
                    reply(200, out)
                }
                Err(e) => fail(e),
            },
        );
    }
    if path == "/sqlite3/exec" {
        // Spin 3's interface: what the statement did on this connection.
        use spin_sdk::sqlite3::Connection;
        let conn = match Connection::open(&get("db").unwrap_or_else(|| "default".to_string())) {
            Ok(c) => c,
            Err(e) => return Ok(fail(e)),
        };
        return Ok(match conn.execute(&get("sql").unwrap_or_default(), &[]) {
            Ok(r) => reply(
                200,
                format!(
                    "rows={} rowid={} changes={}",
                    r.rows.len(),
                    conn.last_insert_rowid(),
                    conn.changes()
                ),
            ),
            Err(e) => fail(e),
        });
    }
    Ok(reply(404, "no such route".into()))
}
