//! The traits plugin authors implement, and the safe values they exchange.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, ParamScope, Result, Tensor,
    abi::{BackboneId, ForwardOpts, Geometry, StepInfo, ViewSpec},
    error::lift,
    tensor::Host,
};

/// What a backbone forward should compute besides CLS and patch tokens.
#[derive(Debug, Default, Clone)]
pub struct ForwardOptions {
    /// Training mode (stochastic depth on).
    pub train: bool,
    /// Also return every block's output `(B, N+1, D)`.
    pub layers: bool,
    /// Also return the last block's attention `(B, heads, N+1, N+1)`.
    pub attention: bool,
    /// Patch indices to keep `(B, K)` (U32), for masked modeling.
    pub keep: Option<Tensor>,
}

/// A backbone's output.
#[derive(Debug)]
pub struct BackboneOutput {
    /// `(B, D)` CLS token after the final norm.
    pub cls: Tensor,
    /// `(B, N, D)` patch tokens after the final norm.
    pub patches: Tensor,
    /// Per-block outputs, when asked.
    pub layers: Vec<Tensor>,
    /// Last-block attention, when asked.
    pub attention: Option<Tensor>,
}

/// One batch of views as a pretext task sees it.
#[derive(Debug)]
pub struct Batch {
    /// One `(B, C, H, W)` tensor per view, in the order of [`PretextTask::views`].
    pub views: Vec<Tensor>,
    /// `(B,)` U32 class labels, when the data has them.
    pub labels: Option<Tensor>,
}

/// What a training step returns.
#[derive(Debug)]
pub struct StepOutput {
    /// Scalar loss to backpropagate.
    pub loss: Tensor,
    /// Extra scalars to log, e.g. teacher entropy.
    pub metrics: Vec<(String, f64)>,
}

impl StepOutput {
    /// A loss with no extra metrics.
    pub fn loss(loss: Tensor) -> Self {
        Self {
            loss,
            metrics: Vec::new(),
        }
    }
}

/// A backbone the host built on a pretext task's behalf (the session's backbone
/// plugin, parameters under the given scope).
#[derive(Debug)]
pub struct BackboneHandle {
    id: BackboneId,
    host: Host,
}

impl BackboneHandle {
    /// Asks the host to build the session's backbone with parameters under `scope`.
    pub fn build(host: Host, scope: &str) -> Result<Self> {
        let id = lift((host.ops().backbone_build())(scope.into()))?;
        Ok(Self { id, host })
    }

    /// The backbone's geometry.
    pub fn geometry(&self) -> Result<Geometry> {
        lift((self.host.ops().backbone_geometry())(self.id))
    }

    /// Runs the backbone on `(B, C, H, W)` images.
    pub fn forward(&self, images: &Tensor, opts: &ForwardOptions) -> Result<BackboneOutput> {
        let raw = ForwardOpts {
            train: opts.train,
            layers: opts.layers,
            attention: opts.attention,
            keep: opts.keep.as_ref().map(Tensor::id).into(),
        };
        let out = lift((self.host.ops().backbone_forward())(
            self.id,
            images.id(),
            raw,
        ))?;
        Ok(BackboneOutput {
            cls: self.host.wrap(out.cls),
            patches: self.host.wrap(out.patches),
            layers: out
                .layers
                .into_iter()
                .map(|id| self.host.wrap(id))
                .collect(),
            attention: out.attention.into_option().map(|id| self.host.wrap(id)),
        })
    }
}

impl Drop for BackboneHandle {
    fn drop(&mut self) {
        (self.host.ops().backbone_drop())(self.id);
    }
}

/// A vision backbone: images → CLS and patch tokens.
///
/// The host calls, in order: [`Backbone::new`] once per scope (student, teacher...),
/// then [`Backbone::forward`] any number of times; the instance is dropped when the
/// session ends or the plugin is reloaded.
pub trait Backbone: Sized + Send + 'static {
    /// Typed config; unknown fields in the workspace are errors.
    type Config: DeserializeOwned + Serialize + Default;

    /// Creates the parameters under `scope`.
    fn new(config: Self::Config, scope: ParamScope) -> Result<Self>;

    /// Input size, patch size, width, depth, heads.
    fn geometry(&self) -> Geometry;

    /// `(B, C, H, W)` → CLS `(B, D)`, patches `(B, N, D)`, optional extras. The
    /// host's evaluations (features, attention maps) call it without recording a graph.
    fn forward(&self, images: &Tensor, opts: &ForwardOptions) -> Result<BackboneOutput>;
}

/// A self-supervised objective.
///
/// The host calls, in order: [`PretextTask::new`], [`PretextTask::views`] (to set up
/// the loader), then per step [`PretextTask::step`] → [`PretextTask::frozen`] →
/// (host backward, clipping, optimizer step) → [`PretextTask::after_step`]. At the
/// end the parameters under [`PretextTask::result_scope`] are the trained backbone.
pub trait PretextTask: Sized + Send + 'static {
    /// Typed config; unknown fields in the workspace are errors.
    type Config: DeserializeOwned + Serialize + Default;

    /// Builds students/teachers through `host` (see [`BackboneHandle::build`]);
    /// the task's own parameters go under `scope`.
    fn new(config: Self::Config, host: Host, scope: ParamScope) -> Result<Self>;

    /// The views this task needs per image, in batch order.
    fn views(&self) -> Vec<ViewSpec>;

    /// The loss of one batch.
    fn step(&mut self, batch: &Batch, info: &StepInfo) -> Result<StepOutput>;

    /// Parameter prefixes whose gradients are dropped this step (e.g. DINO's last
    /// layer during the first epoch).
    fn frozen(&self, _info: &StepInfo) -> Vec<String> {
        Vec::new()
    }

    /// After the optimizer step: EMA teachers, centres, schedules.
    fn after_step(&mut self, _info: &StepInfo) -> Result<()> {
        Ok(())
    }

    /// The parameter scope that holds the trained backbone (DINO: `teacher.backbone`).
    fn result_scope(&self) -> String;
}

/// A downstream adaptation method that trains and evaluates a backbone for a task.
///
/// The host calls, in order: [`Adaptation::new`], then per step
/// [`Adaptation::step`] → (host backward, optimizer step), and after the stage
/// [`Adaptation::evaluate`] on every validation batch. A batch holds one view
/// `(B, C, H, W)` (a random-resized crop while training, the whole image when
/// evaluating) and the `(B,)` labels.
pub trait Adaptation: Sized + Send + 'static {
    /// Typed config; unknown fields in the workspace are errors.
    type Config: DeserializeOwned + Serialize + Default;

    /// Builds the backbone(s) and heads it needs. `scope` is where the trained
    /// backbone's parameters are (the pretext task's result scope, e.g. DINO's
    /// `teacher.backbone`; `backbone` without pre-training): build it there with
    /// `BackboneHandle::build(host, scope.prefix())`, and put the method's own
    /// parameters in a scope of their own (e.g. `ParamScope::new(host, "adapt")`).
    fn new(config: Self::Config, host: Host, scope: ParamScope) -> Result<Self>;

    /// The loss of one training batch.
    fn step(&mut self, batch: &Batch, info: &StepInfo) -> Result<StepOutput>;

    /// Metrics on one evaluation batch, each a mean over its images (the host
    /// averages them over the validation split, weighted by batch size). Runs
    /// without recording a graph: nothing computed here is backpropagated.
    fn evaluate(&mut self, _batch: &Batch) -> Result<Vec<(String, f64)>> {
        Err(Error::msg("this adaptation has no evaluation"))
    }
}
