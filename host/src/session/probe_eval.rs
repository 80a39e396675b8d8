//! The probe evaluators of an `Evaluate` stage (`Linear`, `MultiLabel`, `Dense`):
//! frozen features of the train and validation splits through the backbone, a
//! linear probe trained on the first ([`crate::eval::probe`]), its score on the
//! second.

use candle_core::Tensor;
use rand::{
    SeedableRng,
    seq::{SliceRandom, index::sample},
};
use rand_chacha::ChaCha8Rng;

use super::{
    SessionError,
    eval_stage::{BackboneInstance, Features, extract},
    plugin_call::check,
};
use crate::{
    data::{loader::Dataset, source::Data},
    eval::{
        metrics::{MultiLabel, mean_iou},
        probe::{LinearProbe, ProbeConfig, Target, bilinear_axis, bilinear_taps, upsample_scores},
    },
    plugins::LoadedPlugin,
    workspace::schema::{Evaluator, ProbeSettings},
};

/// Seed of the probes' row order and of the `train_fraction` subset (DINO-MM's
/// `train_frac` subset uses 42).
const PROBE_SEED: u64 = 42;

/// Pixels per training image the `Dense` probe trains on (a seeded sample; every
/// pixel when the image has fewer).
const DENSE_PIXELS: usize = 64;

/// A seeded `fraction` of `0..n` (at least one index), ascending.
fn subset(n: usize, fraction: f64) -> Vec<u32> {
    let keep = ((n as f64 * fraction).round() as usize).clamp(1, n.max(1));
    let mut all: Vec<u32> = (0..n as u32).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(PROBE_SEED));
    all.truncate(keep);
    all.sort_unstable();
    all
}

/// Per-image multi-hot targets `(n × classes)` of `data`.
fn multi_hot(data: &dyn Dataset, classes: usize) -> Result<Vec<f32>, SessionError> {
    let mut out = vec![0.0f32; data.len() * classes];
    for i in 0..data.len() {
        let sample = data.get(i)?;
        let targets = if sample.targets.is_empty() {
            vec![sample.label as u32]
        } else {
            sample.targets
        };
        for t in targets {
            if let Some(v) = out.get_mut(i * classes + t as usize) {
                *v = 1.0;
            }
        }
    }
    Ok(out)
}

/// Per-pixel class maps of `data` (0 background, `k + 1` for class `k`): the masks
/// of multi-class data as they are, binary object masks coloured with the label.
fn class_maps(data: &dyn Dataset, size: usize) -> Result<Vec<Vec<u32>>, SessionError> {
    let mut maps = Vec::with_capacity(data.len());
    for i in 0..data.len() {
        let sample = data.get(i)?;
        if sample.mask.len() != size * size {
            return Err(SessionError::Unsupported(format!(
                "the Dense evaluator needs a {size}×{size} mask per image; this data source has {}",
                if sample.mask.is_empty() {
                    "none".to_string()
                } else {
                    format!("{} mask pixels", sample.mask.len())
                }
            )));
        }
        let multi_class = !sample.targets.is_empty();
        maps.push(
            sample
                .mask
                .iter()
                .map(|&m| match (m, multi_class) {
                    (0, _) => 0,
                    (m, true) => u32::from(m),
                    (_, false) => sample.label as u32 + 1,
                })
                .collect(),
        );
    }
    Ok(maps)
}

