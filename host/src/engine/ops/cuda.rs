//! The fused ops on CUDA: launches the kernels of `kernels.cu` (compiled to PTX by
//! `build.rs`, loaded once per device by candle) for the custom ops' `cuda_fwd`. Inputs
//! are contiguous f32 (the ops make them so); outputs are new buffers.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{Layout, Result, Shape, bail};

/// The kernels' PTX.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/patchwork_ops.ptx"));

/// The module name candle caches the loaded PTX under.
const MODULE: &str = "patchwork_ops";

/// Threads of an element-wise launch's blocks.
const ELEMENTWISE_THREADS: u32 = 256;

/// Rows of one chunk of the column-sum kernels' first stage.
const ROWS_PER_CHUNK: usize = 64;

/// The contiguous f32 data of a CUDA storage and its layout.
pub(super) fn view<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, f32>> {
    let slice = storage.as_cuda_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("{what} should be contiguous"),
    }
}

/// Wraps a result buffer as a storage of `dev`.
pub(super) fn storage(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// A custom op's `cuda_fwd` on one input: `kernel` on its data, the result of `shape`.
pub(super) fn run1(
    s: &CudaStorage,
    l: &Layout,
    what: &str,
    shape: Shape,
    kernel: impl FnOnce(&CudaDevice, &CudaView<'_, f32>) -> Result<CudaSlice<f32>>,
) -> Result<(CudaStorage, Shape)> {
    let out = kernel(&s.device, &view(s, l, what)?)?;
    Ok((storage(out, &s.device), shape))
}

/// A custom op's `cuda_fwd` on two inputs: `kernel` on their data, the result shaped as
/// the first input.
pub(super) fn run2(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    what: [&str; 2],
    kernel: impl FnOnce(&CudaDevice, &CudaView<'_, f32>, &CudaView<'_, f32>) -> Result<CudaSlice<f32>>,
) -> Result<(CudaStorage, Shape)> {
    let out = kernel(&s1.device, &view(s1, l1, what[0])?, &view(s2, l2, what[1])?)?;
    Ok((storage(out, &s1.device), l1.shape().clone()))
}

/// An uninitialised buffer of `len` floats that a kernel fills completely.
fn output(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every caller launches a kernel that writes each of the `len` elements
    // before the buffer is read.
    unsafe { dev.alloc::<f32>(len.max(1)) }
}

/// The row length `d` of a bias broadcast over `n` elements, as the kernels' `int`;
/// refuses a bias that does not divide them.
fn bias_rows(what: &str, n: usize, d: usize) -> Result<i32> {
    if d == 0 || !n.is_multiple_of(d) {
        bail!("{what}: bias length {d} does not divide the input's {n} elements");
    }
    int(d, "row length")
}

/// Length as the kernels' `int`, refusing tensors too large for it.
fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} exceeds i32")))
}

