//! `patchwork bench train`'s ViT-Tiny figures: the supervised train step (the `vit`
//! plugin through the host's op table, a linear head, cross-entropy, backward,
//! AdamW) and the forward pass alone, for ViT-Tiny/16 at 224 px and ViT-Tiny/4 at
//! 32 px: images/s (median over steps after warm-up), achieved GFLOP/s with the
//! FLOP count used, and peak memory. `benchmarks/pytorch_reference.py` prints the
//! same figures for the same models and step in PyTorch.

use std::time::Instant;

use abi_stable::std_types::ROption;
use anyhow::{Context, Result, anyhow};
use candle_core::{DType, Device, Tensor, Var};
use patchwork_plugin_api::abi::{ForwardOpts, InstanceId};

use crate::{
    engine::{
        autocast,
        context::{self, HostContext},
        grad, host_ops, optim, profile, registry,
    },
    plugins::LoadedPlugin,
};

/// Profile span of the train step's forward pass (with the loss).
const FORWARD: &str = "forward (all)";
/// Profile span of the backward pass.
const BACKWARD: &str = "backward (all)";
/// Profile span of the AdamW update.
const OPTIMIZER: &str = "optimizer (AdamW)";

/// Classes of the linear head (ImageNet's, as timm's ViT-Tiny).
const CLASSES: usize = 1000;

/// Where the bench runs and in what arithmetic (`--device`, `--precision`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The device every tensor of the step lives on.
    pub device: Device,
    /// bf16 autocast of the matmuls ([`crate::engine::autocast`]).
    pub bf16: bool,
}

impl Target {
    /// The CPU in f32.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            bf16: false,
        }
    }

    /// A session context on the target, seed 0.
    pub(super) fn context(&self) -> HostContext {
        let mut ctx = HostContext::new(self.device.clone(), 0);
        ctx.bf16_matmul = self.bf16;
        ctx
    }

    /// `cpu, fp32`, `cuda:0, bf16 autocast`.
    pub fn label(&self) -> String {
        let device = match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
            candle_core::DeviceLocation::Cpu => {
                let n = candle_core::utils::get_num_threads();
                format!("cpu, {n} thread{}", if n == 1 { "" } else { "s" })
            }
        };
        let precision = if self.bf16 { "bf16 autocast" } else { "fp32" };
        format!("{device}, {precision}")
    }

    /// Waits for the device's queued work (timings of asynchronous devices).
    pub(super) fn sync(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    /// GPU memory in use now (the driver's total − free, bytes); `None` on the CPU.
    pub(super) fn device_memory(&self) -> Option<u64> {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            let info = candle_core::cuda_backend::cudarc::driver::result::mem_get_info();
            return info
                .ok()
                .map(|(free, total)| total.saturating_sub(free) as u64);
        }
        None
    }
}

/// Prints the GPU memory line of a CUDA run.
pub(super) fn print_device_memory(bytes: Option<u64>) {
    if let Some(bytes) = bytes {
        println!(
            "  GPU memory in use after the train steps: {:.2} GiB (driver: total - free)",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
}

/// A ViT configuration the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitModel {
    /// Name on the command line (`tiny16`, `tiny4`).
    pub name: &'static str,
    /// Image side.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
}

/// ViT-Tiny/16 at 224 px.
pub const TINY16: VitModel = VitModel {
    name: "tiny16",
    img_size: 224,
    patch_size: 16,
    embed_dim: 192,
    depth: 12,
    heads: 3,
};

/// ViT-Tiny/4 at 32 px.
pub const TINY4: VitModel = VitModel {
    name: "tiny4",
    img_size: 32,
    patch_size: 4,
    embed_dim: 192,
    depth: 12,
    heads: 3,
};

impl VitModel {
    /// Tokens per image: the patches and the CLS token.
    pub fn tokens(&self) -> usize {
        (self.img_size / self.patch_size).pow(2) + 1
    }

    /// Forward FLOPs per image (a multiply-add counts 2), matmuls only: the patch
    /// embedding, per block the qkv, `QKᵀ`, `·V`, projection and the two MLP layers
    /// (ratio 4), and the head. Element-wise work (norms, softmax, GELU) is left out,
    /// as FLOP counters for ViTs do.
    pub fn forward_flops(&self) -> f64 {
        self.encoder_flops() + 2.0 * self.embed_dim as f64 * CLASSES as f64
    }

    /// Forward FLOPs per image of the encoder alone (no classification head).
    pub fn encoder_flops(&self) -> f64 {
        let (n, d) = (self.tokens() as f64, self.embed_dim as f64);
        let patches = n - 1.0;
        let p = self.patch_size as f64;
        let embed = 2.0 * patches * 3.0 * p * p * d;
        let block = 2.0 * n * 12.0 * d * d + 4.0 * n * n * d;
        embed + self.depth as f64 * block
    }

    /// Train-step FLOPs per image: forward plus a backward of twice the forward.
    pub fn train_flops(&self) -> f64 {
        3.0 * self.forward_flops()
    }

    /// The `vit` plugin's config for this model (no stochastic depth).
    fn plugin_config(&self) -> String {
        format!(
            "(preset: \"tiny\", embed_dim: Some({}), depth: Some({}), num_heads: Some({}), patch_size: {}, img_size: {}, drop_path_rate: 0.0)",
            self.embed_dim, self.depth, self.heads, self.patch_size, self.img_size
        )
    }
}

/// The models `--models` names.
pub fn model(name: &str) -> Option<VitModel> {
    [TINY16, TINY4].into_iter().find(|m| m.name == name)
}

/// The figures of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct VitFigures {
    /// Train-step images/s (median step).
    pub train_ips: f64,
    /// Forward-only images/s (median step).
    pub forward_ips: f64,
    /// Peak resident memory over the model's steps, bytes (`VmHWM`; 0 when unknown).
    pub peak_bytes: u64,
    /// On a GPU, its memory in use after the train steps.
    pub device_bytes: Option<u64>,
    /// With `--profile`: per span of the timed train steps, its mean time per step.
    pub profile: Vec<(&'static str, f64)>,
}

/// The median of `v` (which is not empty).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Resets the process's peak resident memory, where Linux allows it.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory in bytes (`VmHWM`), 0 when unknown.
fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A `vit` instance with a linear head and AdamW, in a context of its own.
struct VitStep<'a> {
    vit: &'a LoadedPlugin,
    instance: InstanceId,
    head_w: Var,
    head_b: Var,
    opt: optim::AdamW,
    images: Tensor,
    labels: Tensor,
}

