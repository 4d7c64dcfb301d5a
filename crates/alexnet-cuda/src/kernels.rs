//! The element-wise, normalisation, pooling, loss and update kernels, and the
//! f32/bf16 conversions of bf16 mode, as CUDA C compiled by NVRTC once when a
//! backend is created.
//!
//! Each kernel follows the loop of the same name in `alexnet::cpu::reference`,
//! in the same order of additions where that order is cheap to keep (pooling
//! gradients), so that the two agree to rounding. Where the reference scatters
//! (max and average pooling backward), the kernels gather instead: every input
//! position sums the outputs whose windows cover it. That needs no atomics,
//! gives the same sums in the same order, and so is deterministic.
//!
//! One thread per output value unless a kernel says otherwise; lengths are
//! 64-bit, geometry 32-bit. The LRN and max-pooling kernels index planes on a
//! 2-D grid instead of a flat length (see `plane_index` in [`SOURCE`]).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::error::CudaError;

/// Threads per block: exactly this many for the reductions, at most this many
/// for the kernels over planes.
pub(crate) const BLOCK: u32 = 256;

pub(crate) const SOURCE: &str = r#"
typedef unsigned long long u64;
#define BLOCK 256

__device__ __forceinline__ u64 global_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

extern "C" __global__ void fill(float* x, float value, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = value;
}

extern "C" __global__ void relu_forward(float* x, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = fmaxf(x[i], 0.0f);
}

/* The reference keeps the gradient where y > 0 (so NaN outputs keep theirs too). */
extern "C" __global__ void relu_backward(const float* y, float* d, u64 len) {
    u64 i = global_index();
    if (i < len && y[i] <= 0.0f) d[i] = 0.0f;
}

extern "C" __global__ void tanh_forward(float* x, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = tanhf(x[i]);
}

extern "C" __global__ void tanh_backward(const float* y, float* d, u64 len) {
    u64 i = global_index();
    if (i < len) d[i] = d[i] * (1.0f - y[i] * y[i]);
}

/* Dropout forward and backward: the mask already holds 0 or 1 / (1 - p). */
extern "C" __global__ void multiply(const float* a, const float* b, float* out, u64 len) {
    u64 i = global_index();
    if (i < len) out[i] = a[i] * b[i];
}

/* dst row r += src row r, over `count` rows of `len` values each at the given
   offsets and strides (the towers' sum of gradient shares). */
extern "C" __global__ void add_rows(const float* src, u64 src_offset, u64 src_stride, float* dst,
                                    u64 dst_offset, u64 dst_stride, u64 len, u64 count) {
    u64 i = global_index();
    if (i >= len * count) return;
    u64 r = i / len, c = i - r * len;
    dst[dst_offset + r * dst_stride + c] += src[src_offset + r * src_stride + c];
}

/* A dropout mask (alexnet::layers::dropout::fill_mask): value i is `keep` when the
   top 53 bits of value i of the SplitMix64 stream from `seed` reach `threshold`,
   else 0, so it equals the host's mask bit for bit. Unsigned arithmetic wraps as
   the host's wrapping operations do. */
extern "C" __global__ void dropout_mask(float* mask, u64 seed, u64 threshold, float keep,
                                        u64 offset, u64 stride, u64 len, u64 count) {
    u64 k = global_index();
    if (k >= len * count) return;
    /* Value k of the packed output is value i of the whole mask: column c of
       row r of the rows picked (a tower's share of each image). */
    u64 r = k / len, c = k - r * len;
    u64 i = offset + r * stride + c;
    u64 x = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x = x ^ (x >> 31);
    mask[k] = (x >> 11) >= threshold ? keep : 0.0f;
}

/* The network's input cut from stored images (alexnet::input::cut_view): view v,
   channel c, row y, column x is (pixel - mean + shift) * scale, the pixel read at
   (y0 + y, x0 + x) of stored image `image`, or at (y0 + y, x0 + crop_w - 1 - x)
   when reflected. place[4v..4v+4] = {image, y0, x0, flip}; shift[3v + c]. The
   mean (one value per stored byte) is read only when has_mean. */
