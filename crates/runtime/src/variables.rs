//! Spin's variables interfaces for guests: `fermyon:spin/variables@2.0.0` (Spin 2's package,
//! imported by the Spin SDKs up to 5), `spin:variables/variables@3.0.0` (Spin 3's, SDKs 6 and 7)
//! and `wasi:config/store@0.2.0-draft-2024-09-27` (both). A guest sees only the variables its
//! component declares, with the values resolved at start ([`wms_manifest::App::resolve_variables`]),
//! and gets Spin's answers otherwise: `invalid-name` for a name Spin would refuse, `undefined` for
//! one its component does not declare (`wasi:config` answers `none` to both).
//!
//! The WIT is the Spin SDK's own, read from its crates.io sources (see build.rs and
//! `spin-wit/Cargo.toml`). `wasmtime-wasi-config` is not used: it serves `wasi:config@0.2.0-rc.1`,
//! which is not the version the Spin SDKs import.

use std::sync::Arc;

use wasmtime::component::{Accessor, HasData, Linker};
use wms_manifest::VariableValues;

use crate::guest::HostState;
use crate::wt;

mod spin2 {
    spin_sdk_5_bindgen! {
        inline: "
            package wms:spin2-host;
            world imports {
                import fermyon:spin/variables@2.0.0;
                import wasi:config/store@0.2.0-draft-2024-09-27;
            }
        ",
    }
}

mod spin3 {
    spin_sdk_7_bindgen! {
        inline: "
            package wms:spin3-host;
            world imports {
                import spin:variables/variables@3.0.0;
            }
        ",
    }
}

// Two versions of `fermyon:spin` are in the SDK's WIT: the module names the version.
use spin2::fermyon::spin2_0_0::variables as v2;
use spin2::wasi::config::store;
use spin3::spin::variables::variables as v3;

/// One instance's view of its component's variables.
pub(crate) struct GuestVariables {
    component: Arc<str>,
    values: Arc<VariableValues>,
}

impl GuestVariables {
    pub(crate) fn new(component: Arc<str>, values: Arc<VariableValues>) -> Self {
        Self { component, values }
    }

    /// Spin's answer to `get(name)`.
    fn get(&self, name: &str) -> Result<String, Lookup> {
        if let Err(e) = wms_manifest::variables::check_name(name) {
            return Err(Lookup::InvalidName(e));
        }
        if self.values.0.is_empty() {
            return Err(Lookup::Undefined(format!(
                "no variable for component {:?}",
                &*self.component
            )));
        }
        self.values.0.get(name).cloned().ok_or_else(|| {
            Lookup::Undefined(format!("no variable for {:?}.{name:?}", &*self.component))
        })
    }
}

enum Lookup {
    InvalidName(String),
    Undefined(String),
}

impl v2::Host for GuestVariables {
    fn get(&mut self, name: String) -> Result<String, v2::Error> {
        GuestVariables::get(self, &name).map_err(|e| match e {
            Lookup::InvalidName(m) => v2::Error::InvalidName(m),
            Lookup::Undefined(m) => v2::Error::Undefined(m),
        })
    }
}

impl store::Host for GuestVariables {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        // As Spin answers (and the wasi-config proposal advises): an unknown or invalid key is
        // `none`, not an error.
        Ok(GuestVariables::get(self, &key).ok())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self
            .values
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl v3::Host for GuestVariables {}

impl<T> v3::HostWithStore<T> for HasVariables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, v3::Error> {
        accessor.with(|mut access| {
            GuestVariables::get(access.get(), &name).map_err(|e| match e {
                Lookup::InvalidName(m) => v3::Error::InvalidName(m),
                Lookup::Undefined(m) => v3::Error::Undefined(m),
            })
        })
    }
}

/// The store data the variables interfaces see.
pub(crate) struct HasVariables;

impl HasData for HasVariables {
    type Data<'a> = &'a mut GuestVariables;
}

/// Links the three interfaces, each answering from the instance's [`GuestVariables`].
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v2::add_to_linker::<HostState, HasVariables>(linker, HostState::variables).map_err(wt)?;
    store::add_to_linker::<HostState, HasVariables>(linker, HostState::variables).map_err(wt)?;
    v3::add_to_linker::<HostState, HasVariables>(linker, HostState::variables).map_err(wt)?;
    Ok(())
}
