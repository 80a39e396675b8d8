//! `selfpatch`: SelfPatch (Yun et al., "Patch-level Representation Learning for
//! Self-supervised Vision Transformers", CVPR 2022), following `methods.md` §3 and
//! alinlab/SelfPatch 81aef14.
//!
//! DINO (from `patchwork-dino-core`: heads, loss, centring, schedules) plus a
//! patch-level loss. A shared aggregation module (a learnable query and 2
//! class-attention blocks, [`aggregation`]) turns a set of patch tokens into one
//! token:
//! - image level: the query over all patches of a crop is the image token (student
//!   and teacher); DINO's loss runs on it with the image head (out_dim 65536);
//! - patch level: for every patch of every crop (globals and locals), the teacher
//!   picks the `k_num` (4) of its 8 neighbours (3×3 window, wrapping around the
//!   grid) most cosine-similar in its backbone tokens ([`neighbours`]), aggregates
//!   them with the query, and its patch head (out_dim 4096) gives the target; the
//!   student predicts it from the patch's own token (the aggregation's final norm,
//!   then the student's patch head). Per crop the loss is the patch-averaged
//!   cross-entropy `−Σ softmax((t − c_p)/τt)·log_softmax(s/τs)`, averaged over crops;
//! - total loss `L_img + λ·L_patch` with λ = 0.1; the patch centre `c_p` follows the
//!   mean teacher patch logit with momentum 0.9; τt 0.04 constant; the teacher
//!   (backbone, aggregation, both heads) is the EMA of the student.
//!
//! Deviations:
//! - the backbone is the session's (e.g. `vit`) with its CLS token and final norm,
//!   where SelfPatch's ViT has neither: its CLS output is ignored and its patch
//!   tokens (after the final norm) feed the aggregation;
//! - the neighbours are picked on the host from the teacher's detached tokens (the
//!   same cosine top-k; ties keep window order);
//! - the teacher's image token for the local crops is not computed (the image loss
//!   only uses the globals' teacher outputs, as the official code does).

pub mod aggregation;
pub mod neighbours;

use aggregation::Aggregation;
use patchwork_dino_core::{
    forward_by_resolution,
    head::{DinoHead, HeadDims},
    loss::{dino_loss, next_center, teacher_scores},
    schedule::{teacher_momentum, teacher_temp},
};
use patchwork_plugin_api::prelude::*;

/// Host state of the image-level centre `(1, out_dim)`.
pub const CENTER_STATE: &str = "selfpatch.center";
/// Host state of the patch-level centre `(1, patch_out_dim)`.
pub const PATCH_CENTER_STATE: &str = "selfpatch.patch_center";
/// Host state flag set once the teacher has been copied from the student.
pub const TEACHER_INIT_STATE: &str = "selfpatch.teacher_initialised";

/// Settings: DINO's, plus the patch-level ones.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// DINO's settings (SelfPatch's defaults: crops (0.25, 1) and (0.05, 0.25)).
    pub dino: patchwork_dino_core::Config,
    /// Patch head output width (`out_dim_selfpatch`, 4096).
    pub patch_out_dim: usize,
    /// Neighbours aggregated per patch (`k_num`, 4 of 8).
    pub k_num: usize,
    /// Weight of the patch loss (λ, 0.1).
    pub lambda: f64,
    /// Class-attention blocks in the aggregation module (2).
    pub ca_blocks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dino: patchwork_dino_core::Config {
                global_crops_scale: (0.25, 1.0), // main_selfpatch.py --global_crops_scale
                local_crops_scale: (0.05, 0.25), // --local_crops_scale
                ..patchwork_dino_core::Config::default()
            },
            patch_out_dim: 4096,
            k_num: 4,
            lambda: 0.1,
            ca_blocks: 2,
        }
    }
}

