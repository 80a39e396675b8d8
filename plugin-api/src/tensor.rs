//! [`Tensor`]: a handle to a host-owned tensor with candle-named methods, and
//! [`Host`], the entry point for constructors, parameters and state.

use abi_stable::std_types::{ROption, RSlice, RStr};

use crate::{
    Error, Result,
    abi::{
        Activation, AttentionOut, BinaryOp, ConcatOp, CreateOp, DType, HostOpsRef, IndexOp, Init,
        LayoutOp, ReduceOp, ScalarOp, TensorId, UnaryOp,
    },
    error::lift,
};

/// A dimension index: a plain `usize`, or [`D::Minus1`]/[`D::Minus2`] from the end.
pub trait Dim: Copy {
    /// The index for a tensor of rank `rank`.
    fn index(self, rank: usize) -> Result<usize>;
}

impl Dim for usize {
    fn index(self, rank: usize) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::Host(format!(
                "dim {self} out of range for rank {rank}"
            )))
        }
    }
}

/// Dimensions counted from the end, as candle's `D`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum D {
    /// The last dimension.
    Minus1,
    /// The one before the last.
    Minus2,
}

impl Dim for D {
    fn index(self, rank: usize) -> Result<usize> {
        let back = match self {
            D::Minus1 => 1,
            D::Minus2 => 2,
        };
        rank.checked_sub(back)
            .ok_or_else(|| Error::Host(format!("dim {self:?} out of range for rank {rank}")))
    }
}

/// The host's operations as seen by plugin code. Cheap to copy.
#[derive(Copy, Clone)]
pub struct Host {
    ops: HostOpsRef,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host(level {})", self.ops.level())
    }
}

impl Host {
    /// Wraps the op table the host passed to `create`.
    pub fn new(ops: HostOpsRef) -> Self {
        Self { ops }
    }

    /// The raw op table.
    pub fn ops(&self) -> HostOpsRef {
        self.ops
    }

    /// Takes ownership of a handle the host returned.
    pub fn wrap(&self, id: TensorId) -> Tensor {
        Tensor { id, host: *self }
    }

    /// The owned tensors of an attention op's answer.
    fn attention_out(&self, out: AttentionOut) -> (Tensor, Option<Tensor>) {
        let probs = match out.probs {
            ROption::RSome(id) => Some(self.wrap(id)),
            ROption::RNone => None,
        };
        (self.wrap(out.out), probs)
    }

    /// A new owned handle to a tensor someone else owns.
    pub fn borrow(&self, id: TensorId) -> Result<Tensor> {
        lift((self.ops.tensor_clone())(id)).map(|id| self.wrap(id))
    }

