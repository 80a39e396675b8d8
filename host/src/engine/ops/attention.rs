//! Scaled dot-product attention, `softmax(q·kᵀ·scale)·v` over `(B, H, N, hd)`, as one
//! fused op with backward, in two forms: on separate q, k, v ([`attention`]) and on a
//! ViT's packed qkv projection `(B, N, 3·D)` ([`self_attention`]), which takes one
//! gradient back instead of three that candle would pad and add into the projection's.
//!
//! The images of the batch are split over the worker pool and each head's products are
//! single-threaded gemm calls that read q, k and v where they lie: heads of a packed
//! projection are strided views, and transposes are strides too, so nothing is copied.
//! The output is stored `(B, N, H, hd)`, the layout the block's output projection reads
//! (`(B, N, D)` for [`self_attention`]; seen as `(B, H, N, hd)` for [`attention`]).
//! candle's batched matmuls instead parallelise inside each small product and copy their
//! operands, which ran ViT-Tiny/16's attention at about a tenth of the machine's peak.
//! The backward recomputes the probabilities from `q` and `k` rather than keeping the
//! `N × N` matrices of every head.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail,
};

use super::{
    Route, dot8, exp_neg, for_each_row_block,
    matmul::{Operand, product},
    max8, route,
    simd::vectorized,
    sum8,
};
use crate::engine::autocast;

/// `softmax(q·kᵀ·scale)·v` for `q`, `k`, `v` of one shape `(B, H, N, hd)`; gradients flow
/// to all three. The fused op for f32 on the CPU or CUDA (without bf16 autocast; on CUDA
/// while a row of scores fits the kernels' shared memory), composed candle ops otherwise.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let fusable = q.rank() == 4
        && k.dims() == q.dims()
        && v.dims() == q.dims()
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && k.device().same_device(q.device())
        && v.device().same_device(q.device())
        && kernels_take(q.device(), q.dims()[2], q.dims()[3])
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

/// Multi-head self-attention on a packed projection: `qkv (B, N, 3·D)`, laid out as
/// DINO's `qkv` linear makes it (`(B, N, 3, heads, D/heads)`), to the heads' attended
/// values merged back to `(B, N, D)`. Gradients flow to `qkv`. The fused op where
/// [`attention`] would take it; otherwise [`split_heads`] and [`attention`].
pub fn self_attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, n, d) = packed_dims(qkv, heads)?;
    match route(qkv) {
        Route::Fused if kernels_take(qkv.device(), n, d / heads) && !autocast::enabled() => {
            qkv.contiguous()?.apply_op1(SelfAttention {
                heads,
                scale: scale as f32,
            })
        }
        _ => {
            let (q, k, v) = split_heads(qkv, heads)?;
            attention(&q, &k, &v, scale)?
                .transpose(1, 2)?
                .reshape((b, n, d))
        }
    }
}

/// Whether the fused kernels run `n` tokens of heads `hd` wide on `device`: the CPU's
/// always; CUDA's while a row of scores fits their shared memory.
fn kernels_take(device: &candle_core::Device, n: usize, hd: usize) -> bool {
    match device {
        candle_core::Device::Cpu => true,
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => super::cuda::attention_fits(n, hd),
        _ => {
            let _ = (n, hd);
            false
        }
    }
}

/// `(B, N, D)` of a packed `qkv (B, N, 3·D)` whose `D` splits into `heads` heads.
fn packed_dims(qkv: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    let (b, n, d3) = match *qkv.dims() {
        [b, n, d3] => (b, n, d3),
        ref other => bail!("self-attention expects a packed qkv (B, N, 3·D), got {other:?}"),
    };
    if heads == 0 || d3 % (3 * heads) != 0 {
        bail!("self-attention: qkv width {d3} is not 3 × heads ({heads}) × head width");
    }
    Ok((b, n, d3 / 3))
}

/// The `(B, H, N, hd)` views q, k, v of a packed `qkv (B, N, 3·D)`.
pub fn split_heads(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, d) = packed_dims(qkv, heads)?;
    let parts = qkv
        .reshape((b, n, 3, heads, d / heads))?
        .permute((2, 0, 3, 1, 4))?;
    let part = |i: usize| parts.narrow(0, i, 1)?.squeeze(0);
    Ok((part(0)?, part(1)?, part(2)?))
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

/// `p = softmax(q·kᵀ·scale)` of one head (`n × n`, row-major).
#[inline]
fn probabilities(q: Operand<'_>, k: Operand<'_>, n: usize, hd: usize, scale: f32, p: &mut [f32]) {
    let kt = Operand::transposed(k.data, k.row_stride);
    product(n, n, hd, p, n, q, kt, scale);
    softmax_in_place(p, n);
}