impl Config {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        self.dino.validate()?;
        if self.patch_out_dim == 0 {
            return Err(Error::msg("patch_out_dim must be at least 1"));
        }
        if !(1..=8).contains(&self.k_num) {
            return Err(Error::msg(format!(
                "k_num must be 1 to 8 (of the 8 neighbours), got {}",
                self.k_num
            )));
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Error::msg(format!(
                "lambda must be >= 0, got {}",
                self.lambda
            )));
        }
        if self.ca_blocks == 0 {
            return Err(Error::msg("ca_blocks must be at least 1"));
        }
        Ok(())
    }
}

/// One side (student or teacher): backbone, aggregation, image and patch heads.
struct Side {
    backbone: BackboneHandle,
    aggregation: Aggregation,
    image_head: DinoHead,
    patch_head: DinoHead,
}

impl Side {
    fn new(host: Host, cfg: &Config, scope: &ParamScope, student: bool) -> Result<Self> {
        let backbone = BackboneHandle::build(host, scope.pp("backbone").prefix())?;
        let geometry = backbone.geometry()?;
        let dim = geometry.embed_dim as usize;
        let own = if student {
            scope.clone()
        } else {
            scope.frozen()
        };
        let dims = |out_dim| HeadDims {
            in_dim: dim,
            hidden_dim: cfg.dino.hidden_dim,
            bottleneck_dim: cfg.dino.bottleneck_dim,
            out_dim,
        };
        let norm_last = !student || cfg.dino.norm_last_layer;
        Ok(Self {
            backbone,
            aggregation: Aggregation::new(
                dim,
                geometry.num_heads as usize,
                cfg.ca_blocks,
                own.pp("aggregation"),
            )?,
            image_head: DinoHead::new(dims(cfg.dino.out_dim), norm_last, own.pp("head"))?,
            patch_head: DinoHead::new(dims(cfg.patch_out_dim), norm_last, own.pp("patch_head"))?,
        })
    }

    /// Patch tokens `(B, N, D)` of each crop, one backbone call per run of equal sides.
    fn patches(&self, views: &[Tensor], opts: &ForwardOptions) -> Result<Vec<Tensor>> {
        let b = views.first().map_or(Ok(0), |v| v.dim(0))?;
        let mut out = Vec::with_capacity(views.len());
        for (group, output) in forward_by_resolution(&self.backbone, views, opts)? {
            for i in 0..group.len() {
                out.push(output.patches.narrow(0, i * b, b)?); // (B, N, D)
            }
        }
        Ok(out)
    }
}

/// The SelfPatch task.
pub struct SelfPatch {
    cfg: Config,
    host: Host,
    student: Side,
    teacher: Side,
    student_prefix: String,
    teacher_prefix: String,
    result_scope: String,
    last_layers: Vec<String>,
    pending: Option<(Tensor, Tensor)>,
}

impl SelfPatch {
    fn state_or_zeros(&self, name: &str, width: usize) -> Result<Tensor> {
        match self.host.state_get(name)? {
            Some(c) if c.dims()? == [1, width] => Ok(c),
            _ => self.host.zeros(&[1, width]),
        }
    }

    /// The teacher's target logits `(B·N, Kp)` for every patch of one crop
    /// `tokens (B, N, D)`: its top-`k_num` neighbours, aggregated, through the
    /// teacher's patch head.
    fn teacher_patch_logits(&self, tokens: &Tensor) -> Result<Tensor> {
        let dims = tokens.dims()?;
        let (b, n, d) = (dims[0], dims[1], dims[2]);
        let grid = (n as f64).sqrt().round() as usize;
        if grid * grid != n {
            return Err(Error::msg(format!(
                "selfpatch needs a square patch grid, got {n} patches"
            )));
        }
        let flat = tokens.reshape(&[b * n, d])?;
        let picked = neighbours::select_neighbours(&flat.to_vec_f32()?, b, grid, d, self.cfg.k_num);
        let index = self.host.from_u32(&picked, &[picked.len()])?;
        let chosen = flat
            .index_select(&index, 0)?
            .reshape(&[b * n, self.cfg.k_num, d])?; // (B·N, k, D)
        self.teacher
            .aggregation
            .aggregate(&chosen)?
            .apply(&self.teacher.patch_head)
    }
}

