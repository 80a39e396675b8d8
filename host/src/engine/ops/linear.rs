//! The fully connected layer `act(x·Wᵀ + b)` as one op with backward, for every
//! `Linear` of the plugins (ViT's qkv, projection and MLP layers). Composed from
//! candle ops, one layer is a reshape, a transpose, a matmul, a bias add, an
//! activation and a reshape back: six graph nodes whose gradients candle creates as
//! zeros and adds into, with the bias's and activation's own passes over the
//! activations. Here the bias is written into the destination before the gemm adds the
//! product onto it, the activation reads that once, and the backward computes the input
//! gradient, the weight gradient and the bias gradient from one activation gradient.
//! The pre-activation (which GELU's backward needs) is kept inside the op, as the
//! composed graph kept it as the activation's input, when a backward pass can follow.

use std::sync::OnceLock;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, D, DType, Device, Layout, Result, Shape, Storage, Tensor,
    bail,
};

use super::{
    Route,
    bias::add_rows,
    f32_slice,
    gelu::{gelu_grad_into, gelu_in_place},
    matmul::{Mode, Operand, product_with},
    route, same_length, uninit,
};
use crate::engine::autocast;

/// The activation applied to a linear layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: `x·Wᵀ + b`.
    Identity,
    /// Exact (erf) GELU, as [`super::gelu_erf`].
    Gelu,
}

/// `act(x·Wᵀ + b)` over the last dimension of `x (…, in)` with `weight (out, in)` (as
/// PyTorch stores it) and `bias (out)`; the result is `(…, out)`. Gradients flow to all
/// three. The fused CPU op for f32 (without bf16 autocast); composed candle ops (with
/// the host's fused bias and GELU) otherwise.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    if x.rank() == 0 || x.dim(D::Minus1)? != in_dim {
        bail!(
            "linear: input {:?} should end in the weight's input width {in_dim}",
            x.dims()
        );
    }
    if let Some(b) = bias
        && b.dims() != [out_dim]
    {
        bail!("linear: bias {:?} should be [{out_dim}]", b.dims());
    }
    let same_kind = |t: &Tensor| t.dtype() == x.dtype() && t.device().is_cpu();
    let fusable = x.device().is_cpu()
        && same_kind(weight)
        && bias.is_none_or(same_kind)
        && !autocast::enabled();
    match route(x) {
        Route::Fused if fusable => {
            let (x, w) = (x.contiguous()?, weight.contiguous()?);
            // Without a tracked input candle never runs the backward pass, so the
            // pre-activation is not kept (evaluation, a frozen teacher).
            let tracked = x.track_op() || w.track_op() || bias.is_some_and(Tensor::track_op);
            let op = Linear::new(act, tracked);
            match bias {
                Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
                None => x.apply_op2(&w, op),
            }
        }
        _ => composed(x, weight, bias, act),
    }
}

/// The composed-op linear layer (the reference and the fallback).
pub fn composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let in_dim = dims.pop().unwrap_or(1);
    let rows: usize = dims.iter().product();
    let y = autocast::matmul(&x.reshape((rows, in_dim))?, &weight.t()?)?;
    let y = match (bias, act) {
        (Some(b), Activation::Gelu) => super::bias_gelu(&y, b)?,
        (Some(b), Activation::Identity) => super::broadcast_add(&y, b)?,
        (None, Activation::Gelu) => super::gelu_erf(&y)?,
        (None, Activation::Identity) => y,
    };
    dims.push(weight.dim(0)?);
    y.reshape(dims)
}

/// The fused op; `CustomOp3` with a bias `(x, w, b)`, `CustomOp2` without `(x, w)`.
struct Linear {
    act: Activation,
    /// Whether a backward pass can follow (some input is tracked by the graph).
    tracked: bool,
    /// `x·Wᵀ + b` of the forward pass when the activation's backward needs it.
    pre: OnceLock<Vec<f32>>,
}

impl Linear {
    fn new(act: Activation, tracked: bool) -> Self {
        Self {
            act,
            tracked,
            pre: OnceLock::new(),
        }
    }

