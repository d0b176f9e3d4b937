//! Paths under the component's route (`spin-path-info`); ADDR is `host:port`:
//! `GET /tcp/ADDR`: connects (looking the host up if it is a name), sends `ping`, and answers
//! 200 with what came back before the peer closed, or 502 and the error.
//! `GET /udp/ADDR`: from a socket bound to `0.0.0.0:0`, sends `ping` and answers 200 with the
//! first datagram back, or 502 and the error.
//! `GET /lookup/NAME`: 200 and NAME's addresses, one a line, or 502 and the error.
//! `GET /lookups/NAME/N`: starts N lookups at once (of `h0.NAME`, `h1.NAME`, ...) and drops
//! them unfinished: 200 and `started N`, or 502 and the error of the first refused.
//! `GET /listen/ADDR`: binds a TCP listener: 200 if that worked, or 502 and the error.
//! `POST /redis/ADDRESS_VAR/KEY`, body VALUE: Spin 2's Redis (`fermyon:spin/redis@2.0.0`) at
//! the URL in variable ADDRESS_VAR: SET KEY VALUE, then GET KEY; 200 and what GET returned, or
//! 502 and the error.
//! `POST /mqtt/ADDRESS_VAR/TOPIC`, body PAYLOAD: Spin 2's MQTT (`fermyon:spin/mqtt@2.0.0`) at the
//! URL in variable ADDRESS_VAR: publishes PAYLOAD to TOPIC at QoS 1; 200 `published`, or 502
//! and the error.
//! `POST /pg/ADDRESS_VAR`: Spin 2's PostgreSQL (`fermyon:spin/postgres@2.0.0`) at the connection
//! string in variable ADDRESS_VAR: creates table `people` if needed, inserts (1, 'ann', NULL)
//! with parameters, and answers 200 with the rows of `SELECT id, name, photo FROM people`: the
//! columns then one row a line, values as the SDK shows them (`DbValue::Int32(1)`), or 502 and the error.
//! `POST /pg-big/ADDRESS_VAR/SIZE`: `SELECT repeat('x', SIZE)` there: 200 and the length of the
//! value that came back, or 502 and the error.
//! `POST /redis-big/ADDRESS_VAR/KEY/SIZE`: makes KEY a value of SIZE bytes in the server
//! (`SETRANGE`, through `execute`), then GET KEY: 200 and the length GET returned, or 502 and
//! the error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

fn reply(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build()
}

fn io_reply(result: std::io::Result<String>) -> Response {
    match result {
        Ok(body) => reply(200, body),
        Err(e) => reply(502, format!("{:?}: {e}", e.kind())),
    }
}

fn tcp(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"ping")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut back = String::new();
    stream.read_to_string(&mut back)?;
    Ok(back)
}

fn udp(addr: &str) -> std::io::Result<String> {
    // No read timeout: wasi-libc has none for UDP (ENOPROTOOPT); the request's timeout bounds
    // the wait.
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.send_to(b"ping", addr)?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn lookup(name: &str) -> std::io::Result<String> {
    let addrs: Vec<String> = (name, 0)
        .to_socket_addrs()?
        .map(|a| format!("{}\n", a.ip()))
        .collect();
    Ok(addrs.concat())
}

fn lookups(arg: &str) -> std::io::Result<String> {
    use wasip2::sockets::{instance_network::instance_network, ip_name_lookup};
    let bad = || std::io::Error::other("use /lookups/NAME/N");
    let (name, n) = arg.rsplit_once('/').ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    let network = instance_network();
    let mut started = Vec::new();
    for i in 0..n {
        match ip_name_lookup::resolve_addresses(&network, &format!("h{i}.{name}")) {
            Ok(s) => started.push(s),
            Err(e) => return Err(std::io::Error::other(format!("lookup {i}: {e:?}"))),
        }
    }
    Ok(format!("started {}", started.len()))
}

fn listen(addr: &str) -> std::io::Result<String> {
    let listener = TcpListener::bind(addr)?;
    Ok(format!("listening on {}", listener.local_addr()?))
}

fn redis(address_var: &str, key: &str, value: Vec<u8>) -> Result<String, String> {
    use spin_sdk::redis::Connection;
    let address = spin_sdk::variables::get(address_var).map_err(|e| format!("{e:?}"))?;
    let conn = Connection::open(&address).map_err(|e| format!("open: {e:?}"))?;
    conn.set(key, &value).map_err(|e| format!("set: {e:?}"))?;
    match conn.get(key).map_err(|e| format!("get: {e:?}"))? {
        Some(v) => Ok(String::from_utf8_lossy(&v).into_owned()),
        None => Err("get: no value".to_string()),
    }
}

fn mqtt(address_var: &str, topic: &str, payload: Vec<u8>) -> Result<String, String> {
    use spin_sdk::mqtt::{Connection, Qos};
    let address = spin_sdk::variables::get(address_var).map_err(|e| format!("{e:?}"))?;
    let conn = Connection::open(&address, "", "", 30).map_err(|e| format!("open: {e:?}"))?;
    conn.publish(topic, &payload, Qos::AtLeastOnce)
        .map_err(|e| format!("publish: {e:?}"))?;
    Ok("published".to_string())
}

fn pg(address_var: &str) -> Result<String, String> {
    use spin_sdk::pg::{Connection, ParameterValue};
    let address = spin_sdk::variables::get(address_var).map_err(|e| format!("{e:?}"))?;
    let conn = Connection::open(&address).map_err(|e| format!("open: {e:?}"))?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS people (id integer, name text, photo bytea)",
        &[],
    )
    .map_err(|e| format!("create: {e:?}"))?;
    conn.execute(
        "INSERT INTO people VALUES ($1, $2, $3)",
        &[
            ParameterValue::Int32(1),
            ParameterValue::Str("ann".to_string()),
            ParameterValue::DbNull,
        ],
    )
    .map_err(|e| format!("insert: {e:?}"))?;
    let rows = conn
        .query("SELECT id, name, photo FROM people", &[])
        .map_err(|e| format!("query: {e:?}"))?;
    let mut out: Vec<String> = vec![rows
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect::<Vec<_>>()
        .join("|")];
    for row in &rows.rows {
        out.push(
            row.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join("|"),
        );
    }
    Ok(out.join("\n"))
}

