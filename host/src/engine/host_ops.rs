//! The host op table: plugins' tensor operations executed with candle.
//!
//! Every function catches panics and returns an [`AbiError`]; a handle that does
//! not exist is an `INVALID_HANDLE` error. Session-bound functions (parameters,
//! state, random tensors, backbones) use this thread's [`context`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RErr, ROk, ROption, RResult, RSlice, RStr, RVec},
};
use candle_core::{DType, Tensor};
use patchwork_plugin_api::abi::{
    AbiError, Activation, AttentionOut, BackboneId, BackboneOut, BinaryOp, ConcatOp, CreateOp,
    DType as ADType, ErrorKind, ForwardOpts, Geometry, HOST_OP_LEVEL, HostOps, HostOpsRef, IndexOp,
    Init, LayoutOp, ReduceOp, ScalarOp, TensorId, UnaryOp,
};
use std::sync::OnceLock;

use super::{autocast, context, grad, nn_ops, ops, registry, store};

type R<T> = Result<T, AbiError>;

fn host_err(e: impl std::fmt::Display) -> AbiError {
    AbiError::new(ErrorKind::HOST, e.to_string())
}

fn run<T>(f: impl FnOnce() -> R<T>) -> RResult<T, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(_) => RErr(AbiError::new(ErrorKind::HOST, "host op panicked")),
    }
}

/// The tensor behind a handle; detached inside [`grad::no_grad`], so what an op makes
/// of it records no graph.
fn t(id: TensorId) -> R<Tensor> {
    let x = registry::get(id).ok_or_else(|| {
        AbiError::new(
            ErrorKind::INVALID_HANDLE,
            format!("no tensor with handle #{}", id.0),
        )
    })?;
    Ok(if grad::tracking() { x } else { x.detach() })
}

fn out(r: candle_core::Result<Tensor>) -> R<TensorId> {
    r.map(registry::insert).map_err(host_err)
}

fn unknown(op: &str, code: u32) -> AbiError {
    AbiError::new(
        ErrorKind::UNKNOWN_OP,
        format!("{op} code {code} is unknown to this host (op-table level {HOST_OP_LEVEL})"),
    )
}

/// Converts an ABI dtype code to candle's.
pub fn dtype_from_abi(d: ADType) -> R<DType> {
    Ok(match d {
        ADType::F32 => DType::F32,
        ADType::U32 => DType::U32,
        ADType::U8 => DType::U8,
        ADType::BF16 => DType::BF16,
        ADType::F16 => DType::F16,
        ADType::F64 => DType::F64,
        ADType::I64 => DType::I64,
        other => return Err(unknown("dtype", other.0)),
    })
}

fn dtype_to_abi(d: DType) -> ADType {
    match d {
        DType::F32 => ADType::F32,
        DType::U32 => ADType::U32,
        DType::U8 => ADType::U8,
        DType::BF16 => ADType::BF16,
        DType::F16 => ADType::F16,
        DType::F64 => ADType::F64,
        DType::I64 => ADType::I64,
        _ => ADType(u32::MAX),
    }
}

extern "C" fn tensor_clone(id: TensorId) -> RResult<TensorId, AbiError> {
    run(|| Ok(registry::insert(t(id)?)))
}

extern "C" fn tensor_drop(id: TensorId) {
    let _ = catch_unwind(|| registry::remove(id));
}

extern "C" fn tensor_shape(id: TensorId) -> RResult<RVec<usize>, AbiError> {
    run(|| Ok(t(id)?.dims().to_vec().into()))
}

extern "C" fn tensor_dtype(id: TensorId) -> RResult<ADType, AbiError> {
    run(|| Ok(dtype_to_abi(t(id)?.dtype())))
}

