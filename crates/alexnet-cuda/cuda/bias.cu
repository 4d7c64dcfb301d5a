/* The bias of convolutions and fully connected layers, whose products run in
   cuDNN and cuBLAS. */

/* y[img][c][p] += b[c]: convolution bias (plane = H*W) and linear bias (plane = 1);
   with rectify, then y = max(y, 0) (a convolution and its ReLU, as relu_forward
   computes it), so the ReLU needs no pass of its own. */
extern "C" __global__ void bias_add(float* y, const float* b, int channels, u64 plane,
                                    int rectify, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    float value = y[i] + b[(i / plane) % channels];
    y[i] = rectify ? fmaxf(value, 0.0f) : value;
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
