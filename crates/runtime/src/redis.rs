//! Spin's outbound Redis for guests: `fermyon:spin/redis@2.0.0` (Spin 2's package, imported by
//! the Spin SDKs up to 5). `Connection.open(address)` takes a `redis://host[:port][/db]` URL
//! (credentials in it are used); it is allowed only if an `allowed_outbound_hosts` entry allows
//! `redis://host:port` (the port defaults to 6379), and the host's addresses pass the same
//! node-local rule as outbound HTTP ([`crate::outbound::checked_addresses`]). The connection
//! goes to a checked address, with the redis crate on tokio; `rediss://` (TLS) and Unix sockets
//! are refused. Each open connection counts as an outbound connection of its instance.
//!
//! A connection runs one command at a time, and a reply may be at most [`MAX_REPLY_BYTES`] on
//! the wire: a larger one fails the command and closes the connection, so an allowed server
//! (or a value a guest built up in it) cannot make the host hold more.
//!
//! The WIT is the Spin SDK's own (see build.rs). Spin 3's `spin:redis/redis@3.0.0` (SDKs 6
//! and 7) is not linked yet.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use redis::{ConnectionAddr, IntoConnectionInfo as _, Value};
use wasmtime::component::{Accessor, HasData, Linker, Resource, ResourceTable};
use wms_manifest::outbound::{AllowedHost, is_allowed, names_address};

use crate::descriptors::{OutboundPermit, OutboundSlots};
use crate::guest::HostState;
use crate::wt;

mod spin2 {
    spin_sdk_5_bindgen! {
        inline: "
            package wms:spin2-redis;
            world imports {
                import fermyon:spin/redis@2.0.0;
            }
        ",
        imports: { default: async },
        with: { "fermyon:spin/redis.connection": crate::redis::Connection },
    }
}

mod spin3 {
    spin_sdk_7_bindgen! {
        inline: "
            package wms:spin3-redis;
            world imports {
                import spin:redis/redis@3.0.0;
            }
        ",
        with: { "spin:redis/redis.connection": crate::redis::Connection },
    }
}

use spin2::fermyon::spin2_0_0::redis as v2;
use spin3::spin::redis::redis as v3;

/// How long opening a connection (resolving, connecting, the handshake) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes one reply may take on the wire (the same cap as a SQLite result's).
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// An open connection, as the guest's `connection` resource.
pub struct Connection {
    command: Command,
    _driver: tokio_util::task::AbortOnDropHandle<()>,
    _permit: OutboundPermit,
}

/// What runs one command on a connection: one at a time, its reply counted from zero.
#[derive(Clone)]
struct Command {
    conn: redis::aio::MultiplexedConnection,
    received: Arc<AtomicUsize>,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// The connection's socket, failing once the current command's reply passes
/// [`MAX_REPLY_BYTES`].
pub(crate) struct Capped {
    pub(crate) stream: tokio::net::TcpStream,
    /// Bytes received since the caller last set it to 0 (at each command).
    pub(crate) received: Arc<AtomicUsize>,
    /// The most it may reach.
    pub(crate) max: usize,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let n = buf.filled().len() - before;
            if self.received.fetch_add(n, Ordering::Relaxed) + n > self.max {
                return Poll::Ready(Err(std::io::Error::other(format!(
                    "a reply of more than {} MiB",
                    self.max >> 20
                ))));
            }
        }
        read
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connects to `addr` and sets the connection up as `info` says (password, database).
async fn connect(
    info: &redis::ConnectionInfo,
    addr: std::net::SocketAddr,
) -> Result<(Command, tokio_util::task::AbortOnDropHandle<()>), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let received = Arc::new(AtomicUsize::new(0));
    let capped = Capped {
        stream,
        received: received.clone(),
        max: MAX_REPLY_BYTES,
    };
    let (conn, driver) = redis::aio::MultiplexedConnection::new_with_config(
        info.redis_settings(),
        capped,
        redis::AsyncConnectionConfig::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let driver = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(driver));
    Ok((
        Command {
            conn,
            received,
            one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
        },
        driver,
    ))
}