extern "C" fn unary(op: UnaryOp, id: TensorId) -> RResult<TensorId, AbiError> {
    run(|| {
        let x = t(id)?;
        let r = match op {
            UnaryOp::EXP => x.exp(),
            UnaryOp::LOG => x.log(),
            UnaryOp::SQRT => x.sqrt(),
            UnaryOp::SQR => x.sqr(),
            UnaryOp::ABS => x.abs(),
            UnaryOp::NEG => x.neg(),
            UnaryOp::RECIP => x.recip(),
            UnaryOp::TANH => x.tanh(),
            UnaryOp::RELU => x.relu(),
            UnaryOp::GELU => ops::gelu_erf(&x),
            UnaryOp::SIGMOID => x
                .neg()
                .and_then(|n| n.exp())
                .and_then(|e| e.affine(1.0, 1.0))
                .and_then(|d| d.recip()),
            UnaryOp::COS => x.cos(),
            UnaryOp::SIN => x.sin(),
            UnaryOp::SOFTMAX_LAST_DIM => ops::softmax_last_dim(&x),
            UnaryOp::LOG_SOFTMAX_LAST_DIM => ops::log_softmax_last_dim(&x),
            UnaryOp::DETACH => Ok(x.detach()),
            UnaryOp::CONTIGUOUS => x.contiguous(),
            UnaryOp::FLOOR => x.detach().floor(),
            UnaryOp::SILU => x.silu(),
            other => return Err(unknown("unary op", other.0)),
        };
        out(r)
    })
}

extern "C" fn binary(op: BinaryOp, a: TensorId, b: TensorId) -> RResult<TensorId, AbiError> {
    run(|| {
        let (a, b) = (t(a)?, t(b)?);
        let r = match op {
            BinaryOp::ADD => a.add(&b),
            BinaryOp::SUB => a.sub(&b),
            BinaryOp::MUL => a.mul(&b),
            BinaryOp::DIV => a.div(&b),
            BinaryOp::MAXIMUM => a.maximum(&b),
            BinaryOp::MINIMUM => a.minimum(&b),
            BinaryOp::BROADCAST_ADD => ops::broadcast_add(&a, &b),
            BinaryOp::BROADCAST_SUB => a.broadcast_sub(&b),
            BinaryOp::BROADCAST_MUL => a.broadcast_mul(&b),
            BinaryOp::BROADCAST_DIV => a.broadcast_div(&b),
            BinaryOp::MATMUL => autocast::matmul(&a, &b),
            BinaryOp::BROADCAST_MATMUL => autocast::broadcast_matmul(&a, &b),
            BinaryOp::BROADCAST_MAXIMUM => a.broadcast_maximum(&b),
            other => return Err(unknown("binary op", other.0)),
        };
        out(r)
    })
}

extern "C" fn scalar(op: ScalarOp, id: TensorId, a: f64, b: f64) -> RResult<TensorId, AbiError> {
    run(|| {
        let x = t(id)?;
        let r = match op {
            ScalarOp::AFFINE => x.affine(a, b),
            ScalarOp::POWF => x.powf(a),
            ScalarOp::CLAMP => x.clamp(a, b),
            ScalarOp::GE => x.detach().ge(a).and_then(|m| m.to_dtype(x.dtype())),
            ScalarOp::EQ => x.detach().eq(a).and_then(|m| m.to_dtype(x.dtype())),
            other => return Err(unknown("scalar op", other.0)),
        };
        out(r)
    })
}

extern "C" fn reduce(
    op: ReduceOp,
    id: TensorId,
    dims: RSlice<'_, usize>,
    keepdim: bool,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let x = t(id)?;
        let dims = dims.to_vec();
        let one = || -> R<usize> {
            match dims.as_slice() {
                [d] => Ok(*d),
                _ => Err(host_err(format!(
                    "{} takes exactly one dim, got {dims:?}",
                    op.name()
                ))),
            }
        };
        let r = match (op, keepdim) {
            (ReduceOp::SUM, true) => x.sum_keepdim(dims.clone()),
            (ReduceOp::SUM, false) => x.sum(dims.clone()),
            (ReduceOp::MEAN, true) => x.mean_keepdim(dims.clone()),
            (ReduceOp::MEAN, false) => x.mean(dims.clone()),
            (ReduceOp::MAX, true) => x.max_keepdim(one()?),
            (ReduceOp::MAX, false) => x.max(one()?),
            (ReduceOp::MIN, true) => x.min_keepdim(one()?),
            (ReduceOp::MIN, false) => x.min(one()?),
            (ReduceOp::ARGMAX, true) => x.argmax_keepdim(one()?),
            (ReduceOp::ARGMAX, false) => x.argmax(one()?),
            (other, _) => return Err(unknown("reduce op", other.0)),
        };
        out(r)
    })
}

