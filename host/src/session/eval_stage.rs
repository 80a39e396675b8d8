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
    engine::{context, grad, registry},
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

/// What an evaluation reads from each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// CLS tokens of the last `n` blocks, concatenated: one row per image.
    Cls(usize),
    /// The final patch tokens: one row per patch.
    Patches,
}

/// Rows of features of every image of `data` and each image's label, in dataset
/// order; each image resized, centre-cropped to `size` and normalised with `stats`.
pub fn extract(
    backbone: &BackboneInstance<'_>,
    data: Arc<dyn Dataset>,
    size: usize,
    stats: &ChannelStats,
    what: Features,
) -> Result<(Tensor, Vec<u32>), SessionError> {
    let (plugin, instance) = (backbone.plugin, backbone.instance);
    let device = context::device();
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for batch in eval_loader(data, size, stats)? {
        let batch = batch?;
        labels.extend_from_slice(&batch.labels);
        let images = registry::insert(batch.views[0].to_tensor(&device)?);
        let opts = ForwardOpts {
            train: false,
            layers: matches!(what, Features::Cls(n) if n > 1),
            attention: false,
            keep: ROption::RNone,
        };
        // No graph: the features are read, never differentiated.
        let r = grad::no_grad(|| (plugin.root.backbone_forward())(instance, images, opts));
        registry::remove(images);
        let out = check(plugin, "forward", r)?;
        let cls = registry::remove(out.cls);
        let patches = registry::remove(out.patches);
        let layers: Vec<Tensor> = out
            .layers
            .iter()
            .filter_map(|id| registry::remove(*id))
            .collect();
        if let Some(a) = out.attention.into_option() {
            registry::remove(a);
        }
        let invalid = || SessionError::Unsupported("backbone returned an invalid handle".into());
        let row = match what {
            Features::Cls(1) => cls.ok_or_else(invalid)?,
            Features::Cls(n) => {
                if layers.len() < n {
                    return Err(SessionError::Unsupported(format!(
                        "the probe asks for the CLS of the last {n} blocks, but backbone '{}' returned {} block outputs; set `blocks` to at most that (1 reads the final CLS)",
                        plugin.name(),
                        layers.len()
                    )));
                }
                let last: Vec<Tensor> = layers[layers.len() - n..]
                    .iter()
                    .map(|l| l.narrow(1, 0, 1)?.squeeze(1))
                    .collect::<candle_core::Result<_>>()?;
                Tensor::cat(&last, 1)?
            }
            Features::Patches => {
                let p = patches.ok_or_else(invalid)?;
                let (b, n, d) = p.dims3()?;
                p.reshape((b * n, d))?
            }
        };
        rows.push(row.detach());
    }
    // A single batch's CLS is a view into the backbone's output; index_select (the
    // probes' subsets and batches) needs a contiguous tensor.
    Ok((Tensor::cat(&rows, 0)?.contiguous()?, labels))
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
    let cls = Features::Cls(1);
    let (bank, bank_labels) = extract(backbone, data.train.clone(), data.size, &data.stats, cls)?;
    let (test, test_labels) = extract(backbone, data.val.clone(), data.size, &data.stats, cls)?;
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
