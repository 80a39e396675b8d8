//! Linear probes on frozen features, as DINO's `eval_linear.py`: a linear layer
//! trained with SGD (momentum 0.9) on a cosine learning-rate schedule, weight decay
//! 0 by default. Three targets share the training loop:
//!
//! - classes: cross-entropy, top-1 accuracy (DINO's linear evaluation);
//! - multi-label: one sigmoid per label with `MultiLabelSoftMarginLoss` (the mean
//!   binary cross-entropy over labels), micro and macro mAP (DINO-MM);
//! - dense: a linear layer on the patch tokens whose logits are upsampled bilinearly
//!   to pixels, trained with per-pixel cross-entropy and scored by pixel mean IoU (the
//!   usual linear segmentation probe; the small stand-in for SelfPatch's segmentation
//!   transfer). Upsampling is affine with weights summing to 1, so a pixel's logits
//!   are the probe's logits of its bilinearly interpolated patch features: the probe
//!   trains on such rows, for a seeded sample of pixels per image.
//!
//! Deviations from `eval_linear.py`: the features are extracted once (no random
//! crops or flips while the probe trains), and they are standardised per dimension
//! with the training split's mean and deviation (DINO-MM and MAE put a BatchNorm
//! without affine parameters in front of the probe to the same end).

use candle_core::{D, DType, Device, Result, Tensor, Var, bail};
use candle_nn::ops::log_softmax;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::engine::{
    optim::{Sgd, SgdConfig},
    schedule::cosine,
};

/// How the probe trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    /// Passes over the training features.
    pub epochs: u32,
    /// Rows per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine to 0 over the run, no warm-up, as `eval_linear.py`).
    pub lr: f64,
    /// Coupled weight decay of the weight matrix.
    pub weight_decay: f64,
    /// Seed of the row order.
    pub seed: u64,
}

/// What the probe predicts for each row of the features.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One class in `0..classes` per row.
    Classes {
        /// `N` labels.
        labels: &'a [u32],
        /// Number of classes.
        classes: usize,
    },
    /// `N × labels` 0/1 targets, row-major.
    MultiLabel {
        /// The targets.
        targets: &'a [f32],
        /// Labels per row.
        labels: usize,
    },
}

impl Target<'_> {
    fn outputs(&self) -> usize {
        match self {
            Self::Classes { classes, .. } => *classes,
            Self::MultiLabel { labels, .. } => *labels,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Self::Classes { labels, .. } => labels.len(),
            Self::MultiLabel { targets, labels } => targets.len() / (*labels).max(1),
        }
    }

    /// The loss of `logits (b, K)` against the rows `idx`.
    fn loss(&self, logits: &Tensor, idx: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Classes { labels, .. } => {
                let y: Vec<u32> = idx.iter().map(|&i| labels[i as usize]).collect();
                let y = Tensor::from_vec(y, (idx.len(), 1), device)?;
                log_softmax(logits, D::Minus1)?
                    .gather(&y, 1)?
                    .mean_all()?
                    .neg()
            }
            Self::MultiLabel { targets, labels } => {
                let mut y = Vec::with_capacity(idx.len() * labels);
                for &i in idx {
                    let i = i as usize;
                    y.extend_from_slice(&targets[i * labels..(i + 1) * labels]);
                }
                let y = Tensor::from_vec(y, (idx.len(), *labels), device)?;
                // -[y log σ(x) + (1 - y) log σ(-x)] = softplus(x) - y x.
                (softplus(logits)? - (logits * &y)?)?.mean_all()
            }
        }
    }
}

fn optim_error(e: crate::engine::optim::OptimError) -> candle_core::Error {
    candle_core::Error::Msg(format!("probe optimizer: {e}"))
}

/// `log(1 + e^x)`, stable for large `|x|`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + tail
}

/// Per-dimension standardisation fitted on the training features.
#[derive(Debug, Clone)]
pub struct Standardize {
    mean: Tensor,
    inv_std: Tensor,
}

impl Standardize {
    /// Mean and `1 / (std + 1e-6)` of each column of `train (N, D)`.
    pub fn fit(train: &Tensor) -> Result<Self> {
        let mean = train.mean_keepdim(0)?;
        let var = train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        let inv_std = (var.sqrt()? + 1e-6)?.recip()?;
        Ok(Self { mean, inv_std })
    }

    /// `(x - mean) / std`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)
    }
}

/// A trained linear probe.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    norm: Standardize,
    weight: Tensor,
    bias: Tensor,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
}