/// Mean over rows of `−Σ_k q·log_softmax(s/τs)`: `(M, K), (M, K) -> ()`.
fn cross_entropy(q: &Tensor, student_logits: &Tensor, student_temp: f64) -> Result<Tensor> {
    let log_p = student_logits
        .affine(1.0 / student_temp, 0.0)?
        .log_softmax_last_dim()?;
    q.mul(&log_p)?.sum(D::Minus1)?.mean_all()?.neg()
}

impl PretextTask for SelfPatch {
    type Config = Config;

    fn new(cfg: Config, host: Host, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        let (s, t) = (scope.pp("student"), scope.pp("teacher"));
        let student = Side::new(host, &cfg, &s, true)?;
        let teacher = Side::new(host, &cfg, &t, false)?;
        if host.state_get(TEACHER_INIT_STATE)?.is_none() {
            let n = host.copy_params(s.prefix(), t.prefix())?;
            host.state_set(TEACHER_INIT_STATE, &host.ones(&[1])?)?;
            host.log(&format!(
                "selfpatch: teacher initialised from the student ({n} tensors)"
            ));
        }
        let last = |head: &str| s.pp(head).pp("last_layer").prefix().to_string();
        Ok(Self {
            host,
            student,
            teacher,
            student_prefix: s.prefix().to_string(),
            teacher_prefix: t.prefix().to_string(),
            result_scope: t.pp("backbone").prefix().to_string(),
            last_layers: vec![last("head"), last("patch_head")],
            pending: None,
            cfg,
        })
    }

    fn views(&self) -> Vec<ViewSpec> {
        self.cfg.dino.views()
    }

    fn step(&mut self, batch: &Batch, info: &StepInfo) -> Result<StepOutput> {
        let ncrops = self.cfg.dino.n_crops();
        if batch.views.len() != ncrops {
            return Err(Error::msg(format!(
                "selfpatch expects {ncrops} views, got {}",
                batch.views.len()
            )));
        }
        let b = batch.views[0].dim(0)?;
        let globals = patchwork_dino_core::Config::GLOBAL_CROPS;
        let train = ForwardOptions {
            train: true,
            ..ForwardOptions::default()
        };
        let eval = ForwardOptions::default();
        let s_tokens = self.student.patches(&batch.views, &train)?;
        // No graph through the teacher (detached too, for hosts before op level 3).
        let t_tokens: Vec<Tensor> = self.host.no_grad(|| {
            self.teacher
                .patches(&batch.views, &eval)?
                .into_iter()
                .map(|t| t.detach())
                .collect::<Result<_>>()
        })?;

        // Image level: the aggregated token of every crop (student) and of the
        // globals (teacher), through the image heads; DINO's loss.
        let s_image: Vec<Tensor> = s_tokens
            .iter()
            .map(|t| self.student.aggregation.aggregate(t))
            .collect::<Result<_>>()?;
        let s_image_refs: Vec<&Tensor> = s_image.iter().collect();
        let s_logits = Tensor::cat(&s_image_refs, 0)?.apply(&self.student.image_head)?;
        let t_image: Vec<Tensor> = t_tokens[..globals]
            .iter()
            .map(|t| self.teacher.aggregation.aggregate(t))
            .collect::<Result<_>>()?;
        let t_image_refs: Vec<&Tensor> = t_image.iter().collect();
        let t_logits = Tensor::cat(&t_image_refs, 0)?
            .apply(&self.teacher.image_head)?
            .detach()?;
        let temp = teacher_temp(
            info.epoch,
            self.cfg.dino.warmup_teacher_temp,
            self.cfg.dino.teacher_temp,
            self.cfg.dino.warmup_teacher_temp_epochs,
        );
        let center = self.state_or_zeros(CENTER_STATE, self.cfg.dino.out_dim)?;
        let t_probs = teacher_scores(&t_logits, &center, temp)?
            .softmax_last_dim()?
            .detach()?;
        let image_loss = dino_loss(&s_logits, &t_probs, ncrops, b, self.cfg.dino.student_temp)?;

        // Patch level, every crop: the student's own token against the teacher's
        // aggregated neighbours.
        let p_center = self.state_or_zeros(PATCH_CENTER_STATE, self.cfg.patch_out_dim)?;
        let mut patch_loss: Option<Tensor> = None;
        let mut t_patch_all = Vec::with_capacity(ncrops);
        for (s, t) in s_tokens.iter().zip(&t_tokens) {
            let dims = s.dims()?;
            let (n, d) = (dims[1], dims[2]);
            let t_logits = self.teacher_patch_logits(t)?.detach()?; // (B·N, Kp)
            let q = teacher_scores(&t_logits, &p_center, temp)?
                .softmax_last_dim()?
                .detach()?;
            let s_logits = self
                .student
                .aggregation
                .normalize(&s.reshape(&[b * n, d])?)?
                .apply(&self.student.patch_head)?;
            let term = cross_entropy(&q, &s_logits, self.cfg.dino.student_temp)?;
            patch_loss = Some(match patch_loss {
                Some(l) => l.add(&term)?,
                None => term,
            });
            t_patch_all.push(t_logits);
        }
        let patch_loss = patch_loss
            .ok_or_else(|| Error::msg("selfpatch: no crops"))?
            .affine(1.0 / ncrops as f64, 0.0)?;
        let loss = image_loss.add(&patch_loss.affine(self.cfg.lambda, 0.0)?)?;

        let t_patch_refs: Vec<&Tensor> = t_patch_all.iter().collect();
        let m = self.cfg.dino.center_momentum;
        self.pending = Some((
            next_center(&center, &t_logits, m)?,
            next_center(&p_center, &Tensor::cat(&t_patch_refs, 0)?, m)?,
        ));
        let momentum =
            teacher_momentum(self.cfg.dino.momentum_teacher, info.step, info.total_steps);
        Ok(StepOutput {
            metrics: vec![
                (
                    "image_loss".into(),
                    f64::from(image_loss.detach()?.to_scalar_f32()?),
                ),
                (
                    "patch_loss".into(),
                    f64::from(patch_loss.detach()?.to_scalar_f32()?),
                ),
                ("teacher_temp".into(), temp),
                ("ema_momentum".into(), momentum),
            ],
            loss,
        })
    }

