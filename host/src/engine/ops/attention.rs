//! Scaled dot-product attention, `softmax(q·kᵀ·scale)·v` over `(B, H, N, hd)`, as one
//! fused op with backward. The images of the batch are split over the worker pool and
//! each head's products are single-threaded gemm calls that read q, k and v where they
//! lie: a ViT's q, k and v are strided views into its qkv projection, and transposes
//! are strides too, so nothing is copied. The output is stored `(B, N, H, hd)`, the
//! layout the block's output projection reads, and returned as a `(B, H, N, hd)` view.
//! candle's batched matmuls instead parallelise inside each small product and copy their
//! operands, which ran ViT-Tiny/16's attention at about a tenth of the machine's peak.
//! The backward recomputes the probabilities from `q` and `k` rather than keeping the
//! `N × N` matrices of every head.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use gemm::{Parallelism, gemm};

use super::{Route, dot8, exp_neg, for_each_row_block, max8, route, sum8};
use crate::engine::autocast;

/// `softmax(q·kᵀ·scale)·v` for `q`, `k`, `v` of one shape `(B, H, N, hd)`; gradients flow
/// to all three. The fused CPU op for f32 (without bf16 autocast), composed candle ops
/// otherwise.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let fusable = q.rank() == 4
        && k.dims() == q.dims()
        && v.dims() == q.dims()
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && q.device().is_cpu()
        && k.device().is_cpu()
        && v.device().is_cpu()
        && !autocast::enabled();
    match route(q) {
        Route::Fused if fusable => {
            let (q, k, v) = (unit_rows(q)?, unit_rows(k)?, unit_rows(v)?);
            let out = q.apply_op3(
                &k,
                &v,
                Attention {
                    scale: scale as f32,
                },
            )?;
            // Stored (B, N, H, hd); seen as (B, H, N, hd).
            out.permute((0, 2, 1, 3))
        }
        _ => Ok(composed(q, k, v, scale)?.0),
    }
}

/// The composed-op attention (the reference, the fallback, and the path that also
/// returns the probabilities `(B, H, N, N)`).
pub fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let logits = (autocast::matmul(&q.contiguous()?, &k.contiguous()?.t()?)? * scale)?;
    let probs = super::softmax_last_dim(&logits)?;
    let out = autocast::matmul(&probs, &v.contiguous()?)?;
    Ok((out, probs))
}

/// `t` itself when its last dimension is contiguous (all the kernels need), else a
/// contiguous copy.
fn unit_rows(t: &Tensor) -> Result<Tensor> {
    if t.stride().last() == Some(&1) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// A matrix operand: its data from the first element on and the strides of a row and of
/// a column (a transpose swaps them).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Operand<'a> {
    /// `data` as a matrix whose rows start `stride` elements apart, columns adjacent.
    fn rows(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            row_stride: stride,
            col_stride: 1,
        }
    }

    /// The transpose of [`Operand::rows`]`(data, stride)`.
    fn transposed(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: stride,
        }
    }

    /// Whether a `rows × cols` matrix with these strides lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst = scale · a·b` for `a` of `m × k` and `b` of `k × n`, `dst` holding `m` rows of
