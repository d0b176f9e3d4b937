//! Paths under the component's route (`spin-path-info`), parameters in the query string:
//! `GET /get/NAME`: `spin_sdk::variables::get(NAME)` (spin:variables/variables@3.0.0): 200 and
//! the value.
//! `/kv/set?store=&key=&value=`, `/kv/get?store=&key=` (404 for none), `/kv/delete`,
//! `/kv/exists` (`true`/`false`), `/kv/keys` (read from the stream one at a time, then its
//! result; one key a line, sorted): `spin_sdk::key_value` (spin:key-value/key-value@3.0.0);
//! `store` defaults to `default`.
//! `/sqlite/exec?db=&sql=&p=...`: one statement through `spin_sdk::sqlite`
//! (spin:sqlite/sqlite@3.1.0, `execute-async`) with the `p` parameters, each typed as the
//! values are shown (`i:1`, `r:1.5`, `t:text`, `b:HEX`, `null`); `db` defaults to `default`.
//! The answer: the columns, one row a line (values `|`-separated, blobs as `b:HEX`), then
//! `rowid=N changes=N` (the connection's `last-insert-rowid` and `changes`).
//! `/redis?address=&key=&value=`: sets KEY to VALUE and reads it back through `spin_sdk::redis`
//! (spin:redis/redis@3.0.0) at the `redis://` ADDRESS; 200 and the value read.
//! `/mqtt?address=&topic=&payload=`: publishes PAYLOAD to TOPIC (QoS 1) through
//! `spin_sdk::mqtt` (spin:mqtt/mqtt@3.0.0) at the `mqtt://` ADDRESS; 200 and `published`.
//! `/sqlite/hoard?sql=&n=`: runs the statement `n` times, keeping every answer's rows unread
//! (`held N`).
//! `/pg/types?address=`: through `spin_sdk::pg` (spin:postgres/postgres@4.2.0) at the connection
//! string ADDRESS, makes a table with a column of each type Spin's 4.2 package names, inserts a
//! row whose every value is a parameter and another of NULLs, and answers each column as
//! `name TYPE: VALUE | VALUE` (`{:?}`), then `rows=N` (the insert's count).
//! `/pg/exec?address=&sql=`: one statement; 200 and the rows it changed.
//! Every error is 500 with the error as the SDK reports it (`{:?}`).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn show(v: &Value) -> String {
    match v {
        Value::Integer(i) => format!("i:{i}"),
        Value::Real(r) => format!("r:{r}"),
        Value::Text(t) => format!("t:{t}"),
        Value::Blob(b) => format!("b:{}", hex(b)),
        Value::Null => "null".to_string(),
    }
}

