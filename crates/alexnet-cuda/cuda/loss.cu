/* Softmax cross-entropy (cpu::reference softmax_cross_entropy). */

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
