//! `wasi:sockets` 0.2 for component guests: TCP and UDP only to what the component's
//! `allowed_outbound_hosts` allows, as under Spin: `tcp://` entries for TCP connections,
//! `udp://` entries for UDP datagrams, `*://` entries for both; an entry's host is an address,
//! a CIDR range (`tcp://10.0.0.0/8:5432`), a host name or `*`, and its port is required.
//!
//! * A guest resolves names itself (`wasi:sockets/ip-name-lookup`) and connects to an address.
//!   It may look up only a name some socket entry matches (so lookups cannot carry data out in
//!   names of the guest's choosing), and the addresses the lookup returned are then allowed for
//!   that name's entries, for the rest of the instance.
//! * The same node-local rule as outbound HTTP ([`crate::outbound::special_purpose`]): a
//!   loopback, link-local, private or otherwise special address is reached only when an entry
//!   names it (its address, or a CIDR range holding it) and the manifest is local, never through
//!   a host name or `*`.
//! * Nothing listens: binding is allowed only to the unspecified address and port 0 (what a
//!   client socket's implicit bind is), `listen` and `accept` never. Spin refuses inbound
//!   sockets too.
//! * Every socket counts as an outbound connection of its instance (with outbound HTTP
//!   requests, against the same cap and the process's descriptor budget); one over the cap
//!   fails with `new-socket-limit`.
//!
//! * A name lookup holds one of the runtime's blocking threads until the system resolver
//!   answers, however soon the guest gives up on it: at most [`MAX_INSTANCE_LOOKUPS`] lookups
//!   of an instance and [`MAX_LOOKUPS`] of the whole process are in progress at once (counted
//!   until the resolver is done, even past the guest dropping the lookup); one more fails with
//!   `temporary-resolver-failure`, so a guest cannot tie up the threads other guests' files,
//!   databases and lookups need.
//!
//! A denied connect, send, bind or lookup fails with `access-denied` and is logged once per
//! component and address. `wasi:sockets` 0.3 is not linked.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddress, IpAddressFamily, Network,
};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{DynPollable, Pollable as _, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};
use wms_manifest::outbound::{AllowedHost, is_allowed, names_address};

use crate::descriptors::{OutboundPermit, OutboundSlots};
use crate::guest::HostState;
use crate::outbound::special_purpose;
use crate::wt;

/// Name lookups in progress in the whole process, at most.
pub const MAX_LOOKUPS: usize = 32;
/// Name lookups one instance has in progress, at most.
pub const MAX_INSTANCE_LOOKUPS: usize = 4;
/// How long a lookup whose instance ended without dropping it stays counted: glibc's resolver
/// gives up within this with its defaults (5 s a try, 2 tries, 3 servers).
const UNOBSERVED_LOOKUP_HOLD: Duration = Duration::from_secs(30);

static LOOKUPS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_LOOKUPS)));

/// Denied addresses remembered per component so each is logged once; past this many, further
/// new ones are not logged (a guest probing addresses cannot flood the log).
const MAX_LOGGED_DENIALS: usize = 1024;

/// A component's socket policy, shared by its instances.
pub(crate) struct ComponentSockets {
    component: Arc<str>,
    allowed: Arc<[AllowedHost]>,
    /// Entries naming an address may reach local ones (a local manifest only).
    may_name_local_addresses: bool,
    logged: Mutex<HashSet<(&'static str, String)>>,
}

impl ComponentSockets {
    pub(crate) fn new(
        component: Arc<str>,
        allowed: Arc<[AllowedHost]>,
        may_name_local_addresses: bool,
    ) -> Arc<Self> {
        Arc::new(ComponentSockets {
            component,
            allowed,
            may_name_local_addresses,
            logged: Mutex::new(HashSet::new()),
        })
    }

    fn allows_protocol(&self, scheme: &str) -> bool {
        self.allowed.iter().any(|a| a.has_scheme(scheme))
    }

