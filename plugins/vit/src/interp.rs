//! Bicubic resampling matrices with PyTorch's `F.interpolate(mode='bicubic',
//! align_corners=False)` semantics, built in plain Rust.
//!
//! Resizing a `(in_h, in_w)` grid to `(out_h, out_w)` is linear, so it is one
//! `(out_h·out_w) × (in_h·in_w)` matrix. Applying it with a host matmul keeps the
//! position embedding differentiable (the gradient is the transposed matrix),
//! which candle's missing bicubic resize could not give.
//!
//! PyTorch's CPU kernel, for each output index `i` along one axis:
//! - `inv = 1/scale_factor` when a scale factor is given, else `in/out`;
//! - `real = inv·(i + 0.5) − 0.5` (no clamping at 0 for cubic);
//! - `idx = min(⌊real⌋, in−1)`, `t = clamp(real − idx, 0, 1)`;
//! - four taps at `idx−1 … idx+2`, each clamped into `0..in` (border replication),
//!   weighted by Keys' cubic convolution with `A = −0.75`.
//!
//! The 2-D kernel applies the same weights separably, so the 2-D matrix is the
//! Kronecker product of the two 1-D matrices.

/// Keys' cubic-convolution parameter PyTorch uses.
pub const CUBIC_A: f64 = -0.75;