impl LinearProbe {
    /// Trains on `features (N, D)` (any float dtype; computed in f32) for `target`.
    pub fn train(features: &Tensor, target: Target<'_>, cfg: &ProbeConfig) -> Result<Self> {
        let features = features.to_dtype(DType::F32)?;
        let (n, d) = features.dims2()?;
        if n == 0 || n != target.rows() {
            bail!("probe: {n} feature rows for {} targets", target.rows());
        }
        let device = features.device().clone();
        let norm = Standardize::fit(&features)?;
        let x = norm.apply(&features)?;
        let k = target.outputs();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        // nn.Linear init as eval_linear.py: weight N(0, 0.01), bias 0; seeded, so a
        // probe scores the same features the same way every run.
        let normal = rand_distr::Normal::new(0f32, 0.01)
            .map_err(|e| candle_core::Error::Msg(format!("probe init: {e}")))?;
        let init: Vec<f32> = (0..d * k).map(|_| rng.sample(normal)).collect();
        let weight = Var::from_tensor(&Tensor::from_vec(init, (d, k), &device)?)?;
        let bias = Var::zeros(k, DType::F32, &device)?;
        let mut opt = Sgd::new(
            vec![
                ("weight".into(), weight.clone(), true),
                ("bias".into(), bias.clone(), false),
            ],
            SgdConfig::default(),
        )
        .map_err(optim_error)?;
        let batch = cfg.batch_size.clamp(1, n);
        let steps_per_epoch = n.div_ceil(batch) as u64;
        let total = steps_per_epoch * u64::from(cfg.epochs.max(1));
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut step = 0u64;
        let mut epoch_losses = Vec::new();
        for _ in 0..cfg.epochs.max(1) {
            order.shuffle(&mut rng);
            let mut sum = 0.0;
            for idx in order.chunks(batch) {
                let rows = Tensor::from_slice(idx, idx.len(), &device)?;
                let xb = x.index_select(&rows, 0)?;
                let logits = xb
                    .matmul(weight.as_tensor())?
                    .broadcast_add(bias.as_tensor())?;
                let loss = target.loss(&logits, idx, &device)?;
                sum += f64::from(loss.to_scalar::<f32>()?);
                let grads = loss.backward()?;
                let lr = cosine(cfg.lr, 0.0, 0, 0.0, total, step);
                opt.step(&grads, lr, cfg.weight_decay)
                    .map_err(optim_error)?;
                step += 1;
            }
            epoch_losses.push(sum / steps_per_epoch as f64);
        }
        Ok(Self {
            norm,
            weight: weight.as_detached_tensor(),
            bias: bias.as_detached_tensor(),
            epoch_losses,
        })
    }

    /// Scores `(M, K)` of `features (M, D)`: logits (classes, dense) or per-label
    /// logits (multi-label).
    pub fn scores(&self, features: &Tensor) -> Result<Tensor> {
        let x = self.norm.apply(&features.to_dtype(DType::F32)?)?;
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }

    /// The arg-max class of each row of `features`.
    pub fn predict(&self, features: &Tensor) -> Result<Vec<u32>> {
        self.scores(features)?.argmax(D::Minus1)?.to_vec1::<u32>()
    }
}

/// Bilinear interpolation from `grid` cells to `out` pixels along one axis, as
/// PyTorch's `interpolate(mode="bilinear", align_corners=False)`: per pixel, the two
/// cells it lies between and their weights (summing to 1; one cell at the edges).
pub fn bilinear_axis(out: usize, grid: usize) -> Vec<[(usize, f32); 2]> {
    let grid = grid.max(1);
    let scale = grid as f32 / out.max(1) as f32;
    (0..out)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(grid - 1);
            let i1 = (i0 + 1).min(grid - 1);
            let t = if i1 == i0 { 0.0 } else { src - i0 as f32 };
            [(i0, 1.0 - t), (i1, t)]
        })
        .collect()
}

/// The four cells (row-major in a `grid_w`-wide grid) and weights that pixel
/// `(y, x)` interpolates, from the axes of [`bilinear_axis`].
pub fn bilinear_taps(
    rows: &[[(usize, f32); 2]],
    cols: &[[(usize, f32); 2]],
    y: usize,
    x: usize,
    grid_w: usize,
) -> [(usize, f32); 4] {
    let ([(y0, wy0), (y1, wy1)], [(x0, wx0), (x1, wx1)]) = (rows[y], cols[x]);
    [
        (y0 * grid_w + x0, wy0 * wx0),
        (y0 * grid_w + x1, wy0 * wx1),
        (y1 * grid_w + x0, wy1 * wx0),
        (y1 * grid_w + x1, wy1 * wx1),
    ]
}