    /// Whether some TCP or UDP entry matches host name `name`.
    fn may_resolve(&self, name: &str) -> bool {
        self.allowed
            .iter()
            .any(|a| (a.has_scheme("tcp") || a.has_scheme("udp")) && a.matches_name(name))
    }

    /// Logs a denial, once per component, kind and address.
    fn deny(&self, what: &'static str, target: String, why: &str) {
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            logged.len() < MAX_LOGGED_DENIALS && logged.insert((what, target.clone()))
        };
        if first {
            tracing::warn!(
                component = %self.component,
                "{what} {target} denied: {why} (logged once)"
            );
        } else {
            tracing::debug!(component = %self.component, "{what} {target} denied: {why}");
        }
    }

    /// Sets up the socket part of an instance's WASI context; returns what its name lookups
    /// share with the address check.
    pub(crate) fn configure(self: &Arc<Self>, wasi: &mut WasiCtxBuilder) -> Resolved {
        let resolved = Resolved::default();
        let tcp = self.allows_protocol("tcp");
        let udp = self.allows_protocol("udp");
        wasi.allow_tcp(tcp)
            .allow_udp(udp)
            .allow_ip_name_lookup(tcp || udp);
        let policy = self.clone();
        let names = resolved.clone();
        wasi.socket_addr_check(move |addr, use_| {
            let ok = policy.check(&names, addr, use_);
            Box::pin(std::future::ready(ok))
        });
        resolved
    }

    fn check(&self, resolved: &Resolved, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let ip = addr.ip().to_canonical();
        let local_end = |what: &'static str| {
            // A client socket's bind: the OS picks the address and port.
            let ok = ip.is_unspecified() && addr.port() == 0;
            if !ok {
                self.deny(
                    what,
                    addr.to_string(),
                    "guests may not bind a specific address or port, nor listen",
                );
            }
            ok
        };
        match use_ {
            SocketAddrUse::TcpBind => local_end("TCP bind to"),
            SocketAddrUse::UdpBind => local_end("UDP bind to"),
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => {
                self.deny(
                    "TCP listen on",
                    addr.to_string(),
                    "guests may not accept connections",
                );
                false
            }
            SocketAddrUse::TcpConnect => {
                self.destination("TCP connection to", "tcp", resolved, ip, addr.port(), true)
            }
            SocketAddrUse::UdpSend => {
                self.destination("UDP datagram to", "udp", resolved, ip, addr.port(), true)
            }
            // A datagram from elsewhere is dropped quietly: the network, not the guest, chose it.
            SocketAddrUse::UdpReceive => {
                self.destination("UDP datagram from", "udp", resolved, ip, addr.port(), false)
            }
        }
    }

    /// Whether `ip:port` may be reached over `scheme`: an entry allows the address, or a name a
    /// lookup of this instance resolved to it; and if the address is special-purpose, an entry
    /// of a local manifest names it.
    fn destination(
        &self,
        what: &'static str,
        scheme: &str,
        resolved: &Resolved,
        ip: IpAddr,
        port: u16,
        log: bool,
    ) -> bool {
        let host = ip.to_string();
        let target = SocketAddr::new(ip, port).to_string();
        let direct = is_allowed(&self.allowed, scheme, &host, port);
        let by_name = || {
            resolved
                .names(ip)
                .iter()
                .find(|name| is_allowed(&self.allowed, scheme, name, port))
                .cloned()
        };
        let name = if direct { None } else { by_name() };
        if !direct && name.is_none() {
            if log {
                let why = format!("no allowed_outbound_hosts entry allows {scheme}://{target}");
                self.deny(what, target, &why);
            }
            return false;
        }
        if let Some(kind) = special_purpose(ip)
            && !(self.may_name_local_addresses && names_address(&self.allowed, scheme, &host, port))
        {
            if log {
                let how = match &name {
                    Some(n) => format!("{n} resolves to {ip}, a {kind} address"),
                    None => format!("{ip} is a {kind} address"),
                };
                self.deny(
                    what,
                    target,
                    &format!("{how}; only an allowed_outbound_hosts entry (of a local manifest) naming the address or its CIDR range allows that"),
                );
            }
            return false;
        }
        true
    }
}

