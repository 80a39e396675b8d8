//! `patchwork bench train`: train-step images/s of the quickstart-sized ViT + DINO
//! through the plugin path and through the same model written natively in the host,
//! measured alternately in one run so the ratio is fair.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use abi_stable::std_types::{ROption, RVec};
use anyhow::{Context, Result, anyhow};
use candle_core::{Device, Tensor, Var};
use patchwork_plugin_api::abi::{BatchAbi, InstanceId, PluginKind, StepInfo};

use super::native::{NativeConfig, NativeDino};
use super::vit::Target;
use crate::{
    cli::plugin_dirs,
    engine::{
        clip::clip_per_param,
        context::{self, BackboneSource},
        host_ops, optim, registry,
    },
    plugins::{LoadedPlugin, PluginRegistry},
};

/// Arguments of `patchwork bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure: `train` (ViT-Tiny and plugin vs native steps), `data` (loader vs
    /// step) or `peak` (the CPU's fp32 FMA peak on the worker threads).
    #[arg(default_value = "train")]
    pub what: String,
    /// Timed steps per round and path.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Alternating rounds (plugin, native, plugin, native, ...).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// `train`: the models to measure, of `tiny16` (ViT-Tiny/16 at 224 px), `tiny4`
    /// (ViT-Tiny/4 at 32 px) and `quickstart` (the DINO step, plugin vs native).
    #[arg(long, value_delimiter = ',', default_value = "tiny16,tiny4,quickstart")]
    pub models: Vec<String>,
    /// `train`: timed steps per ViT-Tiny model (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub vit_steps: usize,
    /// `train`: untimed warm-up steps per ViT-Tiny model.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The fp32 peak in GFLOP/s that achieved rates are compared with (default on the
    /// CPU: measured first, as `patchwork bench peak` does; on CUDA: none).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// `train`: also print where the ViT-Tiny train step spends its time (forward,
    /// backward, optimizer, and the host's fused kernels in each).
    #[arg(long)]
    pub profile: bool,
    /// `train`: the device the models run on (`cpu`, `cuda:0`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `train`: `f32`, or `bf16` (autocast: bf16 matmuls, f32 weights and reductions).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Extra plugin directory.
    #[arg(long = "plugins")]
    pub plugin_dirs: Vec<PathBuf>,
}

/// The quickstart model (workspaces/quickstart.ron), as both paths build it.
pub fn quickstart_model() -> NativeConfig {
    NativeConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 96,
        depth: 4,
        num_heads: 3,
        mlp_ratio: 4.0,
        out_dim: 512,
        hidden_dim: 256,
        bottleneck_dim: 64,
        global_crops: 2,
        local_crops: 0,
        local_size: 16,
        drop_path_rate: 0.1,
    }
}

fn plugin_configs(m: &NativeConfig) -> (String, String) {
    let vit = format!(
        "(preset: \"tiny\", embed_dim: Some({}), depth: Some({}), num_heads: Some({}), patch_size: {}, img_size: {}, drop_path_rate: {}, mlp_ratio: {})",
        m.embed_dim, m.depth, m.num_heads, m.patch_size, m.img_size, m.drop_path_rate, m.mlp_ratio
    );
    let dino = format!(
        "(out_dim: {}, hidden_dim: {}, bottleneck_dim: {}, local_crops: {}, global_size: {}, local_size: {})",
        m.out_dim, m.hidden_dim, m.bottleneck_dim, m.local_crops, m.img_size, m.local_size
    );
    (vit, dino)
}

/// Random inputs for every view position of `m`, on `device`.
pub(super) fn views(m: &NativeConfig, batch: usize, device: &Device) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for i in 0..m.global_crops + m.local_crops {
        let s = if i < m.global_crops {
            m.img_size
        } else {
            m.local_size
        };
        out.push(Tensor::randn(0f32, 1.0, (batch, 3, s, s), device)?);
    }
    Ok(out)
}

/// The plugin path: one DINO instance over the vit plugin, stepped like a session.
pub(super) struct PluginPath<'a> {
    dino: &'a LoadedPlugin,
    instance: InstanceId,
    vars: Vec<Var>,
    opt: optim::AdamW,
    step: u64,
}

impl<'a> PluginPath<'a> {
    /// A DINO instance over the vit plugin, configured like `m`, on `target`.
    pub(super) fn new(
        vit: &'a LoadedPlugin,
        dino: &'a LoadedPlugin,
        m: &NativeConfig,
        target: &Target,
    ) -> Result<Self> {
        let (vit_cfg, dino_cfg) = plugin_configs(m);
        let mut ctx = target.context();
        ctx.backbone = Some(BackboneSource {
            name: "vit".into(),
            root: vit.root,
            config: vit_cfg,
        });
        context::install(ctx);
        let r = (dino.root.create())(dino_cfg.as_str().into(), host_ops::table(), "".into());
        let instance = r
            .into_result()
            .map_err(|e| anyhow!("dino: {}", e.message))?;
        let params: Vec<(String, Var, bool)> = context::trainable_params();
        let vars = params.iter().map(|(_, v, _)| v.clone()).collect();
        let opt = optim::AdamW::new(params, optim::AdamWConfig::default())?;
        Ok(Self {
            dino,
            instance,
            vars,
            opt,
            step: 0,
        })
    }