/// `n` adjacent elements starting `dst_stride` apart; on this thread.
#[allow(
    clippy::too_many_arguments,
    reason = "a gemm call: three shapes, three operands, a scale"
)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_stride: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    scale: f32,
) {
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_stride + n <= dst.len();
    assert!(
        dst_fits && (m <= 1 || dst_stride >= n) && a.holds(m, k) && b.holds(k, n),
        "attention product {m}x{k} · {k}x{n} out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in 0..m {
            dst[row * dst_stride..row * dst_stride + n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assertion above keeps every element gemm reads (of `a`, `b`) and
    // writes (of `dst`) inside the slices; `dst` is exclusively borrowed, so it does not
    // overlap the shared `a` and `b`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `p = softmax(q·kᵀ·scale)` of one head (`n × n`, row-major).
fn probabilities(q: Operand<'_>, k: Operand<'_>, n: usize, hd: usize, scale: f32, p: &mut [f32]) {
    let kt = Operand::transposed(k.data, k.row_stride);
    product(n, n, hd, p, n, q, kt, scale);
    for row in p.chunks_exact_mut(n) {
        let max = max8(row);
        for x in row.iter_mut() {
            *x = exp_neg(*x - max);
        }
        let inv = sum8(row).recip();
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// One of q, k, v (or the output gradient) as the kernels read it: a `(B, H, N, hd)`
/// layout with a contiguous last dimension, over the whole storage.
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a> Heads<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<Self> {
        let data = storage.as_slice::<f32>()?;
        match (layout.dims(), layout.stride()) {
            (&[_, _, _, _], &[batch_stride, head_stride, row_stride, 1]) => Ok(Self {
                data,
                start: layout.start_offset(),
                batch_stride,
                head_stride,
                row_stride,
            }),
            (dims, stride) => bail!(
                "attention {what}: expected (B, H, N, hd) with a contiguous last dimension, \
                 got shape {dims:?} strides {stride:?}"
            ),
        }
    }

    /// Head `h` of image `b` as an `N × hd` operand.
    fn head(&self, b: usize, h: usize) -> Operand<'a> {
        let offset =
            (self.start + b * self.batch_stride + h * self.head_stride).min(self.data.len());
        Operand::rows(&self.data[offset..], self.row_stride)
    }
}

/// `(B, H, N, hd)`.
type Dims = (usize, usize, usize, usize);

/// `(B, H, N, hd)` and the q, k, v views of a kernel's three inputs.
fn inputs<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<(Dims, [Heads<'a>; 3])> {
    let dims = match *l1.dims() {
        [b, h, n, hd] => (b, h, n, hd),
        ref other => bail!("attention expects (B, H, N, hd) inputs, got {other:?}"),
    };
    let heads = [
        Heads::new(s1, l1, "q")?,
        Heads::new(s2, l2, "k")?,
        Heads::new(s3, l3, "v")?,
    ];
    Ok((dims, heads))
}

/// Forward kernel: inputs q, k, v `(B, H, N, hd)`; output `(B, N, H, hd)`.
struct Attention {
    scale: f32,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "patchwork-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("attention fwd");
        let ((b, h, n, hd), [q, k, v]) = inputs((s1, l1), (s2, l2), (s3, l3))?;
        let image = n * h * hd;
        let scale = self.scale;
        let mut out = vec![0f32; b * image];
        for_each_row_block(&mut out, image, |first, block| {
            let mut p = vec![0f32; n * n];
            for (i, o) in block.chunks_exact_mut(image).enumerate() {
                let bi = first + i;
                for hi in 0..h {
                    probabilities(q.head(bi, hi), k.head(bi, hi), n, hd, scale, &mut p);
                    let dst = &mut o[hi * hd..];
                    product(
                        n,
                        hd,
                        n,
                        dst,
                        h * hd,
                        Operand::rows(&p, n),
                        v.head(bi, hi),
                        1.0,
                    );
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, n, h, hd])))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The output was seen through a permute, so its gradient arrives (B, N, H, hd).
        let grad = unit_rows(&grad_res.permute((0, 2, 1, 3))?)?;
        let op = AttentionBwd {
            scale: self.scale,
            grad,
        };
        // (B, 3, N, H, hd): each image's dq, dk, dv in the output's layout.
        let packed = q.apply_op3_no_bwd(k, v, &op)?;
        let part = |i: usize| packed.narrow(1, i, 1)?.squeeze(1)?.permute((0, 2, 1, 3));
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

/// Backward kernel: inputs q, k, v, and (held) the output gradient `(B, H, N, hd)`;
/// output `(B, 3, N, H, hd)`. Per head, with `P` recomputed: `dV = Pᵀ·dO`,
/// `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, `dQ = dS·K`, `dK = dSᵀ·Q`.
struct AttentionBwd {
    scale: f32,
    grad: Tensor,
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "patchwork-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("attention bwd");
        let ((b, h, n, hd), [q, k, v]) = inputs((s1, l1), (s2, l2), (s3, l3))?;
        let (g_storage, g_layout) = self.grad.storage_and_layout();
        let Storage::Cpu(g_cpu) = &*g_storage else {
            bail!("attention backward: the output gradient is not on the CPU");
        };
        if g_layout.dims() != l1.dims() {
            bail!(
                "attention backward: gradient shape {:?} should be {:?}",
                g_layout.dims(),
                l1.dims()
            );
        }
        let g = Heads::new(g_cpu, g_layout, "output gradient")?;
        let image = n * h * hd;
        let scale = self.scale;
        let mut grads = vec![0f32; b * 3 * image];
        for_each_row_block(&mut grads, 3 * image, |first, block| {
            let mut p = vec![0f32; n * n];
            let mut dp = vec![0f32; n * n];
            for (i, d) in block.chunks_exact_mut(3 * image).enumerate() {
                let bi = first + i;
                let (dq, rest) = d.split_at_mut(image);
                let (dk, dv) = rest.split_at_mut(image);
                for hi in 0..h {
                    let (qh, kh, vh, gh) = (
                        q.head(bi, hi),
                        k.head(bi, hi),
                        v.head(bi, hi),
                        g.head(bi, hi),
                    );
                    let rs = h * hd;
                    probabilities(qh, kh, n, hd, scale, &mut p);
                    let pt = Operand::transposed(&p, n);
                    product(n, hd, n, &mut dv[hi * hd..], rs, pt, gh, 1.0);
                    let vt = Operand::transposed(vh.data, vh.row_stride);
                    product(n, n, hd, &mut dp, n, gh, vt, 1.0);
                    for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
                        let dot = dot8(pr, dr);
                        for (x, pv) in dr.iter_mut().zip(pr) {
                            *x = pv * (*x - dot) * scale;
                        }
                    }
                    product(
                        n,
                        hd,
                        n,
                        &mut dq[hi * hd..],
                        rs,
                        Operand::rows(&dp, n),
                        kh,
                        1.0,
                    );
                    let dst = Operand::transposed(&dp, n);
                    product(n, hd, n, &mut dk[hi * hd..], rs, dst, qh, 1.0);
                }
            }
        });
        Ok((CpuStorage::F32(grads), Shape::from_dims(&[b, 3, n, h, hd])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, randn};
    use candle_core::{Device, Var};

    /// Forward and the three gradients of the fused op against the composed reference.
    fn check(shape: &[usize], seed: u64) -> Result<()> {
        let dev = &Device::Cpu;
        let scale = 1.0 / (shape[3] as f64).sqrt();
        let q = Var::from_tensor(&randn(seed, shape, 1.5, 0.0, dev)?)?;
        let k = Var::from_tensor(&randn(seed + 1, shape, 1.5, 0.0, dev)?)?;
        let v = Var::from_tensor(&randn(seed + 2, shape, 1.0, 0.3, dev)?)?;
        let r = randn(seed + 3, shape, 1.0, 0.0, dev)?;
        let y = attention(&q, &k, &v, scale)?;
        let (y_ref, _) = composed(&q, &k, &v, scale)?;
        assert_close(&y, &y_ref, 1e-5, "attention forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (name, var) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            let got = g.get(var).expect("fused grad should exist");
            let want = g_ref.get(var).expect("reference grad should exist");
            assert_close(got, want, 1e-5, name);
        }
        Ok(())
    }

    #[test]
    fn matches_composed_on_odd_shapes() -> Result<()> {
        check(&[1, 1, 1, 1], 70)?;
        check(&[1, 1, 1, 8], 71)?;
        check(&[1, 1, 9, 1], 72)?;
        check(&[2, 3, 5, 7], 73)?;
        check(&[1, 2, 17, 9], 74)?;
        // ViT-Tiny/4 at 32 px: 65 tokens, head width 64; several heads per block.
        check(&[2, 3, 65, 64], 75)?;
        // Wider than one block of the pool: one head per block.
        check(&[1, 2, 197, 16], 76)?;
        Ok(())
    }

    #[test]
    fn strided_inputs() -> Result<()> {
        // q/k/v as a ViT makes them: (B, N, H, hd) projections viewed as (B, H, N, hd).
        let dev = &Device::Cpu;
        let (b, n, h, hd) = (2, 11, 3, 4);
        let vars: Vec<Var> = (0..3)
            .map(|i| {
                randn(80 + i, &[b, n, h, hd], 1.0, 0.0, dev).and_then(|t| Var::from_tensor(&t))
            })
            .collect::<Result<_>>()?;
        let views: Vec<Tensor> = vars
            .iter()
            .map(|v| v.permute((0, 2, 1, 3)))
            .collect::<Result<_>>()?;
        let (q, k, v) = (&views[0], &views[1], &views[2]);
        assert!(!q.is_contiguous());
        let y = attention(q, k, v, 0.5)?;
        let (y_ref, _) = composed(q, k, v, 0.5)?;
        assert_close(&y, &y_ref, 1e-5, "strided forward");
        let g = y.sqr()?.sum_all()?.backward()?;
        let g_ref = y_ref.sqr()?.sum_all()?.backward()?;
        for var in &vars {
            let (got, want) = (
                g.get(var).expect("fused grad"),
                g_ref.get(var).expect("reference grad"),
            );
            assert_close(got, want, 1e-5, "strided backward");
        }
        Ok(())
    }

    #[test]
    fn views_of_one_qkv_projection_as_the_vit_makes_them() -> Result<()> {
        // plugin-api's Attention: (B, N, 3·D) → (B, N, 3, H, hd) → (3, B, H, N, hd).
        let dev = &Device::Cpu;
        let (b, n, h, hd) = (3, 10, 2, 6);
        let x = Var::from_tensor(&randn(90, &[b, n, 3 * h * hd], 1.0, 0.0, dev)?)?;
        let qkv = x.reshape((b, n, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.narrow(0, i, 1).and_then(|t| t.squeeze(0));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let y = attention(&q, &k, &v, 0.3)?;
        let (y_ref, _) = composed(&q, &k, &v, 0.3)?;
        assert_close(&y, &y_ref, 1e-5, "forward");
        // What the block does next: back to (B, N, D), here without a copy.
        let merged = y.transpose(1, 2)?;
        assert!(merged.is_contiguous());
        let r = randn(91, &[b, n, h * hd], 1.0, 0.0, dev)?;
        let loss = |t: &Tensor| (t.transpose(1, 2)?.reshape((b, n, h * hd))? * &r)?.sum_all();
        let g = loss(&y)?.backward()?;
        let g_ref = loss(&y_ref)?.backward()?;
        let (got, want) = (
            g.get(&x).expect("fused grad"),
            g_ref.get(&x).expect("reference grad"),
        );
        assert_close(got, want, 1e-5, "backward");
        Ok(())
    }

    #[test]
    fn products_by_hand() {
        // [[1, 2], [3, 4]] · [[5, 6], [7, 8]] and the same with the left transposed.
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [5.0f32, 6.0, 7.0, 8.0];
        let mut out = [0f32; 4];
        product(
            2,
            2,
            2,
            &mut out,
            2,
            Operand::rows(&a, 2),
            Operand::rows(&b, 2),
            1.0,
        );
        assert_eq!(out, [19.0, 22.0, 43.0, 50.0]);
        product(
            2,
            2,
            2,
            &mut out,
            2,
            Operand::transposed(&a, 2),
            Operand::rows(&b, 2),
            0.5,
        );
        assert_eq!(out, [13.0, 15.0, 19.0, 22.0]);
    }
}