    fn frozen(&self, info: &StepInfo) -> Vec<String> {
        let mut frozen = vec![self.teacher_prefix.clone()];
        if info.epoch < self.cfg.dino.freeze_last_layer {
            frozen.extend(self.last_layers.iter().cloned());
        }
        frozen
    }

    fn after_step(&mut self, info: &StepInfo) -> Result<()> {
        if let Some((image, patch)) = self.pending.take() {
            self.host.state_set(CENTER_STATE, &image)?;
            self.host.state_set(PATCH_CENTER_STATE, &patch)?;
        }
        let m = teacher_momentum(self.cfg.dino.momentum_teacher, info.step, info.total_steps);
        self.host
            .ema_params(&self.student_prefix, &self.teacher_prefix, m)?;
        Ok(())
    }

    fn result_scope(&self) -> String {
        self.result_scope.clone()
    }
}

export_pretext!(
    SelfPatch,
    name = "selfpatch",
    description =
        "SelfPatch: DINO plus a patch-level loss on aggregated neighbours (Yun et al. 2022)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers() {
        let cfg: Config = parse_config("()").expect("parses");
        assert_eq!((cfg.patch_out_dim, cfg.k_num, cfg.ca_blocks), (4096, 4, 2));
        assert_eq!(cfg.lambda, 0.1);
        assert_eq!(cfg.dino.global_crops_scale, (0.25, 1.0));
        assert_eq!(cfg.dino.local_crops_scale, (0.05, 0.25));
        assert_eq!(cfg.dino.teacher_temp, 0.04);
        cfg.validate().expect("valid");
    }

    #[test]
    fn more_neighbours_than_the_window_has_are_refused() {
        let cfg: Config = parse_config("(k_num: 9)").expect("parses");
        assert!(cfg.validate().is_err());
    }
}