    /// Runs `f` without the host recording a graph for its ops, as PyTorch's
    /// `no_grad`: for what is never differentiated, such as a momentum teacher's
    /// forward, whose activations are then freed as soon as they are dropped. The
    /// previous setting is restored afterwards, also when `f` panics. On a host older
    /// than op level 3 it just runs `f`; the values are the same either way.
    pub fn no_grad<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Puts the host's previous setting back when dropped.
        struct Restore(extern "C" fn(bool) -> bool, bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                (self.0)(self.1);
            }
        }
        let Some(set) = self.ops.grad_tracking() else {
            return f();
        };
        let _restore = Restore(set, set(false));
        f()
    }

    fn create(
        &self,
        op: CreateOp,
        shape: &[usize],
        dtype: DType,
        a: f64,
        b: f64,
    ) -> Result<Tensor> {
        lift((self.ops.create())(
            op,
            RSlice::from_slice(shape),
            dtype,
            a,
            b,
        ))
        .map(|id| self.wrap(id))
    }

    /// `(shape)` zeros, f32.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.create(CreateOp::ZEROS, shape, DType::F32, 0.0, 0.0)
    }

    /// `(shape)` ones, f32.
    pub fn ones(&self, shape: &[usize]) -> Result<Tensor> {
        self.create(CreateOp::ONES, shape, DType::F32, 0.0, 0.0)
    }

    /// `(shape)` filled with `value`, f32.
    pub fn full(&self, shape: &[usize], value: f64) -> Result<Tensor> {
        self.create(CreateOp::FULL, shape, DType::F32, value, 0.0)
    }

    /// Normal samples from the session RNG.
    pub fn randn(&self, shape: &[usize], mean: f64, std: f64) -> Result<Tensor> {
        self.create(CreateOp::RANDN, shape, DType::F32, mean, std)
    }

    /// Uniform `[lo, hi)` samples from the session RNG.
    pub fn rand_uniform(&self, shape: &[usize], lo: f64, hi: f64) -> Result<Tensor> {
        self.create(CreateOp::UNIFORM, shape, DType::F32, lo, hi)
    }

    /// `0..n` as a `(n,)` tensor of `dtype`.
    pub fn arange(&self, n: usize, dtype: DType) -> Result<Tensor> {
        self.create(CreateOp::ARANGE, &[n], dtype, 0.0, 0.0)
    }

    /// A f32 tensor from data and a shape.
    pub fn from_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        lift((self.ops.from_f32())(
            RSlice::from_slice(data),
            RSlice::from_slice(shape),
        ))
        .map(|id| self.wrap(id))
    }

    /// A u32 tensor from data and a shape (indices).
    pub fn from_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        lift((self.ops.from_u32())(
            RSlice::from_slice(data),
            RSlice::from_slice(shape),
        ))
        .map(|id| self.wrap(id))
    }

    /// The named parameter, created with `init` the first time.
    pub fn param(
        &self,
        name: &str,
        shape: &[usize],
        init: Init,
        trainable: bool,
    ) -> Result<Tensor> {
        lift((self.ops.param())(
            RStr::from(name),
            RSlice::from_slice(shape),
            init,
            trainable,
        ))
        .map(|id| self.wrap(id))
    }

    /// A named state tensor saved in checkpoints, if set.
    pub fn state_get(&self, name: &str) -> Result<Option<Tensor>> {
        let got = lift((self.ops.state_get())(RStr::from(name)))?;
        Ok(match got {
            ROption::RSome(id) => Some(self.wrap(id)),
            ROption::RNone => None,
        })
    }

    /// Sets a named state tensor (stored detached, saved in checkpoints).
    pub fn state_set(&self, name: &str, value: &Tensor) -> Result<()> {
        lift((self.ops.state_set())(RStr::from(name), value.id))
    }

    /// Copies every parameter under `src.` onto `dst.`; returns how many.
    pub fn copy_params(&self, src: &str, dst: &str) -> Result<u64> {
        lift((self.ops.copy_params())(RStr::from(src), RStr::from(dst)))
    }

    /// `dst ← m·dst + (1−m)·src` for every parameter under both prefixes.
    pub fn ema_params(&self, src: &str, dst: &str, momentum: f64) -> Result<u64> {
        lift((self.ops.ema_params())(
            RStr::from(src),
            RStr::from(dst),
            momentum,
        ))
    }

    /// Writes an info line to the session log.
    pub fn log(&self, message: &str) {
        (self.ops.log())(2, RStr::from(message));
    }
}

/// A handle to a host-owned tensor. `Clone` and `Drop` call the host.
///
/// Methods mirror candle's names and shapes and return [`Result`].
pub struct Tensor {
    id: TensorId,
    host: Host,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(#{}, {:?})",
            self.id.0,
            self.dims().unwrap_or_default()
        )
    }
}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        // The host only refuses to clone a handle it does not know, which the safe
        // API never produces; a panic here is caught by the export macro.
        let id = lift((self.host.ops.tensor_clone())(self.id))
            .expect("host should clone a live tensor handle");
        self.host.wrap(id)
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        (self.host.ops.tensor_drop())(self.id);
    }
}

impl Tensor {
    /// The raw handle (still owned by `self`).
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// The host this tensor lives in.
    pub fn host(&self) -> Host {
        self.host
    }

    /// Gives the handle away without releasing it (the receiver must drop it).
    pub fn into_raw(self) -> TensorId {
        let id = self.id;
        std::mem::forget(self);
        id
    }

    fn wrap(
        &self,
        r: abi_stable::std_types::RResult<TensorId, crate::abi::AbiError>,
    ) -> Result<Tensor> {
        lift(r).map(|id| self.host.wrap(id))
    }

    // ---- queries --------------------------------------------------------------

    /// The shape.
    pub fn dims(&self) -> Result<Vec<usize>> {
        lift((self.host.ops.tensor_shape())(self.id)).map(|v| v.into_vec())
    }

    /// Size of one dimension.
    pub fn dim(&self, d: impl Dim) -> Result<usize> {
        let dims = self.dims()?;
        Ok(dims[d.index(dims.len())?])
    }

    /// Number of dimensions.
    pub fn rank(&self) -> Result<usize> {
        Ok(self.dims()?.len())
    }

