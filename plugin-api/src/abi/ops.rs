//! The host op table: every tensor operation a plugin can ask of the host.
//!
//! Evolution rules: the table is an abi_stable prefix type. Fields up to the one
//! marked `last_prefix_field` exist in every host; fields added later go below it
//! and are read as `Option`. Op *codes* (the `u32` newtypes) are an open set: a host
//! answers a code it does not know with [`ErrorKind::UNKNOWN_OP`](super::ErrorKind).
//! Each code says the op-table level that introduced it; a plugin declares the
//! level it needs in its manifest and older hosts refuse it at load time.

use abi_stable::{
    StableAbi,
    std_types::{ROption, RResult, RSlice, RStr, RVec},
};

use super::AbiError;

/// The op-table level this version of the crate describes.
pub const HOST_OP_LEVEL: u32 = 3;

/// The level a plugin built with this crate needs: its level-2 calls (the fused
/// [`HostOps::linear`] and [`HostOps::self_attention`]) fall back to level-1 ops when
/// the host's table does not have them, and its level-3 call
/// ([`HostOps::grad_tracking`]) is skipped.
pub const REQUIRED_HOST_LEVEL: u32 = 1;

/// A tensor owned by the host. Whoever receives one from a call owns it and must
/// release it with `tensor_drop` (the safe [`crate::Tensor`] does this on `Drop`).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct TensorId(pub u64);

/// A backbone instance the host built for a pretext task.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct BackboneId(pub u64);

/// Element type of a tensor.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct DType(pub u32);

impl DType {
    /// 32-bit float, the compute type.
    pub const F32: Self = Self(0);
    /// 32-bit unsigned integer, for indices.
    pub const U32: Self = Self(1);
    /// 8-bit unsigned integer, for masks.
    pub const U8: Self = Self(2);
    /// 16-bit brain float.
    pub const BF16: Self = Self(3);
    /// 16-bit float.
    pub const F16: Self = Self(4);
    /// 64-bit float.
    pub const F64: Self = Self(5);
    /// 64-bit signed integer.
    pub const I64: Self = Self(6);
}

macro_rules! op_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$cmeta:meta])* $code:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub u32);

        impl $name {
            $($(#[$cmeta])* pub const $code: Self = Self($value);)*

            /// The code's name, for error messages.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => stringify!($code),)*
                    _ => "unknown",
                }
            }
        }
    };
}

op_codes! {
    /// Element-wise and row-wise single-input ops (level 1 unless noted).
    UnaryOp {
        /// e^x
        EXP = 0,
        /// ln x
        LOG = 1,
        /// √x
        SQRT = 2,
        /// x²
        SQR = 3,
        /// |x|
        ABS = 4,
        /// −x
        NEG = 5,
        /// 1/x
        RECIP = 6,
        /// tanh x
        TANH = 7,
        /// max(x, 0)
        RELU = 8,
        /// exact (erf) GELU, fused with its backward
        GELU = 9,
        /// 1/(1+e^−x)
        SIGMOID = 10,
        /// cos x
        COS = 11,
        /// sin x
        SIN = 12,
        /// softmax over the last dim, fused with its backward
        SOFTMAX_LAST_DIM = 13,
        /// log-softmax over the last dim
        LOG_SOFTMAX_LAST_DIM = 14,
        /// cut from the autograd graph
        DETACH = 15,
        /// copy into a contiguous layout
        CONTIGUOUS = 16,
        /// ⌊x⌋ (no gradient)
        FLOOR = 17,
        /// x·silu
        SILU = 18,
    }
}

op_codes! {
    /// The activation of the fused linear op (level 2).
    Activation {
        /// none: `x·Wᵀ + b`
        IDENTITY = 0,
        /// exact (erf) GELU
        GELU = 1,
    }
}