/// Why a connection to an outbound data service (Redis, MQTT) is refused; logged already.
pub(crate) enum Refusal {
    /// Not allowed: the message says why.
    Denied(String),
    /// The host name does not resolve.
    Dns,
    /// The instance holds its limit of outbound connections.
    TooMany,
}

/// What the outbound data-service interfaces (Spin's Redis here, MQTT in `crate::mqtt`) see
/// of an instance.
#[derive(Clone)]
pub(crate) struct OutboundServices {
    pub(crate) component: Arc<str>,
    pub(crate) allowed: Arc<[AllowedHost]>,
    pub(crate) may_name_local_addresses: bool,
    pub(crate) slots: OutboundSlots,
}

pub(crate) struct RedisView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) state: &'a mut OutboundServices,
}

struct HasRedis;

impl HasData for HasRedis {
    type Data<'a> = RedisView<'a>;
}

fn other(e: impl std::fmt::Display) -> v2::Error {
    v2::Error::Other(e.to_string())
}

impl OutboundServices {
    fn deny(&self, address: &str, why: &str) -> v2::Error {
        tracing::warn!(component = %self.component, "Redis connection to {address} denied: {why}");
        v2::Error::Other(format!("connection to {address} denied: {why}"))
    }

    /// Admits a `what` connection (`Redis`, `MQTT`) to `scheme://host:port` (`shown` in
    /// messages, without credentials): an `allowed_outbound_hosts` entry allows it, its
    /// addresses pass the node-local rule (the checked ones are returned, to connect to), and
    /// the instance has an outbound connection to spare (the permit, held for the connection's
    /// life).
    pub(crate) async fn admit(
        &self,
        what: &str,
        scheme: &str,
        shown: &str,
        host: &str,
        port: u16,
    ) -> Result<(Vec<std::net::SocketAddr>, OutboundPermit), Refusal> {
        let deny = |why: String| {
            tracing::warn!(component = %self.component, "{what} connection to {shown} denied: {why}");
            Refusal::Denied(format!("connection to {shown} denied: {why}"))
        };
        if !is_allowed(&self.allowed, scheme, host, port) {
            return Err(deny(format!(
                "no allowed_outbound_hosts entry allows {scheme}://{host}:{port}"
            )));
        }
        let explicit =
            self.may_name_local_addresses && names_address(&self.allowed, scheme, host, port);
        let addrs = crate::outbound::checked_addresses(
            &self.component,
            host,
            port,
            explicit,
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            crate::outbound::Unusable::Dns(_) => Refusal::Dns,
            crate::outbound::Unusable::Local(why) => deny(format!(
                "{why}; only an allowed_outbound_hosts entry (of a local manifest) naming the address allows that"
            )),
        })?;
        let permit = self.slots.acquire().map_err(|denied| {
            tracing::warn!(component = %self.component, "{what} connection to {shown} refused: {}", denied.outbound_reason());
            Refusal::TooMany
        })?;
        Ok((addrs, permit))
    }

    async fn open(&self, address: &str) -> Result<Connection, v2::Error> {
        // The URL without credentials, for messages.
        let shown = match url_host(address) {
            Some(h) => h,
            None => return Err(v2::Error::InvalidAddress),
        };
        let info = address
            .into_connection_info()
            .map_err(|_| v2::Error::InvalidAddress)?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            ConnectionAddr::TcpTls { .. } => {
                return Err(self.deny(&shown, "rediss:// (TLS) is not supported by wms yet"));
            }
            _ => {
                return Err(self.deny(&shown, "Unix sockets are not reachable from guests"));
            }
        };
        let (addrs, permit) = self
            .admit("Redis", "redis", &shown, &host, port)
            .await
            .map_err(|r| match r {
                Refusal::Denied(why) => v2::Error::Other(why),
                Refusal::Dns => v2::Error::Other(format!("cannot resolve {host}")),
                Refusal::TooMany => v2::Error::TooManyConnections,
            })?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(&info, addr)).await {
                Ok(Ok((command, driver))) => {
                    return Ok(Connection {
                        command,
                        _driver: driver,
                        _permit: permit,
                    });
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(format!("no connection within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(v2::Error::Other(format!(
            "cannot connect to {shown}: {}",
            last.unwrap_or_else(|| "no address".into())
        )))
    }
}

