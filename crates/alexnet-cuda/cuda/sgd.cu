/* The SGD update (alexnet::optim, cpu::reference sgd_update). */

/* The paper's update: v <- momentum v - decay lr w - lr dw; w <- w + v. */
extern "C" __global__ void sgd_update(float* w, const float* dw, float* v, float lr,
                                      float momentum, float decay, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    float vi = momentum * v[i] - decay * lr * w[i] - lr * dw[i];
    v[i] = vi;
    w[i] = w[i] + vi;
}