op_codes! {
    /// Two-input ops. `*_SAME` need equal shapes, `BROADCAST_*` broadcast.
    BinaryOp {
        /// a + b
        ADD = 0,
        /// a − b
        SUB = 1,
        /// a · b
        MUL = 2,
        /// a / b
        DIV = 3,
        /// max(a, b)
        MAXIMUM = 4,
        /// min(a, b)
        MINIMUM = 5,
        /// broadcasting a + b
        BROADCAST_ADD = 6,
        /// broadcasting a − b
        BROADCAST_SUB = 7,
        /// broadcasting a · b
        BROADCAST_MUL = 8,
        /// broadcasting a / b
        BROADCAST_DIV = 9,
        /// batched matrix product, candle semantics (batch dims equal)
        MATMUL = 10,
        /// batched matrix product with broadcast batch dims
        BROADCAST_MATMUL = 11,
        /// broadcasting max(a, b)
        BROADCAST_MAXIMUM = 12,
    }
}

op_codes! {
    /// Ops with two scalar arguments `a`, `b`.
    ScalarOp {
        /// x·a + b
        AFFINE = 0,
        /// x^a
        POWF = 1,
        /// clamp(x, a, b)
        CLAMP = 2,
        /// 1.0 where x ≥ a, else 0.0 (no gradient)
        GE = 3,
        /// 1.0 where x == a, else 0.0 (no gradient)
        EQ = 4,
    }
}

op_codes! {
    /// Reductions over a set of dims, with or without keeping them.
    ReduceOp {
        /// Σ
        SUM = 0,
        /// mean
        MEAN = 1,
        /// max (one dim)
        MAX = 2,
        /// min (one dim)
        MIN = 3,
        /// index of the max (one dim), as U32
        ARGMAX = 4,
    }
}

op_codes! {
    /// View and layout ops; the meaning of the `usize` arguments is per code.
    LayoutOp {
        /// args = new shape
        RESHAPE = 0,
        /// args = `[d0, d1]`
        TRANSPOSE = 1,
        /// args = permutation
        PERMUTE = 2,
        /// args = `[dim, start, len]`
        NARROW = 3,
        /// args = target shape
        BROADCAST_AS = 4,
        /// args = `[dim]`
        SQUEEZE = 5,
        /// args = `[dim]`
        UNSQUEEZE = 6,
        /// args = `[dtype code]`
        TO_DTYPE = 7,
        /// args = `[dim, repeats]`: repeat along `dim`
        REPEAT = 8,
    }
}

op_codes! {
    /// Ops over a list of tensors and a dim.
    ConcatOp {
        /// concatenate along `dim`
        CAT = 0,
        /// stack along a new `dim`
        STACK = 1,
    }
}

op_codes! {
    /// Ops that take a U32 index tensor and a dim.
    IndexOp {
        /// rows of `x` at `idx` (1-D) along `dim`
        INDEX_SELECT = 0,
        /// `x` gathered at `idx` (same rank) along `dim`
        GATHER = 1,
    }
}

op_codes! {
    /// Tensor constructors; `a`, `b` are per code.
    CreateOp {
        /// all zeros
        ZEROS = 0,
        /// all ones
        ONES = 1,
        /// normal(mean = a, std = b) from the session RNG
        RANDN = 2,
        /// uniform[a, b) from the session RNG
        UNIFORM = 3,
        /// 0, 1, ..., n−1 with n the element count
        ARANGE = 4,
        /// filled with a
        FULL = 5,
    }
}

op_codes! {
    /// How a named parameter is initialised the first time it is created.
    InitKind {
        /// zeros
        ZEROS = 0,
        /// ones
        ONES = 1,
        /// constant a
        CONST = 2,
        /// normal(mean a, std b)
        NORMAL = 3,
        /// truncated normal(std a) cut at ±2 (absolute), as timm's trunc_normal_
        TRUNC_NORMAL = 4,
        /// uniform[a, b)
        UNIFORM = 5,
    }
}

/// Parameter initialisation: a kind and its two scalars.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Debug)]
pub struct Init {
    /// Which distribution.
    pub kind: InitKind,
    /// First scalar (see [`InitKind`]).
    pub a: f64,
    /// Second scalar (see [`InitKind`]).
    pub b: f64,
}

