//! Sizing the pooling allocator to what this host can actually reserve.
//!
//! Wasmtime's default pool reserves about 6 TiB of address space (1000 slots of 4 GiB plus
//! guards). Boards with a 39-bit address space (VisionFive 2, Jetson Nano) cannot map that and
//! peers fall back to on-demand allocation, losing most of their throughput. wms probes the
//! largest reservation it can get and picks the best layout that fits in half of it:
//!
//! 1. 4 GiB reservations with 32 MiB guards ("static" memories: no bounds checks in code);
//! 2. reservations just large enough for the largest component memory limit, 64 KiB guards;
//! 3. the same with fewer slots;
//! 4. on-demand allocation when not even a small pool fits.

use std::fmt;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// The fewest slots worth pooling for; below this wms allocates on demand.
pub const MIN_POOL_SLOTS: u32 = 8;

/// Memories reserved per instance slot: a component built with the preview 1 adapter has two.
pub const MEMORIES_PER_SLOT: u32 = 2;

/// Tables reserved per instance slot (main module, adapter and component shims).
pub const TABLES_PER_SLOT: u32 = 4;

/// Core instances a component may create (its modules, the preview 1 adapter, shims).
pub const CORE_INSTANCES_PER_SLOT: u32 = 16;

/// Elements one table may hold; ordinary guests use a few thousand.
pub const TABLE_ELEMENTS: usize = 20_000;

/// Address space a slot needs besides its memories: an async stack (2 MiB) and its tables.
pub const SLOT_OVERHEAD: u64 = 2 * MIB + TABLES_PER_SLOT as u64 * TABLE_ELEMENTS as u64 * 8 + MIB;

/// The layout chosen for linear memories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    /// Concurrent instances the pool holds (0 when on demand).
    pub slots: u32,
    /// Address space reserved per linear memory.
    pub memory_reservation: u64,
    /// Guard region after each memory.
    pub guard_size: u64,
    /// The largest linear memory an instance may grow to.
    pub max_memory: u64,
    /// The largest contiguous reservation the probe obtained.
    pub probed_address_space: u64,
    /// False when the pool did not fit and instances are allocated on demand.
    pub pooling: bool,
}

impl PoolPlan {
    /// Address space the memory pool reserves.
    pub fn reserved(&self) -> u64 {
        u64::from(self.slots)
            * u64::from(MEMORIES_PER_SLOT)
            * (self.memory_reservation + self.guard_size)
    }
}

impl fmt::Display for PoolPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pooling {
            write!(
                f,
                "pooling allocator: {} slots, {} reservation + {} guard per memory, {} max memory, {} reserved of {} probed",
                self.slots,
                human(self.memory_reservation),
                human(self.guard_size),
                human(self.max_memory),
                human(self.reserved()),
                human(self.probed_address_space)
            )
        } else {
            write!(
                f,
                "on-demand allocation: a pool of {MIN_POOL_SLOTS} slots does not fit in {} of address space",
                human(self.probed_address_space)
            )
        }
    }
}

/// Formats a byte count with a binary unit.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes >= GIB {
        format!("{:.1}GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1}MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{}KiB", bytes / KIB)
    }
}

fn slot_size(reservation: u64, guard: u64) -> u64 {
    u64::from(MEMORIES_PER_SLOT) * (reservation + guard) + SLOT_OVERHEAD
}

/// Chooses a layout for `wanted_slots` instances whose memories grow to at most `max_memory`,
/// given `address_space` bytes of reservable address space.
pub fn plan(wanted_slots: u32, max_memory: u64, address_space: u64) -> PoolPlan {
    let budget = address_space / 2;
    let max_memory = max_memory.max(64 * KIB);
    let fits = |slots: u32, reservation: u64, guard: u64| {
        u64::from(slots) * slot_size(reservation, guard) <= budget
    };
    let base = PoolPlan {
        slots: wanted_slots,
        memory_reservation: 4 * GIB,
        guard_size: 32 * MIB,
        max_memory,
        probed_address_space: address_space,
        pooling: true,
    };
    // Static memories need the limit to fit in the 4 GiB reservation, which it always does for
    // 32-bit wasm.
    if max_memory <= 4 * GIB && fits(wanted_slots, 4 * GIB, 32 * MIB) {
        return base;
    }
    let reservation = max_memory.next_power_of_two().max(MIB);
    let guard = 64 * KIB;
    let per_slot = slot_size(reservation, guard);
    let affordable = (budget / per_slot).min(u64::from(wanted_slots)) as u32;
    if affordable >= MIN_POOL_SLOTS.min(wanted_slots) && affordable > 0 {
        return PoolPlan {
            slots: affordable,
            memory_reservation: reservation,
            guard_size: guard,
            ..base
        };
    }
    PoolPlan {
        slots: 0,
        pooling: false,
        ..base
    }
}

