//! The evaluation after an `Adapt` stage: the method's own metrics (accuracy, mAP, …)
//! on every validation image, one deterministic view each.

use std::{collections::BTreeMap, sync::Arc};

use abi_stable::std_types::{ROption, RVec};
use candle_core::Tensor;
use patchwork_plugin_api::abi::{BatchAbi, InstanceId};

use super::{SessionError, eval_stage::eval_loader, plugin_call::check};
use crate::{
    data::{loader::Dataset, stats::ChannelStats},
    engine::{context, grad, registry},
    plugins::LoadedPlugin,
};

/// Means of the metrics `plugin`'s `evaluate` reports over the batches of `data`,
/// weighted by batch size (so they are per-image means when each batch's value is).
pub fn evaluate(
    plugin: &LoadedPlugin,
    instance: InstanceId,
    data: Arc<dyn Dataset>,
    size: usize,
    stats: &ChannelStats,
) -> Result<BTreeMap<String, f64>, SessionError> {
    let loader = eval_loader(data, size, stats)?;
    let device = context::device();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut images = 0usize;
    for batch in loader {
        let batch = batch?;
        let n = batch.labels.len();
        let view = registry::insert(batch.views[0].to_tensor(&device)?);
        let labels = registry::insert(Tensor::from_slice(&batch.labels, n, &device)?);
        let abi = BatchAbi {
            views: RVec::from(vec![view]),
            labels: ROption::RSome(labels),
        };
        let r = grad::no_grad(|| (plugin.root.adapt_evaluate())(instance, &abi));
        registry::remove(view);
        registry::remove(labels);
        for m in check(plugin, "evaluate", r)?.iter() {
            *sums.entry(m.name.to_string()).or_insert(0.0) += m.value * n as f64;
        }
        images += n;
    }
    Ok(sums
        .into_iter()
        .map(|(k, v)| (k, v / images.max(1) as f64))
        .collect())
}
