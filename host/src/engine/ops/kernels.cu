// CUDA kernels of the host's fused operations (f32), the counterparts of the CPU kernels
// in this folder; `build.rs` compiles this file to PTX when the `cuda` feature is on, and
// `cuda.rs` launches the kernels. Row kernels take one block per row; the block size is a
// multiple of 32 (at most 1024), chosen by the launcher from the row length.

#include <math_constants.h>

namespace {

// Sum of `v` over the block; every thread gets the total. `scratch` holds 32 floats.
__device__ float block_sum(float v, float *scratch) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    __syncthreads();  // `scratch` may still be read by a previous reduction
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    const unsigned warps = (blockDim.x + 31u) >> 5;
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Maximum of `v` over the block; every thread gets it.
__device__ float block_max(float v, float *scratch) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    const unsigned warps = (blockDim.x + 31u) >> 5;
    v = lane < warps ? scratch[lane] : -CUDART_INF_F;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Mean and reciprocal standard deviation (biased variance, `eps` added) of a row of
// `d` elements, read by the whole block; every thread gets both.
__device__ void row_moments(const float *xr, int d, float eps, float *scratch, float *mean,
                            float *rstd) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float m = block_sum(s, scratch) / d;
    float q = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float t = xr[j] - m;
        q += t * t;
    }
    *mean = m;
    *rstd = rsqrtf(block_sum(q, scratch) / d + eps);
}

}  // namespace

// Softmax (`log == 0`) or log-softmax (`log != 0`) of each row of `x` (`rows` × `d`).
extern "C" __global__ void pw_softmax_fwd(const float *x, float *y, int rows, int d, int log) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float *xr = x + (size_t)row * d;
    float *yr = y + (size_t)row * d;
    float m = -CUDART_INF_F;
    for (int j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, xr[j]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += expf(xr[j] - m);
    s = block_sum(s, scratch);
    if (log) {
        const float shift = m + logf(s);
        for (int j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] - shift;
    } else {
        const float inv = 1.0f / s;
        for (int j = threadIdx.x; j < d; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
    }
}

// Backward of `pw_softmax_fwd` from its output `y` and the output gradient `g`:
// softmax `dx = y * (g - sum(g * y))`, log-softmax `dx = g - exp(y) * sum(g)`.
extern "C" __global__ void pw_softmax_bwd(const float *y, const float *g, float *dx, int rows,
                                          int d, int log) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float *yr = y + (size_t)row * d;
    const float *gr = g + (size_t)row * d;
    float *dr = dx + (size_t)row * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += log ? gr[j] : gr[j] * yr[j];
    s = block_sum(s, scratch);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        dr[j] = log ? gr[j] - expf(yr[j]) * s : yr[j] * (gr[j] - s);
    }
}

// Layer norm of each row: `(x - mean) / sqrt(var + eps) * w + b`, biased variance.
extern "C" __global__ void pw_layer_norm_fwd(const float *x, const float *w, const float *b,
                                             float *y, int rows, int d, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float *xr = x + (size_t)row * d;
    float *yr = y + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, scratch, &mean, &rstd);
    for (int j = threadIdx.x; j < d; j += blockDim.x) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
}

// Backward of `pw_layer_norm_fwd` for the input: `dx` rows, and `gxhat = g * x_hat`, whose
// column sums are the weight gradient (the bias gradient is the column sums of `g`).
extern "C" __global__ void pw_layer_norm_bwd(const float *x, const float *w, const float *g,
                                             float *dx, float *gxhat, int rows, int d,
                                             float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float *xr = x + (size_t)row * d;
    const float *gr = g + (size_t)row * d;
    float *dr = dx + (size_t)row * d;
    float *hr = gxhat + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, scratch, &mean, &rstd);
    // mean(g * w) and mean(g * w * x_hat) over the row.
    float a = 0.0f, c = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float gw = gr[j] * w[j];
        a += gw;
        c += gw * (xr[j] - mean) * rstd;
    }
    a = block_sum(a, scratch) / d;
    c = block_sum(c, scratch) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float h = (xr[j] - mean) * rstd;
        dr[j] = rstd * (gr[j] * w[j] - a - h * c);
        hr[j] = gr[j] * h;
    }
}

