/* Dropout (alexnet::layers::dropout): its masks, and applying one. */

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

/* Dropout forward and backward: the mask already holds 0 or 1 / (1 - p). */
extern "C" __global__ void multiply(const float* a, const float* b, float* out, u64 len) {
    u64 i = global_index();
    if (i < len) out[i] = a[i] * b[i];
}