    /// Element type.
    pub fn dtype(&self) -> Result<DType> {
        lift((self.host.ops.tensor_dtype())(self.id))
    }

    /// All elements as f32, row-major.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        lift((self.host.ops.to_vec_f32())(self.id)).map(|v| v.into_vec())
    }

    /// All elements as u32, row-major.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        lift((self.host.ops.to_vec_u32())(self.id)).map(|v| v.into_vec())
    }

    /// The single element of a one-element tensor.
    pub fn to_scalar_f32(&self) -> Result<f32> {
        let v = self.to_vec_f32()?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(Error::Host(format!(
                "expected one element, got {}",
                v.len()
            ))),
        }
    }

    // ---- element-wise ---------------------------------------------------------

    fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.wrap((self.host.ops.unary())(op, self.id))
    }

    /// e^x
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::EXP)
    }
    /// ln x
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::LOG)
    }
    /// √x
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SQRT)
    }
    /// x²
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SQR)
    }
    /// |x|
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::ABS)
    }
    /// −x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::NEG)
    }
    /// 1/x
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::RECIP)
    }
    /// tanh x
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::TANH)
    }
    /// max(x, 0)
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::RELU)
    }
    /// Exact (erf) GELU, fused in the host.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GELU)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SIGMOID)
    }
    /// x·σ(x)
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SILU)
    }
    /// cos x
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::COS)
    }
    /// sin x
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SIN)
    }
    /// ⌊x⌋ (no gradient).
    pub fn floor(&self) -> Result<Tensor> {
        self.unary(UnaryOp::FLOOR)
    }
    /// Softmax over the last dim (fused, with backward).
    pub fn softmax_last_dim(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SOFTMAX_LAST_DIM)
    }
    /// Log-softmax over the last dim.
    pub fn log_softmax_last_dim(&self) -> Result<Tensor> {
        self.unary(UnaryOp::LOG_SOFTMAX_LAST_DIM)
    }
    /// The same values cut from the autograd graph.
    pub fn detach(&self) -> Result<Tensor> {
        self.unary(UnaryOp::DETACH)
    }
    /// A contiguous copy (or the same tensor when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        self.unary(UnaryOp::CONTIGUOUS)
    }

    fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        self.wrap((self.host.ops.binary())(op, self.id, rhs.id))
    }

    /// a + b (same shape).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::ADD, rhs)
    }
    /// a − b (same shape).
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::SUB, rhs)
    }
    /// a · b (same shape).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::MUL, rhs)
    }
    /// a / b (same shape).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::DIV, rhs)
    }
    /// max(a, b) (same shape).
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::MAXIMUM, rhs)
    }
    /// min(a, b) (same shape).
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::MINIMUM, rhs)
    }
    /// Broadcasting a + b.
    pub fn broadcast_add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_ADD, rhs)
    }
    /// Broadcasting a − b.
    pub fn broadcast_sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_SUB, rhs)
    }
    /// Broadcasting a · b.
    pub fn broadcast_mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_MUL, rhs)
    }
    /// Broadcasting a / b.
    pub fn broadcast_div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_DIV, rhs)
    }
    /// Broadcasting max(a, b).
    pub fn broadcast_maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_MAXIMUM, rhs)
    }
    /// `(…, m, k) × (…, k, n) → (…, m, n)` with equal batch dims.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::MATMUL, rhs)
    }
    /// Like [`Tensor::matmul`] with broadcast batch dims.
    pub fn broadcast_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BROADCAST_MATMUL, rhs)
    }

    fn scalar(&self, op: ScalarOp, a: f64, b: f64) -> Result<Tensor> {
        self.wrap((self.host.ops.scalar())(op, self.id, a, b))
    }

    /// x·mul + add
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.scalar(ScalarOp::AFFINE, mul, add)
    }
    /// x^e
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.scalar(ScalarOp::POWF, e, 0.0)
    }
    /// clamp(x, lo, hi)
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.scalar(ScalarOp::CLAMP, lo, hi)
    }
    /// 1.0 where x ≥ v, else 0.0 (no gradient).
    pub fn ge(&self, v: f64) -> Result<Tensor> {
        self.scalar(ScalarOp::GE, v, 0.0)
    }
    /// 1.0 where x == v, else 0.0 (no gradient).
    pub fn eq_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar(ScalarOp::EQ, v, 0.0)
    }

    // ---- reductions -----------------------------------------------------------

    fn reduce(&self, op: ReduceOp, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.wrap((self.host.ops.reduce())(
            op,
            self.id,
            RSlice::from_slice(dims),
            keepdim,
        ))
    }

    fn one_dim(&self, d: impl Dim) -> Result<usize> {
        d.index(self.rank()?)
    }

    /// Σ over `d`, keeping it as size 1.
    pub fn sum_keepdim(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::SUM, &[self.one_dim(d)?], true)
    }
    /// Σ over `d`.
    pub fn sum(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::SUM, &[self.one_dim(d)?], false)
    }
    /// Σ over every element, as a scalar tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()?).collect();
        self.reduce(ReduceOp::SUM, &dims, false)
    }
    /// Mean over `d`, keeping it.
    pub fn mean_keepdim(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::MEAN, &[self.one_dim(d)?], true)
    }
    /// Mean over `d`.
    pub fn mean(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::MEAN, &[self.one_dim(d)?], false)
    }
    /// Mean of every element, as a scalar tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()?).collect();
        self.reduce(ReduceOp::MEAN, &dims, false)
    }
    /// Max over `d`, keeping it.
    pub fn max_keepdim(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::MAX, &[self.one_dim(d)?], true)
    }
    /// Max over `d`.
    pub fn max(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::MAX, &[self.one_dim(d)?], false)
    }
    /// Min over `d`.
    pub fn min(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::MIN, &[self.one_dim(d)?], false)
    }
    /// Index of the max over `d` (U32).
    pub fn argmax(&self, d: impl Dim) -> Result<Tensor> {
        self.reduce(ReduceOp::ARGMAX, &[self.one_dim(d)?], false)
    }

    // ---- layout ---------------------------------------------------------------

    fn layout(&self, op: LayoutOp, args: &[usize]) -> Result<Tensor> {
        self.wrap((self.host.ops.layout())(
            op,
            self.id,
            RSlice::from_slice(args),
        ))
    }

    /// The same elements in a new shape.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        self.layout(LayoutOp::RESHAPE, shape)
    }
    /// Swaps two dims.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let rank = self.rank()?;
        self.layout(LayoutOp::TRANSPOSE, &[d0.index(rank)?, d1.index(rank)?])
    }
    /// Swaps the last two dims.
    pub fn t(&self) -> Result<Tensor> {
        self.transpose(D::Minus2, D::Minus1)
    }
    /// Reorders dims.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        self.layout(LayoutOp::PERMUTE, dims)
    }
    /// `len` entries of `dim` from `start`.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let d = self.one_dim(dim)?;
        self.layout(LayoutOp::NARROW, &[d, start, len])
    }
    /// Broadcasts to `shape`.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        self.layout(LayoutOp::BROADCAST_AS, shape)
    }
    /// Drops a size-1 dim.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = self.one_dim(dim)?;
        self.layout(LayoutOp::SQUEEZE, &[d])
    }
    /// Inserts a size-1 dim at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        self.layout(LayoutOp::UNSQUEEZE, &[dim])
    }
    /// Repeats `repeats` times along `dim`.
    pub fn repeat_dim(&self, dim: usize, repeats: usize) -> Result<Tensor> {
        self.layout(LayoutOp::REPEAT, &[dim, repeats])
    }
    /// Converts the element type.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        self.layout(LayoutOp::TO_DTYPE, &[dtype.0 as usize])
    }
    /// Merges dims `from..` into one.
    pub fn flatten_from(&self, from: usize) -> Result<Tensor> {
        let dims = self.dims()?;
        if from >= dims.len() {
            return Err(Error::Host(format!(
                "flatten_from({from}) on rank {}",
                dims.len()
            )));
        }
        let mut shape = dims[..from].to_vec();
        shape.push(dims[from..].iter().product());
        self.reshape(&shape)
    }
    /// All elements as a 1-D tensor.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.flatten_from(0)
    }

    // ---- lists and indices ----------------------------------------------------

    fn concat(op: ConcatOp, tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::Host("cat/stack of no tensors".into()))?;
        let ids: Vec<TensorId> = tensors.iter().map(|t| t.id).collect();
        first.wrap((first.host.ops.concat())(op, RSlice::from_slice(&ids), dim))
    }

    /// Concatenates along `dim`.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        Self::concat(ConcatOp::CAT, tensors, dim)
    }
    /// Stacks along a new `dim`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        Self::concat(ConcatOp::STACK, tensors, dim)
    }
    /// Entries at 1-D U32 `indices` along `dim`.
    pub fn index_select(&self, indices: &Tensor, dim: usize) -> Result<Tensor> {
        self.wrap((self.host.ops.index())(
            IndexOp::INDEX_SELECT,
            self.id,
            indices.id,
            dim,
        ))
    }
    /// Gathers at U32 `indices` (same rank) along `dim`.
    pub fn gather(&self, indices: &Tensor, dim: usize) -> Result<Tensor> {
        self.wrap((self.host.ops.index())(
            IndexOp::GATHER,
            self.id,
            indices.id,
            dim,
        ))
    }

    // ---- fused nn ops ---------------------------------------------------------

    /// Layer norm over the last dim (fused, with backward).
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        self.wrap((self.host.ops.layer_norm())(
            self.id, weight.id, bias.id, eps,
        ))
    }

    /// `(B, C, H, W) ⊛ (O, C, k, k) → (B, O, H', W')`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let bias = match bias {
            Some(b) => ROption::RSome(b.id),
            None => ROption::RNone,
        };
        self.wrap((self.host.ops.conv2d())(
            self.id, weight.id, bias, stride, padding,
        ))
    }

    /// softmax(q·kᵀ·scale)·v for `(B, H, N, hd)` inputs; also the probabilities when asked.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let out = lift((q.host.ops.attention())(q.id, k.id, v.id, scale, probs))?;
        Ok(q.host.attention_out(out))
    }

    /// `act(self·Wᵀ + b)` over the last dimension: `self (…, in)`, `weight (out, in)`,
    /// `bias (out)` → `(…, out)`. One fused host op (level 2); on a level-1 host, the
    /// same layer from reshape, matmul, bias add and activation.
    pub fn linear(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        if let Some(linear) = self.host.ops.linear() {
            let bias = bias.map_or(ROption::RNone, |b| ROption::RSome(b.id));
            return self.wrap(linear(self.id, weight.id, bias, act));
        }
        let mut dims = self.dims()?;
        let in_dim = dims.pop().unwrap_or(1);
        let rows = dims.iter().product();
        let mut y = self.reshape(&[rows, in_dim])?.matmul(&weight.t()?)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        if act == Activation::GELU {
            y = y.gelu()?;
        } else if act != Activation::IDENTITY {
            return Err(Error::UnknownOp {
                op: format!("activation {}", act.0),
                needed: crate::abi::HOST_OP_LEVEL,
            });
        }
        dims.push(weight.dim(0)?);
        y.reshape(&dims)
    }

    /// Multi-head self-attention of a packed projection `qkv (B, N, 3·D)` (laid out
    /// `(B, N, 3, heads, D/heads)`, as DINO's qkv linear makes it): the heads' attended
    /// values merged back to `(B, N, D)`, and the probabilities `(B, heads, N, N)` when
    /// asked. One fused host op (level 2) whose gradient reaches `qkv` in one piece; on
    /// a level-1 host, head views and [`Tensor::attention`].
    pub fn self_attention(
        qkv: &Tensor,
        heads: usize,
        scale: f64,
        probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(attend) = qkv.host.ops.self_attention() {
            let out = lift(attend(qkv.id, heads, scale, probs))?;
            return Ok(qkv.host.attention_out(out));
        }
        let dims = qkv.dims()?;
        let &[b, n, d3] = dims.as_slice() else {
            return Err(Error::msg(format!(
                "self-attention expects a packed qkv (B, N, 3·D), got {dims:?}"
            )));
        };
        let d = d3 / 3;
        let parts = qkv
            .reshape(&[b, n, 3, heads, d / heads.max(1)])?
            .permute(&[2, 0, 3, 1, 4])?;
        let part = |i: usize| parts.narrow(0, i, 1)?.squeeze(0);
        let (out, p) = Tensor::attention(&part(0)?, &part(1)?, &part(2)?, scale, probs)?;
        Ok((out.transpose(1, 2)?.reshape(&[b, n, d])?, p))
    }

    // ---- compositions -----------------------------------------------------------

    /// `x / max(‖x‖₂, 1e-12)` along `d` (as `F.normalize`).
    pub fn l2_normalize(&self, d: impl Dim) -> Result<Tensor> {
        let norm = self.sqr()?.sum_keepdim(d)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        self.broadcast_div(&norm)
    }

    /// Applies a module: `xs.apply(&layer)`.
    pub fn apply<M: crate::nn::Module>(&self, m: &M) -> Result<Tensor> {
        m.forward(self)
    }
}