// Exact GELU `x * Phi(x)`, element-wise.
extern "C" __global__ void pw_gelu_fwd(const float *x, float *y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = v * normcdff(v);
    }
}

// GELU backward: `dx = g * (Phi(x) + x * phi(x))`.
extern "C" __global__ void pw_gelu_bwd(const float *x, const float *g, float *dx, long long n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        const float density = inv_sqrt_2pi * expf(-0.5f * v * v);
        dx[i] = g[i] * (normcdff(v) + v * density);
    }
}

// `y = gelu(x + b)`, `b` (length `d`) broadcast over the rows of `x`.
extern "C" __global__ void pw_bias_gelu_fwd(const float *x, const float *b, float *y, long long n,
                                            int d) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i] + b[i % d];
        y[i] = v * normcdff(v);
    }
}

// bias+GELU backward: `dx = g * gelu'(x + b)`; the bias gradient is the column sums of `dx`.
extern "C" __global__ void pw_bias_gelu_bwd(const float *x, const float *b, const float *g,
                                            float *dx, long long n, int d) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i] + b[i % d];
        const float density = inv_sqrt_2pi * expf(-0.5f * v * v);
        dx[i] = g[i] * (normcdff(v) + v * density);
    }
}

// `y = x + b`, `b` (length `d`) broadcast over the rows of `x`.
extern "C" __global__ void pw_add_bias(const float *x, const float *b, float *y, long long n,
                                       int d) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = x[i] + b[i % d];
    }
}

// Column sums of `a` (`rows` × `d`), first stage: `partial[c][j]` sums column `j` over the
// rows of chunk `c` (`blockIdx.y`), `rows_per_chunk` rows each. A fixed chunking, so the
// result does not depend on scheduling.
extern "C" __global__ void pw_column_partials(const float *a, float *partial, int rows, int d,
                                              int rows_per_chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int chunk = blockIdx.y;
    const int start = chunk * rows_per_chunk;
    const int end = min(rows, start + rows_per_chunk);
    float s = 0.0f;
    for (int r = start; r < end; ++r) s += a[(size_t)r * d + j];
    partial[(size_t)chunk * d + j] = s;
}

// Column sums, second stage: `out[j] = sum over chunks of partial[c][j]`, in chunk order.
extern "C" __global__ void pw_column_finish(const float *partial, float *out, int chunks, int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; ++c) s += partial[(size_t)c * d + j];
    out[j] = s;
}

// Attention: softmax(q·kᵀ·scale)·v per (image, head), one warp per row of queries (or of
// keys, in the second backward kernel) and ATT_WARPS rows per block. q, k, v and the
// output gradient are (B, H, N, hd) operands with a contiguous last dimension and element
// strides (image, head, row) given per operand, so heads of a packed projection and
// transposed views are read where they lie. A warp keeps its row's N scores (and their
// gradients) in shared memory; the launcher checks they fit.

#define ATT_WARPS 4