impl<'a> VitStep<'a> {
    fn new(vit: &'a LoadedPlugin, m: &VitModel, batch: usize, target: &Target) -> Result<Self> {
        context::install(target.context());
        let dev = &target.device;
        let config = m.plugin_config();
        let r = (vit.root.create())(config.as_str().into(), host_ops::table(), "".into());
        let instance = r.into_result().map_err(|e| anyhow!("vit: {}", e.message))?;
        let d = m.embed_dim;
        let head_w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (d, CLASSES), dev)? * 0.02)?)?;
        let head_b = Var::zeros(CLASSES, DType::F32, dev)?;
        let mut params: Vec<(String, Var, bool)> = context::trainable_params();
        params.push(("head.weight".into(), head_w.clone(), true));
        params.push(("head.bias".into(), head_b.clone(), false));
        let opt = optim::AdamW::new(params, optim::AdamWConfig::default())?;
        let s = m.img_size;
        let images = Tensor::randn(0f32, 1.0, (batch, 3, s, s), dev)?;
        let labels: Vec<u32> = (0..batch as u32)
            .map(|i| (i * 37) % CLASSES as u32)
            .collect();
        let labels = Tensor::from_vec(labels, batch, dev)?;
        Ok(Self {
            vit,
            instance,
            head_w,
            head_b,
            opt,
            images,
            labels,
        })
    }

    /// The head's logits of the batch, through the plugin's forward.
    fn logits(&self, train: bool) -> Result<Tensor> {
        let images = registry::insert(self.images.clone());
        let opts = ForwardOpts {
            train,
            layers: false,
            attention: false,
            keep: ROption::RNone,
        };
        let r = (self.vit.root.backbone_forward())(self.instance, images, opts).into_result();
        registry::remove(images);
        let out = r.map_err(|e| anyhow!("vit forward: {}", e.message))?;
        let cls = registry::remove(out.cls).context("invalid CLS handle")?;
        for id in [out.patches].into_iter().chain(out.layers.iter().copied()) {
            registry::remove(id);
        }
        Ok(autocast::matmul(&cls, self.head_w.as_tensor())?
            .broadcast_add(self.head_b.as_tensor())?)
    }

    /// One train step: forward, cross-entropy, backward, AdamW.
    fn train_step(&mut self) -> Result<f32> {
        let loss = {
            let _span = profile::span(FORWARD);
            let logits = self.logits(true)?;
            candle_nn::loss::cross_entropy(&logits, &self.labels)?
        };
        let grads = {
            let _span = profile::span(BACKWARD);
            loss.backward()?
        };
        {
            let _span = profile::span(OPTIMIZER);
            self.opt.step(&grads, 1e-4, 0.05)?;
        }
        Ok(loss.to_scalar::<f32>()?)
    }

    /// One forward pass (evaluation mode, no graph recorded), finished on the device.
    fn forward(&self, target: &Target) -> Result<()> {
        let _logits = grad::no_grad(|| self.logits(false))?;
        target.sync()
    }
}

impl Drop for VitStep<'_> {
    fn drop(&mut self) {
        (self.vit.root.destroy())(self.instance);
        context::take();
    }
}

