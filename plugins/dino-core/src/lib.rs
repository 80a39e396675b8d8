//! DINO: self-distillation with no labels (Caron et al., "Emerging Properties in
//! Self-Supervised Vision Transformers", ICCV 2021), following `methods.md` §1 and
//! the official `main_dino.py` at facebookresearch/dino 7c446df.
//!
//! This library holds the task ([`Dino`]), its head, loss and schedules; the `dino`
//! plugin exports it as is, and `dino-mm` wraps it (DINO-MM changes only the data
//! side). It exports no plugin itself.
//!
//! What is followed:
//! - student and teacher: the session's backbone under `student.backbone` /
//!   `teacher.backbone`, each with a DINOHead under `student.head` / `teacher.head`
//!   ([`head::DinoHead`]: `mlp.0/2/4` in→2048→2048→256 with GELU, L2 normalisation,
//!   `last_layer` = weight norm `g·v/‖v‖_row` without bias, `g` = 1 and frozen when
//!   `norm_last_layer`). The teacher starts as a copy of the student and gets no
//!   gradient;
//! - multi-crop: 2 global crops (224, scale (0.4, 1); blur p 1.0 / 0.1, solarize
//!   p 0 / 0.2) and `local_crops` local crops (96, scale (0.05, 0.4), blur p 0.5),
//!   all with flip 0.5, colour jitter 0.8, grayscale 0.2. The student sees every
//!   crop, one backbone call per run of equal resolution, and the head once on the
//!   concatenated CLS tokens; the teacher sees the 2 global crops;
//! - loss (DINOLoss): `p_v = log_softmax(s_v/τs)`, `q_i = softmax((t_i − c)/τt)`
//!   (detached), `L = Σ_{i∈{0,1}} Σ_{v≠i} mean_b(−Σ_k q_i·p_v) / (2·ncrops − 2)`;
//! - τt: `np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`
//!   per epoch, then `teacher_temp`;
//! - centre `c (1, K)`: the loss uses the current centre, then
//!   `c ← m·c + (1 − m)·mean(teacher logits)` with m = 0.9 (applied in `after_step`);
//!   kept as host state `dino.center`, so it is checkpointed;
//! - teacher EMA after each optimizer step: `θt ← m·θt + (1 − m)·θs`, m on a
//!   per-iteration cosine from `momentum_teacher` (0.996) to 1;
//! - the last layer gets no gradient while `epoch < freeze_last_layer` (1);
//! - the result is the teacher backbone (`teacher.backbone`).
//!
//! Metrics: `teacher_entropy`, `teacher_kl_uniform`, `student_feature_std` (see
//! [`loss::CollapseMetrics`]), `kl_student_teacher` (loss − teacher entropy: the
//! loss is `H(q) + KL(q‖p)` and only the KL term depends on the student; the entropy
//! term rises while the centre spreads the teacher over its prototypes, so the loss
//! itself can rise while the student learns), `teacher_temp` and `ema_momentum`.
//!
//! Deviations:
//! - no fp16 / AMP (f32 throughout);
//! - the blur radius range (0.1, 2.0) is in pixels of 224 px globals and 96 px
//!   locals; at other crop sides it is scaled by `side / 224` and `side / 96`, so a
//!   32 px crop keeps the relative blur of the paper instead of losing its shape;
//! - single process: the centre is the mean over this batch, with no all-reduce
//!   across GPUs;
//! - no BatchNorm in the head (`use_bn_in_head` False, the official default) and a
//!   fixed 3-layer head MLP (DINOHead's `nlayers` default);
//! - the teacher's `frozen()` entry: besides `student.head.last_layer` during the
//!   first `freeze_last_layer` epochs, `frozen()` always lists `teacher`, because a
//!   backbone built through the host has trainable parameters; its forward runs in
//!   `Host::no_grad` (PyTorch's teacher has `requires_grad` off) and its outputs are
//!   detached, so this only keeps the optimizer off them;
//! - the loss sums `Σ_{v≠i} log p_v` before the product with `q_i` (same value,
//!   fewer `(B, K)` temporaries); the per-pair order of additions differs;
//! - the teacher is initialised by copy only once per run (a state flag), so a
//!   hot reload or a resume does not reset it to the student.

pub mod config;
pub mod head;
pub mod loss;
pub mod schedule;

use patchwork_plugin_api::prelude::*;

pub use config::Config;
use head::{DinoHead, HeadDims};
use loss::{CollapseMetrics, dino_loss, next_center, teacher_scores};
use schedule::{group_consecutive, teacher_momentum, teacher_temp};

