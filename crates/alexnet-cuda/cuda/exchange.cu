/* The paper's two towers exchanging gradients on the devices (alexnet::towers). */

/* dst row r += src row r, over `count` rows of `len` values each at the given
   offsets and strides (the towers' sum of gradient shares). */
extern "C" __global__ void add_rows(const float* src, u64 src_offset, u64 src_stride, float* dst,
                                    u64 dst_offset, u64 dst_stride, u64 len, u64 count) {
    u64 i = global_index();
    if (i >= len * count) return;
    u64 r = i / len, c = i - r * len;
    dst[dst_offset + r * dst_stride + c] += src[src_offset + r * src_stride + c];
}