fn pg_big(address_var: &str, size: i32) -> Result<String, String> {
    use spin_sdk::pg::{Connection, DbValue, ParameterValue};
    let address = spin_sdk::variables::get(address_var).map_err(|e| format!("{e:?}"))?;
    let conn = Connection::open(&address).map_err(|e| format!("open: {e:?}"))?;
    let rows = conn
        .query("SELECT repeat('x', $1)", &[ParameterValue::Int32(size)])
        .map_err(|e| format!("query: {e:?}"))?;
    match rows.rows.first().and_then(|r| r.first()) {
        Some(DbValue::Str(s)) => Ok(s.len().to_string()),
        other => Err(format!("unexpected {other:?}")),
    }
}

fn redis_big(address_var: &str, key: &str, size: i64) -> Result<String, String> {
    use spin_sdk::redis::{Connection, RedisParameter};
    let address = spin_sdk::variables::get(address_var).map_err(|e| format!("{e:?}"))?;
    let conn = Connection::open(&address).map_err(|e| format!("open: {e:?}"))?;
    conn.execute(
        "SETRANGE",
        &[
            RedisParameter::Binary(key.as_bytes().to_vec()),
            RedisParameter::Int64(size - 1),
            RedisParameter::Binary(b"x".to_vec()),
        ],
    )
    .map_err(|e| format!("setrange: {e:?}"))?;
    match conn.get(key).map_err(|e| format!("get: {e:?}"))? {
        Some(v) => Ok(v.len().to_string()),
        None => Err("get: no value".to_string()),
    }
}

/// A route's work: its argument (the path after its prefix) to the reply's text.
type Route = fn(&str) -> std::io::Result<String>;

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req
        .header("spin-path-info")
        .and_then(|h| h.as_str())
        .unwrap_or(req.path())
        .to_string();
    let routes: [(&str, Route); 5] = [
        ("/tcp/", tcp),
        ("/udp/", udp),
        ("/lookup/", lookup),
        ("/lookups/", lookups),
        ("/listen/", listen),
    ];
    for (prefix, route) in routes {
        if let Some(arg) = path.strip_prefix(prefix) {
            return Ok(io_reply(route(arg)));
        }
    }
    if let Some(rest) = path.strip_prefix("/pg-big/") {
        let Some((var, size)) = rest.split_once('/') else {
            return Ok(reply(400, "use /pg-big/ADDRESS_VAR/SIZE".to_string()));
        };
        let Ok(size) = size.parse::<i32>() else {
            return Ok(reply(400, "SIZE is a number".to_string()));
        };
        return Ok(match pg_big(var, size) {
            Ok(v) => reply(200, v),
            Err(e) => reply(502, e),
        });
    }
    if let Some(var) = path.strip_prefix("/pg/") {
        return Ok(match pg(var) {
            Ok(v) => reply(200, v),
            Err(e) => reply(502, e),
        });
    }
    if let Some(rest) = path.strip_prefix("/mqtt/") {
        let Some((var, topic)) = rest.split_once('/') else {
            return Ok(reply(400, "use /mqtt/ADDRESS_VAR/TOPIC".to_string()));
        };
        return Ok(match mqtt(var, topic, req.body().to_vec()) {
            Ok(v) => reply(200, v),
            Err(e) => reply(502, e),
        });
    }
    if let Some(rest) = path.strip_prefix("/redis-big/") {
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        let [var, key, size] = parts[..] else {
            return Ok(reply(400, "use /redis-big/ADDRESS_VAR/KEY/SIZE".to_string()));
        };
        let Ok(size) = size.parse::<i64>() else {
            return Ok(reply(400, "SIZE is a number".to_string()));
        };
        return Ok(match redis_big(var, key, size) {
            Ok(v) => reply(200, v),
            Err(e) => reply(502, e),
        });
    }
    if let Some(rest) = path.strip_prefix("/redis/") {
        let Some((var, key)) = rest.split_once('/') else {
            return Ok(reply(400, "use /redis/ADDRESS_VAR/KEY".to_string()));
        };
        return Ok(match redis(var, key, req.body().to_vec()) {
            Ok(v) => reply(200, v),
            Err(e) => reply(502, e),
        });
    }
    Ok(reply(404, "no such route".to_string()))
}