/// `scheme://host:port` of a Redis URL, without user info or path; `None` if it is no URL.
fn url_host(address: &str) -> Option<String> {
    let (scheme, rest) = address.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("{scheme}://{host}"))
}

impl RedisView<'_> {
    /// Command `name` with `args` on the guest's connection `c`.
    fn command(
        &mut self,
        c: &Resource<Connection>,
        name: &str,
        args: impl redis::ToRedisArgs,
    ) -> Result<(Command, redis::Cmd), v2::Error> {
        // A multiplexed connection is a handle: a clone shares the connection.
        let command = self
            .table
            .get(c)
            .map(|c| c.command.clone())
            .map_err(other)?;
        let mut cmd = redis::cmd(name);
        cmd.arg(args);
        Ok((command, cmd))
    }
}

async fn query<T: redis::FromRedisValue>(
    (command, cmd): (Command, redis::Cmd),
) -> Result<T, v2::Error> {
    let _one = command.one_at_a_time.lock().await;
    command.received.store(0, Ordering::Relaxed);
    let mut conn = command.conn;
    cmd.query_async(&mut conn).await.map_err(|e| {
        if e.kind() == redis::ErrorKind::UnexpectedReturnType {
            v2::Error::TypeError
        } else {
            other(e)
        }
    })
}

impl v2::Host for RedisView<'_> {}

