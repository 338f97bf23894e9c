// Shared declarations between the kernel sources (*.cu) and the operator binding (ops.cpp).
//
// Kept free of ATen/torch headers on purpose: the .cu files only need plain structs,
// which keeps their compile time short and lets each be compiled on its own.
#pragma once

#include <cstdint>

#ifdef CSG_EMULATE_CUDA
#include "emulate.h"  // test-only: the kernels run on the CPU (see emulate.h)
#define CSG_LAUNCH(kernel, grid, block, stream, ...) ::csg_emulate::launch(kernel, grid, block, __VA_ARGS__)
#else
#include <cuda_runtime_api.h>
// Launches a __global__ function (pointer) and returns the launch error.
#define CSG_LAUNCH(kernel, grid, block, stream, ...) \
    ((kernel)<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__), cudaGetLastError())
#endif

namespace cartoon_stylegan {

// Element types the kernels are instantiated for. The accumulation type is float
// for everything except double.
enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2, kDouble = 3 };

// Activation ids; the Python side (the cuda_id of each entry of bias_act.ACTIVATIONS) uses the same numbers.
enum Act : int { kLinear = 1, kRelu = 2, kLrelu = 3, kTanh = 4, kSigmoid = 5 };

//------------------------------------------------------------------------------
// fused bias + activation + gain + clamp
//
// mode 0 (forward):   out = clamp(act(x + b) * gain)
// mode 1 (gradient):  out = x * act'(s) * gain, zero where the forward output was clamped;
//                     x is the incoming gradient, act'(s) is recovered from the forward
//                     output y (every supported activation has a derivative that is a
//                     function of its output), so the pre-activation is never stored.
// mode 2 (gradient of mode 1 with respect to the pre-activation, for tanh/sigmoid):
//                     out = x * act''(s) * gain * dy
// The mode-1 output is linear in x, so its gradient with respect to x is mode 1 again;
// this is what makes second-order gradients (R1, path length) cheap.

struct BiasActParams {
    const void* x;      // mode 0: input; modes 1 and 2: incoming gradient
    const void* b;      // mode 0: bias of length size_b, or nullptr
    const void* y;      // modes 1 and 2: forward output
    const void* dy;     // mode 2: the first-order incoming gradient
    void* out;
    int64_t n;          // number of elements (all tensors share one dense memory layout)
    int64_t step_b;     // memory stride of the bias dimension
    int64_t size_b;     // length of the bias dimension
    double alpha;
    double gain;
    double clamp;       // < 0: no clamping
    int act;            // Act
    int mode;           // 0, 1, 2
};

// Launches on `stream`. Returns cudaErrorInvalidValue for an unsupported act/mode pair.
cudaError_t launch_bias_act(const BiasActParams& p, DType dtype, bool vectorized, cudaStream_t stream);

//------------------------------------------------------------------------------
// upfirdn2d: upsample by zero insertion, pad, convolve with a FIR filter, downsample.
//
// The output pixel o (per axis) reads the upsampled-and-padded signal at o*down - pad0 + t
// for the correlation taps t = 0..F-1 of the (flipped unless `flip`) filter.

struct Upfirdn2dParams {
    const void* x;
    const float* f;     // filter taps (float32, device memory)
    void* y;
    int64_t batch, channels;
    int in_h, in_w, out_h, out_w;
    int64_t sx_n, sx_c, sx_h, sx_w;   // input strides, in elements
    int64_t sy_n, sy_c, sy_h, sy_w;   // output strides, in elements
    int upx, upy, downx, downy;
    int padx0, pady0;
    int fw, fh;         // filter width and height in taps
    int f_sx, f_sy;     // filter strides: tap(ty, tx) = f[ty*f_sy + tx*f_sx], or the
    int separable;      //   product f[ty*f_sy] * f[tx*f_sx] when separable
    int flip;           // 1: correlate with f as given; 0: convolve (correlate with flipped f)
    double gain;
    int channels_last;  // thread mapping: channels fastest (NHWC) or x fastest (NCHW)
};

// Which kernel a launch used; for the benchmark table and tests.
enum Upfirdn2dPath : int { kPathGeneral = 0, kPathTile = 1 };

// True when the shared-memory tile kernel covers this configuration.
bool upfirdn2d_tile_supported(int upx, int upy, int downx, int downy, int fw, int fh);

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType dtype, cudaStream_t stream, int* path);

}  // namespace cartoon_stylegan
