//! After one step on a tiny ViT + DINO (loaded as plugins, run in-process), every
//! trainable parameter has a non-zero gradient: the fused host ops keep their
//! backward passes.

use abi_stable::std_types::{ROption, RVec};
use candle_core::{Device, Tensor};
use patchwork::{
    engine::{
        context::{self, BackboneSource, HostContext},
        host_ops, registry,
    },
    plugins::PluginRegistry,
};
use patchwork_plugin_api::abi::{BatchAbi, PluginKind, StepInfo};

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let reg = PluginRegistry::discover(&[patchwork_tests::target_dir()]);
    let vit = reg
        .require("vit", PluginKind::BACKBONE)
        .expect("vit plugin built");
    let dino = reg
        .require("dino", PluginKind::PRETEXT)
        .expect("dino plugin built");
    let mut ctx = HostContext::new(Device::Cpu, 3);
    ctx.backbone = Some(BackboneSource {
        name: "vit".into(),
        root: vit.root,
        config: "(preset: \"tiny\", embed_dim: Some(32), depth: Some(2), num_heads: Some(2), patch_size: 4, img_size: 16)".into(),
    });
    context::install(ctx);
    let cfg = "(out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, global_size: 16, local_size: 8)";
    let instance = (dino.root.create())(cfg.into(), host_ops::table(), "".into())
        .into_result()
        .unwrap();
    let mut ids = Vec::new();
    for s in [16, 16, 8, 8] {
        ids.push(registry::insert(
            Tensor::randn(0f32, 1.0, (4, 3, s, s), &Device::Cpu).unwrap(),
        ));
    }
    let batch = BatchAbi {
        views: RVec::from(ids.clone()),
        labels: ROption::RNone,
    };
    // Epoch 1: DINO's last layer is no longer frozen, so it must get a gradient too.
    let info = StepInfo {
        step: 10,
        epoch: 1,
        steps_per_epoch: 10,
        total_steps: 100,
        epochs: 10,
    };
    let out = (dino.root.pretext_step())(instance, &batch, info)
        .into_result()
        .unwrap();
    let loss = registry::remove(out.loss).unwrap();
    let grads = loss.backward().unwrap();
    let frozen: Vec<String> = (dino.root.pretext_frozen())(instance, info)
        .into_result()
        .unwrap()
        .into_iter()
        .map(|s| s.into_string())
        .collect();
    let mut checked = 0;
    let mut missing = Vec::new();
    context::with(|c| {
        for (name, var) in c.store.trainable() {
            if frozen
                .iter()
                .any(|f| name == f || name.starts_with(&format!("{f}.")))
            {
                continue;
            }
            checked += 1;
            let norm = grads
                .get(var.as_tensor())
                .map(|g| {
                    g.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .unwrap_or(0.0);
            if norm <= 0.0 || !norm.is_finite() {
                missing.push(name.clone());
            }
        }
    });
    for id in ids {
        registry::remove(id);
    }
    (dino.root.destroy())(instance);
    context::take();
    assert!(checked > 20, "only {checked} trainable parameters found");
    assert!(
        missing.is_empty(),
        "parameters without a gradient: {missing:?}"
    );
}
