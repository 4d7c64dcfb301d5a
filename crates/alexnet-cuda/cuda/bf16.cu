/* bf16 mode's conversions (alexnet::cpu::fast::gemm_bf16 rounds the same way). */

/* The nearest bf16 (ties to even, as alexnet's CPU kernels round) of an f32, as
   its 16-bit pattern; NaN stays a quiet NaN (truncating alone could clear every
   mantissa bit and turn it into infinity). */
__device__ __forceinline__ unsigned short round_to_bf16(float value) {
    unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

__device__ __forceinline__ float widen_bf16(unsigned short value) {
    return __uint_as_float(((unsigned int)value) << 16);
}

/* bf16 mode, operands kept in the engine's layout: dst[i] = bf16(src[i]). */
extern "C" __global__ void f32_to_bf16(const float* src, unsigned short* dst, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    dst[i] = round_to_bf16(src[i]);
}

/* bf16 mode through cuDNN's fp32 algorithms on TF32 tensor cores: dst[i] = the
   f32 value of bf16(src[i]), which TF32 holds exactly, so the products are those
   of the bf16 operands. */
extern "C" __global__ void f32_round_to_bf16(const float* src, float* dst, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    dst[i] = widen_bf16(round_to_bf16(src[i]));
}

/* What happens to a bf16 result once it is widened to f32 (exact), before it is
   stored: added to what dst holds (accumulate: parameter gradients accumulate),
   or given its channel's bias (bias not null: a convolution's output) and then,
   with rectify, its ReLU, in the order and arithmetic of bias_add and
   relu_forward, so the output needs no further pass. */
struct Widening {
    const float* bias;
    int accumulate, rectify;
};

__device__ __forceinline__ float widened(Widening how, unsigned short value, int channel,
                                         float held) {
    float v = widen_bf16(value);
    if (how.accumulate) return held + v;
    if (how.bias == 0) return v;
    v = v + how.bias[channel];
    return how.rectify ? fmaxf(v, 0.0f) : v;
}

/* bf16 mode: a bf16 result back to f32 in the engine's layout (NCHW blocks of
   `channels` planes of `plane` values, which the bias needs), as Widening says. */
extern "C" __global__ void bf16_to_f32(const unsigned short* src, float* dst, const float* bias,
                                       int accumulate, int rectify, int channels, u64 plane,
                                       u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    Widening how = {bias, accumulate, rectify};
    int channel = bias ? (int)((i / plane) % (u64)channels) : 0;
    dst[i] = widened(how, src[i], channel, accumulate ? dst[i] : 0.0f);
}

/* bf16 mode with channels-last convolutions (NHWC). The engine keeps each image
   (or each filter) as [channels][plane] (NCHW; a filter's "plane" is its k x k
   window and its "channels" the inputs of its group); cuDNN's NHWC tensors hold it
   as [plane][channels]. These two kernels convert and transpose at once, one
   image at a time, through a tile of TILE planes positions x TILE channels in
   shared memory, so that reads and writes are both coalesced: the side laid out
   [channels][plane] moves rows of TILE consecutive positions, and the side laid
   out [plane][channels] moves the tile's positions as one run of consecutive
   values where the tile spans every channel (as it does for conv1's three), or
   as rows of its channels otherwise.

   Launch: grid (images, channel tiles, position tiles), block (TILE, TILE_ROWS):
   images take the grid's x, the one dimension with room for any batch.
   The tile holds 32-bit words, so that reading it down a column touches 33
   words apart and every thread of a warp a different bank. */
#define TILE 32
#define TILE_ROWS 8

struct TileSpan {
    u64 image;         /* the first value of this block's image */
    int p0, c0;        /* the tile's first position and channel */
    int positions, cs; /* how many of each the tile covers (the edges hold fewer) */
};

__device__ __forceinline__ TileSpan tile_span(int channels, int plane) {
    TileSpan s;
    s.image = (u64)blockIdx.x * (u64)channels * (u64)plane;
    s.p0 = blockIdx.z * TILE;
    s.c0 = blockIdx.y * TILE;
    s.positions = min(TILE, plane - s.p0);
    s.cs = min(TILE, channels - s.c0);
    return s;
}

/* dst (NHWC, bf16) = src (NCHW, f32) rounded as f32_to_bf16. */
extern "C" __global__ void f32_to_bf16_nhwc(const float* src, unsigned short* dst, int channels,
                                            int plane) {
    __shared__ unsigned int tile[TILE][TILE + 1];
    TileSpan s = tile_span(channels, plane);
    for (int c = threadIdx.y; c < s.cs; c += TILE_ROWS) {
        if ((int)threadIdx.x < s.positions) {
            u64 from = s.image + (u64)(s.c0 + c) * plane + s.p0 + threadIdx.x;
            tile[c][threadIdx.x] = round_to_bf16(src[from]);
        }
    }
    __syncthreads();
    int tid = threadIdx.y * TILE + threadIdx.x;
    for (int k = tid; k < s.positions * s.cs; k += TILE * TILE_ROWS) {
        int p = k / s.cs, c = k - p * s.cs;
        u64 to = s.image + (u64)(s.p0 + p) * channels + s.c0 + c;
        dst[to] = (unsigned short)tile[c][p];
    }
}

/* f32_to_bf16_nhwc for blocks of few channels (conv1's three input channels,
   and its filters'), where a tile would hold a few rows of 32 and leave most of
   its threads idle: one thread per NHWC value, in order, so the writes are one
   contiguous run and the reads `channels` interleaved runs. */
extern "C" __global__ void f32_to_bf16_nhwc_few(const float* src, unsigned short* dst,
                                                int channels, int plane, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    u64 per_image = (u64)channels * (u64)plane;
    u64 image = i / per_image;
    u64 within = i - image * per_image;
    u64 p = within / (u64)channels;
    u64 c = within - p * (u64)channels;
    dst[i] = round_to_bf16(src[image * per_image + c * (u64)plane + p]);
}

/* dst (NCHW, f32) = src (NHWC, bf16) widened, as Widening says. */
extern "C" __global__ void bf16_nhwc_to_f32(const unsigned short* src, float* dst, const float* bias,
                                            int accumulate, int rectify, int channels, int plane) {
    Widening how = {bias, accumulate, rectify};
    __shared__ unsigned int tile[TILE][TILE + 1];
    TileSpan s = tile_span(channels, plane);
    int tid = threadIdx.y * TILE + threadIdx.x;
    for (int k = tid; k < s.positions * s.cs; k += TILE * TILE_ROWS) {
        int p = k / s.cs, c = k - p * s.cs;
        u64 from = s.image + (u64)(s.p0 + p) * channels + s.c0 + c;
        tile[c][p] = src[from];
    }
    __syncthreads();
    for (int c = threadIdx.y; c < s.cs; c += TILE_ROWS) {
        if ((int)threadIdx.x < s.positions) {
            u64 to = s.image + (u64)(s.c0 + c) * plane + s.p0 + threadIdx.x;
            float held = accumulate ? dst[to] : 0.0f;
            dst[to] = widened(how, (unsigned short)tile[c][threadIdx.x], s.c0 + c, held);
        }
    }
}