namespace {

__device__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Dot product of `a` (shared memory) and `b` (global), `hd` elements, by one thread.
__device__ float dot_row(const float *a, const float *b, int hd) {
    float s = 0.0f;
    for (int d = 0; d < hd; ++d) s += a[d] * b[d];
    return s;
}

// The (image, head, row) a warp of an attention kernel works on: `row` counts rows
// within heads within images.
__device__ void attention_row(long long row, int h, int n, int *bi, int *hi, int *i) {
    *i = (int)(row % n);
    *hi = (int)((row / n) % h);
    *bi = (int)(row / ((long long)n * h));
}

// Strides of one (B, H, N, hd) operand.
struct Heads {
    const float *data;
    long long image, head, row;
    __device__ const float *at(int bi, int hi, int i) const {
        return data + bi * image + hi * head + i * row;
    }
};

// The unnormalised probabilities of query `qs` (in shared memory) over the `n` keys of
// head (bi, hi): ps[j] = exp(qs·k_j·scale − m), each lane its own j; every lane gets the
// row maximum `m` and the sum `l`.
__device__ void row_probabilities(const float *qs, const Heads &K, int bi, int hi, int n,
                                  int hd, float scale, float *ps, float *m, float *l) {
    const int lane = threadIdx.x & 31;
    float mx = -CUDART_INF_F;
    for (int j = lane; j < n; j += 32) {
        const float s = dot_row(qs, K.at(bi, hi, j), hd) * scale;
        ps[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float p = expf(ps[j] - mx);
        ps[j] = p;
        sum += p;
    }
    *m = mx;
    *l = warp_sum(sum);
}

}  // namespace

// Forward: `out` is (B, N, H, hd) contiguous. Shared memory: ATT_WARPS × (hd + n) floats.
extern "C" __global__ void pw_attention_fwd(const float *q, long long qb, long long qh,
                                            long long qn, const float *k, long long kb,
                                            long long kh, long long kn, const float *v,
                                            long long vb, long long vh, long long vn,
                                            float *out, int b, int h, int n, int hd,
                                            float scale) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * ATT_WARPS + warp;
    if (row >= (long long)b * h * n) return;  // whole warps leave; no block barrier follows
    int bi, hi, i;
    attention_row(row, h, n, &bi, &hi, &i);
    const Heads Q = {q, qb, qh, qn}, K = {k, kb, kh, kn}, V = {v, vb, vh, vn};
    float *qs = smem + warp * (hd + n);
    float *ps = qs + hd;
    const float *qr = Q.at(bi, hi, i);
    for (int d = lane; d < hd; d += 32) qs[d] = qr[d];
    __syncwarp();
    float m, l;
    row_probabilities(qs, K, bi, hi, n, hd, scale, ps, &m, &l);
    __syncwarp();
    const float inv = 1.0f / l;
    const float *vh0 = V.at(bi, hi, 0);
    float *orow = out + (((long long)bi * n + i) * h + hi) * hd;
    for (int d = lane; d < hd; d += 32) {
        float o = 0.0f;
        for (int j = 0; j < n; ++j) o += ps[j] * vh0[j * vn + d];
        orow[d] = o * inv;
    }
}

// A backward warp's scratch, its part of ATT_WARPS × 2(hd + n) shared floats: two rows
// of hd (`a`, `b`, filled with copies of `ar` and `br`), then two of n (`p`, `d`).
__device__ void stage_rows(float *smem, int warp, int lane, int hd, int n, const float *ar,
                           const float *br, float **a, float **b, float **p, float **d) {
    *a = smem + warp * 2 * (hd + n);
    *b = *a + hd;
    *p = *b + hd;
    *d = *p + n;
    for (int x = lane; x < hd; x += 32) {
        (*a)[x] = ar[x];
        (*b)[x] = br[x];
    }
    __syncwarp();
}

