//! DINO (ViT + DINOHead + DINOLoss) written directly with candle, as the native side
//! of `patchwork bench`: the same model and training step as `plugins/vit` plus
//! `plugins/dino` run through the op table, without the plugin boundary.
//!
//! What matches the plugins:
//! - ViT: patch embedding through [`nn_ops::conv2d`], CLS token, position embedding
//!   resized for other grids by DINO's bicubic `interpolate_pos_encoding` matrix
//!   (built once per grid), pre-norm blocks with [`ops::layer_norm`] (eps 1e-6),
//!   [`nn_ops::attention`] and [`ops::gelu_erf`], final norm, CLS output; stochastic
//!   depth on the student with rates `linspace(0, drop_path_rate, depth)`;
//! - DINOHead: `in → hidden → hidden → bottleneck` with GELU, L2 normalisation, and
//!   the weight-normalised last layer `v / ‖v‖_row` (`g` fixed at 1);
//! - DINOLoss: student τ 0.1, teacher τ 0.04 after centring, pairs `v ≠ iq`; centre
//!   momentum 0.9; teacher EMA with m = 0.996 after each step;
//! - AdamW (lr 5e-4, wd 0.04, DINO's decay groups) after per-parameter clipping at 3.
//!
//! Simplifications (none changes the work done per step): constant lr, wd, τt and
//! EMA momentum; the last layer is never frozen.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Error, Result, Tensor, Var, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::engine::clip::clip_per_param;
use crate::engine::optim::{AdamW, AdamWConfig, decays};
use crate::engine::{nn_ops, ops};

const LN_EPS: f32 = 1e-6;
const STUDENT_TEMP: f64 = 0.1;
const TEACHER_TEMP: f64 = 0.04;
const CENTER_MOMENTUM: f64 = 0.9;
const TEACHER_MOMENTUM: f64 = 0.996;
const LR: f64 = 5e-4;
const WEIGHT_DECAY: f64 = 0.04;
const CLIP: f64 = 3.0;

/// Geometry and widths of the native DINO model (the fields of the ViT and DINO
/// plugin configs that shape the computation).
#[derive(Debug, Clone, PartialEq)]
pub struct NativeConfig {
    /// Global crop side in pixels (the ViT's native input size).
    pub img_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Token width `D`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Number of prototypes `K` (head output).
    pub out_dim: usize,
    /// Head MLP hidden width.
    pub hidden_dim: usize,
    /// Head bottleneck width (L2-normalised).
    pub bottleneck_dim: usize,
    /// Number of global crops (DINO uses 2); the teacher sees these.
    pub global_crops: usize,
    /// Number of local crops.
    pub local_crops: usize,
    /// Local crop side in pixels.
    pub local_size: usize,
    /// Stochastic-depth rate of the last block (the student's only).
    pub drop_path_rate: f64,
}

/// Named tensors: the student's current values or the teacher's copies.
type Weights = HashMap<String, Tensor>;

fn get<'a>(w: &'a Weights, name: &str) -> Result<&'a Tensor> {
    w.get(name)
        .ok_or_else(|| Error::msg(format!("native dino has no parameter '{name}'")))
}

/// DINO's student and EMA teacher with their optimizer and centre.
pub struct NativeDino {
    cfg: NativeConfig,
    /// Student parameters in creation order, DINO's names (`blocks.0.attn.qkv.weight`).
    student: Vec<(String, Var)>,
    teacher: Weights,
    center: Tensor,
    opt: AdamW,
    resize: PosResize,
    seed: u64,
}

/// How a parameter starts.
enum Init {
    TruncNormal(f64),
    Uniform(f64),
    Ones,
    Zeros,
}

impl Init {
    fn sample(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n)
            .map(|_| match *self {
                Init::TruncNormal(std) => loop {
                    let v: f64 = StandardNormal.sample(rng);
                    if v.abs() <= 2.0 {
                        break (v * std) as f32;
                    }
                },
                Init::Uniform(bound) => rng.random_range(-bound..bound) as f32,
                Init::Ones => 1.0,
                Init::Zeros => 0.0,
            })
            .collect()
    }
}