/// Host state name of the centre `(1, out_dim)`.
pub const CENTER_STATE: &str = "dino.center";
/// Host state flag set once the teacher has been copied from the student.
pub const TEACHER_INIT_STATE: &str = "dino.teacher_initialised";

/// The DINO pretext task.
pub struct Dino {
    cfg: Config,
    host: Host,
    student: BackboneHandle,
    teacher: BackboneHandle,
    student_head: DinoHead,
    teacher_head: DinoHead,
    /// `student`, `teacher`, `teacher.backbone`, `student.head.last_layer` (scoped).
    student_prefix: String,
    teacher_prefix: String,
    result_scope: String,
    last_layer: String,
    /// The centre computed in `step`, stored in `after_step`.
    pending_center: Option<Tensor>,
}

/// `views` through `backbone`, one forward per run of consecutive crops of equal
/// resolution (multi-crop batching): each run's crop range and output, whose rows
/// are the run's crops in order, `B` rows each.
pub fn forward_by_resolution(
    backbone: &BackboneHandle,
    views: &[Tensor],
    opts: &ForwardOptions,
) -> Result<Vec<(std::ops::Range<usize>, BackboneOutput)>> {
    let sizes = views
        .iter()
        .map(|v| Ok((v.dim(2)?, v.dim(3)?)))
        .collect::<Result<Vec<(usize, usize)>>>()?;
    let mut outs = Vec::new();
    for group in group_consecutive(&sizes) {
        let crops: Vec<&Tensor> = views[group.clone()].iter().collect();
        let images = if crops.len() == 1 {
            crops[0].clone()
        } else {
            Tensor::cat(&crops, 0)?
        };
        outs.push((group, backbone.forward(&images, opts)?));
    }
    Ok(outs)
}

/// CLS tokens of `views` through `backbone` ([`forward_by_resolution`]):
/// `n_views × (B, C, H, W)` → `(n_views·B, D)`, view-major.
fn multi_crop_cls(
    backbone: &BackboneHandle,
    views: &[Tensor],
    opts: &ForwardOptions,
) -> Result<Tensor> {
    let outs: Vec<Tensor> = forward_by_resolution(backbone, views, opts)?
        .into_iter()
        .map(|(_, out)| out.cls) // (n_group·B, D)
        .collect();
    let refs: Vec<&Tensor> = outs.iter().collect();
    if refs.len() == 1 {
        Ok(outs[0].clone())
    } else {
        Tensor::cat(&refs, 0)
    }
}

impl Dino {
    /// The centre from host state, zeros when absent or of another width.
    fn center(&self) -> Result<Tensor> {
        let shape = [1, self.cfg.out_dim];
        if let Some(c) = self.host.state_get(CENTER_STATE)? {
            if c.dims()? == shape {
                return Ok(c);
            }
            self.host.log(&format!(
                "dino: centre has shape {:?}, out_dim is {}; restarting it from zeros",
                c.dims()?,
                self.cfg.out_dim
            ));
        }
        self.host.zeros(&shape)
    }

    /// Checks the batch layout; returns the batch size.
    fn check_batch(&self, batch: &Batch) -> Result<usize> {
        let want = self.cfg.n_crops();
        if batch.views.len() != want {
            return Err(Error::msg(format!(
                "dino expects {want} views (2 global + {} local), got {}",
                self.cfg.local_crops,
                batch.views.len()
            )));
        }
        let b = batch.views[0].dim(0)?;
        for (i, v) in batch.views.iter().enumerate() {
            if v.dim(0)? != b {
                return Err(Error::msg(format!(
                    "dino view {i} has batch size {}, view 0 has {b}",
                    v.dim(0)?
                )));
            }
        }
        Ok(b)
    }
}

impl PretextTask for Dino {
    type Config = Config;