/// One block per row: threads a multiple of 32 covering the row, at most 1024.
fn row_config(rows: usize, d: usize) -> Result<LaunchConfig> {
    let threads = d.next_multiple_of(32).clamp(32, 1024) as u32;
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(rows.max(1))
                .map_err(|_| candle_core::Error::Msg(format!("{rows} rows exceed a grid")))?,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A grid-stride launch over `n` elements.
fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Softmax (or log-softmax) of each row of `d` elements.
pub(super) fn softmax(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    d: usize,
    log: bool,
) -> Result<CudaSlice<f32>> {
    let n = x.len();
    let rows = n / d.max(1);
    let y = output(dev, n)?;
    let (rows_i, d_i, log_i) = (int(rows, "rows")?, int(d, "row length")?, i32::from(log));
    let func = dev.get_or_load_custom_func("pw_softmax_fwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(&y).arg(&rows_i).arg(&d_i).arg(&log_i);
    // SAFETY: the arguments match the kernel's signature; `x` and `y` hold rows × d floats.
    unsafe { b.launch(row_config(rows, d)?) }.w()?;
    Ok(y)
}

/// Backward of [`softmax`] from its output `y` and the output gradient `g`.
pub(super) fn softmax_bwd(
    dev: &CudaDevice,
    y: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    d: usize,
    log: bool,
) -> Result<CudaSlice<f32>> {
    super::same_length("softmax", y.len(), g.len())?;
    let n = y.len();
    let rows = n / d.max(1);
    let dx = output(dev, n)?;
    let (rows_i, d_i, log_i) = (int(rows, "rows")?, int(d, "row length")?, i32::from(log));
    let func = dev.get_or_load_custom_func("pw_softmax_bwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(y).arg(g).arg(&dx).arg(&rows_i).arg(&d_i).arg(&log_i);
    // SAFETY: as in `softmax`; `g` has the length of `y`.
    unsafe { b.launch(row_config(rows, d)?) }.w()?;
    Ok(dx)
}

/// Layer norm of each row of `w.len()` elements.
pub(super) fn layer_norm(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    eps: f32,
) -> Result<CudaSlice<f32>> {
    let (n, d) = (x.len(), w.len());
    let rows = n / d.max(1);
    let y = output(dev, n)?;
    let (rows_i, d_i) = (int(rows, "rows")?, int(d, "row length")?);
    let func = dev.get_or_load_custom_func("pw_layer_norm_fwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x)
        .arg(w)
        .arg(bias)
        .arg(&y)
        .arg(&rows_i)
        .arg(&d_i)
        .arg(&eps);
    // SAFETY: the arguments match the kernel; `w` and `bias` hold d floats.
    unsafe { b.launch(row_config(rows, d)?) }.w()?;
    Ok(y)
}

/// Backward of [`layer_norm`]: `(rows + 2) × d` floats, the `dx` rows then the weight
/// and bias gradients (the CPU kernel's packing).
pub(super) fn layer_norm_bwd(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    eps: f32,
) -> Result<CudaSlice<f32>> {
    let (n, d) = (x.len(), w.len());
    let rows = n / d.max(1);
    let mut packed = output(dev, n + 2 * d)?;
    let gxhat = output(dev, n)?;
    let (rows_i, d_i) = (int(rows, "rows")?, int(d, "row length")?);
    {
        let func = dev.get_or_load_custom_func("pw_layer_norm_bwd", MODULE, PTX)?;
        let mut dx = packed.slice_mut(0..n);
        let mut b = func.builder();
        b.arg(x)
            .arg(w)
            .arg(g)
            .arg(&mut dx)
            .arg(&gxhat)
            .arg(&rows_i)
            .arg(&d_i)
            .arg(&eps);
        // SAFETY: the arguments match the kernel; `dx` and `gxhat` hold rows × d floats.
        unsafe { b.launch(row_config(rows, d)?) }.w()?;
    }
    column_sums_into(dev, &gxhat.slice(0..n), rows, d, &mut packed, n)?;
    column_sums_into(dev, g, rows, d, &mut packed, n + d)?;
    Ok(packed)
}

/// Exact GELU, element-wise.
pub(super) fn gelu(dev: &CudaDevice, x: &CudaView<'_, f32>) -> Result<CudaSlice<f32>> {
    let n = x.len();
    let y = output(dev, n)?;
    let n_i = n as i64;
    let func = dev.get_or_load_custom_func("pw_gelu_fwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(&y).arg(&n_i);
    // SAFETY: the arguments match the kernel; both buffers hold n floats.
    unsafe { b.launch(elementwise_config(n)) }.w()?;
    Ok(y)
}

/// GELU backward from the input `x` and the output gradient `g`.
pub(super) fn gelu_bwd(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    super::same_length("gelu", x.len(), g.len())?;
    let n = x.len();
    let dx = output(dev, n)?;
    let n_i = n as i64;
    let func = dev.get_or_load_custom_func("pw_gelu_bwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(g).arg(&dx).arg(&n_i);
    // SAFETY: the arguments match the kernel; all three buffers hold n floats.
    unsafe { b.launch(elementwise_config(n)) }.w()?;
    Ok(dx)
}

/// Launches `kernel(x, bias, y, n, d)`, an element-wise kernel of `x` and `bias` (length
/// `d`) broadcast over its rows (`pw_add_bias`: `x + bias`; `pw_bias_gelu_fwd`:
/// `gelu(x + bias)`), and returns `y`.
pub(super) fn bias_rows_kernel(
    dev: &CudaDevice,
    kernel: &str,
    what: &str,
    x: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    let (n, d) = (x.len(), bias.len());
    let d_i = bias_rows(what, n, d)?;
    let y = output(dev, n)?;
    let n_i = n as i64;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(bias).arg(&y).arg(&n_i).arg(&d_i);
    // SAFETY: both kernels take these arguments; `x` and `y` hold n floats, `bias` d.
    unsafe { b.launch(elementwise_config(n)) }.w()?;
    Ok(y)
}

/// bias+GELU backward: `g·gelu'(x + bias)` from the input, the bias and the output
/// gradient.
pub(super) fn bias_gelu_bwd(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    super::same_length("bias_gelu", x.len(), g.len())?;
    let (n, d) = (x.len(), bias.len());
    let d_i = bias_rows("bias_gelu", n, d)?;
    let dx = output(dev, n)?;
    let n_i = n as i64;
    let func = dev.get_or_load_custom_func("pw_bias_gelu_bwd", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(x).arg(bias).arg(g).arg(&dx).arg(&n_i).arg(&d_i);
    // SAFETY: the arguments match the kernel; `x`, `g` and `dx` hold n floats, `bias` d.
    unsafe { b.launch(elementwise_config(n)) }.w()?;
    Ok(dx)
}

/// Column sums of `a` (`rows` × `d`).
pub(super) fn column_sums(
    dev: &CudaDevice,
    a: &CudaView<'_, f32>,
    d: usize,
) -> Result<CudaSlice<f32>> {
    let rows = a.len() / d.max(1);
    let mut out = output(dev, d)?;
    column_sums_into(dev, a, rows, d, &mut out, 0)?;
    Ok(out)
}

/// Writes the column sums of `a` (`rows` × `d`) to `out[offset..offset + d]`, in two
/// deterministic stages (fixed row chunks, then the chunks in order).
fn column_sums_into(
    dev: &CudaDevice,
    a: &CudaView<'_, f32>,
    rows: usize,
    d: usize,
    out: &mut CudaSlice<f32>,
    offset: usize,
) -> Result<()> {
    if d == 0 {
        return Ok(());
    }
    let chunks = rows.div_ceil(ROWS_PER_CHUNK).max(1);
    let partial = output(dev, chunks * d)?;
    let (rows_i, d_i, per_i, chunks_i) = (
        int(rows, "rows")?,
        int(d, "row length")?,
        int(ROWS_PER_CHUNK, "chunk")?,
        int(chunks, "chunks")?,
    );
    let column_blocks = d.div_ceil(ELEMENTWISE_THREADS as usize) as u32;
    let first = dev.get_or_load_custom_func("pw_column_partials", MODULE, PTX)?;
    let mut b = first.builder();
    b.arg(a).arg(&partial).arg(&rows_i).arg(&d_i).arg(&per_i);
    let config = LaunchConfig {
        grid_dim: (
            column_blocks,
            u32::try_from(chunks)
                .map_err(|_| candle_core::Error::Msg(format!("{chunks} chunks exceed a grid")))?,
            1,
        ),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel; `partial` holds chunks × d floats, every
    // one written (an empty chunk writes 0).
    unsafe { b.launch(config) }.w()?;
    let second = dev.get_or_load_custom_func("pw_column_finish", MODULE, PTX)?;
    let mut target = out.slice_mut(offset..offset + d);
    let mut b = second.builder();
    b.arg(&partial).arg(&mut target).arg(&chunks_i).arg(&d_i);
    let config = LaunchConfig {
        grid_dim: (column_blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel; `target` holds d floats.
    unsafe { b.launch(config) }.w()?;
    Ok(())
}

/// Rows (of queries, or of keys) one attention block handles, a warp each: `ATT_WARPS`
/// in `kernels.cu`.
const ATTENTION_WARPS: usize = 4;

/// Shared memory a block may use without opting in to more.
const SHARED_BYTES: usize = 48 * 1024;

/// One `(B, H, N, hd)` operand of the attention kernels: its data from its first
/// element on and its image, head and row strides (its last dimension contiguous).
pub(super) struct HeadsView<'a> {
    data: CudaView<'a, f32>,
    strides: [i64; 3],
}

/// `layout` over `storage` as an attention operand; refuses a non-unit last stride.
pub(super) fn heads<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<HeadsView<'a>> {
    let slice = storage.as_cuda_slice::<f32>()?;
    match (layout.dims(), layout.stride()) {
        (&[_, _, _, _], &[sb, sh, sn, 1]) => Ok(HeadsView {
            data: slice.slice(layout.start_offset()..),
            strides: [sb as i64, sh as i64, sn as i64],
        }),
        (dims, stride) => bail!(
            "attention {what}: expected (B, H, N, hd) with a contiguous last dimension, \
             got shape {dims:?} strides {stride:?}"
        ),
    }
}

/// Part `part` (0 q, 1 k, 2 v) of a contiguous packed `(B, N, 3·D)` projection with
/// heads `hd` wide, as an attention operand.
pub(super) fn packed_heads<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    part: usize,
    hd: usize,
) -> Result<HeadsView<'a>> {
    let slice = storage.as_cuda_slice::<f32>()?;
    match (layout.dims(), layout.contiguous_offsets()) {
        (&[_, n, d3], Some((start, _))) => Ok(HeadsView {
            data: slice.slice(start + part * d3 / 3..),
            strides: [(n * d3) as i64, hd as i64, d3 as i64],
        }),
        (dims, _) => bail!("self-attention: expected a contiguous (B, N, 3·D), got {dims:?}"),
    }
}

/// A contiguous `(B, N, H, hd)` buffer (an output gradient) as an attention operand.
pub(super) fn merged_heads<'a>(
    data: CudaView<'a, f32>,
    (_, h, n, hd): (usize, usize, usize, usize),
) -> HeadsView<'a> {
    HeadsView {
        data,
        strides: [(n * h * hd) as i64, hd as i64, (h * hd) as i64],
    }
}

/// Whether the attention kernels' shared memory holds a row of `n` scores (and their
/// gradients) for heads `hd` wide; longer sequences take the composed ops.
pub(super) fn attention_fits(n: usize, hd: usize) -> bool {
    ATTENTION_WARPS * 2 * (hd + n) * size_of::<f32>() <= SHARED_BYTES
}

/// The launch of an attention kernel over `rows` rows with `floats` of shared memory
/// per warp.
fn attention_config(rows: usize, floats: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(rows.div_ceil(ATTENTION_WARPS).max(1))
        .map_err(|_| candle_core::Error::Msg(format!("{rows} attention rows exceed a grid")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (32 * ATTENTION_WARPS as u32, 1, 1),
        shared_mem_bytes: (ATTENTION_WARPS * floats * size_of::<f32>()) as u32,
    })
}

/// `(B, H, N, hd)` as the kernels' ints, refusing what does not fit them or their
/// shared memory.
fn attention_dims((b, h, n, hd): (usize, usize, usize, usize)) -> Result<[i32; 4]> {
    if !attention_fits(n, hd) {
        bail!("attention: {n} tokens of head width {hd} exceed the CUDA kernels' shared memory");
    }
    Ok([
        int(b, "batch")?,
        int(h, "heads")?,
        int(n, "tokens")?,
        int(hd, "head width")?,
    ])
}

/// Pushes each operand as the kernels take it: its data, then its three strides.
fn push_operands<'a, const N: usize>(
    builder: &mut LaunchArgs<'a>,
    operands: [&'a HeadsView<'_>; N],
) {
    for x in operands {
        builder
            .arg(&x.data)
            .arg(&x.strides[0])
            .arg(&x.strides[1])
            .arg(&x.strides[2]);
    }
}

/// Pushes what every attention kernel takes last: b, h, n, hd and the scale.
fn push_shape<'a>(builder: &mut LaunchArgs<'a>, shape: &'a [i32; 4], scale: &'a f32) {
    for x in shape {
        builder.arg(x);
    }
    builder.arg(scale);
}

/// `softmax(q·kᵀ·scale)·v` of `(B, H, N, hd)` operands, stored `(B, N, H, hd)`.
pub(super) fn attention(
    dev: &CudaDevice,
    [q, k, v]: &[HeadsView<'_>; 3],
    dims: (usize, usize, usize, usize),
    scale: f32,
) -> Result<CudaSlice<f32>> {
    let shape = attention_dims(dims)?;
    let (b, h, n, hd) = dims;
    let out = output(dev, b * n * h * hd)?;
    let func = dev.get_or_load_custom_func("pw_attention_fwd", MODULE, PTX)?;
    let mut builder = func.builder();
    push_operands(&mut builder, [q, k, v]);
    builder.arg(&out);
    push_shape(&mut builder, &shape, &scale);
    // SAFETY: the arguments match the kernel; each operand's strides keep its
    // `(B, H, N, hd)` elements inside its view (the op checked the layouts), `out` holds
    // B·N·H·hd floats, and the shared memory fits (`attention_dims`).
    unsafe { builder.launch(attention_config(b * h * n, hd + n)?) }.w()?;
    Ok(out)
}

/// The gradients of q, k and v given the output gradient `g`, written into one buffer
/// of `b · image` floats: image `bi`'s gradient of part `p` (0 q, 1 k, 2 v) at
/// `bi · image + offsets[p]`, its rows `row` apart and heads `hd` apart in a row.
pub(super) fn attention_bwd(
    dev: &CudaDevice,
    [q, k, v]: &[HeadsView<'_>; 3],
    g: &HeadsView<'_>,
    dims: (usize, usize, usize, usize),
    scale: f32,
    (image, offsets, row): (usize, [usize; 3], usize),
) -> Result<CudaSlice<f32>> {
    let shape = attention_dims(dims)?;
    let (b, h, n, hd) = dims;
    let rows = b * h * n;
    let grads = output(dev, b * image)?;
    let stats = output(dev, 2 * rows)?;
    let (image, row) = (image as i64, row as i64);
    let [oq, ok, ov] = offsets.map(|o| o as i64);
    let config = attention_config(rows, 2 * (hd + n))?;
    let first = dev.get_or_load_custom_func("pw_attention_bwd_q", MODULE, PTX)?;
    let mut builder = first.builder();
    push_operands(&mut builder, [q, k, v, g]);
    builder
        .arg(&grads)
        .arg(&image)
        .arg(&oq)
        .arg(&row)
        .arg(&stats);
    push_shape(&mut builder, &shape, &scale);
    // SAFETY: the arguments match the kernel; the operands are as in `attention`,
    // `grads` holds b · image floats and takes every dq at the slots given, `stats` holds
    // 2 floats per row and is written whole.
    unsafe { builder.launch(config) }.w()?;
    let second = dev.get_or_load_custom_func("pw_attention_bwd_kv", MODULE, PTX)?;
    let mut builder = second.builder();
    push_operands(&mut builder, [q, k, v, g]);
    builder
        .arg(&grads)
        .arg(&image)
        .arg(&ok)
        .arg(&ov)
        .arg(&row)
        .arg(&stats);
    push_shape(&mut builder, &shape, &scale);
    // SAFETY: as the first launch; this one reads `stats` (written by the first, on the
    // same stream) and writes every dk and dv.
    unsafe { builder.launch(config) }.w()?;
    Ok(grads)
}
