//! The root module every plugin library exports, and the values its calls carry.

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RStr, RString, RVec},
};

use super::{AbiError, BackboneOut, ForwardOpts, Geometry, HostOpsRef, TensorId};

/// Which of the three plugin kinds a library is.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct PluginKind(pub u32);

impl PluginKind {
    /// Images → CLS and patch tokens.
    pub const BACKBONE: Self = Self(1);
    /// A self-supervised objective.
    pub const PRETEXT: Self = Self(2);
    /// A downstream adaptation method.
    pub const ADAPTATION: Self = Self(3);

    /// `backbone`, `pretext-task`, `adaptation` (or `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Self::BACKBONE => "backbone",
            Self::PRETEXT => "pretext-task",
            Self::ADAPTATION => "adaptation",
            _ => "unknown",
        }
    }
}

/// A plugin instance inside its library.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct InstanceId(pub u64);

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Manifest {
    /// Registry name, e.g. `vit`.
    pub name: RString,
    /// Plugin kind.
    pub kind: PluginKind,
    /// The plugin crate's version.
    pub version: RString,
    /// One line for `patchwork plugins`.
    pub description: RString,
    /// `Config::default()` as RON text.
    pub default_config: RString,
    /// The op-table level the plugin needs.
    pub min_host_level: u32,
    /// The plugin-api version the plugin was built against.
    pub api_version: RString,
}

/// One group of views (crops) a pretext task asks for per image.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Debug)]
pub struct ViewSpec {
    /// How many views of this kind.
    pub count: u32,
    /// Output side in pixels.
    pub size: u32,
    /// Random-resized-crop area fraction range.
    pub scale_min: f32,
    /// Upper end of the area fraction range.
    pub scale_max: f32,
    /// Horizontal flip probability.
    pub flip_p: f32,
    /// Colour jitter probability.
    pub jitter_p: f32,
    /// Grayscale probability.
    pub gray_p: f32,
    /// Gaussian blur probability.
    pub blur_p: f32,
    /// Lower end of the blur sigma range, in output pixels.
    pub blur_sigma_min: f32,
    /// Upper end of the blur sigma range, in output pixels.
    pub blur_sigma_max: f32,
    /// Solarize probability.
    pub solarize_p: f32,
}

/// A batch as the host hands it to a plugin; the plugin borrows the handles.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct BatchAbi {
    /// One `(B, C, H, W)` tensor per view, in [`ViewSpec`] order.
    pub views: RVec<TensorId>,
    /// `(B,)` U32 class labels, when the data has them.
    pub labels: ROption<TensorId>,
}

/// Where training is.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug, Default)]
pub struct StepInfo {
    /// Global optimizer step, from 0.
    pub step: u64,
    /// Epoch, from 0.
    pub epoch: u64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Steps in the whole stage.
    pub total_steps: u64,
    /// Epochs in the whole stage.
    pub epochs: u64,
}

/// A named scalar a plugin reports.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Metric {
    /// Metric name, e.g. `teacher_entropy`.
    pub name: RString,
    /// Its value.
    pub value: f64,
}

/// What a training step returns; the host owns `loss`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct StepOut {
    /// Scalar loss to backpropagate.
    pub loss: TensorId,
    /// Extra scalars to log.
    pub metrics: RVec<Metric>,
}

/// The root module. Every call is wrapped in `catch_unwind` by the export macros.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
pub struct PluginRoot {
    /// What the plugin is.
    pub manifest: extern "C" fn() -> Manifest,
    /// Builds an instance from RON config text, its parameters under `scope`.
    pub create: extern "C" fn(RStr<'_>, HostOpsRef, RStr<'_>) -> RResult<InstanceId, AbiError>,
    /// Drops an instance (and every tensor handle it holds).
    pub destroy: extern "C" fn(InstanceId),
    /// Backbone: its geometry.
    pub backbone_geometry: extern "C" fn(InstanceId) -> RResult<Geometry, AbiError>,
    /// Backbone: forward on borrowed images.
    pub backbone_forward:
        extern "C" fn(InstanceId, TensorId, ForwardOpts) -> RResult<BackboneOut, AbiError>,
    /// Pretext: the views it needs per image.
    pub pretext_views: extern "C" fn(InstanceId) -> RResult<RVec<ViewSpec>, AbiError>,
    /// Pretext: the loss of one batch.
    pub pretext_step: extern "C" fn(InstanceId, &BatchAbi, StepInfo) -> RResult<StepOut, AbiError>,
    /// Pretext: parameter prefixes whose gradients are dropped this step.
    pub pretext_frozen: extern "C" fn(InstanceId, StepInfo) -> RResult<RVec<RString>, AbiError>,
    /// Pretext: after the optimizer step (EMA, centring...).
    pub pretext_after_step: extern "C" fn(InstanceId, StepInfo) -> RResult<(), AbiError>,
    /// Pretext: the parameter scope holding the trained backbone.
    pub pretext_result_scope: extern "C" fn(InstanceId) -> RResult<RString, AbiError>,
    /// Adaptation: the loss of one batch.
    pub adapt_step: extern "C" fn(InstanceId, &BatchAbi, StepInfo) -> RResult<StepOut, AbiError>,
    /// Adaptation: metrics on one evaluation batch.
    ///
    /// Last field of the 0.1 layout: fields added later go below and read as `Option`.
    #[sabi(last_prefix_field)]
    pub adapt_evaluate: extern "C" fn(InstanceId, &BatchAbi) -> RResult<RVec<Metric>, AbiError>,
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "patchwork_plugin";
    const NAME: &'static str = "patchwork_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
