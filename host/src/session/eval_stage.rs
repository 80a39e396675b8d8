//! Feature extraction through a backbone plugin and the k-NN evaluation.

use std::sync::Arc;

use abi_stable::std_types::ROption;
use candle_core::Tensor;
use patchwork_plugin_api::abi::{ForwardOpts, InstanceId};

use super::{SessionError, plugin_call::check};
use crate::{
    data::{
        loader::{Dataset, Loader, LoaderConfig, Transform},
        source::Data,
        stats::ChannelStats,
    },
    engine::{context, registry},
    eval::knn::knn_accuracy,
    plugins::LoadedPlugin,
};

/// Batches of 128 images of `data` in dataset order, each resized, centre-cropped to
/// `size` and normalised with `stats`: what every evaluation reads.
pub fn eval_loader(
    data: Arc<dyn Dataset>,
    size: usize,
    stats: &ChannelStats,
) -> Result<Loader, SessionError> {
    let cfg = LoaderConfig {
        batch_size: 128,
        drop_last: false,
        shuffle: false,
        ..Default::default()
    };
    let transform = Transform::Eval {
        size,
        stats: stats.clone(),
    };
    Ok(Loader::start(data, &cfg, transform, 0, 0)?)
}

/// CLS features `(N, D)` and labels of every image of `data`, in dataset order, each
/// image resized, centre-cropped to `size` and normalised with `stats`.
pub fn extract(
    backbone: &BackboneInstance<'_>,
    data: Arc<dyn Dataset>,
    size: usize,
    stats: &ChannelStats,
) -> Result<(Tensor, Vec<u32>), SessionError> {
    let (plugin, instance) = (backbone.plugin, backbone.instance);
    let loader = eval_loader(data, size, stats)?;
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    let device = context::device();
    for batch in loader {
        let batch = batch?;
        let images = registry::insert(batch.views[0].to_tensor(&device)?);
        let opts = ForwardOpts {
            train: false,
            layers: false,
            attention: false,
            keep: ROption::RNone,
        };
        let r = (plugin.root.backbone_forward())(instance, images, opts);
        registry::remove(images);
        let out = check(plugin, "forward", r)?;
        registry::remove(out.patches);
        for id in out.layers.iter() {
            registry::remove(*id);
        }
        if let Some(a) = out.attention.into_option() {
            registry::remove(a);
        }
        let cls = registry::remove(out.cls).ok_or_else(|| {
            SessionError::Unsupported("backbone returned an invalid handle".into())
        })?;
        feats.push(cls.detach());
        labels.extend_from_slice(&batch.labels);
    }
    let refs: Vec<&Tensor> = feats.iter().collect();
    Ok((Tensor::cat(&refs, 0)?, labels))
}

/// A backbone instance to extract features with.
pub struct BackboneInstance<'a> {
    /// The plugin.
    pub plugin: &'a LoadedPlugin,
    /// The instance.
    pub instance: InstanceId,
}

/// Weighted k-NN accuracy of `backbone` features, train split as the bank.
pub fn knn(
    backbone: &BackboneInstance<'_>,
    data: &Data,
    k: usize,
    temperature: f64,
) -> Result<f64, SessionError> {
    if data.classes == 0 {
        return Err(SessionError::Unsupported(
            "k-NN evaluation needs labelled data; this data source has no classes".into(),
        ));
    }
    let (bank, bank_labels) = extract(backbone, data.train.clone(), data.size, &data.stats)?;
    let (test, test_labels) = extract(backbone, data.val.clone(), data.size, &data.stats)?;
    Ok(knn_accuracy(
        &bank,
        &bank_labels,
        &test,
        &test_labels,
        data.classes,
        k,
        temperature,
    )?)
}