/// `(name, shape, init)` of every student parameter, in DINO's order and names.
fn param_specs(cfg: &NativeConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (d, p) = (cfg.embed_dim, cfg.patch_size);
    let g = cfg.img_size / p;
    let conv_bound = 1.0 / ((3 * p * p) as f64).sqrt();
    let mut specs: Vec<(String, Vec<usize>, Init)> = vec![
        (
            "patch_embed.proj.weight".into(),
            vec![d, 3, p, p],
            Init::Uniform(conv_bound),
        ),
        (
            "patch_embed.proj.bias".into(),
            vec![d],
            Init::Uniform(conv_bound),
        ),
        ("cls_token".into(), vec![1, 1, d], Init::TruncNormal(0.02)),
        (
            "pos_embed".into(),
            vec![1, g * g + 1, d],
            Init::TruncNormal(0.02),
        ),
    ];
    let linear = |specs: &mut Vec<_>, name: String, i: usize, o: usize| {
        specs.push((
            format!("{name}.weight"),
            vec![o, i],
            Init::TruncNormal(0.02),
        ));
        specs.push((format!("{name}.bias"), vec![o], Init::Zeros));
    };
    let norm = |specs: &mut Vec<_>, name: String| {
        specs.push((format!("{name}.weight"), vec![d], Init::Ones));
        specs.push((format!("{name}.bias"), vec![d], Init::Zeros));
    };
    let hidden = mlp_hidden(cfg);
    for i in 0..cfg.depth {
        norm(&mut specs, format!("blocks.{i}.norm1"));
        linear(&mut specs, format!("blocks.{i}.attn.qkv"), d, 3 * d);
        linear(&mut specs, format!("blocks.{i}.attn.proj"), d, d);
        norm(&mut specs, format!("blocks.{i}.norm2"));
        linear(&mut specs, format!("blocks.{i}.mlp.fc1"), d, hidden);
        linear(&mut specs, format!("blocks.{i}.mlp.fc2"), hidden, d);
    }
    norm(&mut specs, "norm".into());
    let (h, b) = (cfg.hidden_dim, cfg.bottleneck_dim);
    linear(&mut specs, "head.mlp.0".into(), d, h);
    linear(&mut specs, "head.mlp.2".into(), h, h);
    linear(&mut specs, "head.mlp.4".into(), h, b);
    let v_bound = 1.0 / (b as f64).sqrt();
    specs.push((
        "head.last_layer.weight_v".into(),
        vec![cfg.out_dim, b],
        Init::Uniform(v_bound),
    ));
    specs
}

fn mlp_hidden(cfg: &NativeConfig) -> usize {
    (cfg.embed_dim as f64 * cfg.mlp_ratio) as usize
}

