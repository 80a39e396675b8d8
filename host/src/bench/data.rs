//! `patchwork bench data`: what the loader delivers beside what a training step
//! consumes, measured in one run on the same machine.
//!
//! Two pairs:
//! - DINO multi-crop (2×224 + 8×96) views from 256 px JPEG files (decode, crop, colour
//!   ops, blur, normalise) against a ViT-Tiny/16 DINO training step on those views;
//! - the quickstart's views (2×32 from procedural shapes) against the quickstart
//!   model's training step.
//!
//! The loader must deliver at least [`REQUIRED_RATIO`] times what the ViT-Tiny step
//! consumes, or training would wait on data.

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use patchwork_plugin_api::abi::PluginKind;

use super::native::NativeConfig;
use super::train::{BenchArgs, PluginPath, quickstart_model, views};
use super::vit::Target;
use crate::{
    cli::plugin_dirs,
    data::{
        image_folder::{self, ImageFolderConfig},
        loader::{Dataset, Loader, LoaderConfig, Transform},
        shapes::{Shapes, ShapesConfig, Split},
        stats::ChannelStats,
        views::{ViewSpec, dino_default},
    },
    plugins::PluginRegistry,
};

/// Loader images/s over train-step images/s the loader must reach.
pub const REQUIRED_RATIO: f64 = 3.0;

/// Side of the generated JPEG files (ImageNet-like: larger than the 224 px crop).
const JPEG_SIDE: usize = 256;

/// ViT-Tiny/16 with DINO's default head and multi-crop (2×224 + 8×96).
fn vit_tiny_dino() -> NativeConfig {
    NativeConfig {
        img_size: 224,
        patch_size: 16,
        embed_dim: 192,
        depth: 12,
        num_heads: 3,
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

/// A temporary folder of JPEG files, removed on drop.
struct JpegFolder(PathBuf);

impl JpegFolder {
    /// `count` procedural shapes rendered at [`JPEG_SIDE`] px and saved as JPEG.
    fn create(count: usize) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("patchwork-bench-data-{}", std::process::id()));
        let class_dir = dir.join("shapes");
        std::fs::create_dir_all(&class_dir)
            .with_context(|| format!("creating '{}'", class_dir.display()))?;
        let shapes = Shapes::new(ShapesConfig {
            images: count,
            size: JPEG_SIDE,
            ..ShapesConfig::default()
        })?;
        for i in 0..count {
            let img = shapes.get(Split::Train, i).image;
            let plane = img.plane();
            let rgb = image::RgbImage::from_fn(JPEG_SIDE as u32, JPEG_SIDE as u32, |x, y| {
                let p = y as usize * JPEG_SIDE + x as usize;
                let q = |c: usize| (img.data[c * plane + p].clamp(0.0, 1.0) * 255.0) as u8;
                image::Rgb([q(0), q(1), q(2)])
            });
            let path = class_dir.join(format!("{i:04}.jpg"));
            rgb.save(&path)
                .with_context(|| format!("writing '{}'", path.display()))?;
        }
        Ok(Self(dir))
    }
}

