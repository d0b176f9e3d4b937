//! The key-value interfaces guests import, over the app's [`crate::kv::KvStores`]:
//! `fermyon:spin/key-value@2.0.0` (Spin 2's, the Spin SDKs up to 5: `spin_sdk::key_value`),
//! `spin:key-value/key-value@3.0.0` (Spin 3's async interface, SDKs 6 and 7:
//! `spin_sdk::key_value`) and `wasi:keyvalue` `store`, `atomics` and `batch` at
//! `0.2.0-draft2` (the version Spin 3 serves); the SQLite interfaces are bound here too and
//! served by `crate::sqlite`. The WIT is the Spin SDKs' own (build.rs: SDK 5's, and SDK 7's for
//! `spin:key-value@3.0.0` and `spin:sqlite@3.1.0`). `wasmtime-wasi-keyvalue` is not used: it
//! serves an in-memory store only, with no way to plug in another backend.
//!
//! A component opens only the stores its manifest lists in `key_value_stores`; any other label
//! gets Spin's `access-denied`. A failed operation is Spin's `other` with a message (a limit, an
//! unreachable Redis), never a trap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, FutureReader, HasData, Linker, Resource, ResourceTable, StreamProducer,
    StreamReader, StreamResult, VecBuffer,
};

use crate::guest::HostState;
use crate::kv::{KvError, KvStore, KvStores, Swap};
use crate::wt;

mod bindings {
    spin_sdk_5_bindgen! {
        inline: "
            package wms:spin2-stores;
            world imports {
                import fermyon:spin/key-value@2.0.0;
                import fermyon:spin/sqlite@2.0.0;
                import spin:sqlite/sqlite@3.0.0;
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:keyvalue/batch@0.2.0-draft2;
            }
        ",
        imports: { default: async },
        with: {
            "fermyon:spin/key-value@2.0.0.store": crate::kv_host::OpenStore,
            "fermyon:spin/sqlite@2.0.0.connection": crate::sqlite::OpenDatabase,
            "spin:sqlite/sqlite@3.0.0.connection": crate::sqlite::OpenDatabase,
            "wasi:keyvalue/store@0.2.0-draft2.bucket": crate::kv_host::OpenStore,
            "wasi:keyvalue/atomics@0.2.0-draft2.cas": crate::kv_host::Cas,
        },
    }
}

/// Spin 3's async packages, as the Spin SDK 7 imports them. `get-keys` and `execute-async`
/// are trappable: making their stream and future can fail (wasmtime's table of them is full).
mod bindings7 {
    spin_sdk_7_bindgen! {
        inline: "
            package wms:spin3-stores;
            world imports {
                import spin:key-value/key-value@3.0.0;
                import spin:sqlite/sqlite@3.1.0;
            }
        ",
        imports: {
            "spin:key-value/key-value.[method]store.get-keys": trappable,
            "spin:sqlite/sqlite.[method]connection.execute-async": trappable,
            default: async,
        },
        with: {
            "spin:key-value/key-value@3.0.0.store": crate::kv_host::OpenStore,
            "spin:sqlite/sqlite@3.1.0.connection": crate::sqlite::OpenDatabase,
        },
    }
}

use bindings::fermyon::spin2_0_0::key_value as v2;
pub(crate) use bindings::fermyon::spin2_0_0::sqlite as spin2_sqlite;
pub(crate) use bindings::spin::sqlite::sqlite as spin3_sqlite;
use bindings::wasi::keyvalue::{atomics, batch, store as wasi_store};
use bindings7::spin::key_value::key_value as v3;
pub(crate) use bindings7::spin::sqlite::sqlite as spin31_sqlite;

/// An open store, as a guest holds it.
pub struct OpenStore(Arc<KvStore>);

/// A key read for a compare-and-swap (`wasi:keyvalue/atomics`).
pub struct Cas {
    store: Arc<KvStore>,
    key: String,
    current: Option<Vec<u8>>,
}