extern "C" fn layout(
    op: LayoutOp,
    id: TensorId,
    args: RSlice<'_, usize>,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let x = t(id)?;
        let a = args.as_slice();
        let need = |n: usize| -> R<()> {
            if a.len() == n {
                Ok(())
            } else {
                Err(host_err(format!(
                    "{} takes {n} arguments, got {a:?}",
                    op.name()
                )))
            }
        };
        let r = match op {
            LayoutOp::RESHAPE => x.reshape(a.to_vec()),
            LayoutOp::TRANSPOSE => {
                need(2)?;
                x.transpose(a[0], a[1])
            }
            LayoutOp::PERMUTE => x.permute(a.to_vec()),
            LayoutOp::NARROW => {
                need(3)?;
                x.narrow(a[0], a[1], a[2])
            }
            LayoutOp::BROADCAST_AS => x.broadcast_as(a.to_vec()),
            LayoutOp::SQUEEZE => {
                need(1)?;
                x.squeeze(a[0])
            }
            LayoutOp::UNSQUEEZE => {
                need(1)?;
                x.unsqueeze(a[0])
            }
            LayoutOp::TO_DTYPE => {
                need(1)?;
                let code = u32::try_from(a[0]).map_err(host_err)?;
                x.to_dtype(dtype_from_abi(ADType(code))?)
            }
            LayoutOp::REPEAT => {
                need(2)?;
                let mut reps = vec![1; x.rank()];
                if a[0] >= reps.len() {
                    return Err(host_err(format!("repeat dim {} out of range", a[0])));
                }
                reps[a[0]] = a[1];
                x.repeat(reps)
            }
            other => return Err(unknown("layout op", other.0)),
        };
        out(r)
    })
}

extern "C" fn concat(
    op: ConcatOp,
    ids: RSlice<'_, TensorId>,
    dim: usize,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let ts = ids.iter().map(|id| t(*id)).collect::<R<Vec<_>>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        let r = match op {
            ConcatOp::CAT => Tensor::cat(&refs, dim),
            ConcatOp::STACK => Tensor::stack(&refs, dim),
            other => return Err(unknown("concat op", other.0)),
        };
        out(r)
    })
}

extern "C" fn index(
    op: IndexOp,
    x: TensorId,
    idx: TensorId,
    dim: usize,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let (x, idx) = (t(x)?, t(idx)?);
        let r = match op {
            IndexOp::INDEX_SELECT => x.index_select(&idx, dim),
            IndexOp::GATHER => x.gather(&idx.contiguous().map_err(host_err)?, dim),
            other => return Err(unknown("index op", other.0)),
        };
        out(r)
    })
}

extern "C" fn layer_norm(
    x: TensorId,
    w: TensorId,
    b: TensorId,
    eps: f64,
) -> RResult<TensorId, AbiError> {
    run(|| out(ops::layer_norm(&t(x)?, &t(w)?, &t(b)?, eps as f32)))
}

extern "C" fn conv2d(
    x: TensorId,
    w: TensorId,
    b: ROption<TensorId>,
    stride: usize,
    padding: usize,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let bias = match b.into_option() {
            Some(id) => Some(t(id)?),
            None => None,
        };
        out(nn_ops::conv2d(
            &t(x)?,
            &t(w)?,
            bias.as_ref(),
            stride,
            padding,
        ))
    })
}