/// The largest contiguous anonymous reservation (no memory committed) this process can make,
/// found by halving from 128 TiB. Respects `ulimit -v` and emulator limits such as `qemu -R`.
pub fn probe_address_space() -> u64 {
    let mut size: u64 = 1 << 47;
    while size >= 16 * MIB {
        if try_reserve(size) {
            // Refine between size and 2*size in eighths.
            let mut best = size;
            for k in (1..8).rev() {
                let candidate = size + size / 8 * k;
                if try_reserve(candidate) {
                    best = candidate;
                    break;
                }
            }
            return best;
        }
        size /= 2;
    }
    0
}

#[cfg(unix)]
fn try_reserve(size: u64) -> bool {
    let Ok(len) = usize::try_from(size) else {
        return false;
    };
    // SAFETY: an anonymous PROT_NONE mapping touches no existing memory; it is unmapped at once.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if ptr == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(ptr, len);
    }
    true
}

#[cfg(not(unix))]
fn try_reserve(_size: u64) -> bool {
    false
}

/// Physical memory of the host, if known.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// The largest share of memory the pool keeps resident between requests by default: 1/16 of
/// what the host (or the cgroup wms runs in) has. A busy minute then cannot leave more than that
/// behind, on a 4 GiB board (256 MiB) as on a server.
pub const DEFAULT_RESIDENT_FRACTION: u64 = 16;
/// What one linear memory keeps resident at most (the most a request is expected to dirty; the
/// rest is given back with `madvise` when the instance ends).
const MAX_MEMORY_KEEP: u64 = 16 * MIB;
/// What one table keeps resident at most.
const MAX_TABLE_KEEP: u64 = MIB;

/// Where the resident budget came from, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetSource {
    /// `--pool-resident-budget` or `pool_resident_budget` in the manifest.
    Operator,
    /// 1/16 of the host's physical memory.
    Host(u64),
    /// 1/16 of the memory limit of the cgroup wms runs in (systemd `MemoryMax=`, a container).
    Cgroup(u64),
    /// Neither could be read: the per-slot maximum applies.
    Unknown,
}

/// How much memory the pool may keep resident between requests, in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidentBudget {
    pub bytes: u64,
    pub source: BudgetSource,
}

impl ResidentBudget {
    /// The operator's figure, else 1/16 of the smaller of the host's memory and the cgroup's
    /// limit.
    pub fn choose(operator: Option<u64>) -> Self {
        if let Some(bytes) = operator {
            return Self {
                bytes,
                source: BudgetSource::Operator,
            };
        }
        match memory_ceiling() {
            Some(Ceiling::Cgroup(cg)) => Self {
                bytes: cg / DEFAULT_RESIDENT_FRACTION,
                source: BudgetSource::Cgroup(cg),
            },
            Some(Ceiling::Host(host)) => Self {
                bytes: host / DEFAULT_RESIDENT_FRACTION,
                source: BudgetSource::Host(host),
            },
            None => Self {
                bytes: u64::MAX,
                source: BudgetSource::Unknown,
            },
        }
    }

    /// What each linear memory and each table may keep resident so that a pool of `slots`
    /// instances never keeps more than the budget, even when every slot has been used: seven
    /// eighths for memories, one eighth for tables, each capped at what a request is expected to
    /// dirty, in whole pages.
    pub fn keep_per_slot(&self, slots: u32) -> (u64, u64) {
        let share = self.bytes / u64::from(slots.max(1));
        let page = |n: u64| n & !(4 * KIB - 1);
        let keep = |n: u64, max: u64| page(n.min(max));
        (
            keep(
                share / 8 * 7 / u64::from(MEMORIES_PER_SLOT),
                MAX_MEMORY_KEEP,
            ),
            keep(share / 8 / u64::from(TABLES_PER_SLOT), MAX_TABLE_KEEP),
        )
    }
}

impl fmt::Display for ResidentBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            BudgetSource::Operator => write!(f, "{} (set by the operator)", human(self.bytes)),
            BudgetSource::Host(m) => write!(
                f,
                "{} (1/{DEFAULT_RESIDENT_FRACTION} of this host's {})",
                human(self.bytes),
                human(m)
            ),
            BudgetSource::Cgroup(m) => write!(
                f,
                "{} (1/{DEFAULT_RESIDENT_FRACTION} of the cgroup memory limit {})",
                human(self.bytes),
                human(m)
            ),
            BudgetSource::Unknown => write!(f, "unbounded (host memory unknown)"),
        }
    }
}