    /// One step: forward, backward, clip, AdamW, EMA; returns the loss.
    pub(super) fn train_step(&mut self, views: &[Tensor]) -> Result<f32> {
        let ids: Vec<_> = views.iter().map(|v| registry::insert(v.clone())).collect();
        let abi = BatchAbi {
            views: RVec::from(ids.clone()),
            labels: ROption::RNone,
        };
        let info = StepInfo {
            step: self.step,
            epoch: 1,
            steps_per_epoch: 100,
            total_steps: 1000,
            epochs: 10,
        };
        let out = (self.dino.root.pretext_step())(self.instance, &abi, info).into_result();
        for id in ids {
            registry::remove(id);
        }
        let out = out.map_err(|e| anyhow!("dino step: {}", e.message))?;
        let loss = registry::remove(out.loss).context("invalid loss handle")?;
        let mut grads = loss.backward()?;
        clip_per_param(&mut grads, &self.vars, 3.0)?;
        self.opt.step(&grads, 5e-4, 0.04)?;
        (self.dino.root.pretext_after_step())(self.instance, info)
            .into_result()
            .map_err(|e| anyhow!("{}", e.message))?;
        self.step += 1;
        Ok(loss.to_scalar::<f32>()?)
    }
}

impl Drop for PluginPath<'_> {
    fn drop(&mut self) {
        (self.dino.root.destroy())(self.instance);
        context::take();
    }
}

/// The device and arithmetic `args` ask for.
fn target(args: &BenchArgs) -> Result<Target> {
    let device = crate::session::runner::device(&args.device)?;
    let bf16 = match args.precision.as_str() {
        "f32" | "fp32" => false,
        "bf16" => true,
        other => anyhow::bail!("unknown precision '{other}' (use f32 or bf16)"),
    };
    Ok(Target { device, bf16 })
}

/// How long `patchwork bench peak` runs its FMA loop.
const PEAK_TIME: Duration = Duration::from_secs(1);

/// The fp32 peak on the process's worker threads.
fn measure_peak(time: Duration) -> super::peak::Peak {
    super::peak::measure(candle_core::utils::get_num_threads(), time)
}

/// Runs `patchwork bench`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    match args.what.as_str() {
        "train" => {}
        "data" => return super::data::bench_data(args),
        "peak" => {
            super::peak::print(&measure_peak(PEAK_TIME));
            return Ok(());
        }
        other => anyhow::bail!("unknown benchmark '{other}' (available: train, data, peak)"),
    }
    let target = target(args)?;
    let vit_models = args.models.iter().any(|m| m != "quickstart");
    let peak_gflops = args.peak_gflops.or_else(|| {
        (vit_models && target.device.is_cpu()).then(|| {
            let peak = measure_peak(PEAK_TIME / 2);
            super::peak::print(&peak);
            peak.gflops
        })
    });
    let registry = PluginRegistry::discover(&plugin_dirs(&args.plugin_dirs));
    let vit = registry.require("vit", PluginKind::BACKBONE)?;
    for name in &args.models {
        if name == "quickstart" {
            continue;
        }
        if name == super::dino::NAME {
            let dino = registry.require("dino", PluginKind::PRETEXT)?;
            let m = super::dino::dino_s16();
            let figures = super::dino::measure(vit, dino, &m, args, &target)?;
            super::dino::print(&m, args.batch, &target, &figures);
            continue;
        }
        let m = super::vit::model(name).with_context(|| {
            format!(
                "unknown model '{name}' (available: tiny16, tiny4, {}, quickstart)",
                super::dino::NAME
            )
        })?;
        let figures = super::vit::measure(
            vit,
            &m,
            args.batch,
            args.warmup,
            args.vit_steps,
            args.profile,
            &target,
        )?;
        super::vit::print(&m, args.batch, &target, peak_gflops, &figures);
    }
    if !args.models.iter().any(|m| m == "quickstart") {
        return Ok(());
    }
    let dino = registry.require("dino", PluginKind::PRETEXT)?;
    let m = quickstart_model();
    let mut plugin = PluginPath::new(vit, dino, &m, &target)?;
    let mut native = NativeDino::new(&m, &target.device, 0)?;
    let inputs = views(&m, args.batch, &target.device)?;
    // Warm-up: allocator, caches, interpolation matrices.
    plugin.train_step(&inputs)?;
    native.train_step(&inputs, 0)?;
    let (mut t_plugin, mut t_native) = (0.0f64, 0.0f64);
    for round in 0..args.rounds {
        let t = Instant::now();
        for _ in 0..args.steps {
            plugin.train_step(&inputs)?;
        }
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for s in 0..args.steps {
            native.train_step(&inputs, s as u64)?;
        }
        let n = t.elapsed().as_secs_f64();
        let imgs = (args.steps * args.batch) as f64;
        println!(
            "round {round}: plugin {:.1} img/s, native {:.1} img/s",
            imgs / p,
            imgs / n
        );
        t_plugin += p;
        t_native += n;
    }
    let imgs = (args.rounds * args.steps * args.batch) as f64;
    let (ip, inat) = (imgs / t_plugin, imgs / t_native);
    println!(
        "train step, quickstart model (ViT {}x{} d{} h{}, DINO out {}, 2x{}px + {}x{}px crops), batch {}:",
        m.embed_dim,
        m.depth,
        m.embed_dim,
        m.num_heads,
        m.out_dim,
        m.img_size,
        m.local_crops,
        m.local_size,
        args.batch
    );
    println!("  plugin path: {ip:.1} images/s");
    println!("  native path: {inat:.1} images/s");
    println!(
        "  plugin/native: {:.3} (boundary overhead {:+.1} %)",
        ip / inat,
        100.0 * (inat / ip - 1.0)
    );
    Ok(())
}
