//! The glue the export macros expand to: an instance table per library, panic
//! catching around every call, and one root-module builder per plugin kind.
//!
//! Authors never call this module directly; use [`crate::export_backbone!`],
//! [`crate::export_pretext!`] or [`crate::export_adaptation!`].

use std::{
    any::Any,
    collections::BTreeMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RErr, ROk, RResult, RStr, RString, RVec},
};
use serde::Serialize;

use crate::{
    Adaptation, Backbone, Batch, Error, ForwardOptions, ParamScope, PretextTask, Result,
    abi::{
        AbiError, BackboneOut, BatchAbi, ErrorKind, ForwardOpts, Geometry, HostOpsRef, InstanceId,
        Manifest, Metric, PluginKind, PluginRoot, PluginRootRef, REQUIRED_HOST_LEVEL, StepInfo,
        StepOut, TensorId, ViewSpec,
    },
    config::{parse_config, to_ron_text},
    kinds::StepOutput,
    tensor::Host,
};

struct Instance {
    host: Host,
    object: Box<dyn Any + Send>,
}

type Slot = Arc<Mutex<Instance>>;

static INSTANCES: Mutex<BTreeMap<u64, Slot>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn insert<T: Send + 'static>(host: Host, object: T) -> Result<InstanceId> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let slot = Arc::new(Mutex::new(Instance {
        host,
        object: Box::new(object),
    }));
    INSTANCES
        .lock()
        .map_err(|_| Error::msg("instance table poisoned"))?
        .insert(id, slot);
    Ok(InstanceId(id))
}

fn with<T: 'static, R>(id: InstanceId, f: impl FnOnce(Host, &mut T) -> Result<R>) -> Result<R> {
    let slot = INSTANCES
        .lock()
        .map_err(|_| Error::msg("instance table poisoned"))?
        .get(&id.0)
        .cloned()
        .ok_or_else(|| Error::InvalidHandle(format!("no plugin instance #{}", id.0)))?;
    let mut guard = slot.lock().map_err(|_| {
        Error::msg(format!(
            "instance #{} was poisoned by an earlier panic",
            id.0
        ))
    })?;
    let host = guard.host;
    let object = guard
        .object
        .downcast_mut::<T>()
        .ok_or_else(|| Error::WrongKind(format!("instance #{} is of another type", id.0)))?;
    f(host, object)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning errors and panics into an [`AbiError`].
pub fn guard<R>(f: impl FnOnce() -> Result<R>) -> RResult<R, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => RErr(AbiError::new(ErrorKind::PANICKED, panic_message(&*payload))),
    }
}

/// The manifest of a plugin whose config type is `C`.
pub fn manifest<C: Serialize + Default>(
    name: &str,
    kind: PluginKind,
    version: &str,
    description: &str,
) -> Manifest {
    Manifest {
        name: name.into(),
        kind,
        version: version.into(),
        description: description.into(),
        default_config: to_ron_text(&C::default()).into(),
        min_host_level: REQUIRED_HOST_LEVEL,
        api_version: env!("CARGO_PKG_VERSION").into(),
    }
}

extern "C" fn destroy(id: InstanceId) {
    let _ = catch_unwind(|| {
        if let Ok(mut table) = INSTANCES.lock() {
            table.remove(&id.0);
        }
    });
}

fn wrong(kind: &str) -> AbiError {
    AbiError::new(
        ErrorKind::WRONG_KIND,
        format!("this plugin is not a {kind}"),
    )
}

extern "C" fn no_geometry(_: InstanceId) -> RResult<Geometry, AbiError> {
    RErr(wrong("backbone"))
}
extern "C" fn no_forward(
    _: InstanceId,
    _: TensorId,
    _: ForwardOpts,
) -> RResult<BackboneOut, AbiError> {
    RErr(wrong("backbone"))
}
extern "C" fn no_views(_: InstanceId) -> RResult<RVec<ViewSpec>, AbiError> {
    RErr(wrong("pretext task"))
}
extern "C" fn no_pretext_step(
    _: InstanceId,
    _: &BatchAbi,
    _: StepInfo,
) -> RResult<StepOut, AbiError> {
    RErr(wrong("pretext task"))
}
extern "C" fn no_frozen(_: InstanceId, _: StepInfo) -> RResult<RVec<RString>, AbiError> {
    RErr(wrong("pretext task"))
}
extern "C" fn no_after_step(_: InstanceId, _: StepInfo) -> RResult<(), AbiError> {
    RErr(wrong("pretext task"))
}
extern "C" fn no_result_scope(_: InstanceId) -> RResult<RString, AbiError> {
    RErr(wrong("pretext task"))
}
extern "C" fn no_adapt_step(
    _: InstanceId,
    _: &BatchAbi,
    _: StepInfo,
) -> RResult<StepOut, AbiError> {
    RErr(wrong("adaptation"))
}
extern "C" fn no_adapt_evaluate(_: InstanceId, _: &BatchAbi) -> RResult<RVec<Metric>, AbiError> {
    RErr(wrong("adaptation"))
}

