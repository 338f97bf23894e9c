// Operator binding: validates arguments, allocates outputs, picks layouts and launches
// the kernels in bias_act.cu / upfirdn2d.cu on the current stream.
//
// The operator schemas live in Python (cartoon_stylegan/ops/cuda_impl.py), together with
// their fake (meta) implementations for torch.compile and their autograd; this library
// only registers the CUDA kernels for them when it is loaded, so it needs no pybind11
// module and no Python headers.

#include <ATen/ATen.h>
#include <torch/library.h>
#ifndef CSG_EMULATE_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "ops.h"

namespace cartoon_stylegan {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

#ifdef CSG_EMULATE_CUDA
// Test-only build (see emulate.h): CPU tensors stand in for CUDA ones.
struct DeviceGuard { explicit DeviceGuard(c10::Device) {} };
cudaStream_t current_stream() { return nullptr; }
bool on_device(const at::Tensor& t) { return t.is_cpu(); }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
// The stream PyTorch queues work on for the current device (a kernel launched anywhere else
// would race with the surrounding ops). Not current_stream() itself: that recursed forever.
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
bool on_device(const at::Tensor& t) { return t.is_cuda(); }
#endif

DType kernel_dtype(const at::Tensor& t, const char* op)
{
    switch (t.scalar_type()) {
        case at::kFloat: return DType::kFloat;
        case at::kHalf: return DType::kHalf;
        case at::kBFloat16: return DType::kBFloat16;
        case at::kDouble: return DType::kDouble;
        default:
            TORCH_CHECK(false, "cartoon_stylegan::", op, ": dtype ", t.scalar_type(),
                        " is not supported (float32, float16, bfloat16, float64 are)");
    }
}

// The one rule for "this tensor is channels_last", shared with the fake implementations
// in cuda_impl.py: 4-D, dense in NHWC and not also dense in NCHW.
bool is_channels_last(const at::Tensor& t)
{
    return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Dense in NCHW or NHWC order (element-wise kernels walk memory linearly).
at::Tensor dense(const at::Tensor& t)
{
    return (t.is_contiguous() || is_channels_last(t)) ? t : t.contiguous();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_launch(cudaError_t err, const char* op)
{
    TORCH_CHECK(err == cudaSuccess, "cartoon_stylegan::", op, ": kernel launch failed: ", cudaGetErrorString(err));
}

//------------------------------------------------------------------------------

at::Tensor bias_act(const at::Tensor& x_in, const std::optional<at::Tensor>& b_in, int64_t dim, int64_t act,
                    double alpha, double gain, double clamp)
{
    TORCH_CHECK(on_device(x_in), "cartoon_stylegan::bias_act: x must be a CUDA tensor, got ", x_in.device());
    TORCH_CHECK(act >= kLinear && act <= kSigmoid, "cartoon_stylegan::bias_act: unknown activation id ", act);
    const DeviceGuard guard(x_in.device());
    const DType dtype = kernel_dtype(x_in, "bias_act");
    const at::Tensor x = dense(x_in);
    at::Tensor y = at::empty_like(x);  // a dense input keeps its strides
    if (x.numel() == 0) return y;

    BiasActParams p{};
    at::Tensor b;
    p.step_b = 1;
    p.size_b = 1;
    if (b_in.has_value() && b_in->defined()) {
        b = b_in->contiguous();
        TORCH_CHECK(x.dim() > 0 && dim >= 0 && dim < x.dim(), "cartoon_stylegan::bias_act: dim ", dim,
                    " is out of range for a ", x.dim(), "-D input");
        TORCH_CHECK(b.dim() == 1 && b.numel() == x.size(dim), "cartoon_stylegan::bias_act: bias of shape ",
                    b.sizes(), " does not match dimension ", dim, " of the input ", x.sizes());
        TORCH_CHECK(b.scalar_type() == x.scalar_type(), "cartoon_stylegan::bias_act: bias dtype ",
                    b.scalar_type(), " differs from input dtype ", x.scalar_type());
        TORCH_CHECK(b.device() == x.device(), "cartoon_stylegan::bias_act: bias is on ", b.device(),
                    ", input on ", x.device());
        p.b = b.data_ptr();
        p.size_b = x.size(dim);
        p.step_b = p.size_b > 1 ? x.stride(dim) : 1;
    }
    p.x = x.data_ptr();
    p.out = y.data_ptr();
    p.n = x.numel();
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    p.act = (int)act;
    p.mode = 0;
    const bool vec = aligned16(p.x) && aligned16(p.out);
    check_launch(launch_bias_act(p, dtype, vec, current_stream()), "bias_act");
    return y;
}

// Gradient of bias_act with respect to its pre-activation (dy absent), or the gradient of
// that gradient with respect to the pre-activation (dy = the first-order incoming gradient).
at::Tensor bias_act_grad(const at::Tensor& g_in, const at::Tensor& y_in, const std::optional<at::Tensor>& dy_in,
                         int64_t act, double alpha, double gain, double clamp)
{
    TORCH_CHECK(on_device(g_in) && on_device(y_in), "cartoon_stylegan::bias_act_grad: tensors must be on CUDA");
    TORCH_CHECK(g_in.sizes() == y_in.sizes(), "cartoon_stylegan::bias_act_grad: gradient ", g_in.sizes(),
                " and output ", y_in.sizes(), " differ in shape");
    TORCH_CHECK(g_in.scalar_type() == y_in.scalar_type() && g_in.device() == y_in.device(),
                "cartoon_stylegan::bias_act_grad: gradient and output differ in dtype or device");
    TORCH_CHECK(act >= kLinear && act <= kSigmoid, "cartoon_stylegan::bias_act_grad: unknown activation id ", act);
    const DeviceGuard guard(y_in.device());
    const DType dtype = kernel_dtype(y_in, "bias_act_grad");
    const at::Tensor y = dense(y_in);
    const auto like_y = [&](const at::Tensor& t) {
        return t.strides() == y.strides() ? t : at::empty_like(y).copy_(t);
    };
    const at::Tensor g = like_y(g_in);
    const bool second = dy_in.has_value() && dy_in->defined();
    if (second && act != kTanh && act != kSigmoid)
        return at::zeros_like(y);  // piecewise-linear activations: the second derivative is zero
    at::Tensor dy;
    if (second) {
        TORCH_CHECK(dy_in->sizes() == y.sizes() && dy_in->scalar_type() == y.scalar_type() &&
                        dy_in->device() == y.device(),
                    "cartoon_stylegan::bias_act_grad: dy must match the output in shape, dtype and device");
        dy = like_y(*dy_in);
    }
    at::Tensor out = at::empty_like(y);
    if (y.numel() == 0) return out;

    BiasActParams p{};
    p.x = g.data_ptr();
    p.y = y.data_ptr();
    p.dy = second ? dy.data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.n = y.numel();
    p.step_b = 1;
    p.size_b = 1;
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    p.act = (int)act;
    p.mode = second ? 2 : 1;
    const bool vec = aligned16(p.x) && aligned16(p.y) && aligned16(p.out) && (!second || aligned16(p.dy));
    check_launch(launch_bias_act(p, dtype, vec, current_stream()), "bias_act_grad");
    return out;
}

//------------------------------------------------------------------------------

struct FilterView {
    int fw, fh, f_sx, f_sy, separable;
};

void run_upfirdn2d(const at::Tensor& x, const at::Tensor& f, const FilterView& fv, at::Tensor& y, int upx, int upy,
                   int downx, int downy, int padx0, int pady0, bool flip, double gain, bool cl)
{
    Upfirdn2dParams p{};
    p.x = x.data_ptr();
    p.f = f.data_ptr<float>();
    p.y = y.data_ptr();
    p.batch = x.size(0);
    p.channels = x.size(1);
    p.in_h = (int)x.size(2);
    p.in_w = (int)x.size(3);
    p.out_h = (int)y.size(2);
    p.out_w = (int)y.size(3);
    p.sx_n = x.stride(0); p.sx_c = x.stride(1); p.sx_h = x.stride(2); p.sx_w = x.stride(3);
    p.sy_n = y.stride(0); p.sy_c = y.stride(1); p.sy_h = y.stride(2); p.sy_w = y.stride(3);
    p.upx = upx; p.upy = upy; p.downx = downx; p.downy = downy;
    p.padx0 = padx0; p.pady0 = pady0;
    p.fw = fv.fw; p.fh = fv.fh; p.f_sx = fv.f_sx; p.f_sy = fv.f_sy; p.separable = fv.separable;
    p.flip = flip ? 1 : 0;
    p.gain = gain;
    // The NHWC thread mapping pays off once a warp's 32 channels are mostly real ones.
    p.channels_last = (cl && p.channels >= 16) ? 1 : 0;
    int path = 0;
    check_launch(launch_upfirdn2d(p, kernel_dtype(x, "upfirdn2d"), current_stream(), &path),
                 "upfirdn2d");
}

int64_t out_size(int64_t in, int64_t up, int64_t pad0, int64_t pad1, int64_t taps, int64_t down, const char* axis)
{
    const int64_t span = in * up + pad0 + pad1 - taps;
    TORCH_CHECK(span >= 0, "cartoon_stylegan::upfirdn2d: the upsampled and padded input (", in * up + pad0 + pad1,
                ") is smaller than the filter (", taps, ") along ", axis);
    return span / down + 1;
}

at::Tensor upfirdn2d(const at::Tensor& x_in, const at::Tensor& f_in, int64_t upx, int64_t upy, int64_t downx,
                     int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain)
{
    TORCH_CHECK(on_device(x_in), "cartoon_stylegan::upfirdn2d: x must be a CUDA tensor, got ", x_in.device());
    TORCH_CHECK(x_in.dim() == 4, "cartoon_stylegan::upfirdn2d: x must be 4-D (N, C, H, W), got ", x_in.sizes());
    TORCH_CHECK(f_in.device() == x_in.device(), "cartoon_stylegan::upfirdn2d: filter is on ", f_in.device(),
                ", input on ", x_in.device());
    TORCH_CHECK(f_in.scalar_type() == at::kFloat, "cartoon_stylegan::upfirdn2d: filter must be float32, got ",
                f_in.scalar_type());
    TORCH_CHECK((f_in.dim() == 1 || f_in.dim() == 2) && f_in.numel() > 0,
                "cartoon_stylegan::upfirdn2d: filter must be 1-D (separable) or 2-D, got ", f_in.sizes());
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1,
                "cartoon_stylegan::upfirdn2d: up/down factors must be >= 1");
    TORCH_CHECK(std::max({x_in.size(2) * upy, x_in.size(3) * upx, std::abs(padx0), std::abs(padx1),
                          std::abs(pady0), std::abs(pady1), f_in.size(0), f_in.size(-1)}) < kIntMax / 4,
                "cartoon_stylegan::upfirdn2d: spatial size, padding or filter too large");
    const DeviceGuard guard(x_in.device());
    (void)kernel_dtype(x_in, "upfirdn2d");

    const bool cl = is_channels_last(x_in);
    const at::Tensor x = cl ? x_in : x_in.contiguous();
    const at::Tensor f = f_in.contiguous();
    const bool separable = f.dim() == 1;
    const int fw = (int)f.size(-1);
    const int fh = (int)f.size(0);
    const int64_t out_w = out_size(x.size(3), upx, padx0, padx1, fw, downx, "x");
    const int64_t out_h = out_size(x.size(2), upy, pady0, pady1, fh, downy, "y");
    const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(fmt));
    if (y.numel() == 0) return y;

    if (separable && !upfirdn2d_tile_supported((int)upx, (int)upy, (int)downx, (int)downy, fw, fh)) {
        // A long separable filter: one 1-D pass per axis (fw + fh taps instead of fw * fh).
        at::Tensor tmp = at::empty({x.size(0), x.size(1), x.size(2), out_w}, x.options().memory_format(fmt));
        run_upfirdn2d(x, f, FilterView{fw, 1, 1, 0, 0}, tmp, (int)upx, 1, (int)downx, 1, (int)padx0, 0, flip, 1.0, cl);
        run_upfirdn2d(tmp, f, FilterView{1, fh, 0, 1, 0}, y, 1, (int)upy, 1, (int)downy, 0, (int)pady0, flip, gain, cl);
        return y;
    }
    const FilterView fv = separable ? FilterView{fw, fh, 1, 1, 1} : FilterView{fw, fh, 1, fw, 0};
    run_upfirdn2d(x, f, fv, y, (int)upx, (int)upy, (int)downx, (int)downy, (int)padx0, (int)pady0, flip, gain, cl);
    return y;
}

}  // namespace
}  // namespace cartoon_stylegan

#ifdef CSG_EMULATE_CUDA
#define CSG_DISPATCH_KEY CPU
#else
#define CSG_DISPATCH_KEY CUDA
#endif

TORCH_LIBRARY_IMPL(cartoon_stylegan, CSG_DISPATCH_KEY, m)
{
    m.impl("bias_act", &cartoon_stylegan::bias_act);
    m.impl("bias_act_grad", &cartoon_stylegan::bias_act_grad);
    m.impl("upfirdn2d", &cartoon_stylegan::upfirdn2d);
}
