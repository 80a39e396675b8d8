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