/// The most stores and databases one instance holds open at once (Spin's `store-table-full`
/// past it).
const MAX_OPEN: usize = 256;
/// Most bytes of values one `wasi:keyvalue/batch.get-many` returns: its keys may repeat, so
/// without this a short list of keys could make the host hold any multiple of the value limit.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most bytes of values one instance's compare-and-swap handles hold together: each keeps the
/// value it read, so without this [`MAX_OPEN`] handles could hold that many times the value
/// limit.
const MAX_CAS_BYTES: usize = 16 << 20;
/// Most bytes the streams of one instance's `get-keys` and `execute-async` answers hold together
/// until the guest has read or dropped them: the host keeps an answer's items until then, and
/// an async guest may ask for many at once, so without this one instance could make the host
/// hold any multiple of the largest answer (100,000 keys; 16 MiB of rows). Room for one of
/// each.
pub(crate) const MAX_STREAMED_BYTES: usize = 48 << 20;

/// An instance's count of the bytes its unread streams hold (see [`MAX_STREAMED_BYTES`]).
#[derive(Clone)]
pub(crate) struct StreamBudget(Arc<AtomicUsize>);

impl StreamBudget {
    /// `items` (of `bytes` together) to hand to a stream, within [`MAX_STREAMED_BYTES`] for all
    /// of the instance's unread streams.
    pub(crate) fn stream<T>(&self, items: Vec<T>, bytes: usize) -> Result<Streamed<T>, String> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes)
                    .filter(|&total| total <= MAX_STREAMED_BYTES)
            })
            .map_err(|_| {
                format!(
                    "this instance's unread streams would hold more than {} MiB; read or drop some first",
                    MAX_STREAMED_BYTES >> 20
                )
            })?;
        Ok(Streamed {
            items: items.into_iter(),
            bytes,
            held: self.0.clone(),
        })
    }
}

/// What one instance may open: its component's stores and databases, and its own handles.
pub(crate) struct GuestStores {
    pub(crate) component: Arc<str>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) table: ResourceTable,
    /// The longest one SQLite statement may run (the component's request timeout).
    pub(crate) sqlite_timeout: std::time::Duration,
    /// Bytes of values the instance's compare-and-swap handles hold (at most [`MAX_CAS_BYTES`]).
    cas_bytes: usize,
    /// Bytes the instance's unread streams hold (at most [`MAX_STREAMED_BYTES`]).
    streamed_bytes: Arc<AtomicUsize>,
}

/// One answer's items, handed to the guest's stream as it reads them (at most what each read
/// asks for); their bytes count against the instance's [`MAX_STREAMED_BYTES`] until the last
/// is delivered or the stream is dropped.
pub(crate) struct Streamed<T> {
    items: std::vec::IntoIter<T>,
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl<T> Drop for Streamed<T> {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl<T, D> StreamProducer<D> for Streamed<T>
where
    T: Send + Sync + Unpin + 'static,
{
    type Item = T;
    type Buffer = VecBuffer<T>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, T, VecBuffer<T>>,
        _: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        // A host reader (none here) takes everything; a zero-length read, nothing.
        let n = destination.remaining(store).unwrap_or(usize::MAX);
        let items: Vec<T> = this.items.by_ref().take(n).collect();
        destination.set_buffer(items.into());
        Poll::Ready(Ok(if this.items.len() == 0 {
            StreamResult::Dropped
        } else {
            StreamResult::Completed
        }))
    }
}

/// A component's stores and databases, by label (only those it declares).
#[derive(Default)]
pub(crate) struct Grants {
    pub(crate) key_value: Vec<(String, Arc<KvStore>)>,
    pub(crate) sqlite: Vec<(String, Arc<crate::sqlite::Database>)>,
}

impl Grants {
    /// The stores and databases of `component` out of the app's.
    pub(crate) fn of(
        component: &wms_manifest::Component,
        kv: &KvStores,
        sqlite: &crate::sqlite::Databases,
    ) -> anyhow::Result<Self> {
        let mut g = Grants::default();
        for label in &component.key_value_stores {
            let s = kv.get(label).ok_or_else(|| {
                anyhow::anyhow!(
                    "component `{}`: key-value store `{label}` was not opened",
                    component.id
                )
            })?;
            g.key_value.push((label.clone(), s));
        }
        for label in &component.sqlite_databases {
            let d = sqlite.get(label).ok_or_else(|| {
                anyhow::anyhow!(
                    "component `{}`: SQLite database `{label}` was not opened",
                    component.id
                )
            })?;
            g.sqlite.push((label.clone(), d));
        }
        Ok(g)
    }
}

/// Why a guest may not open a store.
pub(crate) enum Refused {
    AccessDenied,
    TableFull,
}

impl GuestStores {
    pub(crate) fn new(
        component: Arc<str>,
        grants: Arc<Grants>,
        sqlite_timeout: std::time::Duration,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_OPEN);
        Self {
            component,
            grants,
            table,
            sqlite_timeout,
            cas_bytes: 0,
            streamed_bytes: Arc::default(),
        }
    }

