//! The `dino` plugin: DINO (Caron et al., ICCV 2021) as implemented in
//! `patchwork-dino-core`, whose crate docs list what follows the paper and what
//! deviates.

pub use patchwork_dino_core::{Config, Dino};
use patchwork_plugin_api::export_pretext;

export_pretext!(
    Dino,
    name = "dino",
    description =
        "DINO self-distillation: multi-crop, centred and sharpened EMA teacher (Caron et al. 2021)"
);