vectorized! {
    /// Each `n`-wide row of `p` to its softmax.
    fn softmax_in_place(p: &mut [f32], n: usize) {
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
}

vectorized! {
    /// `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale` over `n`-wide rows, in place in `dp`.
    fn softmax_grad_in_place(p: &[f32], dp: &mut [f32], n: usize, scale: f32) {
        for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
            let dot = dot8(pr, dr);
            for (x, pv) in dr.iter_mut().zip(pr) {
                *x = pv * (*x - dot) * scale;
            }
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

    /// Part `part` (0 q, 1 k, 2 v) of a contiguous packed `(B, N, 3·D)` projection.
    fn packed(storage: &'a CpuStorage, layout: &Layout, part: usize, hd: usize) -> Result<Self> {
        let data = storage.as_slice::<f32>()?;
        match (layout.dims(), layout.contiguous_offsets()) {
            (&[_, n, d3], Some((start, _))) => Ok(Self {
                data,
                start: start + part * d3 / 3,
                batch_stride: n * d3,
                head_stride: hd,
                row_stride: d3,
            }),
            (dims, _) => bail!("self-attention: expected a contiguous (B, N, 3·D), got {dims:?}"),
        }
    }

    /// A contiguous `(B, N, H, hd)` tensor (the output and its gradient) by heads.
    fn merged(data: &'a [f32], (_, h, n, hd): Dims) -> Self {
        Self {
            data,
            start: 0,
            batch_stride: n * h * hd,
            head_stride: hd,
            row_stride: h * hd,
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

/// `(B, H, N, hd)` and the q, k, v views of a packed `(B, N, 3·D)` input.
fn packed_inputs<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    heads: usize,
) -> Result<(Dims, [Heads<'a>; 3])> {
    let (b, n, d) = match *layout.dims() {
        [b, n, d3] if heads > 0 && d3 % (3 * heads) == 0 => (b, n, d3 / 3),
        ref other => bail!("self-attention: qkv {other:?} does not split into {heads} heads"),
    };
    let hd = d / heads;
    let parts = [
        Heads::packed(storage, layout, 0, hd)?,
        Heads::packed(storage, layout, 1, hd)?,
        Heads::packed(storage, layout, 2, hd)?,
    ];
    Ok(((b, heads, n, hd), parts))
}

/// `(B, H, N, hd)` and the CUDA q, k, v operands of a kernel's three inputs.
#[cfg(feature = "cuda")]
fn cuda_inputs<'a>(
    (s1, l1): (&'a candle_core::CudaStorage, &Layout),
    (s2, l2): (&'a candle_core::CudaStorage, &Layout),
    (s3, l3): (&'a candle_core::CudaStorage, &Layout),
) -> Result<(Dims, [super::cuda::HeadsView<'a>; 3])> {
    let dims = match *l1.dims() {
        [b, h, n, hd] => (b, h, n, hd),
        ref other => bail!("attention expects (B, H, N, hd) inputs, got {other:?}"),
    };
    let heads = [
        super::cuda::heads(s1, l1, "q")?,
        super::cuda::heads(s2, l2, "k")?,
        super::cuda::heads(s3, l3, "v")?,
    ];
    Ok((dims, heads))
}

/// `(B, H, N, hd)` and the CUDA q, k, v operands of a packed `(B, N, 3·D)` input.
#[cfg(feature = "cuda")]
fn packed_cuda_inputs<'a>(
    storage: &'a candle_core::CudaStorage,
    layout: &Layout,
    heads: usize,
) -> Result<(Dims, [super::cuda::HeadsView<'a>; 3])> {
    let (b, n, d) = match *layout.dims() {
        [b, n, d3] if heads > 0 && d3 % (3 * heads) == 0 => (b, n, d3 / 3),
        ref other => bail!("self-attention: qkv {other:?} does not split into {heads} heads"),
    };
    let hd = d / heads;
    let parts = [
        super::cuda::packed_heads(storage, layout, 0, hd)?,
        super::cuda::packed_heads(storage, layout, 1, hd)?,
        super::cuda::packed_heads(storage, layout, 2, hd)?,
    ];
    Ok(((b, heads, n, hd), parts))
}

/// The forward kernel: `(B, N, H, hd)` attended values of q, k, v.
fn forward([q, k, v]: &[Heads<'_>; 3], (b, h, n, hd): Dims, scale: f32) -> Vec<f32> {
    let image = n * h * hd;
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
    out
}

/// Where the backward kernel writes dq, dk and dv of one image: `image` elements per
/// image, each gradient's first row at its offset and rows `row_stride` apart (heads
/// `hd` apart within a row).
#[derive(Clone, Copy)]
struct GradSlots {
    image: usize,
    offsets: [usize; 3],
    row_stride: usize,
}

impl GradSlots {
    /// `(B, 3, N, H, hd)`: each image's dq, dk, dv one after the other.
    fn stacked((_, h, n, hd): Dims) -> Self {
        let one = n * h * hd;
        Self {
            image: 3 * one,
            offsets: [0, one, 2 * one],
            row_stride: h * hd,
        }
    }

    /// `(B, N, 3·D)`: the layout of the packed projection.
    fn packed((_, h, n, hd): Dims) -> Self {
        let d = h * hd;
        Self {
            image: 3 * n * d,
            offsets: [0, d, 2 * d],
            row_stride: 3 * d,
        }
    }
}

/// The backward kernel, per head with `P` recomputed: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, `dQ = dS·K`, `dK = dSᵀ·Q`; written as
/// `slots` says.
fn backward(
    [q, k, v]: &[Heads<'_>; 3],
    g: &Heads<'_>,
    (b, h, n, hd): Dims,
    scale: f32,
    slots: GradSlots,
) -> Vec<f32> {
    let GradSlots {
        image,
        offsets: [oq, ok, ov],
        row_stride: rs,
    } = slots;
    let mut grads = vec![0f32; b * image];
    for_each_row_block(&mut grads, image, |first, block| {
        let mut p = vec![0f32; n * n];
        let mut dp = vec![0f32; n * n];
        for (i, d) in block.chunks_exact_mut(image).enumerate() {
            let bi = first + i;
            for hi in 0..h {
                let (qh, kh, vh, gh) = (
                    q.head(bi, hi),
                    k.head(bi, hi),
                    v.head(bi, hi),
                    g.head(bi, hi),
                );
                let at = hi * hd;
                probabilities(qh, kh, n, hd, scale, &mut p);
                let pt = Operand::transposed(&p, n);
                product(n, hd, n, &mut d[ov + at..], rs, pt, gh, 1.0);
                let vt = Operand::transposed(vh.data, vh.row_stride);
                product(n, n, hd, &mut dp, n, gh, vt, 1.0);
                softmax_grad_in_place(&p, &mut dp, n, scale);
                let ds = Operand::rows(&dp, n);
                product(n, hd, n, &mut d[oq + at..], rs, ds, kh, 1.0);
                let dst = Operand::transposed(&dp, n);
                product(n, hd, n, &mut d[ok + at..], rs, dst, qh, 1.0);
            }
        }
    });
    grads
}

/// Forward op of [`attention`]: inputs q, k, v `(B, H, N, hd)`; output `(B, N, H, hd)`.
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
        let (dims, qkv) = inputs((s1, l1), (s2, l2), (s3, l3))?;
        let out = forward(&qkv, dims, self.scale);
        let (b, h, n, hd) = dims;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, n, h, hd])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (dims, qkv) = cuda_inputs((s1, l1), (s2, l2), (s3, l3))?;
        let out = super::cuda::attention(&s1.device, &qkv, dims, self.scale)?;
        let (b, h, n, hd) = dims;
        Ok((
            super::cuda::storage(out, &s1.device),
            Shape::from_dims(&[b, n, h, hd]),
        ))
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

/// Backward op of [`attention`]: inputs q, k, v, and (held) the output gradient
/// `(B, H, N, hd)`; output `(B, 3, N, H, hd)`.
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
        let (dims, qkv) = inputs((s1, l1), (s2, l2), (s3, l3))?;
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
        let grads = backward(&qkv, &g, dims, self.scale, GradSlots::stacked(dims));
        let (b, h, n, hd) = dims;
        Ok((CpuStorage::F32(grads), Shape::from_dims(&[b, 3, n, h, hd])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (dims, qkv) = cuda_inputs((s1, l1), (s2, l2), (s3, l3))?;
        let (g_storage, g_layout) = self.grad.storage_and_layout();
        let Storage::Cuda(g_cuda) = &*g_storage else {
            bail!("attention backward: the output gradient is not on CUDA");
        };
        if g_layout.dims() != l1.dims() {
            bail!(
                "attention backward: gradient shape {:?} should be {:?}",
                g_layout.dims(),
                l1.dims()
            );
        }
        let g = super::cuda::heads(g_cuda, g_layout, "output gradient")?;
        let slots = GradSlots::stacked(dims);
        let grads = super::cuda::attention_bwd(
            &s1.device,
            &qkv,
            &g,
            dims,
            self.scale,
            (slots.image, slots.offsets, slots.row_stride),
        )?;
        let (b, h, n, hd) = dims;
        Ok((
            super::cuda::storage(grads, &s1.device),
            Shape::from_dims(&[b, 3, n, h, hd]),
        ))
    }
}

/// Forward op of [`self_attention`]: input a contiguous `qkv (B, N, 3·D)`, output
/// `(B, N, D)`.
struct SelfAttention {
    heads: usize,
    scale: f32,
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "patchwork-self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("attention fwd");
        let (dims, qkv) = packed_inputs(storage, layout, self.heads)?;
        let out = forward(&qkv, dims, self.scale);
        let (b, h, n, hd) = dims;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, n, h * hd])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (dims, qkv) = packed_cuda_inputs(storage, layout, self.heads)?;
        let out = super::cuda::attention(&storage.device, &qkv, dims, self.scale)?;
        let (b, h, n, hd) = dims;
        Ok((
            super::cuda::storage(out, &storage.device),
            Shape::from_dims(&[b, n, h * hd]),
        ))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let op = SelfAttentionBwd {
            heads: self.heads,
            scale: self.scale,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad, &op)?))
    }
}

/// Backward op of [`self_attention`]: inputs `qkv (B, N, 3·D)` and the output gradient
/// `(B, N, D)`, both contiguous; output the gradient of `qkv`.
struct SelfAttentionBwd {
    heads: usize,
    scale: f32,
}

impl CustomOp2 for SelfAttentionBwd {
    fn name(&self) -> &'static str {
        "patchwork-self-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("attention bwd");
        let (dims, qkv) = packed_inputs(s1, l1, self.heads)?;
        let (b, h, n, hd) = dims;
        let g = super::f32_slice(s2, l2, "self-attention output gradient")?;
        super::same_length("self-attention", b * n * h * hd, g.len())?;
        let g = Heads::merged(g, dims);
        let grads = backward(&qkv, &g, dims, self.scale, GradSlots::packed(dims));
        Ok((CpuStorage::F32(grads), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (dims, qkv) = packed_cuda_inputs(s1, l1, self.heads)?;
        let (b, h, n, hd) = dims;
        let g = super::cuda::view(s2, l2, "self-attention output gradient")?;
        super::same_length("self-attention", b * n * h * hd, g.len())?;
        let g = super::cuda::merged_heads(g, dims);
        let slots = GradSlots::packed(dims);
        let grads = super::cuda::attention_bwd(
            &s1.device,
            &qkv,
            &g,
            dims,
            self.scale,
            (slots.image, slots.offsets, slots.row_stride),
        )?;
        Ok((super::cuda::storage(grads, &s1.device), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};
    use candle_core::{Device, Var};

    /// The tolerance against the composed reference: CUDA's sums run in another order.
    fn tol(dev: &Device) -> f32 {
        if dev.is_cpu() { 1e-5 } else { 1e-4 }
    }

    /// Forward and the three gradients of the fused op against the composed reference,
    /// on every device.
    fn check(shape: &[usize], seed: u64) -> Result<()> {
        for dev in &devices() {
            check_on(dev, shape, seed)?;
        }
        Ok(())
    }

    fn check_on(dev: &Device, shape: &[usize], seed: u64) -> Result<()> {
        let scale = 1.0 / (shape[3] as f64).sqrt();
        let q = Var::from_tensor(&randn(seed, shape, 1.5, 0.0, dev)?)?;
        let k = Var::from_tensor(&randn(seed + 1, shape, 1.5, 0.0, dev)?)?;
        let v = Var::from_tensor(&randn(seed + 2, shape, 1.0, 0.3, dev)?)?;
        let r = randn(seed + 3, shape, 1.0, 0.0, dev)?;
        let y = attention(&q, &k, &v, scale)?;
        let (y_ref, _) = composed(&q, &k, &v, scale)?;
        assert_close(&y, &y_ref, tol(dev), "attention forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (name, var) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            let got = g.get(var).expect("fused grad should exist");
            let want = g_ref.get(var).expect("reference grad should exist");
            assert_close(got, want, tol(dev), name);
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
        for dev in &devices() {
            strided_inputs_on(dev)?;
        }
        Ok(())
    }

    fn strided_inputs_on(dev: &Device) -> Result<()> {
        // q/k/v as a ViT makes them: (B, N, H, hd) projections viewed as (B, H, N, hd).
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
        assert_close(&y, &y_ref, tol(dev), "strided forward");
        let g = y.sqr()?.sum_all()?.backward()?;
        let g_ref = y_ref.sqr()?.sum_all()?.backward()?;
        for var in &vars {
            let (got, want) = (
                g.get(var).expect("fused grad"),
                g_ref.get(var).expect("reference grad"),
            );
            assert_close(got, want, tol(dev), "strided backward");
        }
        Ok(())
    }

    #[test]
    fn views_of_one_qkv_projection_as_the_vit_makes_them() -> Result<()> {
        for dev in &devices() {
            views_of_one_qkv_projection_on(dev)?;
        }
        Ok(())
    }

    fn views_of_one_qkv_projection_on(dev: &Device) -> Result<()> {
        // plugin-api's Attention: (B, N, 3·D) → (B, N, 3, H, hd) → (3, B, H, N, hd).
        let (b, n, h, hd) = (3, 10, 2, 6);
        let x = Var::from_tensor(&randn(90, &[b, n, 3 * h * hd], 1.0, 0.0, dev)?)?;
        let qkv = x.reshape((b, n, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.narrow(0, i, 1).and_then(|t| t.squeeze(0));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let y = attention(&q, &k, &v, 0.3)?;
        let (y_ref, _) = composed(&q, &k, &v, 0.3)?;
        assert_close(&y, &y_ref, tol(dev), "forward");
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
        assert_close(got, want, tol(dev), "backward");
        Ok(())
    }

    /// The packed op against [`split_heads`] and the composed reference, forward and
    /// the gradient of the projection, on every device.
    fn check_packed(b: usize, n: usize, heads: usize, hd: usize, seed: u64) -> Result<()> {
        for dev in &devices() {
            check_packed_on(dev, (b, n, heads, hd), seed)?;
        }
        Ok(())
    }

    fn check_packed_on(
        dev: &Device,
        (b, n, heads, hd): (usize, usize, usize, usize),
        seed: u64,
    ) -> Result<()> {
        let d = heads * hd;
        let scale = 1.0 / (hd as f64).sqrt();
        let x = Var::from_tensor(&randn(seed, &[b, n, 3 * d], 1.2, 0.1, dev)?)?;
        let y = self_attention(&x, heads, scale)?;
        let (q, k, v) = split_heads(&x, heads)?;
        let y_ref = composed(&q, &k, &v, scale)?
            .0
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        let what = format!("packed {b}x{n}x{heads}x{hd}");
        assert_close(&y, &y_ref, tol(dev), &format!("{what} forward"));
        let r = randn(seed + 1, &[b, n, d], 1.0, 0.0, dev)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let (got, want) = (
            g.get(&x).expect("fused grad"),
            g_ref.get(&x).expect("reference grad"),
        );
        assert_close(got, want, tol(dev), &format!("{what} backward"));
        Ok(())
    }

    #[test]
    fn packed_projection_matches_composed_on_odd_shapes() -> Result<()> {
        check_packed(1, 1, 1, 1, 60)?;
        check_packed(1, 9, 1, 8, 61)?;
        check_packed(2, 5, 3, 7, 62)?;
        check_packed(3, 17, 2, 9, 63)?;
        check_packed(2, 65, 3, 64, 64)?;
        check_packed(1, 197, 2, 16, 65)?;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_kernels_take_what_their_shared_memory_holds() {
        use crate::engine::ops::cuda::attention_fits;
        // DINO's ViT-S/16: 197 tokens (224 px) and 37 (96 px crops), heads 64 wide;
        // DINOv2-sized 518 px at /14: 1370 tokens.
        assert!(attention_fits(197, 64) && attention_fits(37, 64) && attention_fits(1370, 64));
        // 4 warps × 2 × (hd + n) floats ≤ 48 KiB.
        assert!(attention_fits(1536 - 64, 64));
        assert!(!attention_fits(1536 - 63, 64));
    }

    #[test]
    fn packed_projection_refuses_bad_widths() -> Result<()> {
        let x = Tensor::zeros((2, 4, 10), candle_core::DType::F32, &Device::Cpu)?;
        let err = self_attention(&x, 2, 1.0).expect_err("10 is not 3 x 2 x hd");
        assert!(err.to_string().contains("not 3 × heads (2)"), "{err}");
        let x = Tensor::zeros((2, 12), candle_core::DType::F32, &Device::Cpu)?;
        assert!(self_attention(&x, 2, 1.0).is_err());
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let n = 21;
        let (logits, dp) = (wavy(n * n, 0.0), wavy(n * n, 4.0));
        let runs = at_every_level(|| {
            let mut p = logits.clone();
            softmax_in_place(&mut p, n);
            let mut ds = dp.clone();
            softmax_grad_in_place(&p, &mut ds, n, 0.125);
            p.extend(ds);
            p
        });
        assert_same_bits("attention softmax", &runs);
    }
}