    /// The forward kernel: `(rows, in)·(out, in)ᵀ + b`, activated.
    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("linear fwd");
        let x = f32_slice(xs, xl, "linear input")?;
        let w = f32_slice(ws, wl, "linear weight")?;
        let (out_dim, in_dim, rows) = shapes(xl, wl)?;
        same_length("linear input", rows * in_dim, x.len())?;
        let b = match bias {
            Some((bs, bl)) => {
                let b = f32_slice(bs, bl, "linear bias")?;
                same_length("linear bias", out_dim, b.len())?;
                Some(b)
            }
            None => None,
        };
        let gelu = self.act == Activation::Gelu;
        // The activation is applied in place unless its input is kept for the backward.
        let keep = gelu && self.tracked;
        let len = rows * out_dim;
        let wt = Operand::transposed(w, in_dim);
        let step = (CHUNK_ROWS * out_dim).max(1);
        let mut y = Vec::new();
        // SAFETY: the chunks below cover all of `h` (and of `y`), and each chunk is
        // written by `rows_of`/`zeros` (and `copy_of`) before anything reads it.
        let h = unsafe {
            uninit::filled(len, |h| {
                y = uninit::filled(if keep { len } else { 0 }, |y| {
                    let mut y_chunks = y.chunks_mut(step);
                    let items: Vec<_> = h
                        .chunks_mut(step)
                        .enumerate()
                        .map(|(c, hc)| (c * CHUNK_ROWS, hc, y_chunks.next()))
                        .collect();
                    // Chunks, not fixed shares, are handed out: a worker that runs
                    // slower (another tenant on its core) takes fewer of them.
                    super::for_each_item(items, |(r0, hc, yc)| {
                        let n = hc.len() / out_dim.max(1);
                        let hc = match b {
                            Some(b) => uninit::rows_of(hc, b),
                            None => uninit::zeros(hc),
                        };
                        let xc = Operand::rows(&x[r0 * in_dim..], in_dim);
                        let mode = Mode {
                            accumulate: b.is_some(),
                            parallel: false,
                        };
                        product_with(n, out_dim, in_dim, hc, out_dim, xc, wt, 1.0, mode);
                        match yc {
                            Some(yc) => gelu_in_place(uninit::copy_of(yc, hc)),
                            None if gelu => gelu_in_place(hc),
                            None => {}
                        }
                    });
                })
            })
        };
        let mut dims = xl.dims().to_vec();
        dims.pop();
        dims.push(out_dim);
        let out = if keep {
            if self.pre.set(h).is_err() {
                bail!("linear: the op ran its forward pass twice");
            }
            y
        } else {
            h
        };
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }

    /// The backward kernel: the gradients of `x`, `w` and (when `bias`) `b`.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: bool,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let _span = crate::engine::profile::span("linear bwd");
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            bail!("linear backward: the tensors are not on the CPU");
        };
        let x_data = f32_slice(xs, xl, "linear input")?;
        let w_data = f32_slice(ws, wl, "linear weight")?;
        let g = f32_slice(gs, gl, "linear output gradient")?;
        let (out_dim, in_dim, rows) = shapes(xl, wl)?;
        same_length("linear", rows * out_dim, g.len())?;
        let pre = match self.act {
            Activation::Identity => None,
            Activation::Gelu => match self.pre.get() {
                Some(pre) => {
                    same_length("linear", pre.len(), g.len())?;
                    Some(pre.as_slice())
                }
                None => bail!("linear backward: no pre-activation kept by the forward pass"),
            },
        };
        let size = out_dim * in_dim;
        let cpu = &Device::Cpu;
        if rows == 0 || out_dim == 0 {
            return Ok((
                Tensor::zeros(xl.shape(), DType::F32, cpu)?,
                Tensor::zeros(wl.shape(), DType::F32, cpu)?,
                bias.then(|| Tensor::zeros(out_dim, DType::F32, cpu))
                    .transpose()?,
            ));
        }
        // Per slab of rows: its dW, then its db, added in slab order afterwards. Slabs,
        // not one share per worker, are handed out, so a worker that runs slower takes
        // fewer; their count depends on the rows only, so the sums do not depend on the
        // thread count or on which worker ran which slab.
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let slab_rows = chunks.div_ceil(chunks.min(MAX_SLABS)) * CHUNK_ROWS;
        let slabs = rows.div_ceil(slab_rows);
        let mut partials = vec![0f32; slabs * (size + out_dim)];
        let wm = Operand::rows(w_data, in_dim);
        // SAFETY: the slabs below split all of `dx` by rows, and each slab writes its
        // rows chunk by chunk with `zeros` before the product that overwrites them.
        let dx = unsafe {
            uninit::filled(rows * in_dim, |dx| {
                let items: Vec<_> = dx
                    .chunks_mut(slab_rows * in_dim)
                    .zip(partials.chunks_mut(size + out_dim))
                    .enumerate()
                    .map(|(i, (dxs, acc))| (i * slab_rows, dxs, acc))
                    .collect();
                super::for_each_item(items, |(first, dxs, acc)| {
                    let count = dxs.len() / in_dim.max(1);
                    let (dw, db) = acc.split_at_mut(size);
                    let mut gh = vec![
                        0f32;
                        if pre.is_some() {
                            CHUNK_ROWS * out_dim
                        } else {
                            0
                        }
                    ];
                    for start in (0..count).step_by(CHUNK_ROWS) {
                        let (r0, n) = (first + start, CHUNK_ROWS.min(count - start));
                        let gc = &g[r0 * out_dim..(r0 + n) * out_dim];
                        let ghc: &[f32] = match pre {
                            Some(pre) => {
                                let ghc = &mut gh[..n * out_dim];
                                gelu_grad_into(&pre[r0 * out_dim..(r0 + n) * out_dim], gc, ghc);
                                ghc
                            }
                            None => gc,
                        };
                        if bias {
                            add_rows(db, ghc);
                        }
                        let dxc = uninit::zeros(&mut dxs[start * in_dim..(start + n) * in_dim]);
                        let gm = Operand::rows(ghc, out_dim);
                        product_with(n, in_dim, out_dim, dxc, in_dim, gm, wm, 1.0, Mode::INLINE);
                        let (gt, xc) = (
                            Operand::transposed(ghc, out_dim),
                            Operand::rows(&x_data[r0 * in_dim..], in_dim),
                        );
                        let add = Mode {
                            accumulate: true,
                            parallel: false,
                        };
                        product_with(out_dim, in_dim, n, dw, in_dim, gt, xc, 1.0, add);
                    }
                });
            })
        };
        let (total, rest) = partials.split_at_mut(size + out_dim);
        for partial in rest.chunks_exact(size + out_dim) {
            for (t, p) in total.iter_mut().zip(partial) {
                *t += p;
            }
        }
        partials.truncate(size + out_dim);
        let db = partials.split_off(size);
        Ok((
            Tensor::from_vec(dx, xl.shape(), cpu)?,
            Tensor::from_vec(partials, wl.shape(), cpu)?,
            bias.then(|| Tensor::from_vec(db, out_dim, cpu))
                .transpose()?,
        ))
    }
}

