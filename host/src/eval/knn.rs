//! Weighted k-nearest-neighbour evaluation on frozen features, as in DINO's
//! `eval_knn.py` (Caron et al., 2021; Wu et al., 2018).
//!
//! Features are L2-normalised; each test feature votes with its `k` most cosine-similar
//! training features, each vote weighted by `exp(similarity / temperature)`; the class
//! with the largest summed weight is the prediction. DINO's defaults are `k = 20`,
//! `temperature = 0.07`.
//!
//! Deviations: ties are broken deterministically (among equally similar neighbours the
//! lower training index wins; among equally weighted classes the lower class wins),
//! where PyTorch's `topk`/`argsort` leave the order unspecified.

use candle_core::{D, DType, Result, Tensor, bail};

/// Similarity entries materialised on the host per chunk of test rows (about 32 MiB).
const CHUNK_ELEMENTS: usize = 8 * 1024 * 1024;

/// Top-1 accuracy in `[0, 1]` of DINO's weighted k-NN classifier.
///
/// # Shapes
/// - `train`: `(N, D)` features, `train_labels`: `N` labels in `0..classes`;
/// - `test`: `(M, D)` features, `test_labels`: `M` labels in `0..classes`.
///
/// `k` is clamped to `N`. Features may be any float dtype on any device; the
/// similarities are computed there (matmul, in chunks of test rows) and the top-k
/// vote runs on the host.
pub fn knn_accuracy(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    test_labels: &[u32],
    classes: usize,
    k: usize,
    temperature: f64,
) -> Result<f64> {
    let (m, _) = test.dims2()?;
    if test_labels.len() != m {
        bail!("knn: test has {m} rows but {} labels", test_labels.len());
    }
    if m == 0 {
        bail!("knn: the test set is empty");
    }
    check_labels("test", test_labels, classes)?;
    let predictions = knn_predict(train, train_labels, test, classes, k, temperature)?;
    let correct = predictions
        .iter()
        .zip(test_labels)
        .filter(|(p, t)| p == t)
        .count();
    Ok(correct as f64 / m as f64)
}

/// The weighted k-NN prediction (a class in `0..classes`) for every row of `test`.
///
/// Same inputs and rules as [`knn_accuracy`], without the test labels.
pub fn knn_predict(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    classes: usize,
    k: usize,
    temperature: f64,
) -> Result<Vec<u32>> {
    predict_chunked(
        train,
        train_labels,
        test,
        classes,
        k,
        temperature,
        CHUNK_ELEMENTS,
    )
}

fn predict_chunked(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    classes: usize,
    k: usize,
    temperature: f64,
    chunk_elements: usize,
) -> Result<Vec<u32>> {
    let (n, d) = train.dims2()?;
    let (m, d_test) = test.dims2()?;
    if d != d_test {
        bail!("knn: train features have dimension {d}, test features {d_test}");
    }
    if train_labels.len() != n {
        bail!("knn: train has {n} rows but {} labels", train_labels.len());
    }
    if n == 0 {
        bail!("knn: the training set is empty");
    }
    if classes == 0 {
        bail!("knn: classes must be at least 1");
    }
    if k == 0 {
        bail!("knn: k must be at least 1");
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("knn: temperature must be positive, got '{temperature}'");
    }
    check_labels("train", train_labels, classes)?;
    let k = k.min(n);

    let train_t = l2_normalize(train)?.t()?.contiguous()?;
    let test = l2_normalize(test)?;
    let chunk = (chunk_elements / n).clamp(1, m.max(1));

    let mut predictions = Vec::with_capacity(m);
    let mut order: Vec<usize> = (0..n).collect();
    let mut votes = vec![0.0f64; classes];
    let mut start = 0;
    while start < m {
        let len = chunk.min(m - start);
        let sims = test
            .narrow(0, start, len)?
            .matmul(&train_t)?
            .to_vec2::<f32>()?;
        for row in &sims {
            predictions.push(vote(
                row,
                train_labels,
                k,
                temperature,
                &mut order,
                &mut votes,
            ));
        }
        start += len;
    }
    Ok(predictions)
}

/// Rows scaled to unit L2 norm (norms clamped at 1e-12, like `F.normalize`), as f32.
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}

fn check_labels(which: &str, labels: &[u32], classes: usize) -> Result<()> {
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        bail!("knn: {which} label '{bad}' is out of range for {classes} classes");
    }
    Ok(())
}

