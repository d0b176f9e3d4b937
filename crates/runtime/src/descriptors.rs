//! Host file descriptors held by guests. A guest that opens a mounted file holds one host
//! descriptor per open handle, and an outbound HTTP request holds a connection; without a cap a
//! few guests could take every descriptor of the process, and then `accept` fails for everyone.
//!
//! Two limits apply: per instance (files, and outbound requests in flight), and for all guests
//! together a budget of half the process's soft `RLIMIT_NOFILE`; the HTTP front end's connection
//! cap is a quarter, and the last quarter is the server's own reserve (logs, the cache, compiled
//! code, DNS). A guest over either limit gets an error from the call that would have taken the
//! descriptor (`quota` for a file open, `connection-limit-reached` for an outbound request), so
//! only its own request is affected. Guests' own opens may fill three quarters of the budget;
//! the rest is for the mounts of new instances, which otherwise would be refused with a 503.
//! A guest's sockets (`wasi:sockets`, crate::sockets) count as outbound connections: with its
//! outbound HTTP requests, against the same per-instance cap and the process budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::filesystem::Descriptor;

/// Files (and directories) one instance may hold open.
pub const MAX_OPEN_FILES: usize = 256;
/// Outbound HTTP requests in flight and sockets one instance may hold together, each a
/// connection.
pub const MAX_OUTBOUND_REQUESTS: usize = 64;
/// Resource-table entries an instance may hold besides those for its files and outbound
/// requests: the request and response of the call itself, header fields, streams, pollables.
const TABLE_BASE: usize = 1024;
/// Entries that come with one open file: the descriptor, its streams and their pollables.
const TABLE_PER_FILE: usize = 4;
/// Entries that come with one outbound request: request, fields, bodies, streams, futures.
const TABLE_PER_OUTBOUND: usize = 16;
/// Taken as the limit when the process has none (`RLIM_INFINITY`): Linux's default `nr_open`.
const UNLIMITED: u64 = 1 << 20;

/// The resource-table capacity of one instance, sized to the caps above: a guest cannot
/// hold more handles than its files and requests explain, whatever they are.
pub fn table_capacity() -> usize {
    TABLE_BASE + TABLE_PER_FILE * MAX_OPEN_FILES + TABLE_PER_OUTBOUND * MAX_OUTBOUND_REQUESTS
}

/// How the process's descriptor limit is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The soft `RLIMIT_NOFILE` when the runtime started.
    pub limit: u64,
    /// All guests together: half the limit.
    pub guests: usize,
    /// The front end's connection cap: a quarter.
    pub connections: usize,
    /// Left for the server itself.
    pub reserve: usize,
}

impl DescriptorPlan {
    pub fn for_limit(limit: u64) -> Self {
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let guests = limit_usize / 2;
        let connections = limit_usize / 4;
        DescriptorPlan {
            limit,
            guests,
            connections,
            reserve: limit_usize - guests - connections,
        }
    }

    /// The plan for the process's current soft limit.
    pub fn current() -> Self {
        Self::for_limit(soft_limit())
    }
}

impl std::fmt::Display for DescriptorPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "descriptor limit {}: guests together at most {} (each at most {MAX_OPEN_FILES} open files and {MAX_OUTBOUND_REQUESTS} outbound connections), client connections up to {}, {} kept for the server",
            self.limit, self.guests, self.connections, self.reserve
        )
    }
}

/// The process's soft descriptor limit.
pub fn soft_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return UNLIMITED;
    }
    #[allow(
        clippy::useless_conversion,
        reason = "rlim_t is 32 bits on 32-bit boards"
    )]
    u64::try_from(rl.rlim_cur).unwrap_or(UNLIMITED)
}

/// Descriptors all guests of the process hold, against their budget.
///
/// What guests open themselves (files, outbound connections) may fill only three quarters
/// of it: the last quarter is for the mounted directories each new instance needs, so
/// guests that hoard up to their caps do not turn every other request away with a 503.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// For a new instance's mounts: the whole budget.
    fn take(&self, n: usize) -> bool {
        self.take_within(n, self.limit)
    }

    /// For what a guest opens: three quarters of the budget.
    fn take_opened(&self) -> bool {
        self.take_within(1, self.limit - self.limit / 4)
    }

    fn take_within(&self, n: usize, limit: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    Instance,
    /// The component's instances together hold its `max_outbound_connections` (this many).
    Component(usize),
    Process,
}