// Backward, first kernel (a warp per query row i): recomputes the row's probabilities P,
// then dP = dO·Vᵀ, D = rowsum(P ⊙ dP), dS = P ⊙ (dP − D)·scale and dQ = dS·K. Writes dQ
// at `grads + bi·g_image + g_offset + i·g_row + hi·hd` and the row's log-sum-exp and D to
// `stats` (2 floats per row) for the second kernel. Shared memory: ATT_WARPS × 2(hd + n).
extern "C" __global__ void pw_attention_bwd_q(
    const float *q, long long qb, long long qh, long long qn, const float *k, long long kb,
    long long kh, long long kn, const float *v, long long vb, long long vh, long long vn,
    const float *g, long long gb, long long gh, long long gn, float *grads, long long g_image,
    long long g_offset, long long g_row, float *stats, int b, int h, int n, int hd,
    float scale) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * ATT_WARPS + warp;
    if (row >= (long long)b * h * n) return;
    int bi, hi, i;
    attention_row(row, h, n, &bi, &hi, &i);
    const Heads Q = {q, qb, qh, qn}, K = {k, kb, kh, kn}, V = {v, vb, vh, vn}, G = {g, gb, gh, gn};
    float *qs, *gs, *ps, *ds;
    stage_rows(smem, warp, lane, hd, n, Q.at(bi, hi, i), G.at(bi, hi, i), &qs, &gs, &ps, &ds);
    float m, l;
    row_probabilities(qs, K, bi, hi, n, hd, scale, ps, &m, &l);
    const float inv = 1.0f / l;
    float dsum = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float p = ps[j] * inv;
        const float dp = dot_row(gs, V.at(bi, hi, j), hd);
        ps[j] = p;
        ds[j] = dp;
        dsum += p * dp;
    }
    dsum = warp_sum(dsum);
    for (int j = lane; j < n; j += 32) ds[j] = ps[j] * (ds[j] - dsum) * scale;
    __syncwarp();
    const float *kh0 = K.at(bi, hi, 0);
    float *dq = grads + bi * g_image + g_offset + i * g_row + hi * hd;
    for (int d = lane; d < hd; d += 32) {
        float acc = 0.0f;
        for (int j = 0; j < n; ++j) acc += ds[j] * kh0[j * kn + d];
        dq[d] = acc;
    }
    if (lane == 0) {
        stats[2 * row] = m + logf(l);
        stats[2 * row + 1] = dsum;
    }
}

// Backward, second kernel (a warp per key row j): with the first kernel's `stats`,
// P[i][j] = exp(q_i·k_j·scale − lse_i), dS[i][j] = P[i][j]·(dO_i·v_j − D_i)·scale, then
// dV_j = Σ_i P[i][j]·dO_i and dK_j = Σ_i dS[i][j]·q_i, written like dQ at the offsets
// `dk_offset` and `dv_offset`. Shared memory: ATT_WARPS × 2(hd + n).
extern "C" __global__ void pw_attention_bwd_kv(
    const float *q, long long qb, long long qh, long long qn, const float *k, long long kb,
    long long kh, long long kn, const float *v, long long vb, long long vh, long long vn,
    const float *g, long long gb, long long gh, long long gn, float *grads, long long g_image,
    long long dk_offset, long long dv_offset, long long g_row, const float *stats, int b, int h,
    int n, int hd, float scale) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * ATT_WARPS + warp;
    if (row >= (long long)b * h * n) return;
    int bi, hi, j;
    attention_row(row, h, n, &bi, &hi, &j);
    const Heads Q = {q, qb, qh, qn}, K = {k, kb, kh, kn}, V = {v, vb, vh, vn}, G = {g, gb, gh, gn};
    float *ks, *vs, *ps, *ds;
    stage_rows(smem, warp, lane, hd, n, K.at(bi, hi, j), V.at(bi, hi, j), &ks, &vs, &ps, &ds);
    const float *st = stats + 2 * ((long long)bi * h + hi) * n;
    for (int i = lane; i < n; i += 32) {
        const float p = expf(dot_row(ks, Q.at(bi, hi, i), hd) * scale - st[2 * i]);
        const float dp = dot_row(vs, G.at(bi, hi, i), hd);
        ps[i] = p;
        ds[i] = p * (dp - st[2 * i + 1]) * scale;
    }
    __syncwarp();
    const float *qh0 = Q.at(bi, hi, 0), *gh0 = G.at(bi, hi, 0);
    float *dk = grads + bi * g_image + dk_offset + j * g_row + hi * hd;
    float *dv = grads + bi * g_image + dv_offset + j * g_row + hi * hd;
    for (int d = lane; d < hd; d += 32) {
        float acc_k = 0.0f, acc_v = 0.0f;
        for (int i = 0; i < n; ++i) {
            acc_k += ds[i] * qh0[i * qn + d];
            acc_v += ps[i] * gh0[i * gn + d];
        }
        dk[d] = acc_k;
        dv[d] = acc_v;
    }
}
