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
    plugins::{LoadedPlugin, PluginRegistry},
};
use patchwork_plugin_api::abi::{BatchAbi, InstanceId, PluginKind, StepInfo, TensorId};

/// A tiny ViT (32 wide, 2 deep, 16 px) + DINO instance in a fresh host context seeded
/// with `seed`; `vit_extra` is appended to the ViT config (e.g. `", drop_path_rate: 0.0"`).
#[allow(
    clippy::unwrap_used,
    reason = "a test helper: any failure should fail the test"
)]
fn tiny_dino<'a>(
    reg: &'a PluginRegistry,
    seed: u64,
    vit_extra: &str,
) -> (&'a LoadedPlugin, InstanceId) {
    let vit = reg.require("vit", PluginKind::BACKBONE).unwrap();
    let dino = reg.require("dino", PluginKind::PRETEXT).unwrap();
    let mut ctx = HostContext::new(Device::Cpu, seed);
    ctx.backbone = Some(BackboneSource {
        name: "vit".into(),
        root: vit.root,
        config: format!(
            "(preset: \"tiny\", embed_dim: Some(32), depth: Some(2), num_heads: Some(2), patch_size: 4, img_size: 16{vit_extra})"
        ),
    });
    context::install(ctx);
    let cfg = "(out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, global_size: 16, local_size: 8)";
    let instance = (dino.root.create())(cfg.into(), host_ops::table(), "".into())
        .into_result()
        .unwrap();
    (dino, instance)
}

/// Random `(batch, 3, s, s)` views for 2 global (16 px) and 2 local (8 px) crops.
#[allow(
    clippy::unwrap_used,
    reason = "a test helper: any failure should fail the test"
)]
fn random_views(batch: usize) -> (Vec<TensorId>, BatchAbi) {
    let ids: Vec<TensorId> = [16, 16, 8, 8]
        .iter()
        .map(|&s| {
            registry::insert(Tensor::randn(0f32, 1.0, (batch, 3, s, s), &Device::Cpu).unwrap())
        })
        .collect();
    let batch = BatchAbi {
        views: RVec::from(ids.clone()),
        labels: ROption::RNone,
    };
    (ids, batch)
}

/// A step in epoch 1, when DINO's last layer is no longer frozen.
fn epoch_one() -> StepInfo {
    StepInfo {
        step: 10,
        epoch: 1,
        steps_per_epoch: 10,
        total_steps: 100,
        epochs: 10,
    }
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let reg = PluginRegistry::discover(&[patchwork_tests::target_dir()]);
    let (dino, instance) = tiny_dino(&reg, 3, "");
    let (ids, batch) = random_views(4);
    // Epoch 1: DINO's last layer is no longer frozen, so it must get a gradient too.
    let info = epoch_one();
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

/// The DINO loss at the current parameters, for a fixed batch (no drop path).
#[allow(
    clippy::unwrap_used,
    reason = "a test helper: any failure should fail the test"
)]
fn dino_loss(
    root: &LoadedPlugin,
    instance: InstanceId,
    batch: &BatchAbi,
    info: StepInfo,
) -> Tensor {
    let out = (root.root.pretext_step())(instance, batch, info)
        .into_result()
        .unwrap();
    registry::remove(out.loss).unwrap()
}

/// The analytic gradient of the whole ViT + DINO step agrees with central finite
/// differences along the gradient direction, parameter by parameter: `dL/dt` at
/// `θ + t·g/‖g‖` must equal `‖g‖`.
#[test]
fn dino_gradient_matches_finite_differences() {
    let reg = PluginRegistry::discover(&[patchwork_tests::target_dir()]);
    let (dino, instance) = tiny_dino(&reg, 5, ", drop_path_rate: 0.0");
    // Teacher and student differ, as they do after some training.
    context::with(|c| {
        let names: Vec<String> = c
            .store
            .params()
            .keys()
            .filter(|n| n.starts_with("teacher.") && !n.ends_with("weight_g"))
            .cloned()
            .collect();
        for n in names {
            let p = c.store.params()[&n].var.as_tensor().clone();
            let noise = (Tensor::randn(0f32, 1.0, p.dims(), &Device::Cpu).unwrap() * 0.05).unwrap();
            c.store.set(&n, &(p + noise).unwrap()).unwrap();
        }
    });
    let (ids, batch) = random_views(6);
    let info = epoch_one();
    let grads = dino_loss(dino, instance, &batch, info).backward().unwrap();
    let probe = [
        "student.backbone.patch_embed.proj.weight",
        "student.backbone.pos_embed",
        "student.backbone.cls_token",
        "student.backbone.blocks.0.attn.qkv.weight",
        "student.backbone.blocks.1.mlp.fc1.weight",
        "student.backbone.blocks.1.norm1.weight",
        "student.backbone.norm.bias",
        "student.head.mlp.0.weight",
        "student.head.mlp.4.weight",
        "student.head.last_layer.weight_v",
    ];
    let mut report = Vec::new();
    for name in probe {
        let (var, p0) = context::with(|c| {
            let v = c.store.params()[name].var.clone();
            let p = v.as_tensor().detach().copy().unwrap();
            (v, p)
        })
        .unwrap();
        let g = grads.get(var.as_tensor()).unwrap().detach();
        let gnorm = f64::from(
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
        .sqrt();
        let dir = (g / gnorm).unwrap();
        let eps = 1e-2;
        let at = |t: f64| {
            var.set(&(&p0 + (&dir * t).unwrap()).unwrap()).unwrap();
            f64::from(
                dino_loss(dino, instance, &batch, info)
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&p0).unwrap();
        report.push(format!("{name}: analytic {gnorm:.5}, numeric {numeric:.5}"));
        assert!(
            (numeric - gnorm).abs() <= 0.05 * gnorm + 2e-4,
            "{}",
            report.join("\n")
        );
    }
    eprintln!("{}", report.join("\n"));
    for id in ids {
        registry::remove(id);
    }
    (dino.root.destroy())(instance);
    context::take();
}