impl Denied {
    /// Why an outbound connection was refused, for the log.
    pub(crate) fn outbound_reason(self) -> String {
        match self {
            Denied::Instance => format!(
                "the guest holds {MAX_OUTBOUND_REQUESTS} outbound connections, requests and sockets, its limit"
            ),
            Denied::Component(cap) => format!(
                "the component's instances together hold {cap} outbound connections, its max_outbound_connections"
            ),
            Denied::Process => "guests together hold their whole descriptor budget (raise the soft descriptor limit, ulimit -n or LimitNOFILE=, and restart wms)".to_string(),
        }
    }
}

/// What one instance holds. Everything it took from the budget goes back when it is dropped
/// with its store, whatever the guest left open.
pub(crate) struct InstanceFds {
    budget: Arc<Budget>,
    component: Arc<str>,
    /// Mounted directories: Wasmtime opens each when the context is built.
    preopens: usize,
    /// What a component guest opened (pruned of closed ones before each open, so a guest that
    /// closes what it opens can open forever).
    files: Vec<Held>,
    /// Descriptors taken from the budget for files. Closes are noticed at the next open
    /// (or when the instance ends), so this may briefly count a closed file: the budget
    /// errs on the side of the server.
    counted: usize,
    warned: bool,
}

impl InstanceFds {
    /// Takes the instance's mounted directories from the budget; `None` if they do not fit.
    pub(crate) fn new(budget: &Arc<Budget>, component: &Arc<str>, preopens: usize) -> Option<Self> {
        if !budget.take(preopens) {
            return None;
        }
        Some(InstanceFds {
            budget: budget.clone(),
            component: component.clone(),
            preopens,
            files: Vec::new(),
            counted: 0,
            warned: false,
        })
    }

    /// Before a component guest opens a file: may it hold one more?
    pub(crate) fn begin_open_p2(&mut self, table: &mut ResourceTable) -> Result<(), Denied> {
        self.files.retain(|held| match held {
            Held::File(file) => file.strong_count() > 0,
            Held::Dir(rep) => is_descriptor(table, *rep),
        });
        self.begin_open(self.files.len())
    }

    /// Before a preview 1 guest opens a file. The preview 1 layer keeps its descriptors in
    /// its own table with the mounted directories; everything else there is a file it opened.
    pub(crate) fn begin_open_p1(&mut self, table: &mut ResourceTable) -> Result<(), Denied> {
        let held = (0..table_capacity() as u32)
            .filter(|rep| is_descriptor(table, *rep))
            .count()
            .saturating_sub(self.preopens);
        self.begin_open(held)
    }

    fn begin_open(&mut self, held: usize) -> Result<(), Denied> {
        // Give back what the guest closed since the last open.
        if held < self.counted {
            self.budget.give(self.counted - held);
            self.counted = held;
        }
        let denied = if held >= MAX_OPEN_FILES {
            Denied::Instance
        } else if !self.budget.take_opened() {
            Denied::Process
        } else {
            self.counted = held + 1;
            return Ok(());
        };
        if !self.warned {
            // Once per instance: the guest will usually retry or give up; its request's
            // own outcome is logged anyway.
            self.warned = true;
            match denied {
                Denied::Instance => tracing::warn!(
                    component = %self.component,
                    "guest holds {held} open files, its limit of {MAX_OPEN_FILES}: further opens fail"
                ),
                // Files have no per-component cap.
                Denied::Process | Denied::Component(_) => tracing::warn!(
                    component = %self.component,
                    "guests together hold their whole descriptor budget ({}): this guest's open fails; raise the soft descriptor limit (ulimit -n, or LimitNOFILE= in the systemd unit) and restart wms",
                    self.budget.limit
                ),
            }
        }
        Err(denied)
    }

    /// After the open: what was opened if it succeeded (component guests), `None` if it
    /// failed; `end_open_p1` for preview 1 guests, which are recounted at the next open.
    pub(crate) fn end_open_p2(&mut self, opened: Option<Held>) {
        match opened {
            Some(held) => self.files.push(held),
            None => self.undo(),
        }
    }

    pub(crate) fn end_open_p1(&mut self, ok: bool) {
        if !ok {
            self.undo();
        }
    }

    fn undo(&mut self) {
        self.counted -= 1;
        self.budget.give(1);
    }
}

impl Drop for InstanceFds {
    fn drop(&mut self) {
        self.budget.give(self.preopens + self.counted);
    }
}