extern "C" fn attention(
    q: TensorId,
    k: TensorId,
    v: TensorId,
    scale: f64,
    want: bool,
) -> RResult<AttentionOut, AbiError> {
    run(|| {
        let (q, k, v) = (t(q)?, t(k)?, t(v)?);
        attention_out(nn_ops::attention(&q, &k, &v, scale, want))
    })
}

extern "C" fn self_attention(
    qkv: TensorId,
    heads: usize,
    scale: f64,
    want: bool,
) -> RResult<AttentionOut, AbiError> {
    run(|| attention_out(nn_ops::self_attention(&t(qkv)?, heads, scale, want)))
}

/// An attention op's values and probabilities as registered handles.
fn attention_out(r: candle_core::Result<(Tensor, Option<Tensor>)>) -> R<AttentionOut> {
    let (o, p) = r.map_err(host_err)?;
    Ok(AttentionOut {
        out: registry::insert(o),
        probs: match p {
            Some(p) => ROption::RSome(registry::insert(p)),
            None => ROption::RNone,
        },
    })
}

extern "C" fn linear(
    x: TensorId,
    w: TensorId,
    b: ROption<TensorId>,
    act: Activation,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let act = match act {
            Activation::IDENTITY => ops::Activation::Identity,
            Activation::GELU => ops::Activation::Gelu,
            other => return Err(unknown("activation", other.0)),
        };
        let bias = match b.into_option() {
            Some(id) => Some(t(id)?),
            None => None,
        };
        out(ops::linear(&t(x)?, &t(w)?, bias.as_ref(), act))
    })
}

extern "C" fn grad_tracking(on: bool) -> bool {
    grad::set_tracking(on)
}

fn no_context() -> AbiError {
    AbiError::new(ErrorKind::HOST, "no session context on this thread")
}

extern "C" fn create(
    op: CreateOp,
    shape: RSlice<'_, usize>,
    dtype: ADType,
    a: f64,
    b: f64,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let dtype = dtype_from_abi(dtype)?;
        let shape = shape.to_vec();
        let device = context::device();
        let n: usize = shape.iter().product();
        let r = match op {
            CreateOp::ZEROS => Tensor::zeros(shape, dtype, &device),
            CreateOp::ONES => Tensor::ones(shape, dtype, &device),
            CreateOp::FULL => Tensor::ones(shape, DType::F32, &device)
                .and_then(|o| o.affine(a, 0.0))
                .and_then(|o| o.to_dtype(dtype)),
            CreateOp::ARANGE => Tensor::arange(0u32, n as u32, &device)
                .and_then(|o| o.reshape(shape))
                .and_then(|o| o.to_dtype(dtype)),
            CreateOp::RANDN | CreateOp::UNIFORM => {
                let values = context::with(|c| -> R<Vec<f32>> {
                    let init = if op == CreateOp::RANDN {
                        Init::normal(a, b)
                    } else {
                        Init::uniform(a, b)
                    };
                    store::init_values(init, n, &mut c.rng).map_err(host_err)
                })
                .ok_or_else(no_context)??;
                Tensor::from_vec(values, shape, &device).and_then(|o| o.to_dtype(dtype))
            }
            other => return Err(unknown("create op", other.0)),
        };
        out(r)
    })
}

/// A new tensor on this thread's device from host data.
fn upload<T: candle_core::WithDType>(data: &[T], shape: &[usize]) -> R<TensorId> {
    out(Tensor::from_slice(data, shape.to_vec(), &context::device()))
}

extern "C" fn from_f32(
    data: RSlice<'_, f32>,
    shape: RSlice<'_, usize>,
) -> RResult<TensorId, AbiError> {
    run(|| upload(data.as_slice(), shape.as_slice()))
}

extern "C" fn from_u32(
    data: RSlice<'_, u32>,
    shape: RSlice<'_, usize>,
) -> RResult<TensorId, AbiError> {
    run(|| upload(data.as_slice(), shape.as_slice()))
}