fn batch_from_abi(host: Host, batch: &BatchAbi) -> Result<Batch> {
    let views = batch
        .views
        .iter()
        .map(|id| host.borrow(*id))
        .collect::<Result<Vec<_>>>()?;
    let labels = match batch.labels.into_option() {
        Some(id) => Some(host.borrow(id)?),
        None => None,
    };
    Ok(Batch { views, labels })
}

fn step_to_abi(out: StepOutput) -> StepOut {
    StepOut {
        loss: out.loss.into_raw(),
        metrics: out
            .metrics
            .into_iter()
            .map(|(name, value)| Metric {
                name: name.into(),
                value,
            })
            .collect(),
    }
}

// ---- backbone ---------------------------------------------------------------------

extern "C" fn backbone_create<T: Backbone>(
    config: RStr<'_>,
    host: HostOpsRef,
    scope: RStr<'_>,
) -> RResult<InstanceId, AbiError> {
    guard(|| {
        let cfg = parse_config::<T::Config>(config.as_str())?;
        let host = Host::new(host);
        let backbone = T::new(cfg, ParamScope::new(host, scope.as_str()))?;
        insert(host, backbone)
    })
}

extern "C" fn backbone_geometry<T: Backbone>(id: InstanceId) -> RResult<Geometry, AbiError> {
    guard(|| with::<T, _>(id, |_, b| Ok(b.geometry())))
}

extern "C" fn backbone_forward<T: Backbone>(
    id: InstanceId,
    images: TensorId,
    opts: ForwardOpts,
) -> RResult<BackboneOut, AbiError> {
    guard(|| {
        with::<T, _>(id, |host, b| {
            let images = host.borrow(images)?;
            let keep = match opts.keep.into_option() {
                Some(k) => Some(host.borrow(k)?),
                None => None,
            };
            let options = ForwardOptions {
                train: opts.train,
                layers: opts.layers,
                attention: opts.attention,
                keep,
            };
            let out = b.forward(&images, &options)?;
            Ok(BackboneOut {
                cls: out.cls.into_raw(),
                patches: out.patches.into_raw(),
                layers: out.layers.into_iter().map(|t| t.into_raw()).collect(),
                attention: out.attention.map(|t| t.into_raw()).into(),
            })
        })
    })
}

/// The root module of a backbone plugin.
pub fn backbone_root<T: Backbone>(manifest: extern "C" fn() -> Manifest) -> PluginRootRef {
    PluginRoot {
        manifest,
        create: backbone_create::<T>,
        destroy,
        backbone_geometry: backbone_geometry::<T>,
        backbone_forward: backbone_forward::<T>,
        pretext_views: no_views,
        pretext_step: no_pretext_step,
        pretext_frozen: no_frozen,
        pretext_after_step: no_after_step,
        pretext_result_scope: no_result_scope,
        adapt_step: no_adapt_step,
        adapt_evaluate: no_adapt_evaluate,
    }
    .leak_into_prefix()
}

// ---- pretext ----------------------------------------------------------------------

extern "C" fn pretext_create<T: PretextTask>(
    config: RStr<'_>,
    host: HostOpsRef,
    scope: RStr<'_>,
) -> RResult<InstanceId, AbiError> {
    guard(|| {
        let cfg = parse_config::<T::Config>(config.as_str())?;
        let host = Host::new(host);
        let task = T::new(cfg, host, ParamScope::new(host, scope.as_str()))?;
        insert(host, task)
    })
}

extern "C" fn pretext_views<T: PretextTask>(id: InstanceId) -> RResult<RVec<ViewSpec>, AbiError> {
    guard(|| with::<T, _>(id, |_, t| Ok(t.views().into())))
}

extern "C" fn pretext_step<T: PretextTask>(
    id: InstanceId,
    batch: &BatchAbi,
    info: StepInfo,
) -> RResult<StepOut, AbiError> {
    guard(|| {
        with::<T, _>(id, |host, t| {
            let batch = batch_from_abi(host, batch)?;
            Ok(step_to_abi(t.step(&batch, &info)?))
        })
    })
}

extern "C" fn pretext_frozen<T: PretextTask>(
    id: InstanceId,
    info: StepInfo,
) -> RResult<RVec<RString>, AbiError> {
    guard(|| {
        with::<T, _>(id, |_, t| {
            Ok(t.frozen(&info).into_iter().map(RString::from).collect())
        })
    })
}

extern "C" fn pretext_after_step<T: PretextTask>(
    id: InstanceId,
    info: StepInfo,
) -> RResult<(), AbiError> {
    guard(|| with::<T, _>(id, |_, t| t.after_step(&info)))
}

extern "C" fn pretext_result_scope<T: PretextTask>(id: InstanceId) -> RResult<RString, AbiError> {
    guard(|| with::<T, _>(id, |_, t| Ok(t.result_scope().into())))
}

