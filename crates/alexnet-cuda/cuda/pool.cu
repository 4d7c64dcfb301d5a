/* Max and average pooling (alexnet::layers::pool, cpu::reference *_pool_*). */

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
