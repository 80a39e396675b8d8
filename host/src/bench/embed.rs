//! `patchwork embed`: CLS features of a folder of images, from a session's last
//! checkpoint or from a weights file, written as safetensors.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use abi_stable::std_types::ROption;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use patchwork_plugin_api::abi::{ForwardOpts, PluginKind};

use crate::{
    cli::plugin_dirs,
    data::{
        augment::normalize,
        image_folder,
        stats::{IMAGENET_MEAN, IMAGENET_STD},
    },
    engine::{
        checkpoint::{self, Checkpoint},
        context::{self, HostContext},
        grad, host_ops, registry,
    },
    plugins::PluginRegistry,
    workspace::schema,
};

/// Arguments of `patchwork embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Workspace whose session's last checkpoint holds the backbone.
    #[arg(long, requires = "session")]
    pub workspace: Option<PathBuf>,
    /// Session name in the workspace.
    #[arg(long)]
    pub session: Option<String>,
    /// A safetensors weights file (official names, or a patchwork checkpoint).
    #[arg(long, conflicts_with = "workspace", requires = "backbone")]
    pub weights: Option<PathBuf>,
    /// Backbone plugin (with --weights).
    #[arg(long)]
    pub backbone: Option<String>,
    /// Backbone config as RON text (with --weights).
    #[arg(long, default_value = "()")]
    pub config: String,
    /// Folder of images (png, jpg).
    #[arg(long)]
    pub images: PathBuf,
    /// Output safetensors file: `features` (N, D), metadata `files` (JSON list).
    #[arg(long)]
    pub out: PathBuf,
    /// Extra plugin directory.
    #[arg(long = "plugins")]
    pub plugin_dirs: Vec<PathBuf>,
}

/// Loads named weights: from a patchwork checkpoint the parameters under `scope`,
/// from any other safetensors file every tensor as it is named.
fn weights(path: &Path, scope: Option<&str>) -> Result<BTreeMap<String, Tensor>> {
    let ckpt = checkpoint::load(path, &Device::Cpu)?;
    let is_ckpt = ckpt.tensors.iter().any(|(n, _)| n.starts_with("param/"));
    let scope = match (is_ckpt, scope) {
        (true, Some(s)) => Some(s.to_string()),
        (true, None) => Some(
            ckpt.metadata
                .get("result_scope")
                .cloned()
                .unwrap_or_else(|| "teacher.backbone".into()),
        ),
        (false, _) => None,
    };
    let mut out = BTreeMap::new();
    for (name, t) in ckpt.tensors {
        match &scope {
            Some(s) => {
                if let Some(rest) = name.strip_prefix(&format!("param/{s}.")) {
                    out.insert(rest.to_string(), t);
                }
            }
            None => {
                out.insert(name, t);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "'{}' holds no backbone weights{}",
            path.display(),
            scope.map(|s| format!(" under '{s}'")).unwrap_or_default()
        );
    }
    Ok(out)
}

/// Runs `patchwork embed`.
pub fn embed(args: &EmbedArgs) -> Result<()> {
    let (backbone_name, config, weights_path, extra_dirs) = match (&args.workspace, &args.weights) {
        (Some(ws_path), _) => {
            let ws = schema::load(ws_path)?;
            let name = args.session.as_deref().unwrap_or_default();
            let session = ws
                .session(name)
                .with_context(|| format!("no session '{name}' in '{}'", ws_path.display()))?;
            let run_dir = schema::resolve(ws_path, &ws.output)
                .join(&ws.name)
                .join(&session.name);
            let ckpt = checkpoint::latest(&run_dir.join("checkpoints")).with_context(|| {
                format!(
                    "session '{name}' has no checkpoint in '{}': run it first",
                    run_dir.display()
                )
            })?;
            let dirs: Vec<PathBuf> = ws
                .plugin_dirs
                .iter()
                .map(|d| schema::resolve(ws_path, d))
                .collect();
            (
                session.backbone.name.clone(),
                session.backbone.config.clone(),
                ckpt,
                dirs,
            )
        }
        (None, Some(w)) => (
            args.backbone.clone().unwrap_or_default(),
            args.config.clone(),
            w.clone(),
            Vec::new(),
        ),
        (None, None) => bail!("give either --workspace and --session, or --weights and --backbone"),
    };
    let mut dirs = extra_dirs;
    dirs.extend(args.plugin_dirs.iter().cloned());
    let registry = PluginRegistry::discover(&plugin_dirs(&dirs));
    let plugin = registry.require(&backbone_name, PluginKind::BACKBONE)?;
    let tensors = weights(&weights_path, None)?;

    context::install(HostContext::new(Device::Cpu, 0));
    let result = (|| -> Result<(Tensor, Vec<String>)> {
        context::with(|c| -> Result<()> {
            for (name, t) in &tensors {
                c.store.set(&format!("embed.{name}"), t)?;
            }
            Ok(())
        })
        .context("no context")??;
        let r = (plugin.root.create())(config.as_str().into(), host_ops::table(), "embed".into());
        let instance = r
            .into_result()
            .map_err(|e| anyhow::anyhow!("backbone '{backbone_name}': {}", e.message))?;
        let geometry = (plugin.root.backbone_geometry())(instance)
            .into_result()
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let files = image_folder::list_images(&args.images)?;
        if files.is_empty() {
            bail!("no png/jpg images in '{}'", args.images.display());
        }
        let size = geometry.img_size as usize;
        let mut feats = Vec::new();
        for chunk in files.chunks(64) {
            let mut data = Vec::new();
            for f in chunk {
                let img = image_folder::load_image(f)?;
                data.extend(
                    normalize(
                        &image_folder::eval_transform(&img, size),
                        &IMAGENET_MEAN,
                        &IMAGENET_STD,
                    )
                    .data,
                );
            }
            let batch = registry::insert(Tensor::from_vec(
                data,
                (chunk.len(), 3, size, size),
                &Device::Cpu,
            )?);
            let opts = ForwardOpts {
                train: false,
                layers: false,
                attention: false,
                keep: ROption::RNone,
            };
            let out = grad::no_grad(|| (plugin.root.backbone_forward())(instance, batch, opts))
                .into_result();
            registry::remove(batch);
            let out = out.map_err(|e| {
                anyhow::anyhow!("backbone '{backbone_name}' forward: {}", e.message)
            })?;
            registry::remove(out.patches);
            let cls = registry::remove(out.cls).context("backbone returned an invalid handle")?;
            feats.push(cls.detach());
        }
        (plugin.root.destroy())(instance);
        let refs: Vec<&Tensor> = feats.iter().collect();
        let names = files.iter().map(|f| f.display().to_string()).collect();
        Ok((Tensor::cat(&refs, 0)?, names))
    })();
    context::take();
    let (features, names) = result?;
    let mut metadata = BTreeMap::new();
    metadata.insert("files".to_string(), serde_json::to_string(&names)?);
    metadata.insert("backbone".to_string(), backbone_name);
    let n = names.len();
    checkpoint::save(
        &args.out,
        &Checkpoint {
            tensors: vec![("features".into(), features)],
            metadata,
        },
    )?;
    println!(
        "wrote {} features of {} images to {}",
        n,
        n,
        args.out.display()
    );
    Ok(())
}
