// Runs dwconv_wgrad + dwconv_wgrad_reduce (compiled with -D like NVRTC does) on random data and compares dW with a
// float64 reference; also runs it twice and requires bit-identical results.
// usage: emulate_wgrad N C H W splits seed      prints "max_rel" and exits 0 when max_rel <= 1e-5
#include "cuda_shim.h"
#define shared4 emulated_shared
#include KERNEL_FILE
#undef shared4
#include <random>
alignas(16) float4 emulated_shared[1 << 16];

static void run(const std::vector<float>& x, const std::vector<float>& g, std::vector<float>& dw, int N, int C, int H, int W, int S) {
    int wp = (W + 3) / 4 * 4;
    std::vector<float> partial((size_t)S * C * KS * KS, NAN);
    for (int c = 0; c < C; ++c)
        for (int s = 0; s < S; ++s) {
            blockIdx.x = c; blockIdx.y = s; blockIdx.z = 0;
            std::memset(emulated_shared, 0x7f, sizeof(emulated_shared));
            std::barrier bar(THREADS);
            g_barrier = &bar;
            std::vector<std::thread> threads;
            for (int t = 0; t < THREADS; ++t)
                threads.emplace_back([&, t] { threadIdx.x = t; threadIdx.y = 0; threadIdx.z = 0;
                    dwconv_wgrad(x.data(), g.data(), partial.data(), N, C, H, W, wp, S); });
            for (auto& t : threads) t.join();
        }
    int count = C * KS * KS;
    dw.assign(count, NAN);
    blockDim.x = 128;
    for (int b = 0; b < (count + 127) / 128; ++b) {
        blockIdx.x = b;
        for (int t = 0; t < 128; ++t) {
            threadIdx.x = t;
            dwconv_wgrad_reduce(partial.data(), dw.data(), count, S);
        }
    }
}

int main(int argc, char** argv) {
    if (argc < 7) return 2;
    int N = atoi(argv[1]), C = atoi(argv[2]), H = atoi(argv[3]), W = atoi(argv[4]), S = atoi(argv[5]);
    std::mt19937 rng((unsigned)atoi(argv[6]));
    std::uniform_real_distribution<float> d(-1, 1);
    std::vector<float> x((size_t)N * C * H * W), g((size_t)N * C * H * W);
    for (auto& v : x) v = d(rng);
    for (auto& v : g) v = d(rng);
    std::vector<float> dw1, dw2;
    run(x, g, dw1, N, C, H, W, S);
    run(x, g, dw2, N, C, H, W, S);
    double maxErr = 0, maxRef = 0;
    for (int c = 0; c < C; ++c)
        for (int ky = 0; ky < KS; ++ky)
            for (int kx = 0; kx < KS; ++kx) {
                double s = 0;
                for (int n = 0; n < N; ++n)
                    for (int y = 0; y < H; ++y)
                        for (int xx = 0; xx < W; ++xx) {
                            int iy = y + ky - KS / 2, ix = xx + kx - KS / 2;
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                s += (double)g[(((size_t)n * C + c) * H + y) * W + xx] * x[(((size_t)n * C + c) * H + iy) * W + ix];
                        }
                float o = dw1[((size_t)c * KS + ky) * KS + kx];
                if (std::isnan(o)) { printf("NaN at c=%d ky=%d kx=%d\n", c, ky, kx); return 1; }
                maxErr = std::max(maxErr, std::fabs(o - s));
                maxRef = std::max(maxRef, std::fabs(s));
            }
    bool identical = std::memcmp(dw1.data(), dw2.data(), dw1.size() * sizeof(float)) == 0;
    double rel = maxErr / (maxRef > 0 ? maxRef : 1);
    printf("%.3e %s\n", rel, identical ? "identical" : "DIFFERENT");
    return rel <= 1e-5 && identical ? 0 : 1;
}