extern "C" __global__ void cut_views(const unsigned char* pixels, const float* mean, int has_mean,
                                     const int* place, const float* shift, float* out,
                                     int channels, int height, int width, int crop_h, int crop_w,
                                     float s0, float s1, float s2, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    int x = (int)(i % crop_w);
    u64 rest = i / crop_w;
    int y = (int)(rest % crop_h);
    rest /= crop_h;
    int c = (int)(rest % channels);
    u64 v = rest / channels;
    const int* p = place + 4 * v;
    int sx = p[3] ? p[2] + crop_w - 1 - x : p[2] + x;
    u64 plane = (u64)height * width;
    u64 at = c * plane + (u64)(p[1] + y) * width + sx;
    float value = (float)pixels[(u64)p[0] * channels * plane + at];
    if (has_mean) value = value - mean[at];
    float scale = c == 0 ? s0 : (c == 1 ? s1 : s2);
    out[i] = (value + shift[3 * v + c]) * scale;
}

/* y[img][c][p] += b[c]: convolution bias (plane = H*W) and linear bias (plane = 1). */
extern "C" __global__ void bias_add(float* y, const float* b, int channels, u64 plane, u64 len) {
    u64 i = global_index();
    if (i < len) y[i] += b[(i / plane) % channels];
}

/* db[c] += sum over images and positions of dy[img][c][p]; one block per channel. */
extern "C" __global__ void bias_grad(const float* dy, float* db, int images, int channels, u64 plane) {
    __shared__ float partial[BLOCK];
    int c = blockIdx.x;
    u64 count = (u64)images * plane;
    float sum = 0.0f;
    for (u64 j = threadIdx.x; j < count; j += BLOCK) {
        u64 img = j / plane, p = j % plane;
        sum += dy[(img * channels + c) * plane + p];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[c] += partial[0];
}

/* The LRN and max-pooling kernels work on whole planes (one channel of one
   image) and run one thread per value of each plane on a 2-D grid
   (`per_plane_value` on the host): blockIdx.x is the plane (image * channels +
   channel), blockIdx.y * blockDim.x + threadIdx.x the position within it. A
   flat 64-bit index would need 64-bit divisions to find these, which would cost
   more than everything else these kernels compute. */
__device__ __forceinline__ unsigned int plane_index() { return blockIdx.x; }
__device__ __forceinline__ int position_in_plane() { return blockIdx.y * blockDim.x + threadIdx.x; }

/* The LRN window of channel c: the `size` channels centred on c, clipped to the
   block of `per_group` channels (the tower) that c belongs to. */
__device__ __forceinline__ void lrn_window(int c, int per_group, int size, int* lo, int* hi) {
    int start = c / per_group * per_group;
    int half = size / 2;
    *lo = max(c - half, start);
    *hi = min(c + half + 1, start + per_group);
}

/* s_c = k + alpha * sum over window(c) of a_j^2, at the pixel whose channel 0 is
   at `pixel`; a direct sum in the reference's order (a running sum along the
   channels would lose digits to cancellation). */
__device__ __forceinline__ float lrn_scale(const float* __restrict__ a, u64 pixel, int plane_len,
                                           int c, int per_group, int size, float alpha,
                                           float k) {
    int lo, hi;
    lrn_window(c, per_group, size, &lo, &hi);
    float sum = 0.0f;
    for (int j = lo; j < hi; ++j) {
        float v = a[pixel + (u64)j * plane_len];
        sum += v * v;
    }
    return k + alpha * sum;
}

/* The LRN's output at channel c of the pixel whose channel 0 is at `pixel`:
   a_c s_c^-beta. The unfused and fused forward passes share it, so they give the
   same values to the bit. */
__device__ __forceinline__ float lrn_value(const float* __restrict__ a, u64 pixel, int plane_len,
                                           int c, int per_group, int size, float alpha,
                                           float beta, float k) {
    float s = lrn_scale(a, pixel, plane_len, c, per_group, size, alpha, k);
    return a[pixel + (u64)c * plane_len] * powf(s, -beta);
}

extern "C" __global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ y,
                                       int channels, int per_group, int size, float alpha,
                                       float beta, float k, int plane_len) {
    int p = position_in_plane();
    if (p >= plane_len) return;
    unsigned int plane = plane_index();
    int c = (int)(plane % channels);
    u64 pixel = (u64)(plane - c) * plane_len + p;
    y[(u64)plane * plane_len + p] =
        lrn_value(x, pixel, plane_len, c, per_group, size, alpha, beta, k);
}