/// The names an instance's lookups resolved, by address: what lets `tcp://db.example.com:5432`
/// reach the addresses of `db.example.com`.
#[derive(Clone, Default)]
pub(crate) struct Resolved(Arc<Mutex<HashMap<IpAddr, Vec<String>>>>);

impl Resolved {
    fn names(&self, ip: IpAddr) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).cloned().unwrap_or_default()
    }

    fn record(&self, ip: IpAddr, name: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let names = map.entry(ip).or_default();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
}

/// One instance's sockets: its policy, the names it resolved, lookups in progress, and the
/// permits its sockets hold.
pub(crate) struct InstanceSockets {
    policy: Arc<ComponentSockets>,
    resolved: Resolved,
    /// Lookup streams of names, by resource, with the (lowercase) name looked up.
    lookups: HashMap<u32, String>,
    /// Lookups in progress, by resource, each with its place in [`LOOKUPS`].
    pending: HashMap<u32, OwnedSemaphorePermit>,
    slots: OutboundSlots,
    /// Sockets created, by resource, with the permit each holds. Closed sockets are noticed at
    /// the next creation or when the instance ends (a closed socket may briefly count).
    held: Vec<(u32, Protocol, OutboundPermit)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
}

impl InstanceSockets {
    pub(crate) fn new(
        policy: Arc<ComponentSockets>,
        resolved: Resolved,
        slots: OutboundSlots,
    ) -> Self {
        InstanceSockets {
            policy,
            resolved,
            lookups: HashMap::new(),
            pending: HashMap::new(),
            slots,
            held: Vec::new(),
        }
    }

    /// A permit for a new socket, after dropping those of sockets since closed.
    fn permit(
        &mut self,
        table: &ResourceTable,
        protocol: Protocol,
    ) -> SocketResult<OutboundPermit> {
        self.held.retain(|(rep, p, _)| match p {
            Protocol::Tcp => table.get(&Resource::<TcpSocket>::new_borrow(*rep)).is_ok(),
            Protocol::Udp => table.get(&Resource::<UdpSocket>::new_borrow(*rep)).is_ok(),
        });
        let (scheme, what) = match protocol {
            Protocol::Tcp => ("tcp", "TCP socket"),
            Protocol::Udp => ("udp", "UDP socket"),
        };
        if !self.policy.allows_protocol(scheme) {
            self.policy.deny(
                "creating a",
                what.to_string(),
                &format!("no allowed_outbound_hosts entry has scheme `{scheme}` or `*`"),
            );
            return Err(ErrorCode::AccessDenied.into());
        }
        self.slots.acquire().map_err(|denied| {
            tracing::warn!(
                component = %self.policy.component,
                "{what} refused: {}",
                denied.outbound_reason()
            );
            ErrorCode::NewSocketLimit.into()
        })
    }
}

impl Drop for InstanceSockets {
    /// Lookups the guest never dropped are still running on their threads: they stay counted
    /// for as long as the resolver can take.
    fn drop(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let permits: Vec<_> = self.pending.drain().map(|(_, p)| p).collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(UNOBSERVED_LOOKUP_HOLD).await;
                drop(permits);
            });
        }
    }
}

/// Whether a lookup stream is done (its resolver answered).
fn lookup_done(stream: &mut ResolveAddressStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream.ready().as_mut().poll(&mut cx).is_ready()
}

/// What the wrapped socket interfaces see of an instance.
pub(crate) struct NetView<'a> {
    pub(crate) sockets: WasiSocketsCtxView<'a>,
    pub(crate) state: &'a mut InstanceSockets,
}

