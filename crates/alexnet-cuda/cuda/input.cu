/* The network's input cut on the device (alexnet::input). */

/* The network's input cut from stored images (alexnet::input::cut_view): view v,
   channel c, row y, column x is (pixel - mean + shift) * scale, the pixel read at
   (y0 + y, x0 + x) of stored image `image`, or at (y0 + y, x0 + crop_w - 1 - x)
   when reflected. place[4v..4v+4] = {image, y0, x0, flip}; shift[3v + c]. The
   mean (one value per stored byte) is read only when has_mean. */
extern "C" __global__ void cut_views(const unsigned char* pixels, const float* mean, int has_mean,
                                     const int* place, const float* shift, float* out,
                                     int channels, int height, int width, int crop_h, int crop_w,
                                     float s0, float s1, float s2, u64 len) {
    u64 i = global_index();
    if (i >= len) return;
    int x = (int)(i % crop_w);
    u64 rest = i / crop_w;
    int y = (int)(rest % crop_h);
    rest /= crop_h;
    int c = (int)(rest % channels);
    u64 v = rest / channels;
    const int* p = place + 4 * v;
    int sx = p[3] ? p[2] + crop_w - 1 - x : p[2] + x;
    u64 plane = (u64)height * width;
    u64 at = c * plane + (u64)(p[1] + y) * width + sx;
    float value = (float)pixels[(u64)p[0] * channels * plane + at];
    if (has_mean) value = value - mean[at];
    float scale = c == 0 ? s0 : (c == 1 ? s1 : s2);
    out[i] = (value + shift[3 * v + c]) * scale;
}