    /// `items` (of `bytes` together) to hand to a stream, within [`MAX_STREAMED_BYTES`] for all
    /// of the instance's unread streams.
    pub(crate) fn stream<T>(&self, items: Vec<T>, bytes: usize) -> Result<Streamed<T>, String> {
        self.stream_budget().stream(items, bytes)
    }

    /// The instance's count of unread stream bytes, for other interfaces' streams.
    pub(crate) fn stream_budget(&self) -> StreamBudget {
        StreamBudget(self.streamed_bytes.clone())
    }

    /// An empty stream's items.
    pub(crate) fn no_items<T>(&self) -> Streamed<T> {
        Streamed {
            items: Vec::new().into_iter(),
            bytes: 0,
            held: self.streamed_bytes.clone(),
        }
    }

    /// Keeps `cas` as a guest handle, within [`MAX_CAS_BYTES`] for all of the instance's.
    fn hold_cas(&mut self, cas: Cas) -> Result<Resource<Cas>, wasi_store::Error> {
        let len = cas.current.as_ref().map_or(0, Vec::len);
        if self.cas_bytes + len > MAX_CAS_BYTES {
            return Err(wasi_store::Error::Other(format!(
                "this instance's compare-and-swap handles would hold more than {} MiB of values; drop or swap some first",
                MAX_CAS_BYTES >> 20
            )));
        }
        let handle = self
            .table
            .push(cas)
            .map_err(|e| wasi_store::Error::Other(e.to_string()))?;
        self.cas_bytes += len;
        Ok(handle)
    }

    /// Takes back the guest's handle `cas`.
    fn release_cas(&mut self, cas: Resource<Cas>) -> wasmtime::Result<Cas> {
        let cas = self.table.delete(cas)?;
        self.cas_bytes -= cas.current.as_ref().map_or(0, Vec::len);
        Ok(cas)
    }

    fn open(&mut self, label: &str) -> Result<Resource<OpenStore>, Refused> {
        let Some((_, store)) = self.grants.key_value.iter().find(|(l, _)| l == label) else {
            tracing::debug!(component = %self.component, "key-value store `{label}` refused: not in its key_value_stores");
            return Err(Refused::AccessDenied);
        };
        self.table
            .push(OpenStore(store.clone()))
            .map_err(|_| Refused::TableFull)
    }

    fn store(&self, r: &Resource<OpenStore>) -> Result<Arc<KvStore>, KvError> {
        self.table
            .get(r)
            .map(|s| s.0.clone())
            .map_err(|e| KvError(format!("not an open store: {e}")))
    }
}

/// The store data the key-value and SQLite interfaces see.
pub(crate) struct HasStores;

impl HasData for HasStores {
    type Data<'a> = &'a mut GuestStores;
}

// fermyon:spin/key-value@2.0.0

fn v2_error(e: KvError) -> v2::Error {
    v2::Error::Other(e.0)
}

impl v2::Host for GuestStores {}

impl v2::HostStore for GuestStores {
    async fn open(&mut self, label: String) -> Result<Resource<OpenStore>, v2::Error> {
        GuestStores::open(self, &label).map_err(|r| match r {
            Refused::AccessDenied => v2::Error::AccessDenied,
            Refused::TableFull => v2::Error::StoreTableFull,
        })
    }

