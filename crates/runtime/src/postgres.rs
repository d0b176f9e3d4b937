//! Spin's outbound PostgreSQL for guests: `fermyon:spin/postgres@2.0.0` (the Spin SDKs up to 5:
//! `spin_sdk::pg`). `Connection.open(address)` takes a libpq connection string
//! (`host=... port=... user=... dbname=...`) or a `postgres://` URL; it is allowed only if an
//! `allowed_outbound_hosts` entry allows `postgres://host:port` (port 5432 by default), and the
//! host's addresses pass the same node-local rule as outbound HTTP. The connection, with
//! tokio-postgres, goes to a checked address, without TLS (`sslmode=require` fails); Unix
//! sockets are refused. Each open connection counts as an outbound connection of its instance.
//! A connection runs one statement at a time; a query streams its rows and returns at most
//! [`MAX_RESULT_ROWS`] rows and [`MAX_RESULT_BYTES`] bytes of values (more is an error), and
//! what the server sends for one statement is capped at [`MAX_WIRE_BYTES`] (a single row past
//! it fails the statement and closes the connection, before the host holds it).
//!
//! The WIT is the Spin SDK's own (see build.rs).

use futures::StreamExt as _;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::descriptors::OutboundPermit;
use crate::guest::HostState;
use crate::redis::{CONNECT_TIMEOUT, OutboundServices, Refusal};
use crate::wt;

mod spin2 {
    spin_sdk_5_bindgen! {
        inline: "
            package wms:spin2-postgres;
            world imports {
                import fermyon:spin/postgres@2.0.0;
            }
        ",
        imports: { default: async },
        with: { "fermyon:spin/postgres.connection": crate::postgres::Connection },
    }
}

use spin2::fermyon::spin2_0_0::postgres as v2;
use spin2::fermyon::spin2_0_0::rdbms_types as types;

/// The most rows one query returns to a guest.
pub const MAX_RESULT_ROWS: usize = 100_000;
/// The most bytes of values one query returns to a guest.
pub const MAX_RESULT_BYTES: usize = 16 << 20;
/// The most bytes the server may send for one statement.
pub const MAX_WIRE_BYTES: usize = 32 << 20;

/// An open connection, as the guest's `connection` resource.
pub struct Connection {
    pub(crate) shared: std::sync::Arc<Shared>,
    _driver: tokio_util::task::AbortOnDropHandle<()>,
    _permit: OutboundPermit,
}

/// What a statement needs of a connection, shared so that no store borrow spans its await.
pub(crate) struct Shared {
    client: tokio_postgres::Client,
    /// What the server sent since the current statement began (see [`MAX_WIRE_BYTES`]).
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

pub(crate) struct PgView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) state: &'a mut OutboundServices,
    /// Where the instance's unread streams are counted (4.2's `query-async`).
    pub(crate) streams: crate::kv_host::StreamBudget,
}

pub(crate) struct HasPg;

impl HasData for HasPg {
    type Data<'a> = PgView<'a>;
}

/// SQL NULL for a parameter of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn param(p: types::ParameterValue) -> Result<Box<dyn ToSql + Send + Sync>, types::Error> {
    use types::ParameterValue as P;
    Ok(match p {
        P::Boolean(v) => Box::new(v),
        P::Int8(v) => Box::new(v),
        P::Int16(v) => Box::new(v),
        P::Int32(v) => Box::new(v),
        P::Int64(v) => Box::new(v),
        // PostgreSQL has no unsigned types: each is passed as the next wider signed one.
        P::Uint8(v) => Box::new(i16::from(v)),
        P::Uint16(v) => Box::new(i32::from(v)),
        P::Uint32(v) => Box::new(i64::from(v)),
        P::Uint64(v) => Box::new(i64::try_from(v).map_err(|_| {
            types::Error::BadParameter(format!("{v} does not fit PostgreSQL's bigint"))
        })?),
        P::Floating32(v) => Box::new(v),
        P::Floating64(v) => Box::new(v),
        P::Str(v) => Box::new(v),
        P::Binary(v) => Box::new(v),
        P::DbNull => Box::new(Null),
    })
}

fn data_type(t: &Type) -> types::DbDataType {
    use types::DbDataType as D;
    match *t {
        Type::BOOL => D::Boolean,
        Type::CHAR => D::Int8,
        Type::INT2 => D::Int16,
        Type::INT4 => D::Int32,
        Type::INT8 => D::Int64,
        Type::FLOAT4 => D::Floating32,
        Type::FLOAT8 => D::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => D::Str,
        Type::BYTEA => D::Binary,
        _ => D::Other,
    }
}