impl Drop for JpegFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Images/s the loader delivers from `data` with `transform`, over at least
/// `min_images` images (whole epochs, each a fresh loader as in training).
fn loader_rate(
    data: &Arc<dyn Dataset>,
    transform: &Transform,
    batch: usize,
    workers: usize,
    min_images: usize,
) -> Result<f64> {
    let cfg = LoaderConfig {
        batch_size: batch,
        workers,
        prefetch: 2 * workers,
        ..LoaderConfig::default()
    };
    // Warm-up epoch: page cache, allocator.
    for b in Loader::start(Arc::clone(data), &cfg, transform.clone(), 0, 0)?.take(1) {
        b?;
    }
    let start = Instant::now();
    let mut images = 0;
    let mut epoch = 1;
    while images < min_images {
        for b in Loader::start(Arc::clone(data), &cfg, transform.clone(), epoch, 0)? {
            images += b?.labels.len();
        }
        epoch += 1;
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

/// Images/s of `steps` timed DINO training steps of model `m` at batch `batch`
/// through the plugins (after one warm-up step).
fn step_rate(
    registry: &PluginRegistry,
    m: &NativeConfig,
    batch: usize,
    steps: usize,
) -> Result<f64> {
    let vit = registry.require("vit", PluginKind::BACKBONE)?;
    let dino = registry.require("dino", PluginKind::PRETEXT)?;
    let cpu = Target::cpu();
    let mut path = PluginPath::new(vit, dino, m, &cpu)?;
    let inputs = views(m, batch, &cpu.device)?;
    path.train_step(&inputs)?;
    let start = Instant::now();
    for _ in 0..steps {
        path.train_step(&inputs)?;
    }
    Ok((steps * batch) as f64 / start.elapsed().as_secs_f64())
}

/// Runs `patchwork bench data`.
pub fn bench_data(args: &BenchArgs) -> Result<()> {
    let registry = PluginRegistry::discover(&plugin_dirs(&args.plugin_dirs));
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let imagenet = ChannelStats::imagenet();

    // Pair 1: DINO multi-crop from JPEG files vs a ViT-Tiny DINO step.
    let folder = JpegFolder::create(64)?;
    let opened = image_folder::open(
        &ImageFolderConfig {
            val_fraction: 0.0,
            index_cache: false,
            ..ImageFolderConfig::new(&folder.0)
        },
        &folder.0,
        None,
    )?;
    let jpegs: Arc<dyn Dataset> = Arc::new(opened.train);
    let multi_crop = Transform::Views {
        specs: dino_default(224, 8, 96),
        stats: imagenet.clone(),
    };
    let load_224 = loader_rate(&jpegs, &multi_crop, 16, workers, 128)?;
    let tiny_batch = 8;
    let step_224 = step_rate(
        &registry,
        &vit_tiny_dino(),
        tiny_batch,
        args.steps.clamp(1, 3),
    )?;

    // Pair 2: the quickstart's views vs the quickstart model's step.
    let q = quickstart_model();
    let shapes = Shapes::new(ShapesConfig {
        classes: 6,
        images: 1024,
        size: q.img_size,
        palette: 2,
        plain: true,
        seed: 7,
        ..ShapesConfig::default()
    })?;
    let shapes: Arc<dyn Dataset> = Arc::new(shapes.split(Split::Train));
    let quick_views = Transform::Views {
        specs: dino_default(q.img_size, q.local_crops, q.local_size)
            .into_iter()
            .map(|s| ViewSpec {
                scale: if s.size == q.img_size {
                    (0.8, 1.0)
                } else {
                    s.scale
                },
                ..s
            })
            .collect(),
        stats: imagenet,
    };
    let load_quick = loader_rate(&shapes, &quick_views, args.batch, workers, 2048)?;
    let step_quick = step_rate(&registry, &q, args.batch, args.steps)?;

    println!("data loader vs training step, {workers} worker thread(s), one run:");
    println!(
        "  loader, DINO multi-crop 2x224 + 8x96 from {JPEG_SIDE} px JPEG files: {load_224:.1} images/s"
    );
    println!(
        "  train step, ViT-Tiny/16 + DINO (K 65536) on those views, batch {tiny_batch}: {step_224:.2} images/s"
    );
    println!(
        "  loader / train step: {:.1}x (needs >= {REQUIRED_RATIO}x)",
        load_224 / step_224
    );
    println!(
        "  loader, quickstart views 2x{} from procedural shapes: {load_quick:.1} images/s",
        q.img_size
    );
    println!(
        "  train step, quickstart model, batch {}: {step_quick:.1} images/s",
        args.batch
    );
    println!("  loader / train step: {:.1}x", load_quick / step_quick);
    if load_224 < REQUIRED_RATIO * step_224 {
        anyhow::bail!(
            "the loader delivers {load_224:.1} images/s, less than {REQUIRED_RATIO}x the {step_224:.2} images/s a ViT-Tiny step consumes"
        );
    }
    Ok(())
}