impl v2::HostConnection for RedisView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<Connection>, v2::Error> {
        let conn = self.state.open(&address).await?;
        self.table.push(conn).map_err(other)
    }

    async fn publish(
        &mut self,
        c: Resource<Connection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), v2::Error> {
        query::<i64>(self.command(&c, "PUBLISH", (channel, payload))?)
            .await
            .map(|_| ())
    }

    async fn get(
        &mut self,
        c: Resource<Connection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v2::Error> {
        query(self.command(&c, "GET", key)?).await
    }

    async fn set(
        &mut self,
        c: Resource<Connection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v2::Error> {
        query(self.command(&c, "SET", (key, value))?).await
    }

    async fn incr(&mut self, c: Resource<Connection>, key: String) -> Result<i64, v2::Error> {
        query(self.command(&c, "INCR", key)?).await
    }

    async fn del(&mut self, c: Resource<Connection>, keys: Vec<String>) -> Result<u32, v2::Error> {
        query(self.command(&c, "DEL", keys)?).await
    }

    async fn sadd(
        &mut self,
        c: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v2::Error> {
        query(self.command(&c, "SADD", (key, values))?).await
    }

    async fn smembers(
        &mut self,
        c: Resource<Connection>,
        key: String,
    ) -> Result<Vec<String>, v2::Error> {
        query(self.command(&c, "SMEMBERS", key)?).await
    }

    async fn srem(
        &mut self,
        c: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v2::Error> {
        query(self.command(&c, "SREM", (key, values))?).await
    }

    async fn execute(
        &mut self,
        c: Resource<Connection>,
        command: String,
        arguments: Vec<v2::RedisParameter>,
    ) -> Result<Vec<v2::RedisResult>, v2::Error> {
        let (conn, mut cmd) = self.command(&c, &command, Vec::<String>::new())?;
        for a in arguments {
            match a {
                v2::RedisParameter::Int64(i) => cmd.arg(i),
                v2::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: Value = query((conn, cmd)).await?;
        let mut out = Vec::new();
        flatten(value, &mut out)?;
        Ok(out)
    }

    async fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

/// A reply as Spin's `redis-result` list: arrays (and sets) flattened, as Spin does.
fn flatten(value: Value, out: &mut Vec<v2::RedisResult>) -> Result<(), v2::Error> {
    match value {
        Value::Nil => out.push(v2::RedisResult::Nil),
        Value::Int(i) => out.push(v2::RedisResult::Int64(i)),
        Value::BulkString(b) => out.push(v2::RedisResult::Binary(b)),
        Value::SimpleString(s) => out.push(v2::RedisResult::Status(s)),
        Value::Okay => out.push(v2::RedisResult::Status("OK".into())),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        Value::VerbatimString { text, .. } => out.push(v2::RedisResult::Binary(text.into_bytes())),
        Value::Double(d) => out.push(v2::RedisResult::Binary(d.to_string().into_bytes())),
        Value::Boolean(b) => out.push(v2::RedisResult::Int64(i64::from(b))),
        Value::ServerError(e) => return Err(other(format!("{e:?}"))),
        other_value => {
            return Err(v2::Error::Other(format!(
                "unsupported reply type: {other_value:?}"
            )));
        }
    }
    Ok(())
}

// Spin 3's package (the Spin SDKs 6 and 7): the same calls, async in the component model's
// sense; each runs the 2.0.0 implementation above without holding the store across its await.

impl From<v2::Error> for v3::Error {
    fn from(e: v2::Error) -> Self {
        match e {
            v2::Error::InvalidAddress => v3::Error::InvalidAddress,
            v2::Error::TooManyConnections => v3::Error::TooManyConnections,
            v2::Error::TypeError => v3::Error::TypeError,
            v2::Error::Other(m) => v3::Error::Other(m),
        }
    }
}

/// Command `name` with `args` on connection `c`, looked up in the store.
fn command_v3<T: 'static>(
    accessor: &Accessor<T, HasRedis>,
    c: &Resource<Connection>,
    name: &str,
    args: impl redis::ToRedisArgs,
) -> Result<(Command, redis::Cmd), v3::Error> {
    accessor.with(|mut access| access.get().command(c, name, args).map_err(Into::into))
}

async fn query_v3<T: redis::FromRedisValue>(
    command: Result<(Command, redis::Cmd), v3::Error>,
) -> Result<T, v3::Error> {
    query(command?).await.map_err(Into::into)
}

impl v3::Host for RedisView<'_> {}

impl v3::HostConnection for RedisView<'_> {
    fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl<T> v3::HostConnectionWithStore<T> for HasRedis {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Result<Resource<Connection>, v3::Error> {
        let services = accessor.with(|mut access| access.get().state.clone());
        let conn = services.open(&address).await?;
        accessor.with(|mut access| access.get().table.push(conn).map_err(|e| other(e).into()))
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), v3::Error> {
        query_v3::<i64>(command_v3(accessor, &c, "PUBLISH", (channel, payload)))
            .await
            .map(|_| ())
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v3::Error> {
        query_v3(command_v3(accessor, &c, "GET", key)).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v3::Error> {
        query_v3(command_v3(accessor, &c, "SET", (key, value))).await
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
    ) -> Result<i64, v3::Error> {
        query_v3(command_v3(accessor, &c, "INCR", key)).await
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        keys: Vec<String>,
    ) -> Result<u32, v3::Error> {
        query_v3(command_v3(accessor, &c, "DEL", keys)).await
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v3::Error> {
        query_v3(command_v3(accessor, &c, "SADD", (key, values))).await
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
    ) -> Result<Vec<String>, v3::Error> {
        query_v3(command_v3(accessor, &c, "SMEMBERS", key)).await
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v3::Error> {
        query_v3(command_v3(accessor, &c, "SREM", (key, values))).await
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        command: String,
        arguments: Vec<v3::RedisParameter>,
    ) -> Result<Vec<v3::RedisResult>, v3::Error> {
        let (conn, mut cmd) = command_v3(accessor, &c, &command, Vec::<String>::new())?;
        for a in arguments {
            match a {
                v3::RedisParameter::Int64(i) => cmd.arg(i),
                v3::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: Value = query((conn, cmd)).await?;
        let mut out = Vec::new();
        flatten(value, &mut out)?;
        Ok(out
            .into_iter()
            .map(|r| match r {
                v2::RedisResult::Nil => v3::RedisResult::Nil,
                v2::RedisResult::Status(s) => v3::RedisResult::Status(s),
                v2::RedisResult::Int64(i) => v3::RedisResult::Int64(i),
                v2::RedisResult::Binary(b) => v3::RedisResult::Binary(b),
            })
            .collect())
    }
}

/// Links `fermyon:spin/redis@2.0.0` and `spin:redis/redis@3.0.0`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v2::add_to_linker::<HostState, HasRedis>(linker, HostState::redis).map_err(wt)?;
    v3::add_to_linker::<HostState, HasRedis>(linker, HostState::redis).map_err(wt)
}