    async fn get(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v2::Error> {
        let s = self.store(&this).map_err(v2_error)?;
        s.get(key).await.map_err(v2_error)
    }

    async fn set(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v2::Error> {
        let s = self.store(&this).map_err(v2_error)?;
        s.set(key, value).await.map_err(v2_error)
    }

    async fn delete(&mut self, this: Resource<OpenStore>, key: String) -> Result<(), v2::Error> {
        let s = self.store(&this).map_err(v2_error)?;
        s.delete(key).await.map_err(v2_error)
    }

    async fn exists(&mut self, this: Resource<OpenStore>, key: String) -> Result<bool, v2::Error> {
        let s = self.store(&this).map_err(v2_error)?;
        s.exists(key).await.map_err(v2_error)
    }

    async fn get_keys(&mut self, this: Resource<OpenStore>) -> Result<Vec<String>, v2::Error> {
        let s = self.store(&this).map_err(v2_error)?;
        s.keys().await.map_err(v2_error)
    }

    async fn drop(&mut self, this: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// spin:key-value/key-value@3.0.0: the same operations as 2.0.0, as async functions: the open
// store is looked up with the instance's state in hand, then the operation is awaited without
// it (the guest's other calls may run meanwhile).

fn v3_error(e: KvError) -> v3::Error {
    v3::Error::Other(e.0)
}

/// The guest's open store `this`, looked up through `accessor`.
fn v3_store<T>(
    accessor: &Accessor<T, HasStores>,
    this: &Resource<OpenStore>,
) -> Result<Arc<KvStore>, v3::Error> {
    accessor.with(|mut a| a.get().store(this).map_err(v3_error))
}

impl v3::Host for GuestStores {}

impl v3::HostStore for GuestStores {
    async fn drop(&mut self, this: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> v3::HostStoreWithStore<T> for HasStores {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<OpenStore>, v3::Error> {
        accessor.with(|mut a| {
            GuestStores::open(a.get(), &label).map_err(|r| match r {
                Refused::AccessDenied => v3::Error::AccessDenied,
                Refused::TableFull => v3::Error::StoreTableFull,
            })
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v3::Error> {
        let s = v3_store(accessor, &this)?;
        s.get(key).await.map_err(v3_error)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v3::Error> {
        let s = v3_store(accessor, &this)?;
        s.set(key, value).await.map_err(v3_error)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<(), v3::Error> {
        let s = v3_store(accessor, &this)?;
        s.delete(key).await.map_err(v3_error)
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<bool, v3::Error> {
        let s = v3_store(accessor, &this)?;
        s.exists(key).await.map_err(v3_error)
    }

    /// Every key (at most [`crate::kv::MAX_LISTED_KEYS`], as 2.0.0's `get-keys`), read before
    /// the stream is handed over (within [`MAX_STREAMED_BYTES`]); an error is an empty stream
    /// and the error in the future.
    async fn get_keys(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), v3::Error>>)> {
        let keys = match v3_store(accessor, &this) {
            Ok(s) => s.keys().await.map_err(v3_error),
            Err(e) => Err(e),
        };
        accessor.with(|mut a| {
            let stores = a.get();
            let (keys, result) = match keys {
                Ok(keys) => {
                    let bytes = keys.iter().map(String::len).sum();
                    match stores.stream(keys, bytes) {
                        Ok(keys) => (keys, Ok(())),
                        Err(e) => (stores.no_items(), Err(v3::Error::Other(e))),
                    }
                }
                Err(e) => (stores.no_items(), Err(e)),
            };
            let keys = StreamReader::new(&mut a, keys)?;
            let result =
                FutureReader::new(&mut a, std::future::ready(Ok::<_, wasmtime::Error>(result)))?;
            Ok((keys, result))
        })
    }
}

// wasi:keyvalue@0.2.0-draft2

fn wasi_error(e: KvError) -> wasi_store::Error {
    wasi_store::Error::Other(e.0)
}

impl wasi_store::Host for GuestStores {
    async fn open(&mut self, identifier: String) -> Result<Resource<OpenStore>, wasi_store::Error> {
        GuestStores::open(self, &identifier).map_err(|r| match r {
            Refused::AccessDenied => wasi_store::Error::AccessDenied,
            Refused::TableFull => {
                wasi_store::Error::Other(format!("more than {MAX_OPEN} stores open"))
            }
        })
    }
}

impl wasi_store::HostBucket for GuestStores {
    async fn get(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        let s = self.store(&this).map_err(wasi_error)?;
        s.get(key).await.map_err(wasi_error)
    }

    async fn set(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wasi_store::Error> {
        let s = self.store(&this).map_err(wasi_error)?;
        s.set(key, value).await.map_err(wasi_error)
    }

    async fn delete(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<(), wasi_store::Error> {
        let s = self.store(&this).map_err(wasi_error)?;
        s.delete(key).await.map_err(wasi_error)
    }

    async fn exists(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> Result<bool, wasi_store::Error> {
        let s = self.store(&this).map_err(wasi_error)?;
        s.exists(key).await.map_err(wasi_error)
    }

    /// Every key in one response (no cursor), as Spin answers.
    async fn list_keys(
        &mut self,
        this: Resource<OpenStore>,
        _cursor: Option<String>,
    ) -> Result<wasi_store::KeyResponse, wasi_store::Error> {
        let s = self.store(&this).map_err(wasi_error)?;
        let keys = s.keys().await.map_err(wasi_error)?;
        Ok(wasi_store::KeyResponse { keys, cursor: None })
    }

    async fn drop(&mut self, this: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl atomics::Host for GuestStores {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> Result<i64, wasi_store::Error> {
        let s = self.store(&bucket).map_err(wasi_error)?;
        s.increment(key, delta).await.map_err(wasi_error)
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let Cas {
            store,
            key,
            current,
        } = self
            .release_cas(cas)
            .map_err(|e| atomics::CasError::StoreError(wasi_store::Error::Other(e.to_string())))?;
        match store.swap(key.clone(), current, value).await {
            Ok(Swap::Done) => Ok(()),
            Ok(Swap::Changed(now)) => {
                let cas = self
                    .hold_cas(Cas {
                        store,
                        key,
                        current: now,
                    })
                    .map_err(atomics::CasError::StoreError)?;
                Err(atomics::CasError::CasFailed(cas))
            }
            Err(e) => Err(atomics::CasError::StoreError(wasi_error(e))),
        }
    }
}

impl atomics::HostCas for GuestStores {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> Result<Resource<Cas>, wasi_store::Error> {
        let store = self.store(&bucket).map_err(wasi_error)?;
        let current = store.get(key.clone()).await.map_err(wasi_error)?;
        self.hold_cas(Cas {
            store,
            key,
            current,
        })
    }

    async fn current(&mut self, this: Resource<Cas>) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        self.table
            .get(&this)
            .map(|c| c.current.clone())
            .map_err(|e| wasi_store::Error::Other(e.to_string()))
    }

    async fn drop(&mut self, this: Resource<Cas>) -> wasmtime::Result<()> {
        self.release_cas(this)?;
        Ok(())
    }
}

impl batch::Host for GuestStores {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error> {
        let s = self.store(&bucket).map_err(wasi_error)?;
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            let v = s.get(key.clone()).await.map_err(wasi_error)?;
            bytes = bytes.saturating_add(v.as_ref().map_or(0, Vec::len));
            if bytes > MAX_BATCH_BYTES {
                return Err(wasi_store::Error::Other(format!(
                    "get-many would return more than {} MiB of values; ask for fewer keys at a time",
                    MAX_BATCH_BYTES >> 20
                )));
            }
            out.push((key, v));
        }
        Ok(out)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wasi_store::Error> {
        let s = self.store(&bucket).map_err(wasi_error)?;
        for (key, value) in key_values {
            s.set(key, value).await.map_err(wasi_error)?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<(), wasi_store::Error> {
        let s = self.store(&bucket).map_err(wasi_error)?;
        for key in keys {
            s.delete(key).await.map_err(wasi_error)?;
        }
        Ok(())
    }
}

/// Links the key-value and SQLite interfaces, each answering from the instance's
/// [`GuestStores`].
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v2::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    spin2_sqlite::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    spin3_sqlite::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    spin31_sqlite::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    v3::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    wasi_store::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    atomics::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    batch::add_to_linker::<HostState, HasStores>(linker, HostState::stores).map_err(wt)?;
    Ok(())
}