/// The root module of a pretext-task plugin.
pub fn pretext_root<T: PretextTask>(manifest: extern "C" fn() -> Manifest) -> PluginRootRef {
    PluginRoot {
        manifest,
        create: pretext_create::<T>,
        destroy,
        backbone_geometry: no_geometry,
        backbone_forward: no_forward,
        pretext_views: pretext_views::<T>,
        pretext_step: pretext_step::<T>,
        pretext_frozen: pretext_frozen::<T>,
        pretext_after_step: pretext_after_step::<T>,
        pretext_result_scope: pretext_result_scope::<T>,
        adapt_step: no_adapt_step,
        adapt_evaluate: no_adapt_evaluate,
    }
    .leak_into_prefix()
}

// ---- adaptation -------------------------------------------------------------------

extern "C" fn adapt_create<T: Adaptation>(
    config: RStr<'_>,
    host: HostOpsRef,
    scope: RStr<'_>,
) -> RResult<InstanceId, AbiError> {
    guard(|| {
        let cfg = parse_config::<T::Config>(config.as_str())?;
        let host = Host::new(host);
        let method = T::new(cfg, host, ParamScope::new(host, scope.as_str()))?;
        insert(host, method)
    })
}

extern "C" fn adapt_step<T: Adaptation>(
    id: InstanceId,
    batch: &BatchAbi,
    info: StepInfo,
) -> RResult<StepOut, AbiError> {
    guard(|| {
        with::<T, _>(id, |host, a| {
            let batch = batch_from_abi(host, batch)?;
            Ok(step_to_abi(a.step(&batch, &info)?))
        })
    })
}

extern "C" fn adapt_evaluate<T: Adaptation>(
    id: InstanceId,
    batch: &BatchAbi,
) -> RResult<RVec<Metric>, AbiError> {
    guard(|| {
        with::<T, _>(id, |host, a| {
            let batch = batch_from_abi(host, batch)?;
            Ok(a.evaluate(&batch)?
                .into_iter()
                .map(|(name, value)| Metric {
                    name: name.into(),
                    value,
                })
                .collect())
        })
    })
}

/// The root module of an adaptation plugin.
pub fn adaptation_root<T: Adaptation>(manifest: extern "C" fn() -> Manifest) -> PluginRootRef {
    PluginRoot {
        manifest,
        create: adapt_create::<T>,
        destroy,
        backbone_geometry: no_geometry,
        backbone_forward: no_forward,
        pretext_views: no_views,
        pretext_step: no_pretext_step,
        pretext_frozen: no_frozen,
        pretext_after_step: no_after_step,
        pretext_result_scope: no_result_scope,
        adapt_step: adapt_step::<T>,
        adapt_evaluate: adapt_evaluate::<T>,
    }
    .leak_into_prefix()
}

/// Writes the `#[no_mangle]` library header abi_stable's loader looks for
/// (what `#[export_root_module]` writes, with paths through this crate so a
/// plugin needs no direct abi_stable dependency).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_lib_header {
    ($root:path) => {
        /// The library header abi_stable's loader reads.
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __patchwork_erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader($root)
            }
            // SAFETY: the constructor returns the root module of type PluginRootRef,
            // the type named here, exactly as `#[export_root_module]` does.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginRootRef>(
                    __patchwork_erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The body shared by the three export macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($ty:ty, $trait:ident, $kind:ident, $builder:ident, $name:expr, $desc:expr) => {
        extern "C" fn __patchwork_manifest() -> $crate::abi::Manifest {
            $crate::export::manifest::<<$ty as $crate::$trait>::Config>(
                $name,
                $crate::abi::PluginKind::$kind,
                env!("CARGO_PKG_VERSION"),
                $desc,
            )
        }
        /// This plugin's root module (also usable in-process, e.g. in tests).
        pub fn patchwork_root() -> $crate::abi::PluginRootRef {
            $crate::export::$builder::<$ty>(__patchwork_manifest)
        }
        $crate::__export_lib_header!(patchwork_root);
    };
}

/// Exports a [`Backbone`]: `export_backbone!(Vit, name = "vit", description = "...");`
#[macro_export]
macro_rules! export_backbone {
    ($ty:ty, name = $name:expr, description = $desc:expr $(,)?) => {
        $crate::__export_plugin!($ty, Backbone, BACKBONE, backbone_root, $name, $desc);
    };
}

/// Exports a [`PretextTask`]: `export_pretext!(Dino, name = "dino", description = "...");`
#[macro_export]
macro_rules! export_pretext {
    ($ty:ty, name = $name:expr, description = $desc:expr $(,)?) => {
        $crate::__export_plugin!($ty, PretextTask, PRETEXT, pretext_root, $name, $desc);
    };
}

/// Exports an [`Adaptation`]: `export_adaptation!(Probe, name = "probe", description = "...");`
#[macro_export]
macro_rules! export_adaptation {
    ($ty:ty, name = $name:expr, description = $desc:expr $(,)?) => {
        $crate::__export_plugin!($ty, Adaptation, ADAPTATION, adaptation_root, $name, $desc);
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