/// What a backbone forward should compute besides CLS and patch tokens.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Debug)]
pub struct ForwardOpts {
    /// Training mode (stochastic depth on).
    pub train: bool,
    /// Also return every block's output.
    pub layers: bool,
    /// Also return the last block's attention `(B, heads, N+1, N+1)`.
    pub attention: bool,
    /// Patch indices to keep `(B, K)` (U32), for masked modeling.
    pub keep: ROption<TensorId>,
}

/// The result of a backbone forward; the receiver owns every handle.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct BackboneOut {
    /// `(B, D)` CLS token after the final norm.
    pub cls: TensorId,
    /// `(B, N, D)` patch tokens after the final norm.
    pub patches: TensorId,
    /// One `(B, N+1, D)` tensor per block, when asked.
    pub layers: RVec<TensorId>,
    /// Last block's attention, when asked.
    pub attention: ROption<TensorId>,
}

/// A backbone's shape facts.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug)]
pub struct Geometry {
    /// Input channels.
    pub in_chans: u32,
    /// Nominal input side in pixels.
    pub img_size: u32,
    /// Patch side in pixels.
    pub patch_size: u32,
    /// Token width.
    pub embed_dim: u32,
    /// Number of blocks.
    pub depth: u32,
    /// Attention heads.
    pub num_heads: u32,
}

/// Output of the fused attention op.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct AttentionOut {
    /// `(B, H, N, hd)` attended values.
    pub out: TensorId,
    /// `(B, H, N, N)` attention probabilities, when asked.
    pub probs: ROption<TensorId>,
}