extern "C" fn to_vec_f32(id: TensorId) -> RResult<RVec<f32>, AbiError> {
    run(|| {
        let x = t(id)?
            .to_dtype(DType::F32)
            .and_then(|x| x.flatten_all())
            .map_err(host_err)?;
        Ok(x.to_vec1::<f32>().map_err(host_err)?.into())
    })
}

extern "C" fn to_vec_u32(id: TensorId) -> RResult<RVec<u32>, AbiError> {
    run(|| {
        let x = t(id)?
            .to_dtype(DType::U32)
            .and_then(|x| x.flatten_all())
            .map_err(host_err)?;
        Ok(x.to_vec1::<u32>().map_err(host_err)?.into())
    })
}

extern "C" fn param(
    name: RStr<'_>,
    shape: RSlice<'_, usize>,
    init: Init,
    trainable: bool,
) -> RResult<TensorId, AbiError> {
    run(|| {
        let t = context::with(|c| {
            let name = name.as_str();
            let Some(track) = c.reload.as_mut() else {
                return c
                    .store
                    .get_or_create(name, shape.as_slice(), init, trainable, &mut c.rng);
            };
            // Hot reload: record the name; a new shape replaces the old parameter.
            track.touched.insert(name.to_string());
            match c
                .store
                .get_or_create(name, shape.as_slice(), init, trainable, &mut c.rng)
            {
                Err(store::StoreError::ShapeMismatch { .. }) => {
                    track.reshaped.push(name.to_string());
                    c.store.remove(name);
                    c.store
                        .get_or_create(name, shape.as_slice(), init, trainable, &mut c.rng)
                }
                other => other,
            }
        })
        .ok_or_else(no_context)?
        .map_err(host_err)?;
        Ok(registry::insert(t))
    })
}

extern "C" fn state_get(name: RStr<'_>) -> RResult<ROption<TensorId>, AbiError> {
    run(|| {
        let t = context::with(|c| c.store.state(name.as_str()).cloned()).ok_or_else(no_context)?;
        Ok(t.map(registry::insert).into())
    })
}

extern "C" fn state_set(name: RStr<'_>, id: TensorId) -> RResult<(), AbiError> {
    run(|| {
        let value = t(id)?;
        context::with(|c| c.store.set_state(name.as_str(), &value)).ok_or_else(no_context)
    })
}

extern "C" fn copy_params(src: RStr<'_>, dst: RStr<'_>) -> RResult<u64, AbiError> {
    run(|| {
        context::with(|c| c.store.copy_prefix(src.as_str(), dst.as_str()))
            .ok_or_else(no_context)?
            .map_err(host_err)
    })
}

extern "C" fn ema_params(src: RStr<'_>, dst: RStr<'_>, m: f64) -> RResult<u64, AbiError> {
    run(|| {
        context::with(|c| c.store.ema_prefix(src.as_str(), dst.as_str(), m))
            .ok_or_else(no_context)?
            .map_err(host_err)
    })
}

extern "C" fn backbone_build(scope: RStr<'_>) -> RResult<BackboneId, AbiError> {
    run(|| {
        let source = context::with(|c| c.backbone.clone())
            .ok_or_else(no_context)?
            .ok_or_else(|| host_err("this session has no backbone plugin"))?;
        // Call into the backbone plugin outside the context borrow: it creates
        // parameters through this same table.
        let instance = (source.root.create())(source.config.as_str().into(), table(), scope)
            .into_result()
            .map_err(|e| AbiError {
                message: format!("backbone '{}': {}", source.name, e.message).into(),
                ..e
            })?;
        let id = context::with(|c| c.add_backbone(source.root, instance)).ok_or_else(no_context)?;
        Ok(BackboneId(id))
    })
}