    fn new(cfg: Config, host: Host, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        let (student_scope, teacher_scope) = (scope.pp("student"), scope.pp("teacher"));
        let student = BackboneHandle::build(host, student_scope.pp("backbone").prefix())?;
        let in_dim = student.geometry()?.embed_dim as usize;
        let dims = HeadDims {
            in_dim,
            hidden_dim: cfg.hidden_dim,
            bottleneck_dim: cfg.bottleneck_dim,
            out_dim: cfg.out_dim,
        };
        let student_head = DinoHead::new(dims, cfg.norm_last_layer, student_scope.pp("head"))?;
        let teacher = BackboneHandle::build(host, teacher_scope.pp("backbone").prefix())?;
        let teacher_head = DinoHead::new(dims, true, teacher_scope.pp("head").frozen())?;
        if host.state_get(TEACHER_INIT_STATE)?.is_none() {
            let n = host.copy_params(student_scope.prefix(), teacher_scope.prefix())?;
            host.state_set(TEACHER_INIT_STATE, &host.ones(&[1])?)?;
            host.log(&format!(
                "dino: teacher initialised from the student ({n} tensors)"
            ));
        }
        if host.state_get(CENTER_STATE)?.is_none() {
            host.state_set(CENTER_STATE, &host.zeros(&[1, cfg.out_dim])?)?;
        }
        Ok(Self {
            host,
            student,
            teacher,
            student_head,
            teacher_head,
            student_prefix: student_scope.prefix().to_string(),
            teacher_prefix: teacher_scope.prefix().to_string(),
            result_scope: teacher_scope.pp("backbone").prefix().to_string(),
            last_layer: student_scope
                .pp("head")
                .pp("last_layer")
                .prefix()
                .to_string(),
            pending_center: None,
            cfg,
        })
    }

    fn views(&self) -> Vec<ViewSpec> {
        self.cfg.views()
    }

    fn step(&mut self, batch: &Batch, info: &StepInfo) -> Result<StepOutput> {
        let b = self.check_batch(batch)?;
        let ncrops = self.cfg.n_crops();
        let globals = Config::GLOBAL_CROPS;
        // Student on every crop (stochastic depth on), head once: (ncrops·B, K).
        let train = ForwardOptions {
            train: true,
            ..ForwardOptions::default()
        };
        let student_cls = multi_crop_cls(&self.student, &batch.views, &train)?; // (ncrops·B, D)
        let student_logits = student_cls.apply(&self.student_head)?;
        // Teacher on the global crops, eval mode, no graph recorded (detached too, for
        // hosts before op level 3): (2B, K).
        let eval = ForwardOptions::default();
        let teacher_logits = self.host.no_grad(|| {
            multi_crop_cls(&self.teacher, &batch.views[..globals], &eval)?
                .detach()?
                .apply(&self.teacher_head)?
                .detach()
        })?;

        let center = self.center()?; // (1, K), the centre before this batch
        let temp = teacher_temp(
            info.epoch,
            self.cfg.warmup_teacher_temp,
            self.cfg.teacher_temp,
            self.cfg.warmup_teacher_temp_epochs,
        );
        let scores = teacher_scores(&teacher_logits, &center, temp)?; // (2B, K)
        let teacher_probs = scores.softmax_last_dim()?.detach()?;
        let loss = dino_loss(
            &student_logits,
            &teacher_probs,
            ncrops,
            b,
            self.cfg.student_temp,
        )?;
        self.pending_center = Some(next_center(
            &center,
            &teacher_logits,
            self.cfg.center_momentum,
        )?);

        let watch = CollapseMetrics::compute(&scores, &student_cls.narrow(0, 0, globals * b)?)?;
        let momentum = teacher_momentum(self.cfg.momentum_teacher, info.step, info.total_steps);
        // The loss is H(q) + KL(q‖p) averaged over pairs; only the KL term depends on
        // the student, so it is the part training drives down.
        let kl = f64::from(loss.detach()?.to_scalar_f32()?) - watch.teacher_entropy;
        Ok(StepOutput {
            loss,
            metrics: vec![
                ("teacher_entropy".into(), watch.teacher_entropy),
                ("kl_student_teacher".into(), kl),
                ("teacher_kl_uniform".into(), watch.teacher_kl_uniform),
                ("student_feature_std".into(), watch.student_feature_std),
                ("teacher_temp".into(), temp),
                ("ema_momentum".into(), momentum),
            ],
        })
    }

    fn frozen(&self, info: &StepInfo) -> Vec<String> {
        let mut frozen = vec![self.teacher_prefix.clone()];
        if info.epoch < self.cfg.freeze_last_layer {
            frozen.push(self.last_layer.clone());
        }
        frozen
    }

    fn after_step(&mut self, info: &StepInfo) -> Result<()> {
        if let Some(center) = self.pending_center.take() {
            self.host.state_set(CENTER_STATE, &center)?;
        }
        let m = teacher_momentum(self.cfg.momentum_teacher, info.step, info.total_steps);
        self.host
            .ema_params(&self.student_prefix, &self.teacher_prefix, m)?;
        Ok(())
    }

    fn result_scope(&self) -> String {
        self.result_scope.clone()
    }
}