/// Column `i` of `row` as Spin's `db-value`, and its size for the result cap.
fn value(row: &tokio_postgres::Row, i: usize) -> Result<(types::DbValue, usize), String> {
    use types::DbValue as V;
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get(i).map_err(|e| e.to_string())
    }
    let t = row.columns()[i].type_().clone();
    let v = match t {
        Type::BOOL => get::<bool>(row, i)?.map(V::Boolean),
        Type::CHAR => get::<i8>(row, i)?.map(V::Int8),
        Type::INT2 => get::<i16>(row, i)?.map(V::Int16),
        Type::INT4 => get::<i32>(row, i)?.map(V::Int32),
        Type::INT8 => get::<i64>(row, i)?.map(V::Int64),
        Type::FLOAT4 => get::<f32>(row, i)?.map(V::Floating32),
        Type::FLOAT8 => get::<f64>(row, i)?.map(V::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            get::<String>(row, i)?.map(V::Str)
        }
        Type::BYTEA => get::<Vec<u8>>(row, i)?.map(V::Binary),
        _ => Some(V::Unsupported),
    };
    let v = v.unwrap_or(V::DbNull);
    let size = match &v {
        V::Str(s) => s.len(),
        V::Binary(b) => b.len(),
        _ => 8,
    };
    Ok((v, size))
}

impl OutboundServices {
    /// Opens a connection to the server `address` names; the error is the `connection-failed`
    /// message.
    pub(crate) async fn open_pg(&self, address: &str) -> Result<Connection, String> {
        let config: tokio_postgres::Config = address
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            [] => return Err("the connection string names no host".into()),
            [tokio_postgres::config::Host::Tcp(_), ..] => {
                return Err("wms connects to one host; name one".into());
            }
            _ => return Err("Unix sockets are not reachable from guests".into()),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!("postgres://{host}:{port}");
        let (addrs, permit) = self
            .admit("PostgreSQL", "postgres", &shown, &host, port)
            .await
            .map_err(|r| match r {
                Refusal::Denied(why) => why,
                Refusal::Dns => format!("cannot resolve {host}"),
                Refusal::TooMany => "too many outbound connections (the instance's 64, or its component's max_outbound_connections; the log says which): close one first".to_string(),
            })?;
        let mut last = None;
        for addr in addrs {
            let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let connect = async {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let capped = crate::redis::Capped {
                    stream,
                    received: received.clone(),
                    max: MAX_WIRE_BYTES,
                };
                config
                    .connect_raw(capped, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok((client, connection))) => {
                    let driver =
                        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                            let _ = connection.await;
                        }));
                    return Ok(Connection {
                        shared: std::sync::Arc::new(Shared {
                            client,
                            received,
                            one_at_a_time: tokio::sync::Mutex::new(()),
                        }),
                        _driver: driver,
                        _permit: permit,
                    });
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(format!("no connection within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(format!(
            "cannot connect to {shown}: {}",
            last.unwrap_or_else(|| "no address".into())
        ))
    }
}

impl Shared {
    /// Why a statement failed: the server's error, or a message (the wire cap's when the server
    /// sent more than it).
    pub(crate) fn failure(&self, e: tokio_postgres::Error) -> Failed {
        if self.received.load(std::sync::atomic::Ordering::Relaxed) > MAX_WIRE_BYTES {
            return Failed::Text(format!(
                "the server sent more than {} MiB for one statement (a reply of more than {} MiB), and the connection was closed; select less",
                MAX_WIRE_BYTES >> 20,
                MAX_WIRE_BYTES >> 20
            ));
        }
        match e.as_db_error() {
            Some(db) => Failed::Db(Box::new(db.clone())),
            None => Failed::Text(e.to_string()),
        }
    }

