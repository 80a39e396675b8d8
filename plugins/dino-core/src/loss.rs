//! DINOLoss on host tensors: teacher sharpening and centring, the multi-crop
//! cross-entropy, the centre update, and collapse metrics.

use patchwork_plugin_api::prelude::*;

use crate::schedule::loss_pairs;

/// Tempered, centred teacher logits `(t − c)/τt`: `(V·B, K)`.
pub fn teacher_scores(teacher_logits: &Tensor, center: &Tensor, temp: f64) -> Result<Tensor> {
    teacher_logits
        .broadcast_sub(center)?
        .affine(1.0 / temp, 0.0) // (V·B, K) − (1, K)
}

/// DINOLoss: for each teacher view `iq` and each student crop `v ≠ iq`, the batch
/// mean of `−Σ_k q_iq · log_softmax(s_v / τs)`, summed and divided by the number
/// of pairs.
///
/// - `student_logits`: `(ncrops·B, K)`, crop-major (crop 0's batch first), as the
///   `MultiCropWrapper` concatenates them; crops `0..V` are the teacher's views.
/// - `teacher_probs`: `(V·B, K)`, detached.
///
/// Instead of one product per pair it uses `Σ_{v≠iq} log p_v = Σ_v log p_v − log p_iq`,
/// which is the same sum with V products instead of V·(ncrops − 1).
pub fn dino_loss(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    ncrops: usize,
    batch: usize,
    student_temp: f64,
) -> Result<Tensor> {
    let k = student_logits.dim(1)?;
    let n_teacher = teacher_probs.dim(0)? / batch.max(1);
    let pairs = loss_pairs(n_teacher, ncrops);
    if pairs == 0 {
        return Err(Error::msg(format!(
            "dino loss has no (teacher, student) pairs with {n_teacher} teacher and {ncrops} student views"
        )));
    }
    let log_p = student_logits
        .affine(1.0 / student_temp, 0.0)?
        .log_softmax_last_dim()?; // (ncrops·B, K)
    let sum_log_p = log_p.reshape(&[ncrops, batch, k])?.sum(0)?; // (B, K) = Σ_v log p_v
    let mut total: Option<Tensor> = None;
    for iq in 0..n_teacher {
        let q = teacher_probs.narrow(0, iq * batch, batch)?; // (B, K)
        let others = if iq < ncrops {
            sum_log_p.sub(&log_p.narrow(0, iq * batch, batch)?)? // Σ_{v≠iq} log p_v
        } else {
            sum_log_p.clone()
        };
        // Σ_{v≠iq} mean_b(−Σ_k q·log p_v) = −mean_b Σ_k q·Σ_{v≠iq} log p_v
        let term = q.mul(&others)?.sum(1)?.mean(0)?.neg()?; // scalar
        total = Some(match total {
            Some(t) => t.add(&term)?,
            None => term,
        });
    }
    total
        .expect("dino loss should have at least one teacher view")
        .affine(1.0 / pairs as f64, 0.0)
}

/// The next centre `m·c + (1 − m)·mean(teacher logits)`: `(1, K)`
/// (`DINOLoss.update_center` over this batch; no all-reduce).
pub fn next_center(center: &Tensor, teacher_logits: &Tensor, momentum: f64) -> Result<Tensor> {
    let batch_center = teacher_logits.detach()?.mean_keepdim(0)?; // (1, K)
    center
        .affine(momentum, 0.0)?
        .add(&batch_center.affine(1.0 - momentum, 0.0)?)
}

/// Collapse watch on detached tensors.
pub struct CollapseMetrics {
    /// Mean per-sample entropy of the teacher distribution (0 = one-hot; ln K = uniform).
    pub teacher_entropy: f64,
    /// KL(mean teacher distribution ‖ uniform) = ln K − H(mean q): near ln K when every
    /// sample picks the same prototype (collapse to one dimension).
    pub teacher_kl_uniform: f64,
    /// Mean per-dimension std of the L2-normalised student CLS over the batch:
    /// about 1/√D when healthy, 0 when collapsed.
    pub student_feature_std: f64,
}

impl CollapseMetrics {
    /// From the tempered teacher scores `(V·B, K)` and student CLS features `(n, D)`.
    pub fn compute(teacher_scores: &Tensor, student_cls: &Tensor) -> Result<Self> {
        let scores = teacher_scores.detach()?;
        let k = scores.dim(1)? as f64;
        let q = scores.softmax_last_dim()?; // (V·B, K)
        let log_q = scores.log_softmax_last_dim()?;
        let entropy = q.mul(&log_q)?.sum(1)?.mean_all()?.neg()?.to_scalar_f32()?;
        let q_mean = q.mean(0)?; // (K)
        let neg_h_mean = q_mean
            .mul(&q_mean.clamp(1e-12, 1.0)?.log()?)?
            .sum_all()?
            .to_scalar_f32()?;
        let z = student_cls.detach()?.l2_normalize(D::Minus1)?; // (n, D)
        let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
        let std = centred
            .sqr()?
            .mean(0)?
            .sqrt()?
            .mean_all()?
            .to_scalar_f32()?;
        Ok(Self {
            teacher_entropy: f64::from(entropy),
            teacher_kl_uniform: f64::from(neg_h_mean) + k.ln(),
            student_feature_std: f64::from(std),
        })
    }
}