/// A parameter as `show` writes it.
fn parse(p: &str) -> Option<Value> {
    if p == "null" {
        return Some(Value::Null);
    }
    let (kind, v) = p.split_once(':')?;
    Some(match kind {
        "i" => Value::Integer(v.parse().ok()?),
        "r" => Value::Real(v.parse().ok()?),
        "t" => Value::Text(v.to_string()),
        "b" => Value::Blob(unhex(v)?),
        _ => return None,
    })
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

async fn sqlite(
    params: &[(String, String)],
    get: impl Fn(&str) -> Option<String>,
) -> (u16, String) {
    let mut values = Vec::new();
    for (_, p) in params.iter().filter(|(k, _)| k == "p") {
        match parse(p) {
            Some(v) => values.push(v),
            None => return (400, format!("bad parameter {p:?}")),
        }
    }
    let conn = match Connection::open(get("db").unwrap_or_else(|| "default".into())).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let result = match conn.execute(get("sql").unwrap_or_default(), values).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut out = result.columns().join("|");
    out.push('\n');
    let rows = match result.collect().await {
        Ok(rows) => rows,
        Err(e) => return fail(e),
    };
    for row in &rows {
        let cells: Vec<String> = row.values.iter().map(show).collect();
        out.push_str(&cells.join("|"));
        out.push('\n');
    }
    out.push_str(&format!(
        "rowid={} changes={}",
        conn.last_insert_rowid().await,
        conn.changes().await
    ));
    (200, out)
}

async fn redis(get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    let conn = match spin_sdk::redis::Connection::open(get("address").unwrap_or_default()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let key = get("key").unwrap_or_default();
    if let Err(e) = conn.set(&key, get("value").unwrap_or_default()).await {
        return fail(e);
    }
    match conn.get(&key).await {
        Ok(Some(v)) => (200, String::from_utf8_lossy(&v).into_owned()),
        Ok(None) => (404, "none".into()),
        Err(e) => fail(e),
    }
}

async fn mqtt(get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    use spin_sdk::mqtt::{Connection, Qos};
    let conn = match Connection::open(get("address").unwrap_or_default(), "", "", 30).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let payload = get("payload").unwrap_or_default().into_bytes();
    match conn
        .publish(get("topic").unwrap_or_default(), payload, Qos::AtLeastOnce)
        .await
    {
        Ok(()) => (200, "published".into()),
        Err(e) => fail(e),
    }
}

async fn hoard(get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    let conn = match Connection::open("default").await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let n: usize = get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    let sql = get("sql").unwrap_or_default();
    let mut held = Vec::new();
    for _ in 0..n {
        match conn.execute(&sql, []).await {
            Ok(r) => held.push(r),
            Err(e) => return fail(e),
        }
    }
    (200, format!("held {}", held.len()))
}

async fn pg_types(get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    use spin_sdk::pg::{Connection, Interval, ParameterValue as P, RangeBoundKind as K};
    let conn = match Connection::open(get("address").unwrap_or_default()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let columns = [
        ("b", "boolean", P::Boolean(true)),
        ("i2", "smallint", P::Int16(-2)),
        ("i4", "integer", P::Int32(40_000)),
        ("i8", "bigint", P::Int64(-5_000_000_000)),
        ("f4", "real", P::Floating32(1.5)),
        ("f8", "double precision", P::Floating64(-2.25)),
        ("s", "text", P::Str("héllo".into())),
        ("bin", "bytea", P::Binary(vec![0, 1, 255])),
        ("d", "date", P::Date((2024, 2, 29))),
        ("t", "time", P::Time((19, 5, 7, 123_456_000))),
        ("dt", "timestamp", P::Datetime((1999, 12, 31, 23, 59, 59, 500_000_000))),
        ("ts", "timestamptz", P::Timestamp(1_700_000_000)),
        ("u", "uuid", P::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".into())),
        ("j", "jsonb", P::Jsonb(br#"{"a": [1, 2]}"#.to_vec())),
        ("n", "numeric", P::Decimal("-12345.0678".into())),
        ("r4", "int4range", P::RangeInt32((Some((1, K::Inclusive)), Some((5, K::Exclusive))))),
        ("r8", "int8range", P::RangeInt64((Some((-3, K::Inclusive)), None))),
        (
            "rn",
            "numrange",
            P::RangeDecimal((Some(("0.5".into(), K::Inclusive)), Some(("2.25".into(), K::Exclusive)))),
        ),
        ("a4", "integer[]", P::ArrayInt32(vec![Some(1), None, Some(-3)])),
        ("a8", "bigint[]", P::ArrayInt64(vec![Some(1 << 40)])),
        ("an", "numeric[]", P::ArrayDecimal(vec![Some("1.5".into()), None])),
        ("ast", "text[]", P::ArrayStr(vec![Some("x".into()), None, Some("z".into())])),
        ("iv", "interval", P::Interval(Interval { micros: 1_500_000, days: 2, months: 3 })),
    ];
    let table = format!("types_{}", get("table").unwrap_or_else(|| "t".into()));
    let create = format!(
        "CREATE TABLE {table} ({})",
        columns
            .iter()
            .map(|(n, t, _)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Err(e) = conn.execute(create, []).await {
        return fail(e);
    }
    let names: Vec<&str> = columns.iter().map(|(n, _, _)| *n).collect();
    let holes: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        holes.join(", ")
    );
    let values: Vec<P> = columns.into_iter().map(|(_, _, v)| v).collect();
    let inserted = match conn.execute(insert.clone(), values.clone()).await {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let nulls: Vec<P> = values.iter().map(|_| P::DbNull).collect();
    if let Err(e) = conn.execute(insert, nulls).await {
        return fail(e);
    }
    let select = format!("SELECT {} FROM {table}", names.join(", "));
    let mut q = match conn.query(select, []).await {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let cols = q.columns().to_vec();
    let mut rows = Vec::new();
    while let Some(row) = q.rows().next().await {
        rows.push(row);
    }
    if let Err(e) = q.result().await {
        return fail(e);
    }
    let mut out = String::new();
    for (i, c) in cols.iter().enumerate() {
        let shown: Vec<String> = rows.iter().map(|r| format!("{:?}", r[i])).collect();
        out.push_str(&format!("{} {:?}: {}\n", c.name, c.data_type, shown.join(" | ")));
    }
    out.push_str(&format!("rows={inserted}"));
    (200, out)
}

async fn pg_exec(get: impl Fn(&str) -> Option<String>) -> (u16, String) {
    let conn = match spin_sdk::pg::Connection::open(get("address").unwrap_or_default()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match conn.execute(get("sql").unwrap_or_default(), []).await {
        Ok(n) => (200, n.to_string()),
        Err(e) => fail(e),
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
    } else if path == "/sqlite/exec" {
        sqlite(&params, get).await
    } else if path == "/pg/types" {
        pg_types(get).await
    } else if path == "/pg/exec" {
        pg_exec(get).await
    } else if path == "/redis" {
        redis(get).await
    } else if path == "/mqtt" {
        mqtt(get).await
    } else if path == "/sqlite/hoard" {
        hoard(get).await
    } else {
        (404, "no such route".to_string())
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body))
}