/* The LRN's backward pass, with g the gradient of its output and q = s^-beta:

     dx_m = g_m q_m - 2 alpha beta a_m sum_{i in window(m)} g_i a_i q_i / s_i

   (s^(-beta-1) = q / s), in two element-wise passes so that each value's s and q
   are computed once (one powf per value) rather than once per window holding it:
   the first (lrn_backward_terms, lrn_max_pool_backward_terms) writes g_m q_m to
   dx and the term t_m = g_m a_m q_m / s_m to `terms`; the second
   (lrn_backward_finish) subtracts 2 alpha beta a_m times the sum of the window's
   terms, added in the reference's order. */
__device__ __forceinline__ void lrn_backward_terms_at(const float* __restrict__ x, float g,
                                                      float* __restrict__ dx,
                                                      float* __restrict__ terms,
                                                      unsigned int plane, int p, int plane_len,
                                                      int channels, int per_group, int size,
                                                      float alpha, float beta, float k) {
    int c = (int)(plane % channels);
    u64 pixel = (u64)(plane - c) * plane_len + p;
    u64 i = (u64)plane * plane_len + p;
    float s = lrn_scale(x, pixel, plane_len, c, per_group, size, alpha, k);
    float q = powf(s, -beta);
    dx[i] = g * q;
    terms[i] = g * x[i] * q / s;
}

/* The first pass of the LRN's backward pass, from the gradient dy of its output. */
extern "C" __global__ void lrn_backward_terms(const float* __restrict__ x,
                                              const float* __restrict__ dy,
                                              float* __restrict__ dx, float* __restrict__ terms,
                                              int channels, int per_group, int size, float alpha,
                                              float beta, float k, int plane_len) {
    int p = position_in_plane();
    if (p >= plane_len) return;
    unsigned int plane = plane_index();
    float g = dy[(u64)plane * plane_len + p];
    lrn_backward_terms_at(x, g, dx, terms, plane, p, plane_len, channels, per_group, size, alpha,
                          beta, k);
}

/* The second pass: dx_m -= 2 alpha beta a_m sum_{i in window(m)} t_i (k unused,
   taken so that every LRN kernel takes the same arguments). */
extern "C" __global__ void lrn_backward_finish(const float* __restrict__ x,
                                               const float* __restrict__ terms,
                                               float* __restrict__ dx, int channels,
                                               int per_group, int size, float alpha, float beta,
                                               float k, int plane_len) {
    int p = position_in_plane();
    if (p >= plane_len) return;
    unsigned int plane = plane_index();
    int c = (int)(plane % channels);
    u64 pixel = (u64)(plane - c) * plane_len + p;
    u64 i = (u64)plane * plane_len + p;
    int lo, hi;
    lrn_window(c, per_group, size, &lo, &hi);
    float cross = 0.0f;
    for (int j = lo; j < hi; ++j) cross += terms[pixel + (u64)j * plane_len];
    dx[i] = dx[i] - 2.0f * alpha * beta * x[i] * cross;
}