struct Net;

impl HasData for Net {
    type Data<'a> = NetView<'a>;
}

// The wrapped interfaces use `network`'s types and error conversion: Wasmtime's, as they are.
impl network::Host for NetView<'_> {
    fn convert_error_code(
        &mut self,
        error: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for NetView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

fn ip_of(address: &IpAddress) -> IpAddr {
    match *address {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

impl ip_name_lookup::Host for NetView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        let literal = name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok());
        // An address is answered without a query; a name only if an entry could allow it.
        if !literal && !self.state.policy.may_resolve(&name) {
            self.state.policy.deny(
                "name lookup of",
                format!("{name:?}"),
                "no allowed_outbound_hosts entry with scheme `tcp`, `udp` or `*` matches the name",
            );
            return Err(ErrorCode::AccessDenied.into());
        }
        if literal {
            return ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name);
        }
        // The instance's lookups whose resolver has answered no longer count.
        let table = &mut *self.sockets.table;
        self.state.pending.retain(|rep, _| {
            !table
                .get_mut(&Resource::<ResolveAddressStream>::new_borrow(*rep))
                .is_ok_and(lookup_done)
        });
        let permit = if self.state.pending.len() >= MAX_INSTANCE_LOOKUPS {
            None
        } else {
            LOOKUPS.clone().try_acquire_owned().ok()
        };
        let Some(permit) = permit else {
            tracing::warn!(
                component = %self.state.policy.component,
                "name lookup of {name:?} refused: {}",
                if self.state.pending.len() >= MAX_INSTANCE_LOOKUPS {
                    format!("the guest has {MAX_INSTANCE_LOOKUPS} lookups in progress, its limit")
                } else {
                    format!("guests have {MAX_LOOKUPS} lookups in progress, the process's limit")
                }
            );
            return Err(ErrorCode::TemporaryResolverFailure.into());
        };
        let stream =
            ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name.clone())?;
        let stream_ref = Resource::<ResolveAddressStream>::new_borrow(stream.rep());
        if !self
            .sockets
            .table
            .get_mut(&stream_ref)
            .is_ok_and(lookup_done)
        {
            self.state.pending.insert(stream.rep(), permit);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.state.lookups.insert(stream.rep(), name);
        Ok(stream)
    }
}

impl HostResolveAddressStream for NetView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        let rep = stream.rep();
        let next = HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)?;
        if let (Some(address), Some(name)) = (&next, self.state.lookups.get(&rep)) {
            self.state
                .resolved
                .record(ip_of(address).to_canonical(), name);
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        let rep = stream.rep();
        self.state.lookups.remove(&rep);
        let Some(permit) = self.state.pending.remove(&rep) else {
            return HostResolveAddressStream::drop(&mut self.sockets, stream);
        };
        // Still running: kept (its resolver's thread goes on) until it is done.
        let mut stream = self.sockets.table.delete(stream)?;
        if !lookup_done(&mut stream) {
            tokio::spawn(async move {
                stream.ready().await;
                drop(permit);
            });
        }
        Ok(())
    }
}

impl tcp_create_socket::Host for NetView<'_> {
    fn create_tcp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        let permit = self.state.permit(self.sockets.table, Protocol::Tcp)?;
        let socket = tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, address_family)?;
        self.state.held.push((socket.rep(), Protocol::Tcp, permit));
        Ok(socket)
    }
}

impl udp_create_socket::Host for NetView<'_> {
    async fn create_udp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        let permit = self.state.permit(self.sockets.table, Protocol::Udp)?;
        let socket =
            udp_create_socket::Host::create_udp_socket(&mut self.sockets, address_family).await?;
        self.state.held.push((socket.rep(), Protocol::Udp, permit));
        Ok(socket)
    }
}