impl NativeDino {
    /// A student initialised from `seed` (trunc-normal 0.02 linears, PyTorch's conv
    /// init), a teacher copied from it, a zero centre and a fresh AdamW.
    pub fn new(cfg: &NativeConfig, device: &Device, seed: u64) -> Result<Self> {
        let p = cfg.patch_size;
        let fits = |n: usize| p > 0 && n.is_multiple_of(p);
        if !fits(cfg.img_size) || !fits(cfg.local_size) || cfg.num_heads == 0 {
            bail!(
                "native dino needs img_size '{}' and local_size '{}' to be multiples of \
                 patch_size '{p}', and at least one head",
                cfg.img_size,
                cfg.local_size
            );
        }
        if !cfg.embed_dim.is_multiple_of(cfg.num_heads) {
            bail!(
                "native dino embed_dim '{}' is not divisible by num_heads '{}'",
                cfg.embed_dim,
                cfg.num_heads
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut student = Vec::new();
        let mut teacher = Weights::new();
        let mut groups = Vec::new();
        for (name, shape, init) in param_specs(cfg) {
            let n = shape.iter().product();
            let t = Tensor::from_vec(init.sample(n, &mut rng), shape.as_slice(), device)?;
            teacher.insert(name.clone(), t.copy()?);
            let var = Var::from_tensor(&t)?;
            groups.push((name.clone(), var.clone(), decays(&name, &shape)));
            student.push((name, var));
        }
        let opt = AdamW::new(groups, AdamWConfig::default()).map_err(Error::wrap)?;
        Ok(Self {
            cfg: cfg.clone(),
            student,
            teacher,
            center: Tensor::zeros((1, cfg.out_dim), DType::F32, device)?,
            opt,
            resize: PosResize {
                g0: cfg.img_size / p,
                cache: HashMap::new(),
            },
            seed,
        })
    }

    /// One DINO step on `views` (`global_crops` then `local_crops` tensors
    /// `(B, 3, H, W)`): forward, backward, clipping, AdamW, centre and teacher EMA.
    /// `step` selects the stochastic-depth random stream. Returns the loss.
    pub fn train_step(&mut self, views: &[Tensor], step: u64) -> Result<f32> {
        let (ng, nl) = (self.cfg.global_crops, self.cfg.local_crops);
        if views.len() != ng + nl || ng == 0 {
            bail!(
                "native dino expects {ng} global + {nl} local views, got '{}'",
                views.len()
            );
        }
        let b = views[0].dim(0)?;
        for (i, v) in views.iter().enumerate() {
            if v.dim(0)? != b {
                bail!(
                    "native dino view {i} has batch size '{}', view 0 has {b}",
                    v.dim(0)?
                );
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(step);
        let student: Weights = self
            .student
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();

        // Student: globals in one forward, locals in another, head once.
        let (cfg, resize, (globals, locals)) = (&self.cfg, &mut self.resize, views.split_at(ng));
        let mut cls = vec![vit_cls(cfg, resize, &student, globals, Some(&mut rng))?];
        if nl > 0 {
            cls.push(vit_cls(cfg, resize, &student, locals, Some(&mut rng))?);
        }
        let student_logits = head(&student, &Tensor::cat(&cls, 0)?)?; // (ncrops·B, K)
        // Teacher: globals, no stochastic depth, no graph.
        let teacher_cls = vit_cls(cfg, resize, &self.teacher, globals, None)?;
        let teacher_logits = head(&self.teacher, &teacher_cls)?.detach(); // (ng·B, K)

        let scores = (teacher_logits.broadcast_sub(&self.center)? / TEACHER_TEMP)?;
        let teacher_probs = ops::softmax_last_dim(&scores)?.detach();
        let loss = dino_loss(&student_logits, &teacher_probs, ng + nl, b)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;

        let mut grads = loss.backward()?;
        let vars: Vec<Var> = self.student.iter().map(|(_, v)| v.clone()).collect();
        clip_per_param(&mut grads, &vars, CLIP)?;
        self.opt
            .step(&grads, LR, WEIGHT_DECAY)
            .map_err(Error::wrap)?;

        let batch_center = teacher_logits.mean_keepdim(0)?;
        self.center =
            ((&self.center * CENTER_MOMENTUM)? + (batch_center * (1.0 - CENTER_MOMENTUM))?)?;
        for (name, var) in &self.student {
            let t = get(&self.teacher, name)?;
            let s = var.as_tensor().detach();
            let ema = ((t * TEACHER_MOMENTUM)? + (s * (1.0 - TEACHER_MOMENTUM))?)?;
            self.teacher.insert(name.clone(), ema);
        }
        Ok(value)
    }
}

/// Position-embedding resize matrices `(gh·gw, N0)` by patch grid, built on first use.
struct PosResize {
    /// The native grid side `img_size / patch_size`.
    g0: usize,
    cache: HashMap<(usize, usize), Tensor>,
}

impl PosResize {
    /// The matrix for a `gh × gw` grid, or `None` at the native grid.
    fn get(&mut self, gh: usize, gw: usize, device: &Device) -> Result<Option<Tensor>> {
        let g0 = self.g0;
        if (gh, gw) == (g0, g0) {
            return Ok(None);
        }
        if let Some(m) = self.cache.get(&(gh, gw)) {
            return Ok(Some(m.clone()));
        }
        let m = Tensor::from_vec(pos_embed_matrix(g0, gh, gw), (gh * gw, g0 * g0), device)?;
        self.cache.insert((gh, gw), m.clone());
        Ok(Some(m))
    }
}

/// CLS features `(n·B, D)` of `views` (all the same size) concatenated on the batch.
/// Stochastic depth is on when `drop` gives a random stream.
fn vit_cls(
    cfg: &NativeConfig,
    resize: &mut PosResize,
    w: &Weights,
    views: &[Tensor],
    mut drop: Option<&mut ChaCha8Rng>,
) -> Result<Tensor> {
    let images = Tensor::cat(views, 0)?;
    let (b, _, h, wd) = images.dims4()?;
    let (p, d) = (cfg.patch_size, cfg.embed_dim);
    if h % p != 0 || wd % p != 0 {
        bail!("native dino view size '{h}x{wd}' is not a multiple of patch size {p}");
    }
    let (conv_w, conv_b) = (
        get(w, "patch_embed.proj.weight")?,
        get(w, "patch_embed.proj.bias")?,
    );
    let x = nn_ops::conv2d(&images, conv_w, Some(conv_b), p, 0)?;
    let x = x.flatten_from(2)?.transpose(1, 2)?; // (B, N, D)
    let pos = get(w, "pos_embed")?;
    let mut patch_pos = pos.narrow(1, 1, resize.g0 * resize.g0)?; // (1, N0, D)
    if let Some(m) = resize.get(h / p, wd / p, images.device())? {
        patch_pos = m.matmul(&patch_pos.squeeze(0)?)?.unsqueeze(0)?; // (1, N, D)
    }
    let x = x.broadcast_add(&patch_pos)?;
    let cls = (get(w, "cls_token")? + pos.narrow(1, 0, 1)?)?.broadcast_as((b, 1, d))?;
    let mut x = Tensor::cat(&[&cls, &x], 1)?; // (B, 1+N, D)
    for i in 0..cfg.depth {
        let rate = match cfg.depth {
            1 => 0.0,
            n => cfg.drop_path_rate * i as f64 / (n - 1) as f64,
        };
        let name = |s: &str| format!("blocks.{i}.{s}");
        let h = norm(w, &name("norm1"), &x)?;
        let a = attention(w, &name("attn"), &h, cfg.num_heads)?;
        x = (x + drop_path(&a, rate, drop.as_deref_mut())?)?;
        let m = linear(w, &name("mlp.fc1"), &norm(w, &name("norm2"), &x)?)?;
        let m = linear(w, &name("mlp.fc2"), &ops::gelu_erf(&m)?)?;
        x = (x + drop_path(&m, rate, drop.as_deref_mut())?)?;
    }
    norm(w, "norm", &x)?.narrow(1, 0, 1)?.squeeze(1) // (B, D)
}

fn norm(w: &Weights, name: &str, x: &Tensor) -> Result<Tensor> {
    let g = get(w, &format!("{name}.weight"))?;
    ops::layer_norm(x, g, get(w, &format!("{name}.bias"))?, LN_EPS)
}

/// `x·Wᵀ + b` over the last dimension of `(…, in)`.
fn linear(w: &Weights, name: &str, x: &Tensor) -> Result<Tensor> {
    let weight = get(w, &format!("{name}.weight"))?;
    let bias = get(w, &format!("{name}.bias"))?;
    let mut dims = x.dims().to_vec();
    let last = dims.pop().unwrap_or(1);
    let rows = dims.iter().product::<usize>();
    let y = x
        .reshape((rows, last))?
        .matmul(&weight.t()?)?
        .broadcast_add(bias)?;
    dims.push(weight.dim(0)?);
    y.reshape(dims)
}

fn attention(w: &Weights, name: &str, x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let hd = d / heads;
    let qkv = linear(w, &format!("{name}.qkv"), x)?
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // (3, B, heads, N, hd)
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let (out, _) = nn_ops::attention(&q, &k, &v, 1.0 / (hd as f64).sqrt(), false)?;
    let out = out.transpose(1, 2)?.reshape((b, n, d))?;
    linear(w, &format!("{name}.proj"), &out)
}

/// Stochastic depth: each sample's branch is zeroed with probability `rate`, the rest
/// scaled by `1/(1 − rate)`; identity without a random stream or at rate 0.
fn drop_path(x: &Tensor, rate: f64, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng.filter(|_| rate > 0.0) else {
        return Ok(x.clone());
    };
    let keep = 1.0 - rate;
    let b = x.dim(0)?;
    let mask: Vec<f32> = (0..b)
        .map(|_| ((rng.random::<f64>() + keep).floor() / keep) as f32)
        .collect();
    let mut shape = vec![1; x.rank()];
    shape[0] = b;
    x.broadcast_mul(&Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?)
}

/// DINOHead: MLP with GELU, L2 normalisation, weight-normalised last layer (`g = 1`).
fn head(w: &Weights, x: &Tensor) -> Result<Tensor> {
    let z = ops::gelu_erf(&linear(w, "head.mlp.0", x)?)?;
    let z = ops::gelu_erf(&linear(w, "head.mlp.2", &z)?)?;
    let z = l2_normalize(&linear(w, "head.mlp.4", &z)?)?; // (B, bottleneck)
    let v = get(w, "head.last_layer.weight_v")?; // (K, bottleneck)
    let last = v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?)?;
    z.matmul(&last.t()?) // (B, K)
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

/// DINOLoss over crop-major student logits `(ncrops·B, K)` and teacher probabilities
/// `(ng·B, K)`: the mean over pairs `v ≠ iq` of `mean_b(−Σ_k q_iq·log p_v)`.
fn dino_loss(student: &Tensor, teacher: &Tensor, ncrops: usize, b: usize) -> Result<Tensor> {
    let k = student.dim(1)?;
    let ng = teacher.dim(0)? / b;
    let pairs = ng * ncrops - ng.min(ncrops);
    if pairs == 0 {
        bail!("native dino loss has no (teacher, student) pairs with {ng} and {ncrops} views");
    }
    let log_p = ops::log_softmax_last_dim(&(student / STUDENT_TEMP)?)?;
    let sum_log_p = log_p.reshape((ncrops, b, k))?.sum(0)?; // Σ_v log p_v: (B, K)
    let mut total = Tensor::zeros((), student.dtype(), student.device())?;
    for iq in 0..ng {
        let q = teacher.narrow(0, iq * b, b)?;
        let others = if iq < ncrops {
            (&sum_log_p - log_p.narrow(0, iq * b, b)?)?
        } else {
            sum_log_p.clone()
        };
        total = (total - q.mul(&others)?.sum(1)?.mean(0)?)?;
    }
    total / pairs as f64
}

/// One axis of PyTorch's bicubic `F.interpolate` (`align_corners=False`, A = −0.75)
/// with `scale_factor = scale`: the `out × in` matrix, row-major.
fn resize_1d(n_in: usize, n_out: usize, scale: f64) -> Vec<f64> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let mut m = vec![0.0; n_out * n_in];
    let last = n_in as i64 - 1;
    for i in 0..n_out {
        let real = (i as f64 + 0.5) / scale - 0.5;
        let idx = (real.floor() as i64).min(last);
        let t = (real - idx as f64).clamp(0.0, 1.0);
        for (k, wt) in [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
            .iter()
            .enumerate()
        {
            let j = (idx - 1 + k as i64).clamp(0, last) as usize;
            m[i * n_in + j] += wt;
        }
    }
    m
}

/// DINO's `interpolate_pos_encoding` as a `(gh·gw) × (g0·g0)` matrix: bicubic with
/// scale `(new + 0.1)/g0` per axis, the 2-D matrix being the Kronecker product.
fn pos_embed_matrix(g0: usize, gh: usize, gw: usize) -> Vec<f32> {
    let mh = resize_1d(g0, gh, (gh as f64 + 0.1) / g0 as f64);
    let mw = resize_1d(g0, gw, (gw as f64 + 0.1) / g0 as f64);
    let mut out = Vec::with_capacity(gh * gw * g0 * g0);
    for y in 0..gh {
        for x in 0..gw {
            for yy in 0..g0 {
                for xx in 0..g0 {
                    out.push((mh[y * g0 + yy] * mw[x * g0 + xx]) as f32);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> NativeConfig {
        NativeConfig {
            img_size: 16,
            patch_size: 4,
            embed_dim: 32,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 4.0,
            out_dim: 64,
            hidden_dim: 48,
            bottleneck_dim: 16,
            global_crops: 2,
            local_crops: 2,
            local_size: 8,
            drop_path_rate: 0.1,
        }
    }

    fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        d.and_then(|d| d.to_scalar::<f32>()).unwrap()
    }

    #[test]
    fn resize_rows_sum_to_one() {
        let m = pos_embed_matrix(4, 2, 3);
        for row in m.chunks(16) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
        }
    }

    #[test]
    fn two_steps_give_finite_losses_and_move_parameters() {
        let cfg = tiny();
        let mut model = NativeDino::new(&cfg, &Device::Cpu, 7).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut views: Vec<Tensor> = (0..2).map(|_| randn(&mut rng, &[2, 3, 16, 16])).collect();
        views.extend((0..2).map(|_| randn(&mut rng, &[2, 3, 8, 8])));
        let before: Vec<Tensor> = model
            .student
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        let teacher_pos = model.teacher["pos_embed"].clone();
        for step in 0..2 {
            let loss = model.train_step(&views, step).unwrap();
            assert!(loss.is_finite() && loss > 0.0, "step {step}: loss {loss}");
        }
        for ((name, var), old) in model.student.iter().zip(&before) {
            assert!(
                max_abs_diff(var.as_tensor(), old) > 0.0,
                "'{name}' did not change"
            );
        }
        assert!(max_abs_diff(&model.teacher["pos_embed"], &teacher_pos) > 0.0);
        let zeros = model.center.zeros_like().unwrap();
        assert!(
            max_abs_diff(&model.center, &zeros) > 0.0,
            "centre did not move"
        );
    }
}