/// One row's prediction: top-k neighbours by similarity, `exp(sim / T)` votes per class.
fn vote(
    sims: &[f32],
    labels: &[u32],
    k: usize,
    temperature: f64,
    order: &mut [usize],
    votes: &mut [f64],
) -> u32 {
    for (i, o) in order.iter_mut().enumerate() {
        *o = i;
    }
    // Most similar first; the lower index first among equal similarities.
    let by_similarity = |a: &usize, b: &usize| sims[*b].total_cmp(&sims[*a]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_similarity);
    }
    votes.iter_mut().for_each(|v| *v = 0.0);
    for &i in &order[..k] {
        votes[labels[i] as usize] += (f64::from(sims[i]) / temperature).exp();
    }
    let mut best = 0;
    for (class, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = class;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn assert_close(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol,
            "expected {expected}, got {actual} (tolerance {tol})"
        );
    }

    fn tensor(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    /// Gaussian blobs around orthogonal class centres.
    fn clusters(rng: &mut ChaCha8Rng, classes: usize, per_class: usize) -> (Tensor, Vec<u32>) {
        let dim = classes;
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            for _ in 0..per_class {
                for j in 0..dim {
                    let centre = if j == c { 10.0 } else { 0.0 };
                    data.push(centre + rng.random_range(-1.0f32..1.0));
                }
                labels.push(c as u32);
            }
        }
        let t = Tensor::from_vec(data, (classes * per_class, dim), &Device::Cpu).unwrap();
        (t, labels)
    }

    #[test]
    fn separable_clusters_are_classified_perfectly() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (train, train_labels) = clusters(&mut rng, 4, 25);
        let (test, test_labels) = clusters(&mut rng, 4, 10);
        let acc = knn_accuracy(&train, &train_labels, &test, &test_labels, 4, 20, 0.07).unwrap();
        assert_close(acc, 1.0, 1e-12);
    }

    /// Test point (1, 0), label 0. Neighbours (k = 3):
    /// a = (1, 0) class 0, cosine 1.0; b = (0.6, 0.8) and c = (0.6, -0.8) class 1, cosine 0.6.
    /// T = 0.07: class 0 gets exp(1/0.07) ≈ 1.6e6, class 1 gets 2·exp(0.6/0.07) ≈ 1.06e4 → 0.
    /// T = 100: class 0 gets exp(0.01) ≈ 1.010, class 1 gets 2·exp(0.006) ≈ 2.012 → 1.
    #[test]
    fn weighting_by_similarity_changes_the_vote() {
        let train = tensor(&[[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]]);
        let labels = [0, 1, 1, 0];
        let test = tensor(&[[2.0, 0.0]]); // normalisation makes the scale irrelevant
        let sharp = knn_accuracy(&train, &labels, &test, &[0], 2, 3, 0.07).unwrap();
        let flat = knn_accuracy(&train, &labels, &test, &[0], 2, 3, 100.0).unwrap();
        assert_close(sharp, 1.0, 1e-12);
        assert_close(flat, 0.0, 1e-12);
    }

    #[test]
    fn k_is_clamped_to_the_training_set() {
        let train = tensor(&[[1.0, 0.0], [0.0, 1.0]]);
        let test = tensor(&[[1.0, 0.1], [0.1, 1.0]]);
        let preds = knn_predict(&train, &[0, 1], &test, 2, 50, 0.07).unwrap();
        assert_eq!(preds, vec![0, 1]);
    }

    #[test]
    fn chunks_cover_every_test_row() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (train, train_labels) = clusters(&mut rng, 3, 20);
        let (test, test_labels) = clusters(&mut rng, 3, 7);
        // 60 training rows, 2 test rows per chunk: 11 chunks, the last one short.
        let preds = predict_chunked(&train, &train_labels, &test, 3, 5, 0.07, 120).unwrap();
        assert_eq!(preds, test_labels);
        let whole = knn_predict(&train, &train_labels, &test, 3, 5, 0.07).unwrap();
        assert_eq!(preds, whole);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let train = tensor(&[[1.0, 0.0]]);
        let test = tensor(&[[1.0, 0.0]]);
        let err = knn_accuracy(&train, &[3], &test, &[0], 2, 1, 0.07).unwrap_err();
        assert!(err.to_string().contains("train label '3'"), "{err}");
        let err = knn_accuracy(&train, &[0], &test, &[0], 2, 0, 0.07).unwrap_err();
        assert!(err.to_string().contains("k must be at least 1"), "{err}");
        let err = knn_accuracy(&train, &[0], &test, &[0], 2, 1, 0.0).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
        let err = knn_accuracy(&train, &[0, 1], &test, &[0], 2, 1, 0.07).unwrap_err();
        assert!(err.to_string().contains("2 labels"), "{err}");
    }
}
