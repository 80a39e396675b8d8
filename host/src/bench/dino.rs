//! `patchwork bench train --models dino-s16`: the DINO pre-training step of the paper's
//! ViT-S/16 recipe (2 × 224 px global and 8 × 96 px local crops, head
//! 384→2048→2048→256→65536, teacher EMA) through the `vit` and `dino` plugins, as a
//! session runs it: images/s (median after warm-up) and achieved TFLOP/s. Sized for a
//! GPU (`--device cuda:0`); `benchmarks/pytorch_reference.py --models dino-s16` is the
//! same step in PyTorch.

use std::time::Instant;

use anyhow::Result;

use super::{
    native::NativeConfig,
    train::{BenchArgs, PluginPath, views},
    vit::{Target, VitModel},
};
use crate::plugins::LoadedPlugin;

/// The model's name on the command line.
pub const NAME: &str = "dino-s16";

/// DINO's ViT-S/16 recipe (methods.md), as the plugins are configured.
pub fn dino_s16() -> NativeConfig {
    NativeConfig {
        img_size: 224,
        patch_size: 16,
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        mlp_ratio: 4.0,
        out_dim: 65536,
        hidden_dim: 2048,
        bottleneck_dim: 256,
        global_crops: 2,
        local_crops: 8,
        local_size: 96,
        drop_path_rate: 0.1,
    }
}

/// The encoder of `m` at image side `img_size`, for FLOP counts.
fn encoder(m: &NativeConfig, img_size: usize) -> VitModel {
    VitModel {
        name: NAME,
        img_size,
        patch_size: m.patch_size,
        embed_dim: m.embed_dim,
        depth: m.depth,
        heads: m.num_heads,
    }
}

/// Matmul FLOPs per image of one DINO step: the student's forward over every crop
/// (encoder and projection head), its backward (twice the forward), and the teacher's
/// forward over the global crops.
pub fn step_flops(m: &NativeConfig) -> f64 {
    let head = 2.0
        * (m.embed_dim * m.hidden_dim
            + m.hidden_dim * m.hidden_dim
            + m.hidden_dim * m.bottleneck_dim
            + m.bottleneck_dim * m.out_dim) as f64;
    let global = encoder(m, m.img_size).encoder_flops() + head;
    let local = encoder(m, m.local_size).encoder_flops() + head;
    let student = m.global_crops as f64 * global + m.local_crops as f64 * local;
    let teacher = m.global_crops as f64 * global;
    3.0 * student + teacher
}

/// Train-step images/s of the DINO step (median over the timed steps) and its loss.
#[derive(Debug, Clone, PartialEq)]
pub struct DinoFigures {
    /// Images/s, each image being its `2 + 8` crops.
    pub ips: f64,
    /// The last step's loss.
    pub loss: f32,
    /// On a GPU, its memory in use after the train steps.
    pub device_bytes: Option<u64>,
}

/// Times the DINO step of `m` at `args.batch` on `target`: `args.warmup` untimed
/// steps, then `args.vit_steps` timed ones.
pub fn measure(
    vit: &LoadedPlugin,
    dino: &LoadedPlugin,
    m: &NativeConfig,
    args: &BenchArgs,
    target: &Target,
) -> Result<DinoFigures> {
    let mut path = PluginPath::new(vit, dino, m, target)?;
    let inputs = views(m, args.batch, &target.device)?;
    for _ in 0..args.warmup {
        path.train_step(&inputs)?;
    }
    let mut rates = Vec::new();
    let mut loss = f32::NAN;
    for _ in 0..args.vit_steps.max(1) {
        let t = Instant::now();
        // The step reads the loss back, which waits for the device.
        loss = path.train_step(&inputs)?;
        rates.push(args.batch as f64 / t.elapsed().as_secs_f64().max(1e-9));
        anyhow::ensure!(loss.is_finite(), "the DINO loss is {loss}");
    }
    Ok(DinoFigures {
        ips: super::vit::median(rates),
        loss,
        device_bytes: target.device_memory(),
    })
}

/// Prints the figures as the PyTorch reference prints them.
pub fn print(m: &NativeConfig, batch: usize, target: &Target, f: &DinoFigures) {
    let flops = step_flops(m);
    println!(
        "DINO ViT-S/{} step ({}x{} px + {}x{} px crops, head out {}), batch {batch}, {} (patchwork, candle):",
        m.patch_size,
        m.global_crops,
        m.img_size,
        m.local_crops,
        m.local_size,
        m.out_dim,
        target.label()
    );
    println!(
        "  train step: {:.2} img/s, {:.2} TFLOP/s at {:.2} GFLOP/img (student 3 × forward, teacher forward); loss {:.4}",
        f.ips,
        f.ips * flops / 1e12,
        flops / 1e9,
        f.loss
    );
    super::vit::print_device_memory(f.device_bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_of_the_dino_step() {
        let m = dino_s16();
        // timm: ViT-S/16 at 224 is 4.6 GMACs, i.e. ~9.2 GFLOP forward.
        let global = encoder(&m, 224).encoder_flops() / 1e9;
        assert!((9.0..9.4).contains(&global), "{global}");
        assert_eq!(encoder(&m, 96).tokens(), 37);
        let total = step_flops(&m) / 1e9;
        // 3 × (2 × 9.2 + 8 × 1.7) + 2 × 9.2 ≈ 115 GFLOP per image, heads included.
        assert!((105.0..125.0).contains(&total), "{total}");
    }
}
