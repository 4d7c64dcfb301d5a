/* bf16 mode's conversions (alexnet::cpu::fast::gemm_bf16 rounds the same way). */

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