/// The host's operations, passed to every plugin at `create`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostOpsRef)))]
pub struct HostOps {
    /// The op-table level this host implements.
    pub level: u32,
    /// A new handle to the same tensor.
    pub tensor_clone: extern "C" fn(TensorId) -> RResult<TensorId, AbiError>,
    /// Releases a handle.
    pub tensor_drop: extern "C" fn(TensorId),
    /// The tensor's shape.
    pub tensor_shape: extern "C" fn(TensorId) -> RResult<RVec<usize>, AbiError>,
    /// The tensor's element type.
    pub tensor_dtype: extern "C" fn(TensorId) -> RResult<DType, AbiError>,
    /// See [`UnaryOp`].
    pub unary: extern "C" fn(UnaryOp, TensorId) -> RResult<TensorId, AbiError>,
    /// See [`BinaryOp`].
    pub binary: extern "C" fn(BinaryOp, TensorId, TensorId) -> RResult<TensorId, AbiError>,
    /// See [`ScalarOp`].
    pub scalar: extern "C" fn(ScalarOp, TensorId, f64, f64) -> RResult<TensorId, AbiError>,
    /// See [`ReduceOp`]; `dims` sorted, `keepdim` keeps them as size 1.
    pub reduce:
        extern "C" fn(ReduceOp, TensorId, RSlice<'_, usize>, bool) -> RResult<TensorId, AbiError>,
    /// See [`LayoutOp`].
    pub layout: extern "C" fn(LayoutOp, TensorId, RSlice<'_, usize>) -> RResult<TensorId, AbiError>,
    /// See [`ConcatOp`].
    pub concat: extern "C" fn(ConcatOp, RSlice<'_, TensorId>, usize) -> RResult<TensorId, AbiError>,
    /// See [`IndexOp`]: `(x, idx, dim)`.
    pub index: extern "C" fn(IndexOp, TensorId, TensorId, usize) -> RResult<TensorId, AbiError>,
    /// Fused layer norm over the last dim: `(x, weight, bias, eps)`.
    pub layer_norm: extern "C" fn(TensorId, TensorId, TensorId, f64) -> RResult<TensorId, AbiError>,
    /// 2-D convolution `(x, weight, bias, stride, padding)`.
    pub conv2d: extern "C" fn(
        TensorId,
        TensorId,
        ROption<TensorId>,
        usize,
        usize,
    ) -> RResult<TensorId, AbiError>,
    /// softmax(q·kᵀ·scale)·v over `(B, H, N, hd)`, optionally returning the probabilities.
    pub attention:
        extern "C" fn(TensorId, TensorId, TensorId, f64, bool) -> RResult<AttentionOut, AbiError>,
    /// See [`CreateOp`]: `(op, shape, dtype, a, b)`.
    pub create:
        extern "C" fn(CreateOp, RSlice<'_, usize>, DType, f64, f64) -> RResult<TensorId, AbiError>,
    /// A tensor from f32 data and a shape.
    pub from_f32: extern "C" fn(RSlice<'_, f32>, RSlice<'_, usize>) -> RResult<TensorId, AbiError>,
    /// A tensor from u32 data and a shape.
    pub from_u32: extern "C" fn(RSlice<'_, u32>, RSlice<'_, usize>) -> RResult<TensorId, AbiError>,
    /// All elements as f32, row-major.
    pub to_vec_f32: extern "C" fn(TensorId) -> RResult<RVec<f32>, AbiError>,
    /// All elements as u32, row-major.
    pub to_vec_u32: extern "C" fn(TensorId) -> RResult<RVec<u32>, AbiError>,
    /// The named parameter, created with `init` the first time: `(name, shape, init, trainable)`.
    pub param:
        extern "C" fn(RStr<'_>, RSlice<'_, usize>, Init, bool) -> RResult<TensorId, AbiError>,
    /// A named state tensor saved in checkpoints (e.g. DINO's centre), if set.
    pub state_get: extern "C" fn(RStr<'_>) -> RResult<ROption<TensorId>, AbiError>,
    /// Sets a named state tensor (stored detached).
    pub state_set: extern "C" fn(RStr<'_>, TensorId) -> RResult<(), AbiError>,
    /// Copies every parameter under `src.` onto the same name under `dst.`; returns the count.
    pub copy_params: extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<u64, AbiError>,
    /// `dst ← m·dst + (1−m)·src` for every parameter under both prefixes; returns the count.
    pub ema_params: extern "C" fn(RStr<'_>, RStr<'_>, f64) -> RResult<u64, AbiError>,
    /// Builds the session's backbone with its parameters under `scope`.
    pub backbone_build: extern "C" fn(RStr<'_>) -> RResult<BackboneId, AbiError>,
    /// Releases a backbone built with `backbone_build`.
    pub backbone_drop: extern "C" fn(BackboneId),
    /// The backbone's geometry.
    pub backbone_geometry: extern "C" fn(BackboneId) -> RResult<Geometry, AbiError>,
    /// Writes a line to the session log at `level` (0 error .. 4 trace).
    pub log: extern "C" fn(u32, RStr<'_>),
    /// Runs the backbone on `(B, C, H, W)` images.
    ///
    /// Last field of the level-1 layout: fields added later go below and read as `Option`.
    #[sabi(last_prefix_field)]
    pub backbone_forward:
        extern "C" fn(BackboneId, TensorId, ForwardOpts) -> RResult<BackboneOut, AbiError>,
    /// Level 2: the fully connected layer `act(x·Wᵀ + b)` over the last dim of
    /// `x (…, in)` with `weight (out, in)`, as one op: `(x, weight, bias, act)`.
    pub linear: extern "C" fn(
        TensorId,
        TensorId,
        ROption<TensorId>,
        Activation,
    ) -> RResult<TensorId, AbiError>,
    /// Level 2: multi-head self-attention of a packed projection `qkv (B, N, 3·D)` (laid
    /// out `(B, N, 3, heads, D/heads)`, as DINO's qkv linear): `(qkv, heads, scale,
    /// probs)`. `out` is the heads' values merged back to `(B, N, D)`; `probs` as
    /// [`HostOps::attention`]'s.
    pub self_attention:
        extern "C" fn(TensorId, usize, f64, bool) -> RResult<AttentionOut, AbiError>,
    /// Level 3: whether this thread's ops record the graph a backward pass needs;
    /// sets it and returns the previous setting. Off, every op's inputs are taken
    /// detached (nothing computed is differentiated), as PyTorch's `no_grad`.
    pub grad_tracking: extern "C" fn(bool) -> bool,
}
