/* Local response normalisation (alexnet::layers::lrn, cpu::reference lrn_*). */

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
