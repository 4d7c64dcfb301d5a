/* ReLU and tanh (alexnet::cpu::reference relu_*, tanh_*), and filling a buffer. */

extern "C" __global__ void fill(float* x, float value, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = value;
}

extern "C" __global__ void relu_forward(float* x, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = fmaxf(x[i], 0.0f);
}

/* The reference keeps the gradient where y > 0 (so NaN outputs keep theirs too). */
extern "C" __global__ void relu_backward(const float* y, float* d, u64 len) {
    u64 i = global_index();
    if (i < len && y[i] <= 0.0f) d[i] = 0.0f;
}

extern "C" __global__ void tanh_forward(float* x, u64 len) {
    u64 i = global_index();
    if (i < len) x[i] = tanhf(x[i]);
}

extern "C" __global__ void tanh_backward(const float* y, float* d, u64 len) {
    u64 i = global_index();
    if (i < len) d[i] = d[i] * (1.0f - y[i] * y[i]);
}