/// The most memory this process can have: the smaller of the host's memory and its cgroup's
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceiling {
    Host(u64),
    Cgroup(u64),
}

impl Ceiling {
    pub fn bytes(self) -> u64 {
        match self {
            Ceiling::Host(b) | Ceiling::Cgroup(b) => b,
        }
    }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ceiling::Host(b) => write!(f, "this host's {}", human(*b)),
            Ceiling::Cgroup(b) => write!(f, "the cgroup memory limit {}", human(*b)),
        }
    }
}

/// The smaller of the host's memory and the cgroup limit; `None` when neither can be read.
pub fn memory_ceiling() -> Option<Ceiling> {
    match (physical_memory(), cgroup_memory_limit()) {
        (host, Some(cg)) if host.is_none_or(|h| cg < h) => Some(Ceiling::Cgroup(cg)),
        (Some(host), _) => Some(Ceiling::Host(host)),
        (None, _) => None,
    }
}

/// The memory limit of the cgroup this process runs in, and of its ancestors (the smallest
/// applies): cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`. `None` when unlimited or
/// unreadable.
pub fn cgroup_memory_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<u64> = None;
    let mut consider = |v: Option<u64>| {
        if let Some(v) = v {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            // v2: the unified hierarchy (mounted at /sys/fs/cgroup, or /sys/fs/cgroup/unified
            // beside v1 controllers).
            let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .find(|r| std::path::Path::new(r).join("cgroup.controllers").exists());
            (root.map(std::path::PathBuf::from), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                Some(std::path::PathBuf::from("/sys/fs/cgroup/memory")),
                "memory.limit_in_bytes",
            )
        } else {
            continue;
        };
        let Some(root) = root else { continue };
        let mut dir = root.join(path.trim_start_matches('/'));
        loop {
            consider(read_limit(&dir.join(file)));
            if dir == root || !dir.pop() {
                break;
            }
        }
    }
    best
}

/// A cgroup memory limit file: `max` (v2) or a huge number (v1) mean none.
fn read_limit(file: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: u64 = text.trim().parse().ok()?;
    // v1 writes "unlimited" as the largest page-aligned i64.
    (v < (1 << 60)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_what_every_slot_keeps() {
        let b = ResidentBudget {
            bytes: 1 << 30,
            source: BudgetSource::Operator,
        };
        let (mem, table) = b.keep_per_slot(1000);
        // 1 GiB over 1000 slots: ~1 MiB each, 7/8 for two memories, 1/8 for four tables.
        assert!((400 << 10..=470 << 10).contains(&mem), "{mem}");
        assert_eq!(mem % 4096, 0);
        assert!(table <= 33 << 10, "{table}");
        assert!(1000 * (2 * mem + 4 * table) <= 1 << 30);
        // A large budget is capped per slot; a tiny one keeps nothing.
        let big = ResidentBudget {
            bytes: u64::MAX,
            source: BudgetSource::Unknown,
        };
        assert_eq!(big.keep_per_slot(10), (16 << 20, 1 << 20));
        let small = ResidentBudget {
            bytes: 1 << 20,
            source: BudgetSource::Operator,
        };
        assert_eq!(small.keep_per_slot(1000), (0, 0));
        let (mem, table) = small.keep_per_slot(16);
        assert_eq!((mem, table), (28 << 10, 0));
    }

    #[test]
    fn big_host_gets_static_memories() {
        let p = plan(1000, 128 * MIB, 128 << 40);
        assert!(p.pooling);
        assert_eq!(
            (p.slots, p.memory_reservation, p.guard_size),
            (1000, 4 * GIB, 32 * MIB)
        );
    }

    #[test]
    fn sv39_board_shrinks_reservations_not_slots() {
        // qemu -R 256G, as on a VisionFive 2.
        let p = plan(1000, 128 * MIB, 256 * GIB);
        assert!(p.pooling);
        assert_eq!(p.memory_reservation, 128 * MIB);
        assert_eq!(p.guard_size, 64 * KIB);
        assert_eq!(p.slots, 504);
        assert!(p.reserved() <= 128 * GIB);
    }

    #[test]
    fn tiny_address_space_falls_back_to_on_demand() {
        let p = plan(1000, 128 * MIB, GIB);
        assert!(!p.pooling);
        assert_eq!(p.slots, 0);
    }

    #[test]
    fn probe_finds_some_address_space() {
        assert!(probe_address_space() >= 1 << 30);
    }
}