/// The scores of one probe evaluator, `(name, value)`, value in `[0, 1]`.
pub fn evaluate(
    plugin: &LoadedPlugin,
    backbone: &BackboneInstance<'_>,
    data: &Data,
    evaluator: &Evaluator,
) -> Result<Vec<(String, f64)>, SessionError> {
    let (settings, what): (&ProbeSettings, Features) = match evaluator {
        Evaluator::Linear(p) | Evaluator::MultiLabel(p) => (p, Features::Cls(p.blocks)),
        Evaluator::Dense(p) => (p, Features::Patches),
        Evaluator::Knn(_) | Evaluator::Attention(_) => return Ok(Vec::new()),
    };
    if data.classes == 0 {
        return Err(SessionError::Unsupported(format!(
            "the {} evaluator needs labelled data; this data source has no classes",
            evaluator.name()
        )));
    }
    let cfg = ProbeConfig {
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        lr: settings.lr,
        weight_decay: settings.weight_decay,
        seed: PROBE_SEED,
    };
    let (train_x, train_y) = extract(backbone, data.train.clone(), data.size, &data.stats, what)?;
    let (val_x, val_y) = extract(backbone, data.val.clone(), data.size, &data.stats, what)?;
    let keep = subset(data.train.len(), settings.train_fraction);
    let device = train_x.device().clone();
    let pick = |x: &Tensor, rows: &[u32]| -> Result<Tensor, SessionError> {
        Ok(x.index_select(&Tensor::from_slice(rows, rows.len(), &device)?, 0)?)
    };
    let suffix = if settings.train_fraction < 1.0 {
        format!(", {} % of labels", 100.0 * settings.train_fraction)
    } else {
        String::new()
    };
    match evaluator {
        Evaluator::Linear(_) => {
            let train_labels: Vec<u32> = keep.iter().map(|&i| train_y[i as usize]).collect();
            let probe = LinearProbe::train(
                &pick(&train_x, &keep)?,
                Target::Classes {
                    labels: &train_labels,
                    classes: data.classes,
                },
                &cfg,
            )?;
            let predicted = probe.predict(&val_x)?;
            let correct = predicted.iter().zip(&val_y).filter(|(p, y)| p == y).count();
            Ok(vec![(
                format!("linear top-1 ({} blocks{suffix})", settings.blocks),
                correct as f64 / predicted.len().max(1) as f64,
            )])
        }
        Evaluator::MultiLabel(_) => {
            let classes = data.classes;
            let all = multi_hot(data.train.as_ref(), classes)?;
            let targets: Vec<f32> = keep
                .iter()
                .flat_map(|&i| all[i as usize * classes..(i as usize + 1) * classes].to_vec())
                .collect();
            let probe = LinearProbe::train(
                &pick(&train_x, &keep)?,
                Target::MultiLabel {
                    targets: &targets,
                    labels: classes,
                },
                &cfg,
            )?;
            let scores = probe.scores(&val_x)?.flatten_all()?.to_vec1::<f32>()?;
            let truth: Vec<bool> = multi_hot(data.val.as_ref(), classes)?
                .iter()
                .map(|v| *v > 0.5)
                .collect();
            let m = MultiLabel {
                scores: &scores,
                targets: &truth,
                labels: classes,
            };
            let undefined =
                || SessionError::Unsupported("mAP is undefined: no positive label".into());
            Ok(vec![
                (
                    format!("multi-label mAP micro ({} blocks{suffix})", settings.blocks),
                    m.micro_map().ok_or_else(undefined)?,
                ),
                (
                    format!("multi-label mAP macro ({} blocks{suffix})", settings.blocks),
                    m.macro_map().ok_or_else(undefined)?,
                ),
            ])
        }
        Evaluator::Dense(_) => {
            let r = (plugin.root.backbone_geometry())(backbone.instance);
            let patch = check(plugin, "geometry", r)?.patch_size as usize;
            let size = data.size;
            let classes = data.classes + 1;
            let grid = size / patch.max(1);
            let per_image = grid * grid;
            if per_image == 0 || per_image * data.train.len() != train_x.dim(0)? {
                return Err(SessionError::Unsupported(format!(
                    "the backbone returned {} patch tokens per image; a {size} px image in {patch} px patches has {per_image}",
                    train_x.dim(0)? / data.train.len().max(1)
                )));
            }
            let train_maps = class_maps(data.train.as_ref(), size)?;
            let axis = bilinear_axis(size, grid);
            // `train_fraction` picks images; a seeded sample of pixels of each picked
            // image are the rows, each the bilinear blend of its 4 nearest patches.
            let mut rng = ChaCha8Rng::seed_from_u64(PROBE_SEED);
            let mut taps: [(Vec<u32>, Vec<f32>); 4] = Default::default();
            let mut labels = Vec::new();
            for &i in &keep {
                let picked = sample(&mut rng, size * size, DENSE_PIXELS.min(size * size));
                for pixel in picked {
                    let (y, x) = (pixel / size, pixel % size);
                    let cells = bilinear_taps(&axis, &axis, y, x, grid);
                    for ((index, weight), (cell, w)) in taps.iter_mut().zip(cells) {
                        index.push(i * per_image as u32 + cell as u32);
                        weight.push(w);
                    }
                    labels.push(train_maps[i as usize][pixel]);
                }
            }
            let n = labels.len();
            let mut rows: Option<Tensor> = None;
            for (index, weight) in &taps {
                let part = pick(&train_x, index)?.broadcast_mul(&Tensor::from_slice(
                    weight,
                    (n, 1),
                    &device,
                )?)?;
                rows = Some(match rows {
                    Some(sum) => (sum + part)?,
                    None => part,
                });
            }
            let rows = rows.ok_or_else(|| SessionError::Unsupported("no pixels".into()))?;
            let probe = LinearProbe::train(
                &rows,
                Target::Classes {
                    labels: &labels,
                    classes,
                },
                &cfg,
            )?;
            let scores = probe.scores(&val_x)?.to_vec2::<f32>()?;
            let val_maps = class_maps(data.val.as_ref(), size)?;
            let (mut pred_pixels, mut true_pixels) = (Vec::new(), Vec::new());
            for (i, truth) in val_maps.iter().enumerate() {
                let cells = scores
                    .get(i * per_image..(i + 1) * per_image)
                    .unwrap_or(&[]);
                pred_pixels.extend(upsample_scores(cells, grid, size));
                true_pixels.extend_from_slice(truth);
            }
            let miou = mean_iou(&pred_pixels, &true_pixels, classes, None).ok_or_else(|| {
                SessionError::Unsupported("mIoU is undefined: no validation pixels".into())
            })?;
            Ok(vec![(format!("dense mIoU{suffix}"), miou)])
        }
        Evaluator::Knn(_) | Evaluator::Attention(_) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::subset;

    #[test]
    fn the_label_subset_is_seeded_sorted_and_never_empty() {
        let a = subset(1000, 0.01);
        assert_eq!(a.len(), 10);
        assert_eq!(a, subset(1000, 0.01));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subset(10, 0.001).len(), 1);
        assert_eq!(subset(10, 1.0), (0..10).collect::<Vec<u32>>());
    }
}