/// Replaces Wasmtime's name lookup and socket creation (linked by `add_to_linker_async`) with
/// the checked and counted ones above.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = (|| {
        ip_name_lookup::add_to_linker::<HostState, Net>(linker, HostState::net)?;
        tcp_create_socket::add_to_linker::<HostState, Net>(linker, HostState::net)?;
        udp_create_socket::add_to_linker::<HostState, Net>(linker, HostState::net)
    })();
    linker.allow_shadowing(false);
    result.map_err(wt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str], local: bool) -> Arc<ComponentSockets> {
        let allowed: Vec<AllowedHost> = entries
            .iter()
            .map(|e| AllowedHost::parse(e).unwrap())
            .collect();
        ComponentSockets::new("c".into(), allowed.into(), local)
    }

    fn connect(p: &ComponentSockets, r: &Resolved, addr: &str) -> bool {
        p.check(r, addr.parse().unwrap(), SocketAddrUse::TcpConnect)
    }

    #[test]
    fn a_looked_up_name_allows_its_addresses_for_its_entries_only() {
        let p = policy(&["tcp://db.example.com:5432"], true);
        let r = Resolved::default();
        assert!(p.may_resolve("db.example.com"));
        assert!(p.may_resolve("DB.example.com."));
        assert!(!p.may_resolve("other.example.com"));
        // Not looked up: the address alone is not allowed.
        assert!(!connect(&p, &r, "93.184.216.34:5432"));
        r.record("93.184.216.34".parse().unwrap(), "db.example.com");
        assert!(connect(&p, &r, "93.184.216.34:5432"));
        assert!(!connect(&p, &r, "93.184.216.34:5433"));
        assert!(!p.check(
            &r,
            "93.184.216.34:5432".parse().unwrap(),
            SocketAddrUse::UdpSend
        ));
        // A name resolving to the node or its networks does not reach them.
        r.record("127.0.0.1".parse().unwrap(), "db.example.com");
        r.record("10.1.2.3".parse().unwrap(), "db.example.com");
        assert!(!connect(&p, &r, "127.0.0.1:5432"));
        assert!(!connect(&p, &r, "10.1.2.3:5432"));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(connect(&p, &r, "[::ffff:93.184.216.34]:5432"));
    }

    #[test]
    fn local_addresses_need_an_entry_naming_them_in_a_local_manifest() {
        let r = Resolved::default();
        let p = policy(
            &["tcp://127.0.0.1:6379", "*://10.0.0.0/8:5432", "tcp://*:80"],
            true,
        );
        assert!(connect(&p, &r, "127.0.0.1:6379"));
        assert!(connect(&p, &r, "10.9.8.7:5432"));
        assert!(p.check(&r, "10.9.8.7:5432".parse().unwrap(), SocketAddrUse::UdpSend));
        assert!(!connect(&p, &r, "127.0.0.1:80"));
        assert!(connect(&p, &r, "93.184.216.34:80"));
        // From an image's manifest, never.
        let p = policy(&["tcp://127.0.0.1:6379", "*://10.0.0.0/8:5432"], false);
        assert!(!connect(&p, &r, "127.0.0.1:6379"));
        assert!(!connect(&p, &r, "10.9.8.7:5432"));
    }

    #[test]
    fn only_client_binds_and_no_listening() {
        let r = Resolved::default();
        let p = policy(&["*://*:*"], true);
        for (addr, use_, ok) in [
            ("0.0.0.0:0", SocketAddrUse::TcpBind, true),
            ("[::]:0", SocketAddrUse::UdpBind, true),
            ("0.0.0.0:8080", SocketAddrUse::TcpBind, false),
            ("127.0.0.1:0", SocketAddrUse::UdpBind, false),
            ("0.0.0.0:0", SocketAddrUse::TcpListen, false),
            ("93.184.216.34:1", SocketAddrUse::TcpAccept, false),
        ] {
            assert_eq!(
                p.check(&r, addr.parse().unwrap(), use_),
                ok,
                "{addr} {use_:?}"
            );
        }
    }
}
