//! Scores of the dense and multi-label evaluations: average precision (micro and
//! macro mAP, as scikit-learn's `average_precision_score` computes them, which is
//! what DINO-MM reports) and mean intersection-over-union (the segmentation metric
//! of SelfPatch's ADE20K transfer).

/// Average precision of `scores` against binary `targets`: the precision at each
/// distinct score threshold, weighted by the recall it adds (scikit-learn's
/// step-wise definition, no interpolation; equal scores form one threshold).
/// `None` when there are no positives (AP is undefined) or the lengths differ.
pub fn average_precision(scores: &[f32], targets: &[bool]) -> Option<f64> {
    if scores.len() != targets.len() {
        return None;
    }
    let positives = targets.iter().filter(|t| **t).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        // One threshold per distinct score: take every item with this score.
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if targets[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

/// Multi-label scores: `scores` and `targets` are `(N, L)` row-major.
#[derive(Debug, Clone, Copy)]
pub struct MultiLabel<'a> {
    /// `N * L` scores (logits or probabilities: only their order matters).
    pub scores: &'a [f32],
    /// `N * L` ground-truth labels.
    pub targets: &'a [bool],
    /// `L`, the labels per sample.
    pub labels: usize,
}

impl MultiLabel<'_> {
    /// Micro-averaged AP: every (sample, label) pair as one binary problem.
    pub fn micro_map(&self) -> Option<f64> {
        average_precision(self.scores, self.targets)
    }

    /// Macro-averaged AP: the mean of each label's AP over the labels that have a
    /// positive sample (the others have no AP).
    pub fn macro_map(&self) -> Option<f64> {
        if self.labels == 0 || self.scores.len() != self.targets.len() {
            return None;
        }
        let n = self.scores.len() / self.labels;
        let aps: Vec<f64> = (0..self.labels)
            .filter_map(|l| {
                let s: Vec<f32> = (0..n).map(|i| self.scores[i * self.labels + l]).collect();
                let t: Vec<bool> = (0..n).map(|i| self.targets[i * self.labels + l]).collect();
                average_precision(&s, &t)
            })
            .collect();
        (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
    }
}

/// Mean intersection-over-union of per-pixel class maps: for each class,
/// `|pred ∩ truth| / |pred ∪ truth|` over all pixels, averaged over the classes that
/// occur in either map. Pixels whose truth is `ignore` do not count. `None` when the
/// lengths differ or no pixel counts.
pub fn mean_iou(pred: &[u32], truth: &[u32], classes: usize, ignore: Option<u32>) -> Option<f64> {
    if pred.len() != truth.len() {
        return None;
    }
    let (mut inter, mut union) = (vec![0u64; classes], vec![0u64; classes]);
    for (&p, &t) in pred.iter().zip(truth) {
        if Some(t) == ignore {
            continue;
        }
        let (p, t) = (p as usize, t as usize);
        if p == t {
            if let Some(i) = inter.get_mut(p) {
                *i += 1;
            }
            if let Some(u) = union.get_mut(p) {
                *u += 1;
            }
        } else {
            for c in [p, t] {
                if let Some(u) = union.get_mut(c) {
                    *u += 1;
                }
            }
        }
    }
    let ious: Vec<f64> = inter
        .iter()
        .zip(&union)
        .filter(|(_, u)| **u > 0)
        .map(|(i, u)| *i as f64 / *u as f64)
        .collect();
    (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn average_precision_matches_a_hand_computed_ranking() {
        // Ranked: + (P 1/1, R 1/2), - , + (P 2/3, R 2/2): AP = 1/2 * 1 + 1/2 * 2/3.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]).unwrap();
        close(ap, 0.5 + 1.0 / 3.0);
        // scikit-learn's documented example: 0.8333...
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        close(ap, 5.0 / 6.0);
        assert_eq!(average_precision(&[0.5], &[false]), None);
    }

    #[test]
    fn equal_scores_form_one_threshold() {
        // All tied: one threshold at recall 1 with precision 1/2.
        let ap = average_precision(&[0.5; 4], &[true, false, true, false]).unwrap();
        close(ap, 0.5);
    }

    #[test]
    fn micro_and_macro_map_on_two_labels() {
        // Label 0: scores (0.9, 0.2, 0.6), truth (1, 0, 0) -> AP 1.
        // Label 1: scores (0.3, 0.8, 0.4), truth (0, 0, 1) -> ranked 0.8-, 0.4+ -> 1/2.
        let scores = [0.9, 0.3, 0.2, 0.8, 0.6, 0.4];
        let targets = [true, false, false, false, false, true];
        let m = MultiLabel {
            scores: &scores,
            targets: &targets,
            labels: 2,
        };
        close(m.macro_map().unwrap(), 0.75);
        // Micro: ranked 0.9+, 0.8-, 0.6-, 0.4+, ...: 1/2 * 1 + 1/2 * 2/4.
        close(m.micro_map().unwrap(), 0.75);
        // A label without positives is left out of the macro mean.
        let targets = [true, false, false, false, true, false];
        let m = MultiLabel {
            scores: &scores,
            targets: &targets,
            labels: 2,
        };
        close(m.macro_map().unwrap(), 1.0);
    }

    #[test]
    fn mean_iou_matches_a_hand_computed_map() {
        // truth 0 0 1 1 / pred 0 1 1 1: class 0 IoU 1/2, class 1 IoU 2/3.
        let miou = mean_iou(&[0, 1, 1, 1], &[0, 0, 1, 1], 3, None).unwrap();
        close(miou, (0.5 + 2.0 / 3.0) / 2.0);
        // An ignored pixel counts for nothing.
        let miou = mean_iou(&[0, 1, 1, 1], &[0, 255, 1, 1], 3, Some(255)).unwrap();
        close(miou, 1.0);
        assert_eq!(mean_iou(&[0], &[0, 1], 2, None), None);
    }
}
