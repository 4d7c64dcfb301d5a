/* An LRN and the max pooling reading it, as one operation (alexnet::fusion,
   cpu::reference lrn_max_pool_*). Uses lrn.cu and pool.cu. */

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
