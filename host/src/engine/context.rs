//! The per-thread session context the op table works in: device, RNG, parameter
//! store and the backbone instances built for pretext tasks.
//!
//! A session thread installs its context before calling into plugins; the op
//! table's functions find it here. Never call into a plugin while inside [`with`].

use std::{cell::RefCell, collections::BTreeMap};

use candle_core::Device;
use patchwork_plugin_api::abi::{InstanceId, PluginRootRef};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::store::ParamStore;

/// `(name, variable, decays)` of every trainable parameter of this thread's
/// context (empty without one): what an optimizer is built over.
pub fn trainable_params() -> Vec<(String, candle_core::Var, bool)> {
    with(|c| {
        c.store
            .params()
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| {
                (
                    n.clone(),
                    p.var.clone(),
                    super::optim::decays(n, p.var.dims()),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Where backbones come from: the session's backbone plugin and its config text.
#[derive(Clone)]
pub struct BackboneSource {
    /// Plugin name, for messages.
    pub name: String,
    /// The loaded plugin's root module.
    pub root: PluginRootRef,
    /// RON config text.
    pub config: String,
}

/// One session's host-side state.
pub struct HostContext {
    /// The device every tensor is created on.
    pub device: Device,
    /// The session RNG (parameter init, dropout masks, random tensors).
    pub rng: ChaCha8Rng,
    /// Parameters and state.
    pub store: ParamStore,
    /// How `backbone_build` builds backbones.
    pub backbone: Option<BackboneSource>,
    /// Live backbone instances: id → (root, instance).
    pub backbones: BTreeMap<u64, (PluginRootRef, InstanceId)>,
    next_backbone: u64,
    /// Log lines plugins wrote since the last drain.
    pub logs: Vec<String>,
    /// bf16 autocast of matrix products ([`super::autocast`]).
    pub bf16_matmul: bool,
    /// Set while a hot-reloaded plugin is created: which parameters it asked for, and
    /// which it asked for in a new shape (re-initialised instead of refused).
    pub reload: Option<ReloadTrack>,
}

/// The parameters a plugin build asked for while being created.
#[derive(Debug, Clone, Default)]
pub struct ReloadTrack {
    /// Every name asked for.
    pub touched: std::collections::BTreeSet<String>,
    /// Names asked for in another shape than stored (re-initialised).
    pub reshaped: Vec<String>,
}

impl HostContext {
    /// A fresh context on `device`, RNG seeded with `seed`.
    pub fn new(device: Device, seed: u64) -> Self {
        Self {
            store: ParamStore::new(device.clone()),
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
            backbone: None,
            backbones: BTreeMap::new(),
            next_backbone: 1,
            logs: Vec::new(),
            bf16_matmul: false,
            reload: None,
        }
    }

    /// Registers a backbone instance and returns its host-side id.
    pub fn add_backbone(&mut self, root: PluginRootRef, instance: InstanceId) -> u64 {
        let id = self.next_backbone;
        self.next_backbone += 1;
        self.backbones.insert(id, (root, instance));
        id
    }
}

thread_local! {
    static CURRENT: RefCell<Option<HostContext>> = const { RefCell::new(None) };
}

/// Installs `ctx` as this thread's context, returning the previous one.
pub fn install(ctx: HostContext) -> Option<HostContext> {
    CURRENT.with(|c| c.borrow_mut().replace(ctx))
}

/// Removes and returns this thread's context.
pub fn take() -> Option<HostContext> {
    CURRENT.with(|c| c.borrow_mut().take())
}

/// Runs `f` on this thread's context; `None` when none is installed.
pub fn with<R>(f: impl FnOnce(&mut HostContext) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f))
}

/// This thread's device, or the CPU when no context is installed.
pub fn device() -> Device {
    with(|c| c.device.clone()).unwrap_or(Device::Cpu)
}
