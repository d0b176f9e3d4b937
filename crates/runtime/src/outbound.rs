//! Outbound HTTP from guests: denied unless the destination matches the component's
//! `allowed_outbound_hosts`. The check sits in the `send_request` hook, so nothing leaves the
//! host for a denied request and the guest sees `HttpRequestDenied`, as under Spin.
//!
//! An allowed host name must not become a way into the node or its network: a name the guest
//! (or whoever controls its DNS) points at 127.0.0.1, 169.254.169.254 (the cloud metadata
//! service) or a private address is refused, unless an entry names that address itself
//! (`http://127.0.0.1:8080`), which is the operator saying so. The hook therefore resolves the
//! name itself, checks every address, and connects to a checked address: nothing resolves the
//! name a second time, so a DNS answer that changes between check and connect (rebinding) cannot
//! send the connection elsewhere. TLS (for `https`) then runs on that connection, verifying the
//! certificate for the host name, with the same rustls and webpki roots as wasmtime-wasi-http.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};
use wms_manifest::outbound::{AllowedHost, is_allowed, names_address};

pub(crate) struct OutboundPolicy {
    pub component: Arc<str>,
    pub allowed: Arc<[AllowedHost]>,
    /// Whether an entry naming an address may reach a loopback, link-local or private one: only
    /// in a local manifest (the operator's word); never from an image, whose manifest an
    /// untrusted publisher wrote.
    pub may_name_local_addresses: bool,
    /// Counts requests sent and denied.
    pub metrics: Option<Arc<crate::metrics::ComponentMetrics>>,
    /// The span outbound requests are children of, when traces are exported and the instance
    /// serves one request (see [`crate::trace`]).
    pub trace: Option<opentelemetry::Context>,
    /// Where requests to `NAME.spin.internal` and to the app itself go ([`crate::chain`]).
    pub chain: Arc<crate::chain::Chain>,
    /// The runtime config's `[[client_tls]]` tables.
    pub client_tls: Arc<[Arc<ClientTlsConfig>]>,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// Timeouts when the guest sets none (wasmtime-wasi-http's defaults).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let component = self.component.clone();
        let metrics = self.metrics.clone();
        let deny = move |what: String, error: HttpError| -> SendFuture {
            if let Some(m) = &metrics {
                m.outbound_denied.inc();
            }
            tracing::warn!(component = %component, "{what}");
            Box::new(async move { Err(error) })
        };
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(authority) = uri.authority() else {
            return deny(
                format!("outbound request to {uri} denied: no host"),
                HttpError::HttpRequestUriInvalid,
            );
        };
        // `user@host`: the credentials would go out in the Host header, and what the check sees
        // as the host is not what a resolver given the whole authority would; refused.
        if authority.as_str().contains('@') {
            return deny(
                format!(
                    "outbound request to {scheme}://{authority} denied: user info in the URL is not supported; send credentials in an Authorization header"
                ),
                HttpError::HttpRequestDenied,
            );
        }
        // `[::1]` for IPv6, as in the URL.
        let host = authority.host().to_string();
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        // Service chaining and requests to the app itself never reach the network.
        if wms_manifest::outbound::in_chaining_domain(&host) {
            let Some(target) = wms_manifest::outbound::chaining_target(&host) else {
                return deny(
                    format!(
                        "request to {scheme}://{host} failed: `spin.internal` names only an app's components, as `http://NAME.spin.internal`"
                    ),
                    HttpError::DestinationNotFound,
                );
            };
            if !self.allowed.iter().any(|a| a.allows_chaining_to(&target)) {
                return deny(
                    format!(
                        "request to http://{target}.spin.internal denied: chaining to component `{target}` needs `http://{target}.spin.internal` (or `http://*.spin.internal`) in allowed_outbound_hosts"
                    ),
                    HttpError::HttpRequestDenied,
                );
            }
            if scheme != "http" || authority.port_u16().is_some_and(|p| p != 80) {
                return deny(
                    format!(
                        "request to {scheme}://{target}.spin.internal denied: service chaining is addressed as http://{target}.spin.internal, without another scheme or port (it never leaves the process)"
                    ),
                    HttpError::HttpRequestDenied,
                );
            }
            if !self.chain.has_component(&target) {
                return deny(
                    format!(
                        "request to http://{target}.spin.internal failed: this app has no component `{target}`; chain to one of its [component.NAME] tables by that NAME"
                    ),
                    HttpError::DestinationNotFound,
                );
            }
            return self.chained(crate::chain::Target::Component(target), request, options);
        }
        if host.is_empty() || host.trim_end_matches('.').eq_ignore_ascii_case("self") {
            // A relative URL, as the Spin SDKs send it (`:80` or `:443` for the authority), or
            // `self` written out: the app itself, never a host named `self` on the network.
            if !self.allowed.iter().any(|a| a.allows_self(&scheme)) {
                return deny(
                    format!(
                        "request to the app itself ({}) denied: needs `{scheme}://self` in allowed_outbound_hosts",
                        request.uri().path()
                    ),
                    HttpError::HttpRequestDenied,
                );
            }
            return self.chained(crate::chain::Target::App, request, options);
        }
        if !is_allowed(&self.allowed, &scheme, &host, port) {
            return deny(
                format!(
                    "outbound request to {scheme}://{host}:{port} denied: not in allowed_outbound_hosts"
                ),
                HttpError::HttpRequestDenied,
            );
        }
        let explicit =
            self.may_name_local_addresses && names_address(&self.allowed, &scheme, &host, port);
        let component = self.component.clone();
        let metrics = self.metrics.clone();
        let client_tls = self.client_tls.clone();
        let span =
            crate::trace::client_span(self.trace.as_ref(), &mut request, &scheme, &host, port);
        let sending = async move {
            let connect_timeout = options
                .and_then(|o| o.connect_timeout)
                .unwrap_or(DEFAULT_TIMEOUT);
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let usable = match checked_addresses(&component, &host, port, explicit, connect_timeout)
                .await
            {
                Ok(usable) => usable,
                Err(Unusable::Dns(e)) => return Err(e),
                Err(Unusable::Local(why)) => {
                    if let Some(m) = &metrics {
                        m.outbound_denied.inc();
                    }
                    tracing::warn!(
                        component = %component,
                        "outbound request to {scheme}://{host}:{port} denied: {why}; only an allowed_outbound_hosts entry naming the address itself allows that"
                    );
                    return Err(HttpError::DestinationIpProhibited);
                }
            };
            if let Some(m) = &metrics {
                m.outbound_allowed.inc();
            }
            let tls = (scheme == "https").then(|| {
                // The operator's `[[client_tls]]` for this component and host, if any.
                let config = client_tls
                    .iter()
                    .find(|t| t.table.applies(&component, bare, port))
                    .map_or_else(tls_config, |t| t.config.clone());
                (bare, config)
            });
            send(request, options, &usable, tls).await
        };
        match span {
            None => Box::new(sending),
            // Ends with the response head (or the failure).
            Some(span) => Box::new(async move {
                let result = sending.await;
                crate::trace::client_outcome(&span, result.as_ref().map(|(r, _)| r.status()));
                result
            }),
        }
    }
}