/// Rows per chunk of the kernels: the workers run the rows a chunk at a time, so a
/// chunk's product is still in cache when the bias, the activation (or its
/// gradient) and the next product read it, instead of each being a pass over memory.
const CHUNK_ROWS: usize = 256;

/// Most row slabs a backward pass splits the rows into, each with its own weight and
/// bias gradient partial: enough for the workers to even out, few enough that the
/// partials (a weight's size each) stay cheap to add up.
const MAX_SLABS: usize = 8;

/// `(out, in, rows)` of an input `(…, in)` and a weight `(out, in)`.
fn shapes(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (out_dim, in_dim) = match *w.dims() {
        [o, i] => (o, i),
        ref other => bail!("linear: weight should be (out, in), got {other:?}"),
    };
    match x.dims().split_last() {
        Some((&last, lead)) if last == in_dim => Ok((out_dim, in_dim, lead.iter().product())),
        _ => bail!("linear: input {:?} should end in {in_dim}", x.dims()),
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "patchwork-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, false, grad_res)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "patchwork-linear"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, true, grad_res)?;
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::engine::ops::test_support::{assert_close, randn};

    /// Forward and the gradients of the fused op against the composed reference.
    fn check(
        x_shape: &[usize],
        out_dim: usize,
        bias: bool,
        act: Activation,
        seed: u64,
    ) -> Result<()> {
        let dev = &Device::Cpu;
        let in_dim = *x_shape.last().expect("input has a last dimension");
        let x = Var::from_tensor(&randn(seed, x_shape, 1.0, 0.1, dev)?)?;
        let w = Var::from_tensor(&randn(seed + 1, &[out_dim, in_dim], 0.5, 0.0, dev)?)?;
        let b = Var::from_tensor(&randn(seed + 2, &[out_dim], 0.5, 0.2, dev)?)?;
        let b_arg = bias.then_some(b.as_tensor());
        let y = linear(&x, &w, b_arg, act)?;
        let y_ref = composed(&x, &w, b_arg, act)?;
        assert_eq!(y.dims(), y_ref.dims());
        let what = format!("{x_shape:?}x{out_dim} bias {bias} {act:?}");
        assert_close(&y, &y_ref, 1e-5, &format!("{what} forward"));
        // Untracked inputs (evaluation): the same values, with nothing kept or recorded.
        let b_off = b.as_detached_tensor();
        let y_off = linear(
            &x.as_detached_tensor(),
            &w.as_detached_tensor(),
            bias.then_some(&b_off),
            act,
        )?;
        assert!(!y_off.track_op(), "{what}: untracked output records an op");
        assert_close(&y_off, &y, 0.0, &format!("{what} untracked forward"));
        let r = randn(seed + 3, y.dims(), 1.0, 0.0, dev)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let mut vars = vec![("dx", &x), ("dw", &w)];
        if bias {
            vars.push(("db", &b));
        }
        for (name, var) in vars {
            let got = g.get(var).expect("fused grad should exist");
            let want = g_ref.get(var).expect("reference grad should exist");
            assert_close(got, want, 1e-4, &format!("{what} {name}"));
        }
        Ok(())
    }

    #[test]
    fn matches_composed_on_odd_shapes() -> Result<()> {
        for (i, act) in [Activation::Identity, Activation::Gelu]
            .into_iter()
            .enumerate()
        {
            let seed = 100 + 10 * i as u64;
            check(&[1, 1], 1, true, act, seed)?;
            check(&[7], 3, true, act, seed + 1)?;
            check(&[1, 17], 9, false, act, seed + 2)?;
            check(&[2, 5, 3], 1, true, act, seed + 3)?;
            check(&[3, 11, 19], 23, true, act, seed + 4)?;
            // Rows over several blocks of the pool, widths past a vector's.
            check(&[4, 65, 24], 97, true, act, seed + 5)?;
            check(&[300, 33], 130, false, act, seed + 6)?;
            // Rows over several chunks and slabs (more chunks than `MAX_SLABS`), the last
            // chunk partial.
            check(&[3, 700, 5], 7, true, act, seed + 7)?;
            check(&[1, 1029, 9], 6, false, act, seed + 9)?;
        }
        Ok(())
    }

    #[test]
    fn known_values() -> Result<()> {
        let dev = &Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0], [-1.0, 0.5]], dev)?;
        let w = Tensor::new(&[[1f32, 0.0], [0.5, -1.0], [2.0, 1.0]], dev)?;
        let b = Tensor::new(&[0f32, 1.0, -4.0], dev)?;
        let y = linear(&x, &w, Some(&b), Activation::Identity)?;
        assert_eq!(y.to_vec2::<f32>()?, [[1.0, -0.5, 0.0], [-1.0, -0.0, -5.5]]);
        let y = linear(&x, &w, None, Activation::Gelu)?.to_vec2::<f32>()?;
        // gelu(1) = 0.841345, gelu(-1.5) = -0.100203, gelu(4) = 3.999873.
        for (got, want) in y[0].iter().zip([0.841_345, -0.100_203, 3.999_873]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn no_rows_give_empty_outputs_and_zero_gradients() -> Result<()> {
        let dev = &Device::Cpu;
        let x = Var::from_tensor(&Tensor::zeros((0, 3), DType::F32, dev)?)?;
        let w = Var::from_tensor(&randn(5, &[4, 3], 1.0, 0.0, dev)?)?;
        let b = Var::from_tensor(&randn(6, &[4], 1.0, 0.0, dev)?)?;
        for act in [Activation::Identity, Activation::Gelu] {
            let y = linear(&x, &w, Some(&b), act)?;
            assert_eq!(y.dims(), [0, 4]);
            let grads = y.sum_all()?.backward()?;
            let dw = grads.get(&w).expect("weight gradient");
            assert_eq!(dw.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
            let db = grads.get(&b).expect("bias gradient");
            assert_eq!(db.dims(), [4]);
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_refused() -> Result<()> {
        let dev = &Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, dev)?;
        let w = Tensor::zeros((4, 5), DType::F32, dev)?;
        let err = linear(&x, &w, None, Activation::Identity).expect_err("width mismatch");
        assert!(err.to_string().contains("input width 5"), "{err}");
        let w = Tensor::zeros((4, 3), DType::F32, dev)?;
        let b = Tensor::zeros(3, DType::F32, dev)?;
        let err = linear(&x, &w, Some(&b), Activation::Identity).expect_err("bias mismatch");
        assert!(err.to_string().contains("should be [4]"), "{err}");
        Ok(())
    }
}
