//! Composite nn ops the op table offers: convolution (with a fast path for patch
//! embeddings) and attention (the fused op, or composed ops when the probabilities are
//! wanted); their matrix products go through [`super::autocast`].

use candle_core::{Result, Tensor};

use super::{autocast, ops};

/// `(B, C, H, W) ⊛ (O, C, k, k)` plus bias. When kernel = stride and there is no
/// padding (a ViT patch embedding) this is an unfold and one matmul, which is
/// much faster than a general convolution on CPU and has a plain backward.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
    let y = if kh == kw && kh == stride && padding == 0 && wc == c && h % kh == 0 && wd % kw == 0 {
        let (gh, gw) = (h / kh, wd / kw);
        let patches = x
            .reshape((b, c, gh, kh, gw, kw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * kh * kw))?;
        let y = autocast::matmul(&patches, &w.reshape((o, c * kh * kw))?.t()?)?;
        y.reshape((b, gh, gw, o))?.permute((0, 3, 1, 2))?
    } else {
        x.conv2d(w, padding, stride, 1, 1)?
    };
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, o, 1, 1))?),
        None => Ok(y),
    }
}

/// `softmax(q·kᵀ·scale)·v` over `(B, H, N, hd)`; with `want_probs`, also the
/// probabilities `(B, H, N, N)` (composed ops then, which keep them; otherwise the
/// fused [`ops::attention`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if want_probs {
        let (out, probs) = ops::attention_composed(q, k, v, scale)?;
        Ok((out, Some(probs)))
    } else {
        Ok((ops::attention(q, k, v, scale)?, None))
    }
}

/// Multi-head self-attention of a packed `qkv (B, N, 3·D)` to `(B, N, D)`; with
/// `want_probs`, also the probabilities `(B, H, N, N)` (composed ops on the head views
/// then; otherwise the fused [`ops::self_attention`]).
pub fn self_attention(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if want_probs {
        let (q, k, v) = ops::split_heads(qkv, heads)?;
        let (b, n, _) = qkv.dims3()?;
        let (out, probs) = ops::attention_composed(&q, &k, &v, scale)?;
        let merged = out.transpose(1, 2)?.reshape((b, n, ()))?;
        Ok((merged, Some(probs)))
    } else {
        Ok((ops::self_attention(qkv, heads, scale)?, None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn patch_conv_matches_general_conv_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (5, 3, 4, 4), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 5, &dev).unwrap();
        let fast = conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 4, 0).unwrap();
        let slow = x
            .as_tensor()
            .conv2d(w.as_tensor(), 0, 4, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        let diff = (&fast - &slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "forward differs by {diff}");
        let gf = fast.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gs = slow.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            let a = gf.get(v.as_tensor()).unwrap();
            let e = gs.get(v.as_tensor()).unwrap();
            let d = (a - e)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-3, "gradient differs by {d}");
        }
    }
}