/* The first largest value of output (oy, ox)'s window in row-major order (the
   tie rule every backend shares) goes to *largest; returns its position within
   the window, ky * size + kx. A NaN first value stays, later NaNs never win, as
   in the reference's `>` comparisons. */
__device__ __forceinline__ int window_argmax(const float* __restrict__ plane, int in_w, int oy,
                                             int ox, int size, int stride, float* largest) {
    const float* window = plane + oy * stride * in_w + ox * stride;
    float best = window[0];
    int best_at = 0;
    for (int ky = 0; ky < size; ++ky)
        for (int kx = 0; kx < size; ++kx) {
            float v = window[ky * in_w + kx];
            if (v > best) {
                best = v;
                best_at = ky * size + kx;
            }
        }
    *largest = best;
    return best_at;
}

/* One thread per output. Writes the largest value to y and its position within
   the window to `winners`, each only where given (not null): the forward pass
   wants the values, max_pool_backward the positions. */
extern "C" __global__ void max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                            int* __restrict__ winners, int in_h, int in_w,
                                            int out_h, int out_w, int size, int stride) {
    int p = position_in_plane();
    int out_len = out_h * out_w;
    if (p >= out_len) return;
    unsigned int plane = plane_index();
    const float* xp = x + (u64)plane * in_h * in_w;
    float largest;
    int best_at = window_argmax(xp, in_w, p / out_w, p % out_w, size, stride, &largest);
    u64 out = (u64)plane * out_len + p;
    if (y) y[out] = largest;
    if (winners) winners[out] = best_at;
}

/* The outputs whose windows cover input row (or column) `at`, inclusive. */
__device__ __forceinline__ void covering(int at, int size, int stride, int out, int* lo, int* hi) {
    *lo = at < size ? 0 : (at - size) / stride + 1;
    *hi = min(at / stride, out - 1);
}

/* The gradient of input (iy, ix) of one plane of a max pooling: the sum of the
   gradients dy of the outputs whose windows cover it and whose `winners` entry
   (the position within the window that output took its value from) is it. At
   most ceil(size / stride)^2 outputs, added in the order the reference's
   scatter adds them (row-major), so the sums are the same to the bit. Winner is
   int (plain max pooling) or unsigned char (the fused LRN + max pooling's
   record). */
template <typename Winner>
__device__ __forceinline__ float max_pool_gradient(const Winner* __restrict__ winners,
                                                   const float* __restrict__ dy, int iy, int ix,
                                                   int out_h, int out_w, int size, int stride) {
    int y_lo, y_hi, x_lo, x_hi;
    covering(iy, size, stride, out_h, &y_lo, &y_hi);
    covering(ix, size, stride, out_w, &x_lo, &x_hi);
    float sum = 0.0f;
    for (int oy = y_lo; oy <= y_hi; ++oy)
        for (int ox = x_lo; ox <= x_hi; ++ox) {
            int out = oy * out_w + ox;
            int here = (iy - oy * stride) * size + (ix - ox * stride);
            if ((int)winners[out] == here) sum += dy[out];
        }
    return sum;
}

/* One thread per input value, from the winners max_pool_forward recorded: a
   gather rather than the reference's scatter, so no atomics and a fixed order. */
extern "C" __global__ void max_pool_backward(const int* __restrict__ winners,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dx, int in_h, int in_w,
                                             int out_h, int out_w, int size, int stride) {
    int p = position_in_plane();
    int in_len = in_h * in_w;
    if (p >= in_len) return;
    unsigned int plane = plane_index();
    u64 outputs = (u64)plane * out_h * out_w;
    dx[(u64)plane * in_len + p] = max_pool_gradient(winners + outputs, dy + outputs, p / in_w,
                                                    p % in_w, out_h, out_w, size, stride);
}

/* The fused LRN + max pooling's forward pass, one thread per pooled output:
   the LRN's output of each value of the window is computed where it is needed
   (overlapping windows compute some twice), so it is never written nor read
   back. `record`, where given (not null), receives each output's winning
   position ky * size + kx in a byte (windows of at most 16x16, which
   alexnet::fusion sees to): byte i for output i of the batch. */