/// An `size × size` class map from per-cell scores `(grid², K)` (row-major cells):
/// the scores upsampled bilinearly, then the arg-max class of each pixel.
pub fn upsample_scores(scores: &[Vec<f32>], grid: usize, size: usize) -> Vec<u32> {
    let axis = bilinear_axis(size, grid);
    let classes = scores.first().map_or(0, Vec::len);
    let mut pixel = vec![0f32; classes];
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            pixel.iter_mut().for_each(|v| *v = 0.0);
            for (cell, w) in bilinear_taps(&axis, &axis, y, x, grid) {
                if let Some(cell) = scores.get(cell) {
                    for (p, s) in pixel.iter_mut().zip(cell) {
                        *p += w * s;
                    }
                }
            }
            let best = pixel
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (c, &v)| if v > b.1 { (c, v) } else { b },
                );
            out.push(best.0 as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs per class in 4-D, linearly separable.
    fn blobs(n: usize, device: &Device) -> Result<(Tensor, Vec<u32>)> {
        let noise = Tensor::randn(0f32, 0.3, (n, 4), device)?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let centres: Vec<f32> = labels
            .iter()
            .flat_map(|&l| {
                let mut c = [0f32; 4];
                c[l as usize] = 2.0;
                c
            })
            .collect();
        let x = (Tensor::from_vec(centres, (n, 4), device)? + noise)?;
        Ok((x, labels))
    }

    fn cfg(epochs: u32) -> ProbeConfig {
        ProbeConfig {
            epochs,
            batch_size: 32,
            lr: 0.1,
            weight_decay: 0.0,
            seed: 0,
        }
    }

    #[test]
    fn a_class_probe_separates_separable_features() -> Result<()> {
        let device = Device::Cpu;
        let (x, labels) = blobs(300, &device)?;
        let probe = LinearProbe::train(
            &x,
            Target::Classes {
                labels: &labels,
                classes: 3,
            },
            &cfg(10),
        )?;
        assert!(probe.epoch_losses.last() < probe.epoch_losses.first());
        let predicted = probe.predict(&x)?;
        let correct = predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        assert!(correct > 290, "{correct} of 300");
        Ok(())
    }

    #[test]
    fn the_multi_label_loss_is_the_mean_binary_cross_entropy() -> Result<()> {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, -1.0], [0.0, 3.0]], &device)?;
        let targets = [1.0f32, 0.0, 0.0, 1.0];
        let t = Target::MultiLabel {
            targets: &targets,
            labels: 2,
        };
        let got = t.loss(&logits, &[0, 1], &device)?.to_scalar::<f32>()?;
        let bce = |x: f32, y: f32| {
            let s = 1.0 / (1.0 + (-x).exp());
            -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
        };
        let want = (bce(2.0, 1.0) + bce(-1.0, 0.0) + bce(0.0, 0.0) + bce(3.0, 1.0)) / 4.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn bilinear_weights_match_pytorchs_half_pixel_rule() {
        // 2 cells to 4 pixels: sources -0.25 (clamped), 0.25, 0.75, 1.25 (edge).
        let axis = bilinear_axis(4, 2);
        let want = [
            [(0, 1.0), (1, 0.0)],
            [(0, 0.75), (1, 0.25)],
            [(0, 0.25), (1, 0.75)],
            [(1, 1.0), (1, 0.0)],
        ];
        for (got, want) in axis.iter().zip(want) {
            for ((gc, gw), (wc, ww)) in got.iter().zip(want) {
                assert_eq!(*gc, wc, "{axis:?}");
                assert!((gw - ww).abs() < 1e-6, "{axis:?}");
            }
        }
        // Pixel (1, 2) of a 2x2 grid: rows 0.75/0.25, cols 0.25/0.75.
        let taps = bilinear_taps(&axis, &axis, 1, 2, 2);
        let weights: Vec<f32> = taps.iter().map(|t| t.1).collect();
        assert_eq!(taps.map(|t| t.0), [0, 1, 2, 3]);
        for (g, w) in weights.iter().zip([0.1875, 0.5625, 0.0625, 0.1875]) {
            assert!((g - w).abs() < 1e-6, "{weights:?}");
        }
        assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn upsampled_scores_follow_the_nearest_cells_and_blend_between() {
        // 2x2 cells, 2 classes: class 1 wins in the top-right cell only.
        let scores = vec![
            vec![1.0, 0.0],
            vec![0.0, 3.0],
            vec![1.0, 0.0],
            vec![1.0, 0.0],
        ];
        let map = upsample_scores(&scores, 2, 4);
        // Class 1 wins where 3·w > 1 − w for the top-right cell's weight w, i.e.
        // w > 1/4; at exactly 1/4 (pixels (0, 1) and (2, 3)) the tie goes to class 0.
        assert_eq!(
            map,
            vec![0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            "{map:?}"
        );
    }
}