extern "C" fn backbone_drop(id: BackboneId) {
    let _ = catch_unwind(|| {
        if let Some(Some((root, instance))) = context::with(|c| c.backbones.remove(&id.0)) {
            (root.destroy())(instance);
        }
    });
}

fn backbone(
    id: BackboneId,
) -> R<(
    patchwork_plugin_api::abi::PluginRootRef,
    patchwork_plugin_api::abi::InstanceId,
)> {
    context::with(|c| c.backbones.get(&id.0).copied())
        .ok_or_else(no_context)?
        .ok_or_else(|| AbiError::new(ErrorKind::INVALID_HANDLE, format!("no backbone #{}", id.0)))
}

extern "C" fn backbone_geometry(id: BackboneId) -> RResult<Geometry, AbiError> {
    run(|| {
        let (root, instance) = backbone(id)?;
        (root.backbone_geometry())(instance).into_result()
    })
}

extern "C" fn backbone_forward(
    id: BackboneId,
    images: TensorId,
    opts: ForwardOpts,
) -> RResult<BackboneOut, AbiError> {
    run(|| {
        let (root, instance) = backbone(id)?;
        (root.backbone_forward())(instance, images, opts).into_result()
    })
}

extern "C" fn log(level: u32, message: RStr<'_>) {
    let _ = catch_unwind(|| {
        let line = message.as_str().to_string();
        match level {
            0 => tracing::error!("{line}"),
            1 => tracing::warn!("{line}"),
            2 => tracing::info!("{line}"),
            _ => tracing::debug!("{line}"),
        }
        context::with(|c| c.logs.push(line));
    });
}

/// The op table handed to every plugin.
pub fn table() -> HostOpsRef {
    static TABLE: OnceLock<HostOpsRef> = OnceLock::new();
    *TABLE.get_or_init(|| {
        HostOps {
            level: HOST_OP_LEVEL,
            tensor_clone,
            tensor_drop,
            tensor_shape,
            tensor_dtype,
            unary,
            binary,
            scalar,
            reduce,
            layout,
            concat,
            index,
            layer_norm,
            conv2d,
            attention,
            create,
            from_f32,
            from_u32,
            to_vec_f32,
            to_vec_u32,
            param,
            state_get,
            state_set,
            copy_params,
            ema_params,
            backbone_build,
            backbone_drop,
            backbone_geometry,
            log,
            backbone_forward,
            linear,
            self_attention,
            grad_tracking,
        }
        .leak_into_prefix()
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Runs the op table's `linear` on registered handles and takes its output back.
    fn linear_of(x: TensorId, w: TensorId) -> Tensor {
        let id = linear(x, w, ROption::RNone, Activation::GELU)
            .into_result()
            .expect("linear should run");
        registry::remove(id).expect("output handle")
    }

    #[test]
    fn ops_inside_no_grad_record_no_graph_and_give_the_same_values() -> candle_core::Result<()> {
        let dev = &Device::Cpu;
        let w = Var::from_tensor(&Tensor::arange(0f32, 6.0, dev)?.reshape((3, 2))?)?;
        let x = registry::insert(Tensor::ones((4, 2), DType::F32, dev)?);
        let w_id = registry::insert(w.as_tensor().clone());
        let tracked = linear_of(x, w_id);
        let untracked = grad::no_grad(|| linear_of(x, w_id));
        let after = linear_of(x, w_id);
        registry::remove(x);
        registry::remove(w_id);
        assert!(tracked.track_op() && after.track_op());
        assert!(!untracked.track_op());
        assert_eq!(untracked.to_vec2::<f32>()?, tracked.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn a_plugins_no_grad_turns_tracking_off_and_restores_it() {
        let host = patchwork_plugin_api::Host::new(table());
        assert!(grad::tracking());
        let inside = host.no_grad(|| host.no_grad(grad::tracking) || grad::tracking());
        assert!(!inside);
        assert!(grad::tracking());
        let caught = catch_unwind(|| host.no_grad(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(grad::tracking(), "a panic inside no_grad left tracking off");
    }
}
