/* What every kernel file uses: 64-bit lengths, the block size, and where a
   thread is (a flat index, or a plane and a position within it). */

typedef unsigned long long u64;
#define BLOCK 256

__device__ __forceinline__ u64 global_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

/* The LRN and max-pooling kernels work on whole planes (one channel of one
   image) and run one thread per value of each plane on a 2-D grid
   (`per_plane_value` on the host): blockIdx.x is the plane (image * channels +
   channel), blockIdx.y * blockDim.x + threadIdx.x the position within it. A
   flat 64-bit index would need 64-bit divisions to find these, which would cost
   more than everything else these kernels compute. */
__device__ __forceinline__ unsigned int plane_index() { return blockIdx.x; }
__device__ __forceinline__ int position_in_plane() { return blockIdx.y * blockDim.x + threadIdx.x; }