/// A descriptor a component guest opened, as long as it holds a host file open.
pub(crate) enum Held {
    /// A file: open while anything holds its host file, which the streams made from it share
    /// (`read-via-stream` and the like), so dropping the descriptor and keeping a stream still
    /// counts.
    File(std::sync::Weak<std::fs::File>),
    /// A directory, by table index (nothing else shares its handle).
    Dir(u32),
}

impl Held {
    /// What the table entry `fd` holds.
    pub(crate) fn of(table: &ResourceTable, fd: &Resource<Descriptor>) -> Self {
        match table.get(fd) {
            Ok(Descriptor::File(f)) => Held::File(Arc::downgrade(&f.file)),
            _ => Held::Dir(fd.rep()),
        }
    }
}

fn is_descriptor(table: &mut ResourceTable, rep: u32) -> bool {
    table.get(&Resource::<Descriptor>::new_own(rep)).is_ok()
}

/// Outbound connections of all of one component's instances, against its
/// `max_outbound_connections` (if any).
pub(crate) struct ComponentOutbound {
    in_flight: AtomicUsize,
    cap: Option<usize>,
}

impl ComponentOutbound {
    pub(crate) fn new(cap: Option<usize>) -> Arc<Self> {
        Arc::new(ComponentOutbound {
            in_flight: AtomicUsize::new(0),
            cap,
        })
    }
}

/// Outbound requests in flight for one instance, against its cap, its component's and the
/// process budget.
#[derive(Clone)]
pub(crate) struct OutboundSlots {
    budget: Arc<Budget>,
    component: Arc<ComponentOutbound>,
    in_flight: Arc<AtomicUsize>,
}

/// One outbound request's connection; released when the connection ends.
pub(crate) struct OutboundPermit {
    slots: OutboundSlots,
}

impl OutboundSlots {
    pub(crate) fn new(budget: &Arc<Budget>, component: &Arc<ComponentOutbound>) -> Self {
        OutboundSlots {
            budget: budget.clone(),
            component: component.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn acquire(&self) -> Result<OutboundPermit, Denied> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OUTBOUND_REQUESTS).then_some(n + 1)
            })
            .map_err(|_| Denied::Instance)?;
        if let Some(cap) = self.component.cap
            && self
                .component
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < cap).then_some(n + 1)
                })
                .is_err()
        {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Denied::Component(cap));
        }
        if !self.budget.take_opened() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if self.component.cap.is_some() {
                self.component.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(Denied::Process);
        }
        Ok(OutboundPermit {
            slots: self.clone(),
        })
    }
}

impl Drop for OutboundPermit {
    fn drop(&mut self) {
        self.slots.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.slots.component.cap.is_some() {
            self.slots
                .component
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
        }
        self.slots.budget.give(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_half_quarter_quarter() {
        let p = DescriptorPlan::for_limit(4096);
        assert_eq!((p.guests, p.connections, p.reserve), (2048, 1024, 1024));
        let p = DescriptorPlan::for_limit(1023);
        assert_eq!(p.guests + p.connections + p.reserve, 1023);
    }

    #[test]
    fn instances_give_back_what_they_took() {
        // 4: three for what guests open, the last one kept for mounts.
        let budget = Budget::new(4);
        let name: Arc<str> = Arc::from("c");
        let mut table = ResourceTable::new();
        let mut a = InstanceFds::new(&budget, &name, 1).unwrap();
        assert!(a.begin_open_p2(&mut table).is_ok());
        a.end_open_p2(None);
        assert_eq!(budget.in_use(), 1);
        let slots = OutboundSlots::new(&budget, &ComponentOutbound::new(None));
        let p1 = slots.acquire().unwrap();
        let p2 = slots.acquire().unwrap();
        assert_eq!(slots.acquire().err(), Some(Denied::Process));
        assert_eq!(a.begin_open_p2(&mut table), Err(Denied::Process));
        // A new instance still gets its mount.
        let b = InstanceFds::new(&budget, &name, 1).unwrap();
        assert!(InstanceFds::new(&budget, &name, 1).is_none());
        drop((p1, p2, b));
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_components_instances_share_its_outbound_cap() {
        let budget = Budget::new(100);
        let component = ComponentOutbound::new(Some(2));
        let (a, b) = (
            OutboundSlots::new(&budget, &component),
            OutboundSlots::new(&budget, &component),
        );
        let p1 = a.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        assert_eq!(a.acquire().err(), Some(Denied::Component(2)));
        assert_eq!(b.acquire().err(), Some(Denied::Component(2)));
        drop(p1);
        let p3 = b.acquire().unwrap();
        drop((p2, p3));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(component.in_flight.load(Ordering::Acquire), 0);
    }
}
