//! Everything `#[repr(C)]` and `StableAbi`: the root module, the host op table,
//! handles and the error value. Only this module and its children use FFI types.

mod error;
mod ops;
mod root;

pub use error::{AbiError, ErrorKind, Location};
pub use ops::{
    Activation, AttentionOut, BackboneId, BackboneOut, BinaryOp, ConcatOp, CreateOp, DType,
    ForwardOpts, Geometry, HOST_OP_LEVEL, HostOps, HostOpsRef, IndexOp, Init, InitKind, LayoutOp,
    REQUIRED_HOST_LEVEL, ReduceOp, ScalarOp, TensorId, UnaryOp,
};
pub use root::{
    BatchAbi, InstanceId, Manifest, Metric, PluginKind, PluginRoot, PluginRootRef, StepInfo,
    StepOut, ViewSpec,
};