extern "C" __global__ void lrn_max_pool_forward(const float* __restrict__ x,
                                                float* __restrict__ y,
                                                unsigned char* __restrict__ record, int channels,
                                                int per_group, int lrn_size, float alpha,
                                                float beta, float k, int in_h, int in_w,
                                                int out_h, int out_w, int size, int stride) {
    int p = position_in_plane();
    int out_len = out_h * out_w;
    if (p >= out_len) return;
    unsigned int plane = plane_index();
    int c = (int)(plane % channels);
    int in_len = in_h * in_w;
    int oy = p / out_w, ox = p % out_w;
    /* Channel 0 of the window's top-left pixel. */
    u64 corner = (u64)(plane - c) * in_len + oy * stride * in_w + ox * stride;
    float best = 0.0f;
    int best_at = 0;
    for (int ky = 0; ky < size; ++ky)
        for (int kx = 0; kx < size; ++kx) {
            float z = lrn_value(x, corner + ky * in_w + kx, in_len, c, per_group, lrn_size, alpha,
                                beta, k);
            /* The first value always stands; after it, the max_pool_forward rule. */
            if ((ky == 0 && kx == 0) || z > best) {
                best = z;
                best_at = ky * size + kx;
            }
        }
    u64 out = (u64)plane * out_len + p;
    y[out] = best;
    if (record) record[out] = (unsigned char)best_at;
}

/* The first pass of the fused LRN + max pooling's backward pass (the second is
   lrn_backward_finish), one thread per LRN value: the gradient of the LRN's
   output there is gathered from the pooled gradient dy and the forward pass's
   record, then goes into lrn_backward_terms_at. Nothing of the forward pass is
   computed again. */
extern "C" __global__ void lrn_max_pool_backward_terms(const float* __restrict__ x,
                                                       const unsigned char* __restrict__ record,
                                                       const float* __restrict__ dy,
                                                       float* __restrict__ dx,
                                                       float* __restrict__ terms, int channels,
                                                       int per_group, int lrn_size, float alpha,
                                                       float beta, float k, int in_h, int in_w,
                                                       int out_h, int out_w, int size,
                                                       int stride) {
    int p = position_in_plane();
    int in_len = in_h * in_w;
    if (p >= in_len) return;
    unsigned int plane = plane_index();
    u64 outputs = (u64)plane * out_h * out_w;
    float g = max_pool_gradient(record + outputs, dy + outputs, p / in_w, p % in_w, out_h, out_w,
                                size, stride);
    lrn_backward_terms_at(x, g, dx, terms, plane, p, in_len, channels, per_group, lrn_size, alpha,
                          beta, k);
}

extern "C" __global__ void avg_pool_forward(const float* x, float* y, int in_h, int in_w,
                                            int out_h, int out_w, int size, int stride, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    int ox = (int)(i % out_w), oy = (int)((i / out_w) % out_h);
    const float* xp = x + (i / ((u64)out_w * out_h)) * in_h * in_w;
    float sum = 0.0f;
    for (int ky = 0; ky < size; ++ky)
        for (int kx = 0; kx < size; ++kx)
            sum += xp[(oy * stride + ky) * in_w + ox * stride + kx];
    y[i] = sum / (float)(size * size);
}

extern "C" __global__ void avg_pool_backward(const float* dy, float* dx, int in_h, int in_w,
                                             int out_h, int out_w, int size, int stride,
                                             u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    int ix = (int)(i % in_w), iy = (int)((i / in_w) % in_h);
    const float* dyp = dy + (i / ((u64)in_w * in_h)) * out_h * out_w;
    int y_lo, y_hi, x_lo, x_hi;
    covering(iy, size, stride, out_h, &y_lo, &y_hi);
    covering(ix, size, stride, out_w, &x_lo, &x_hi);
    float count = (float)(size * size);
    float sum = 0.0f;
    for (int oy = y_lo; oy <= y_hi; ++oy)
        for (int ox = x_lo; ox <= x_hi; ++ox)
            sum += dyp[oy * out_w + ox] / count;
    dx[i] = sum;
}