impl OutboundPolicy {
    /// A request served in-process by a component of this app ([`crate::chain`]).
    fn chained(
        &self,
        target: crate::chain::Target,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> SendFuture {
        if let Some(m) = &self.metrics {
            m.outbound_allowed.inc();
        }
        Box::new(self.chain.call(
            self.component.clone(),
            target,
            request,
            options.and_then(|o| o.first_byte_timeout),
            self.trace.clone(),
        ))
    }
}

/// Why `ip` is refused for a host name: loopback, link-local, private, shared, unspecified,
/// multicast or broadcast, i.e. the node itself, its local networks, or no single host. `None`
/// for an ordinary (global) address.
pub(crate) fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                // 169.254.169.254 is the cloud metadata service.
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                // Carrier-grade NAT space, used for internal networks (and some clouds'
                // metadata services, e.g. 100.100.100.200).
                Some("shared (100.64.0.0/10)")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || a >= 240 {
                Some("reserved or broadcast (240.0.0.0/4)")
            } else if a == 192 && b == 0 && v4.octets()[2] == 0 {
                Some("IETF protocol assignments (192.0.0.0/24)")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("benchmarking (198.18.0.0/15)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_purpose(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            let first = seg[0];
            // Addresses that carry an IPv4 address and reach it through a translator: NAT64
            // (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and IPv4-compatible (::a.b.c.d).
            // Judged by the IPv4 address they lead to.
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1);
            let compatible = seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified();
            let v4 = if nat64 || compatible {
                Some(embedded(seg[6], seg[7]))
            } else if first == 0x2002 {
                Some(embedded(seg[1], seg[2]))
            } else {
                None
            };
            if let Some(why) = v4.and_then(|v4| special_purpose(IpAddr::V4(v4))) {
                return Some(why);
            }
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Why a host's addresses cannot be used.
pub(crate) enum Unusable {
    /// It does not resolve (in time).
    Dns(HttpError),
    /// Every address is special-purpose and no entry names it: why, for the log.
    Local(String),
}

/// The addresses of `host` (a name, resolved once within `timeout`, or an address, IPv6 with
/// or without brackets) a connection may go to: all but special-purpose ones, unless
/// `explicit` (an entry of a local manifest names the address). Outbound HTTP and Spin's
/// outbound services connect only to what this returns.
pub(crate) async fn checked_addresses(
    component: &str,
    host: &str,
    port: u16,
    explicit: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Unusable> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let resolved = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolve(bare, port, timeout).await.map_err(Unusable::Dns)?,
    };
    let (usable, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
        .into_iter()
        .partition(|a| explicit || special_purpose(a.ip()).is_none());
    if usable.is_empty() {
        let why = refused
            .first()
            .map(|a| {
                let kind = special_purpose(a.ip()).unwrap_or("special-purpose");
                if a.ip().to_string() == bare {
                    format!("{} is a {kind} address", a.ip())
                } else {
                    format!("{host} resolves to {}, a {kind} address", a.ip())
                }
            })
            .unwrap_or_else(|| format!("{host} has no address"));
        return Err(Unusable::Local(why));
    }
    if !refused.is_empty() {
        tracing::debug!(
            component = %component,
            "connection to {host}: not using {refused:?} (special-purpose addresses)"
        );
    }
    Ok(usable)
}

/// Resolves `host` once, within `timeout`.
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, HttpError> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(_)) => Err(HttpError::DnsError {
            rcode: None,
            info_code: None,
        }),
        Err(_) => Err(HttpError::DnsTimeout),
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A `[[client_tls]]` table of the runtime config with the TLS configuration it makes.
pub(crate) struct ClientTlsConfig {
    table: wms_manifest::runtime_config::ClientTls,
    config: Arc<rustls::ClientConfig>,
}

/// Builds the TLS configuration of every `[[client_tls]]` table, at start: a file that cannot be
/// read or holds no certificate (or no key) is an error naming the table and the file.
pub(crate) fn client_tls_configs(
    tables: &[wms_manifest::runtime_config::ClientTls],
) -> anyhow::Result<Vec<Arc<ClientTlsConfig>>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("read PEM certificates from {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no PEM certificate",
            path.display()
        );
        Ok(certs)
    };
    let mut configs = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let build = || -> anyhow::Result<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            if t.ca_use_webpki_roots {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            if let Some(path) = &t.ca_roots_file {
                for cert in certs(path)? {
                    roots.add(cert).with_context(|| {
                        format!("a certificate in {} is not a usable CA", path.display())
                    })?;
                }
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "it trusts no certificate authority: set `ca_roots_file`, or leave `ca_use_webpki_roots` at true"
            );
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots);
            Ok(match (&t.cert_chain_file, &t.private_key_file) {
                (Some(chain), Some(key_file)) => {
                    let key = PrivateKeyDer::from_pem_file(key_file)
                        .map_err(|e| anyhow::anyhow!("{e:?}"))
                        .with_context(|| {
                            format!("read a PEM private key from {}", key_file.display())
                        })?;
                    builder
                        .with_client_auth_cert(certs(chain)?, key)
                        .context("the client certificate and its key do not go together")?
                }
                _ => builder.with_no_client_auth(),
            })
        };
        let config = build().with_context(|| {
            format!(
                "[[client_tls]] #{} of the runtime config file (components {})",
                i + 1,
                t.component_ids.join(", ")
            )
        })?;
        configs.push(Arc::new(ClientTlsConfig {
            table: t.clone(),
            config: Arc::new(config),
        }));
    }
    Ok(configs)
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Sends `request` over a connection to one of `addrs` (already checked), in order; with TLS
/// for host name `tls` when set. Timeouts as the guest's request options say.
async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    addrs: &[SocketAddr],
    tls: Option<(&str, Arc<rustls::ClientConfig>)>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let between_bytes_timeout = options
        .and_then(|o| o.between_bytes_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let connect = async {
        let mut last = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(HttpError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    };
    let tcp = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let io: Box<dyn Io> = match tls {
        Some((host, config)) => {
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())?,
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(HttpError::Tls)?;
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    // The connection is driven by its own task while the response is awaited; what it ends with
    // is the I/O result wasmtime-wasi-http reports to the guest.
    let conn = tokio::spawn(conn);
    // Dropped with the I/O future (the guest dropped the response) or on an early return below:
    // the connection ends with it instead of running on, uncounted, with no timeout of its own.
    let guard = AbortOnDrop(conn.abort_handle());
    // On the wire the request line carries only the path (the Host header has the authority).
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let response = response.map(|incoming| {
        IdleTimeout {
            inner: incoming,
            idle: between_bytes_timeout,
            deadline: Box::pin(tokio::time::sleep(between_bytes_timeout)),
        }
        .boxed_unsync()
    });
    let io: IoFuture = Box::new(async move {
        let _guard = guard;
        match conn.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) if e.is_timeout() => Err(HttpError::HttpResponseTimeout),
            Ok(Err(e)) => Err(e.into()),
        }
    });
    Ok((response, io))
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body that fails when no frame arrives within `idle` (the guest's
/// between-bytes timeout).
struct IdleTimeout {
    inner: hyper::body::Incoming,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::special_purpose;

    #[test]
    fn node_and_local_network_addresses_are_special() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("fd00::1", "private (unique local)"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved or broadcast (240.0.0.0/4)"),
            ("240.0.0.1", "reserved or broadcast (240.0.0.0/4)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
            // IPv6 that leads to an IPv4 address through a translator.
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::7f00:1", "loopback"),
            ("2002:a00:1::1", "private"),
            ("::7f00:1", "loopback"),
            ("100.100.100.200", "shared (100.64.0.0/10)"),
        ] {
            assert_eq!(special_purpose(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(special_purpose(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