    /// Runs a query within the result caps, each column and value made by `column` and `value`
    /// (a value's size counts against [`MAX_RESULT_BYTES`]).
    pub(crate) async fn rows<C, V>(
        &self,
        statement: &str,
        params: &[Box<dyn ToSql + Send + Sync>],
        column: impl Fn(&tokio_postgres::Column) -> C,
        value: impl Fn(&tokio_postgres::Row, usize) -> Result<(V, usize), String>,
    ) -> Result<(Vec<C>, Vec<Vec<V>>, usize), RowsFailed> {
        let _one = self.begin().await;
        let stream = self
            .client
            .query_raw(statement, params.iter().map(|p| p.as_ref() as &dyn ToSql))
            .await
            .map_err(|e| RowsFailed::Query(self.failure(e)))?;
        let mut stream = std::pin::pin!(stream);
        let mut columns = None;
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| RowsFailed::Query(self.failure(e)))?;
            if rows.len() == MAX_RESULT_ROWS {
                return Err(RowsFailed::Query(Failed::Text(format!(
                    "the result holds more than {MAX_RESULT_ROWS} rows; select less"
                ))));
            }
            if columns.is_none() {
                columns = Some(row.columns().iter().map(&column).collect::<Vec<_>>());
            }
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let (v, size) = value(&row, i).map_err(RowsFailed::Conversion)?;
                bytes += size;
                if bytes > MAX_RESULT_BYTES {
                    return Err(RowsFailed::Query(Failed::Text(format!(
                        "the result holds more than {MAX_RESULT_BYTES} bytes; select less"
                    ))));
                }
                values.push(v);
            }
            rows.push(values);
        }
        // A query with no rows: its columns from the prepared statement.
        let columns = match columns {
            Some(c) => c,
            None => self
                .client
                .prepare(statement)
                .await
                .map_err(|e| RowsFailed::Query(self.failure(e)))?
                .columns()
                .iter()
                .map(&column)
                .collect(),
        };
        Ok((columns, rows, bytes))
    }

    /// Runs a statement; the rows it changed.
    pub(crate) async fn execute(
        &self,
        statement: &str,
        params: &[Box<dyn ToSql + Send + Sync>],
    ) -> Result<u64, Failed> {
        let _one = self.begin().await;
        self.client
            .execute_raw(statement, params.iter().map(|p| p.as_ref() as &dyn ToSql))
            .await
            .map_err(|e| self.failure(e))
    }

    /// Starts a statement: the connection's own, its server's bytes counted from 0.
    async fn begin(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.one_at_a_time.lock().await;
        self.received.store(0, std::sync::atomic::Ordering::Relaxed);
        guard
    }
}

fn params(
    params: Vec<types::ParameterValue>,
) -> Result<Vec<Box<dyn ToSql + Send + Sync>>, types::Error> {
    params.into_iter().map(param).collect()
}

/// Why a statement failed.
pub(crate) enum Failed {
    Text(String),
    Db(Box<tokio_postgres::error::DbError>),
}

/// Why a query failed: the statement, or a value that could not be converted.
pub(crate) enum RowsFailed {
    Query(Failed),
    Conversion(String),
}

impl PgView<'_> {
    fn connection(&self, c: &Resource<Connection>) -> Result<std::sync::Arc<Shared>, types::Error> {
        self.table
            .get(c)
            .map(|c| c.shared.clone())
            .map_err(|e| types::Error::Other(e.to_string()))
    }
}

impl v2::Host for PgView<'_> {}

impl v2::HostConnection for PgView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<Connection>, types::Error> {
        let conn = self
            .state
            .open_pg(&address)
            .await
            .map_err(types::Error::ConnectionFailed)?;
        self.table
            .push(conn)
            .map_err(|e| types::Error::Other(e.to_string()))
    }

    async fn query(
        &mut self,
        c: Resource<Connection>,
        statement: String,
        params: Vec<types::ParameterValue>,
    ) -> Result<types::RowSet, types::Error> {
        let params = self::params(params)?;
        let conn = self.connection(&c)?;
        let column = |c: &tokio_postgres::Column| types::Column {
            name: c.name().to_string(),
            data_type: data_type(c.type_()),
        };
        match conn.rows(&statement, &params, column, value).await {
            Ok((columns, rows, _)) => Ok(types::RowSet { columns, rows }),
            Err(RowsFailed::Conversion(m)) => Err(types::Error::ValueConversionFailed(m)),
            Err(RowsFailed::Query(Failed::Text(m))) => Err(types::Error::QueryFailed(m)),
            Err(RowsFailed::Query(Failed::Db(db))) => {
                Err(types::Error::QueryFailed(db.message().to_string()))
            }
        }
    }

    async fn execute(
        &mut self,
        c: Resource<Connection>,
        statement: String,
        params: Vec<types::ParameterValue>,
    ) -> Result<u64, types::Error> {
        let params = self::params(params)?;
        let conn = self.connection(&c)?;
        conn.execute(&statement, &params)
            .await
            .map_err(|f| match f {
                Failed::Text(m) => types::Error::QueryFailed(m),
                Failed::Db(db) => types::Error::QueryFailed(db.message().to_string()),
            })
    }

    async fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

/// Links `fermyon:spin/postgres@2.0.0`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v2::add_to_linker::<HostState, HasPg>(linker, HostState::postgres).map_err(wt)
}