/// Times `m` at `batch`: `warmup` untimed steps, then `steps` timed ones, for the
/// train step and the forward pass; with `profile`, the train steps' spans too.
pub fn measure(
    vit: &LoadedPlugin,
    m: &VitModel,
    batch: usize,
    warmup: usize,
    steps: usize,
    with_profile: bool,
    target: &Target,
) -> Result<VitFigures> {
    reset_peak_memory();
    let mut step = VitStep::new(vit, m, batch, target)?;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        profile::enable(with_profile);
        let mut rates = Vec::with_capacity(steps);
        for _ in 0..steps.max(1) {
            let t = Instant::now();
            f()?;
            rates.push(batch as f64 / t.elapsed().as_secs_f64().max(1e-9));
        }
        Ok(median(rates))
    };
    let train_ips = time(&mut || {
        let loss = step.train_step()?;
        anyhow::ensure!(loss.is_finite(), "the loss is {loss}");
        Ok(())
    })?;
    let device_bytes = target.device_memory();
    let n = steps.max(1) as f64;
    let profile = profile::totals()
        .into_iter()
        .map(|(name, time, _)| (name, time.as_secs_f64() / n))
        .collect();
    profile::enable(false);
    let forward_ips = time(&mut || step.forward(target))?;
    profile::enable(false);
    let peak_bytes = peak_memory();
    Ok(VitFigures {
        train_ips,
        forward_ips,
        peak_bytes,
        device_bytes,
        profile,
    })
}

/// Prints the figures of `m` as the PyTorch reference prints them.
pub fn print(
    m: &VitModel,
    batch: usize,
    target: &Target,
    peak_gflops: Option<f64>,
    f: &VitFigures,
) {
    let gf = |ips: f64, flops: f64| ips * flops / 1e9;
    let of_peak = |gflops: f64| match peak_gflops {
        Some(peak) => format!(" ({:.0} % of {peak:.0})", 100.0 * gflops / peak),
        None => String::new(),
    };
    let (train_gf, fwd_gf) = (
        gf(f.train_ips, m.train_flops()),
        gf(f.forward_ips, m.forward_flops()),
    );
    println!(
        "ViT-Tiny/{} @ {} px, batch {batch}, {} (patchwork, candle):",
        m.patch_size,
        m.img_size,
        target.label()
    );
    println!(
        "  train step: {:.2} img/s, {train_gf:.1} GFLOP/s{} at {:.3} GFLOP/img (3 × forward)",
        f.train_ips,
        of_peak(train_gf),
        m.train_flops() / 1e9
    );
    println!(
        "  forward:    {:.2} img/s, {fwd_gf:.1} GFLOP/s{} at {:.3} GFLOP/img",
        f.forward_ips,
        of_peak(fwd_gf),
        m.forward_flops() / 1e9
    );
    println!(
        "  peak memory: {:.2} GiB (process VmHWM over this model's steps)",
        f.peak_bytes as f64 / (1u64 << 30) as f64
    );
    print_device_memory(f.device_bytes);
    print_profile(&f.profile);
}

/// The profile of the train steps: the three phases, the host's fused kernels in
/// each, and the rest of each phase (candle's matmuls and element-wise ops).
fn print_profile(spans: &[(&'static str, f64)]) {
    if spans.is_empty() {
        return;
    }
    let get = |name: &str| spans.iter().find(|s| s.0 == name).map_or(0.0, |s| s.1);
    let step: f64 = [FORWARD, BACKWARD, OPTIMIZER].iter().map(|n| get(n)).sum();
    let kernels = |suffix: &str| -> f64 {
        spans
            .iter()
            .filter(|s| s.0.ends_with(suffix))
            .map(|s| s.1)
            .sum()
    };
    let mut rows: Vec<(String, f64)> = spans
        .iter()
        .filter(|s| s.0.ends_with(" fwd") || s.0.ends_with(" bwd"))
        .map(|s| (format!("fused {}", s.0), s.1))
        .collect();
    rows.push((
        "forward: matmuls and other candle ops".into(),
        get(FORWARD) - kernels(" fwd"),
    ));
    rows.push((
        "backward: matmuls and other candle ops".into(),
        get(BACKWARD) - kernels(" bwd"),
    ));
    rows.push((OPTIMIZER.into(), get(OPTIMIZER)));
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  profile (mean per train step {:.0} ms: forward {:.0}, backward {:.0}, optimizer {:.0}):",
        1e3 * step,
        1e3 * get(FORWARD),
        1e3 * get(BACKWARD),
        1e3 * get(OPTIMIZER)
    );
    for (name, secs) in rows {
        println!(
            "    {name:<42} {:>8.1} ms {:>5.1} %",
            1e3 * secs,
            100.0 * secs / step.max(1e-12)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts_match_the_published_vit_tiny_figures() {
        // timm / fvcore: ViT-Tiny/16 at 224 is 1.26 GMACs, i.e. ~2.5 GFLOP forward;
        // the train step is ~7.5 GFLOP per image.
        let f = TINY16.forward_flops() / 1e9;
        assert!((2.45..2.6).contains(&f), "{f}");
        assert!((7.3..7.8).contains(&(TINY16.train_flops() / 1e9)));
        assert_eq!(TINY16.tokens(), 197);
        assert_eq!(TINY4.tokens(), 65);
        // ViT-Tiny/4 at 32: 65 tokens, 0.29 of the /16 model's work (the issue's
        // physical limits, ~31 and ~105 img/s, have the same ratio).
        let r = TINY4.forward_flops() / TINY16.forward_flops();
        assert!((0.28..0.31).contains(&r), "{r}");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(model("tiny4"), Some(TINY4));
        assert_eq!(model("base"), None);
    }
}