/// The four tap weights for fractional offset `t ∈ [0, 1]`
/// (PyTorch's `get_cubic_upsample_coefficients`).
pub fn cubic_weights(t: f64) -> [f64; 4] {
    // |x| ≤ 1
    let near = |x: f64| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    // 1 < |x| < 2
    let far = |x: f64| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// The `out × in` matrix (row-major) resizing one axis from `in_size` to `out_size`.
///
/// `scale` is PyTorch's `scale_factor` for this axis; when given (and positive) the
/// source coordinate uses `1/scale` rather than `in/out`, exactly as
/// `F.interpolate(..., scale_factor=...)` does. Rows always sum to 1.
pub fn resize_matrix_1d(in_size: usize, out_size: usize, scale: Option<f64>) -> Vec<f64> {
    let mut m = vec![0.0; out_size * in_size];
    if in_size == 0 || out_size == 0 {
        return m;
    }
    let inv = match scale {
        Some(s) if s > 0.0 => 1.0 / s,
        _ => in_size as f64 / out_size as f64,
    };
    let last = in_size as i64 - 1;
    for i in 0..out_size {
        let real = inv * (i as f64 + 0.5) - 0.5;
        let idx = (real.floor() as i64).min(last);
        let t = (real - idx as f64).clamp(0.0, 1.0);
        for (k, w) in cubic_weights(t).iter().enumerate() {
            let j = (idx - 1 + k as i64).clamp(0, last) as usize;
            m[i * in_size + j] += w;
        }
    }
    m
}

/// The `(new_h·new_w) × (old·old)` matrix (row-major, f32) that resizes a square
/// `old × old` grid of position embeddings to `new_h × new_w`, as DINO's
/// `interpolate_pos_encoding`: bicubic with `scale_factor = (new + 0.1) / old` per
/// axis (the +0.1 guards the output size against float rounding, DINO issue #8,
/// and the kernel then maps coordinates with that slightly larger factor).
///
/// Row `y·new_w + x` holds the weights of output cell `(y, x)`; column
/// `yy·old + xx` is input cell `(yy, xx)`, matching row-major patch order.
pub fn pos_embed_matrix(old: usize, new_h: usize, new_w: usize) -> Vec<f32> {
    let scale = |new: usize| Some((new as f64 + 0.1) / old as f64);
    let mh = resize_matrix_1d(old, new_h, scale(new_h));
    let mw = resize_matrix_1d(old, new_w, scale(new_w));
    kron(&mh, new_h, old, &mw, new_w, old)
}

/// Kronecker product `a ⊗ b` of row-major `a (ar × ac)` and `b (br × bc)`, as f32.
fn kron(a: &[f64], ar: usize, ac: usize, b: &[f64], br: usize, bc: usize) -> Vec<f32> {
    let cols = ac * bc;
    let mut out = vec![0.0f32; ar * br * cols];
    for y in 0..ar {
        for x in 0..br {
            let row = (y * br + x) * cols;
            for yy in 0..ac {
                let wy = a[y * ac + yy];
                if wy == 0.0 {
                    continue;
                }
                for xx in 0..bc {
                    out[row + yy * bc + xx] = (wy * b[x * bc + xx]) as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol,
            "{actual} vs {expected} (tol {tol})"
        );
    }

    fn apply(m: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
        (0..rows)
            .map(|i| (0..cols).map(|j| m[i * cols + j] * x[j]).sum())
            .collect()
    }

    #[test]
    fn same_size_is_identity() {
        for n in [1, 2, 6, 14] {
            let m = resize_matrix_1d(n, n, None);
            for i in 0..n {
                for j in 0..n {
                    assert_close(m[i * n + j], if i == j { 1.0 } else { 0.0 }, 1e-12);
                }
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (a, b) in [(14, 6), (14, 14), (6, 14), (3, 1), (1, 5), (14, 27)] {
            let m = resize_matrix_1d(a, b, Some((b as f64 + 0.1) / a as f64));
            for i in 0..b {
                assert_close(m[i * a..(i + 1) * a].iter().sum(), 1.0, 1e-12);
            }
        }
        let m = pos_embed_matrix(14, 6, 9);
        for row in m.chunks(196) {
            assert_close(row.iter().map(|&v| f64::from(v)).sum(), 1.0, 1e-5);
        }
    }

    // Expected rows from an independent formulation (Keys' kernel evaluated at the
    // tap distances, border taps accumulated on the edge), which is what PyTorch's
    // `upsample_bicubic2d` computes for `F.interpolate(x, scale_factor=6.1/14,
    // mode='bicubic')` on a 14-long axis:
    //
    //   A = -0.75
    //   def W(d):
    //       d = abs(d)
    //       if d <= 1: return (A+2)*d**3 - (A+3)*d**2 + 1
    //       if d < 2: return A*d**3 - 5*A*d**2 + 8*A*d - 4*A
    //       return 0.0
    //   inv = 14 / 6.1
    //   for i in range(6):
    //       r = inv*(i+0.5) - 0.5; f = math.floor(r)
    //       for j in range(f-1, f+3): M[i][min(max(j, 0), 13)] += W(r - j)
    #[test]
    fn known_values_14_to_6() {
        let m = resize_matrix_1d(14, 6, Some(6.1 / 14.0));
        let expected: [(usize, &[(usize, f64)]); 3] = [
            (
                0,
                &[
                    (0, 0.335_622_254_7),
                    (1, 0.775_219_759_6),
                    (2, -0.110_842_014_3),
                ],
            ),
            (
                3,
                &[
                    (6, -0.087_225_775_5),
                    (7, 0.550_358_152_2),
                    (8, 0.636_335_612_9),
                    (9, -0.099_467_989_6),
                ],
            ),
            (
                5,
                &[
                    (11, -0.070_931_735_5),
                    (12, 0.968_310_260_6),
                    (13, 0.102_621_474_9),
                ],
            ),
        ];
        for (row, cells) in expected {
            let mut want = [0.0; 14];
            for &(j, v) in cells {
                want[j] = v;
            }
            for (j, w) in want.iter().enumerate() {
                assert_close(m[row * 14 + j], *w, 1e-9);
            }
        }
    }

    #[test]
    fn ramp_1d_is_monotone_and_symmetric() {
        // Resampling is symmetric about the centre, border clamping included, so a
        // ramp 0..n−1 maps to values with out[i] + out[last−i] = n − 1.
        for (a, b) in [(14, 6), (14, 27), (5, 3)] {
            let ramp: Vec<f64> = (0..a).map(|j| j as f64).collect();
            let out = apply(&resize_matrix_1d(a, b, None), b, a, &ramp);
            for i in 0..b {
                assert_close(out[i] + out[b - 1 - i], (a - 1) as f64, 1e-9);
                if i > 0 {
                    assert!(out[i] > out[i - 1], "not increasing at {i}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn ramp_2d_is_separable_in_row_major_order() {
        // f(y, x) = y + 100·x → out(y, x) = ry[y] + 100·rx[x] because rows sum to 1.
        let (old, nh, nw) = (14, 6, 9);
        let grid: Vec<f64> = (0..old * old)
            .map(|k| (k / old) as f64 + 100.0 * (k % old) as f64)
            .collect();
        let m: Vec<f64> = pos_embed_matrix(old, nh, nw)
            .into_iter()
            .map(f64::from)
            .collect();
        let out = apply(&m, nh * nw, old * old, &grid);
        let ramp: Vec<f64> = (0..old).map(|j| j as f64).collect();
        let ry = apply(
            &resize_matrix_1d(old, nh, Some((nh as f64 + 0.1) / old as f64)),
            nh,
            old,
            &ramp,
        );
        let rx = apply(
            &resize_matrix_1d(old, nw, Some((nw as f64 + 0.1) / old as f64)),
            nw,
            old,
            &ramp,
        );
        for y in 0..nh {
            for x in 0..nw {
                assert_close(out[y * nw + x], ry[y] + 100.0 * rx[x], 1e-3);
            }
        }
    }

    #[test]
    fn dino_scale_is_not_exactly_identity() {
        // DINO's +0.1 changes the coordinate map even when the size along an axis
        // is unchanged (only reachable for non-square inputs), as in PyTorch.
        let m = resize_matrix_1d(14, 14, Some(14.1 / 14.0));
        assert!((m[0] - 1.0).abs() > 1e-4);
        assert_close(m[..14].iter().sum(), 1.0, 1e-12);
    }
}