/* One block per image: the row's loss ln(sum) - (x_label - max) goes to row_loss
   (the host adds the rows), its gradient (softmax - onehot) / count to dlogits. */
extern "C" __global__ void softmax_xent(const float* logits, const unsigned int* labels,
                                        float* dlogits, float* row_loss, int classes,
                                        float count) {
    __shared__ float partial[BLOCK];
    const float* row = logits + (u64)blockIdx.x * classes;
    float* drow = dlogits + (u64)blockIdx.x * classes;

    float m = __int_as_float(0xff800000); /* -infinity: NVRTC has no math.h */
    for (int c = threadIdx.x; c < classes; c += BLOCK) m = fmaxf(m, row[c]);
    partial[threadIdx.x] = m;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + half]);
        __syncthreads();
    }
    float max_value = partial[0];
    __syncthreads();

    float s = 0.0f;
    for (int c = threadIdx.x; c < classes; c += BLOCK) s += expf(row[c] - max_value);
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    float sum = partial[0];

    int label = (int)labels[blockIdx.x];
    for (int c = threadIdx.x; c < classes; c += BLOCK) {
        float p = expf(row[c] - max_value) / sum;
        drow[c] = (p - (c == label ? 1.0f : 0.0f)) / count;
    }
    if (threadIdx.x == 0) row_loss[blockIdx.x] = logf(sum) - (row[label] - max_value);
}

/* bf16 mode: the nearest bf16 (ties to even, as alexnet's CPU kernels round) of
   each f32, as its 16-bit pattern; NaN stays a quiet NaN (truncating alone could
   clear every mantissa bit and turn it into infinity). */
extern "C" __global__ void f32_to_bf16(const float* src, unsigned short* dst, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    unsigned int bits = __float_as_uint(src[i]);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        dst[i] = (unsigned short)((bits >> 16) | 0x40u);
        return;
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    dst[i] = (unsigned short)(bits >> 16);
}

/* bf16 mode: a bf16 result back to f32 (exact), overwriting dst or, with
   accumulate, adding to it (parameter gradients accumulate). */
extern "C" __global__ void bf16_to_f32(const unsigned short* src, float* dst, int accumulate,
                                       u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    float value = __uint_as_float(((unsigned int)src[i]) << 16);
    dst[i] = accumulate ? dst[i] + value : value;
}

/* The paper's update: v <- momentum v - decay lr w - lr dw; w <- w + v. */
extern "C" __global__ void sgd_update(float* w, const float* dw, float* v, float lr,
                                      float momentum, float decay, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    float vi = momentum * v[i] - decay * lr * w[i] - lr * dw[i];
    v[i] = vi;
    w[i] = w[i] + vi;
}
"#;

/// The compiled kernels, one handle per entry point of [`SOURCE`].
pub(crate) struct Kernels {
    pub fill: CudaFunction,
    pub relu_forward: CudaFunction,
    pub relu_backward: CudaFunction,
    pub tanh_forward: CudaFunction,
    pub tanh_backward: CudaFunction,
    pub multiply: CudaFunction,
    pub add_rows: CudaFunction,
    pub dropout_mask: CudaFunction,
    pub cut_views: CudaFunction,
    pub bias_add: CudaFunction,
    pub bias_grad: CudaFunction,
    pub lrn_forward: CudaFunction,
    pub lrn_backward_terms: CudaFunction,
    pub lrn_backward_finish: CudaFunction,
    pub max_pool_forward: CudaFunction,
    pub max_pool_backward: CudaFunction,
    pub lrn_max_pool_forward: CudaFunction,
    pub lrn_max_pool_backward_terms: CudaFunction,
    pub avg_pool_forward: CudaFunction,
    pub avg_pool_backward: CudaFunction,
    pub softmax_xent: CudaFunction,
    pub sgd_update: CudaFunction,
    pub f32_to_bf16: CudaFunction,
    pub bf16_to_f32: CudaFunction,
}

/// Stack for the thread NVRTC runs on. A compiler may recurse deeply, and the
/// threads a backend is created on can be small (2 MiB for a test harness's or a
/// thread pool's), where an overflow inside a C++ library is a bare segmentation
/// fault rather than Rust's message.
const COMPILER_STACK_BYTES: usize = 64 << 20;

/// Compiles [`SOURCE`] to PTX for a virtual architecture (`compute_90`), or for
/// NVRTC's default one when `arch` is `None`, on a thread with a large stack.
/// Needs only the NVRTC library, no GPU.
pub(crate) fn compile(arch: Option<&str>) -> Result<Ptx, CudaError> {
    let arch = arch.map(str::to_owned);
    std::thread::Builder::new()
        .name("nvrtc".into())
        .stack_size(COMPILER_STACK_BYTES)
        .spawn(move || compile_here(arch.as_deref()))
        .map_err(|e| CudaError::Kernels(format!("could not start NVRTC's thread: {e}")))?
        .join()
        .map_err(|_| CudaError::Kernels("NVRTC's thread panicked".into()))?
}

/// [`compile`] on the calling thread.
fn compile_here(arch: Option<&str>) -> Result<Ptx, CudaError> {
    let options = CompileOptions {
        options: arch
            .map(|a| format!("--gpu-architecture={a}"))
            .into_iter()
            .collect(),
        name: Some("alexnet_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, options)
        .map_err(|e| CudaError::Kernels(format!("NVRTC could not compile the kernels: {e}")))
}

/// Compiles [`SOURCE`] for the device's compute capability and loads every kernel.
///
/// PTX for the device's own virtual architecture lets the driver JIT the best code
/// for it; should this NVRTC not know that architecture (a GPU newer than the
/// toolkit), NVRTC's default target is tried, which any newer device can still run.
pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, CudaError> {
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| CudaError::call("reading the compute capability", e))?;
    let ptx = match compile(Some(&format!("compute_{major}{minor}"))) {
        Ok(ptx) => ptx,
        Err(first) => compile(None).map_err(|_| first)?,
    };
    let module: Arc<CudaModule> = ctx
        .load_module(ptx)
        .map_err(|e| CudaError::call("loading the compiled kernels", e))?;
    let f = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| CudaError::call(&format!("finding kernel {name}"), e))
    };
    Ok(Kernels {
        fill: f("fill")?,
        relu_forward: f("relu_forward")?,
        relu_backward: f("relu_backward")?,
        tanh_forward: f("tanh_forward")?,
        tanh_backward: f("tanh_backward")?,
        multiply: f("multiply")?,
        add_rows: f("add_rows")?,
        dropout_mask: f("dropout_mask")?,
        cut_views: f("cut_views")?,
        bias_add: f("bias_add")?,
        bias_grad: f("bias_grad")?,
        lrn_forward: f("lrn_forward")?,
        lrn_backward_terms: f("lrn_backward_terms")?,
        lrn_backward_finish: f("lrn_backward_finish")?,
        max_pool_forward: f("max_pool_forward")?,
        max_pool_backward: f("max_pool_backward")?,
        lrn_max_pool_forward: f("lrn_max_pool_forward")?,
        lrn_max_pool_backward_terms: f("lrn_max_pool_backward_terms")?,
        avg_pool_forward: f("avg_pool_forward")?,
        avg_pool_backward: f("avg_pool_backward")?,
        softmax_xent: f("softmax_xent")?,
        sgd_update: f("sgd_update")?,
        f32_to_bf16: f("f32_to_bf16")?,
        bf16_to_f32: f("bf16_to_f32")?,
    })
}
