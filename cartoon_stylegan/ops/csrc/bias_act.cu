// Fused bias + activation + gain + clamp, its gradient and its second derivative.
//
// One element-wise kernel, templated on the activation and on the mode (forward,
// gradient, gradient of the gradient), in the style of NVlabs' bias_act.cu but with
// 128-bit vectorised loads/stores, an incremental bias index (no integer division per
// element) and NaN-propagating clamping.

#include "ops.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace cartoon_stylegan {
namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

// A vector of N elements that the compiler moves with one 128-bit (or narrower) access.
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

struct Consts {
    // Per-launch constants, converted once.
    template <typename S> struct Of {
        S alpha, gain, inv_gain, alpha_gain, clamp;
        __device__ __forceinline__ explicit Of(const BiasActParams& p)
            : alpha(S(p.alpha)), gain(S(p.gain)), inv_gain(p.gain != 0.0 ? S(1.0 / p.gain) : S(0)),
              alpha_gain(S(p.alpha * p.gain)), clamp(S(p.clamp)) {}
    };
};

// The per-element operation. `v` is the input (mode 0) or the incoming gradient
// (modes 1, 2); `yref` the forward output; `dy` the first-order gradient (mode 2).
template <int ACT, int MODE, typename S>
__device__ __forceinline__ S bias_act_op(S v, S b, S yref, S dy, const typename Consts::Of<S>& k)
{
    if (MODE == 0) {
        const S s = v + b;
        S y;
        if (ACT == kLinear)       y = s;
        else if (ACT == kRelu)    y = s < S(0) ? S(0) : s;       // NaN passes through
        else if (ACT == kLrelu)   y = s > S(0) ? s : s * k.alpha;
        else if (ACT == kTanh)    y = tanh_(s);
        else                      y = S(1) / (S(1) + exp_(-s));   // sigmoid; exp overflow -> 0
        y *= k.gain;
        if (k.clamp >= S(0)) {                                     // NaN passes through
            if (y > k.clamp) y = k.clamp;
            else if (y < -k.clamp) y = -k.clamp;
        }
        return y;
    }

    // f(s) recovered from the stored output; only its sign matters for (l)relu.
    const S yy = yref * k.inv_gain;
    S out;
    if (MODE == 1) {
        if (ACT == kLinear)       out = v * k.gain;
        else if (ACT == kRelu)    out = yy > S(0) ? v * k.gain : S(0);
        else if (ACT == kLrelu)   out = v * (yy > S(0) ? k.gain : k.alpha_gain);
        else if (ACT == kTanh)    out = v * ((S(1) - yy * yy) * k.gain);
        else                      out = v * (yy * (S(1) - yy) * k.gain);
    } else {
        if (ACT == kTanh)         out = v * ((S(1) - yy * yy) * (S(-2) * yy) * k.gain) * dy;
        else if (ACT == kSigmoid) out = v * (yy * (S(1) - yy) * (S(1) - S(2) * yy) * k.gain) * dy;
        else                      out = S(0);
    }
    if (k.clamp >= S(0))
        out = (yref > -k.clamp && yref < k.clamp) ? out : S(0);
    return out;
}

// Position of memory element i along the bias dimension (q = i / step_b % size_b) and
// its remainder within one bias step; 32-bit arithmetic whenever the tensor allows.
__device__ __forceinline__ void bias_position(int64_t i, const BiasActParams& p, int64_t& rem, int64_t& c)
{
    if (p.n <= 0x7fffffffLL) {
        const uint32_t ii = (uint32_t)i, step = (uint32_t)p.step_b;
        const uint32_t q = ii / step;
        rem = ii - q * step;
        c = q % (uint32_t)p.size_b;
    } else {
        const int64_t q = i / p.step_b;
        rem = i - q * p.step_b;
        c = q % p.size_b;
    }
}

template <typename T, int ACT, int MODE, int VEC>
__global__ void __launch_bounds__(256) bias_act_kernel(const BiasActParams p)
{
    using S = typename AccType<T>::type;
    using P = Pack<T, VEC>;
    const typename Consts::Of<S> k(p);
    const T* __restrict__ xp = static_cast<const T*>(p.x);
    const T* __restrict__ bp = static_cast<const T*>(p.b);
    const T* __restrict__ yp = static_cast<const T*>(p.y);
    const T* __restrict__ dp = static_cast<const T*>(p.dy);
    T* __restrict__ op = static_cast<T*>(p.out);
    const bool has_bias = (MODE == 0) && bp != nullptr;
    const bool uniform_bias = has_bias && (p.step_b % VEC == 0);  // one bias value per vector

    const int64_t nvec = p.n / VEC;
    const int64_t grid_stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nvec; v += grid_stride) {
        const int64_t i = v * VEC;
        const P xv = reinterpret_cast<const P*>(xp)[v];
        P yv, dv, ov;
        if (MODE >= 1) yv = reinterpret_cast<const P*>(yp)[v];
        if (MODE == 2) dv = reinterpret_cast<const P*>(dp)[v];

        S bv[VEC];
        #pragma unroll
        for (int j = 0; j < VEC; ++j) bv[j] = S(0);
        if (has_bias) {
            int64_t rem, c;
            bias_position(i, p, rem, c);
            if (uniform_bias) {
                const S bb = S(bp[c]);
                #pragma unroll
                for (int j = 0; j < VEC; ++j) bv[j] = bb;
            } else {
                #pragma unroll
                for (int j = 0; j < VEC; ++j) {
                    bv[j] = S(bp[c]);
                    if (++rem == p.step_b) { rem = 0; if (++c == p.size_b) c = 0; }
                }
            }
        }

        #pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const S yr = (MODE >= 1) ? S(yv.v[j]) : S(0);
            const S dd = (MODE == 2) ? S(dv.v[j]) : S(0);
            ov.v[j] = T(bias_act_op<ACT, MODE, S>(S(xv.v[j]), bv[j], yr, dd, k));
        }
        reinterpret_cast<P*>(op)[v] = ov;
    }

    // Tail that does not fill a whole vector.
    if (VEC > 1 && blockIdx.x == 0) {
        for (int64_t i = nvec * VEC + threadIdx.x; i < p.n; i += blockDim.x) {
            S bb = S(0);
            if (has_bias) { int64_t rem, c; bias_position(i, p, rem, c); bb = S(bp[c]); }
            const S yr = (MODE >= 1) ? S(yp[i]) : S(0);
            const S dd = (MODE == 2) ? S(dp[i]) : S(0);
            op[i] = T(bias_act_op<ACT, MODE, S>(S(xp[i]), bb, yr, dd, k));
        }
    }
}

template <typename T, int ACT, int MODE>
cudaError_t launch_typed(const BiasActParams& p, bool vectorized, cudaStream_t stream)
{
    constexpr int kVec = 16 / sizeof(T);
    const int threads = 256;
    const int vec = vectorized ? kVec : 1;
    const int64_t work = (p.n + vec - 1) / vec;
    // Enough blocks to fill the machine several times over; the loop covers the rest.
    int64_t blocks = (work + threads - 1) / threads;
    blocks = blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks);
    void (*kernel)(const BiasActParams) =
        vectorized ? bias_act_kernel<T, ACT, MODE, kVec> : bias_act_kernel<T, ACT, MODE, 1>;
    return CSG_LAUNCH(kernel, dim3((unsigned)blocks), dim3(threads), stream, p);
}

template <typename T>
cudaError_t launch_for_type(const BiasActParams& p, bool vectorized, cudaStream_t stream)
{
    switch (p.mode * 16 + p.act) {
        case 0 * 16 + kLinear:  return launch_typed<T, kLinear, 0>(p, vectorized, stream);
        case 0 * 16 + kRelu:    return launch_typed<T, kRelu, 0>(p, vectorized, stream);
        case 0 * 16 + kLrelu:   return launch_typed<T, kLrelu, 0>(p, vectorized, stream);
        case 0 * 16 + kTanh:    return launch_typed<T, kTanh, 0>(p, vectorized, stream);
        case 0 * 16 + kSigmoid: return launch_typed<T, kSigmoid, 0>(p, vectorized, stream);
        case 1 * 16 + kLinear:  return launch_typed<T, kLinear, 1>(p, vectorized, stream);
        case 1 * 16 + kRelu:    return launch_typed<T, kRelu, 1>(p, vectorized, stream);
        case 1 * 16 + kLrelu:   return launch_typed<T, kLrelu, 1>(p, vectorized, stream);
        case 1 * 16 + kTanh:    return launch_typed<T, kTanh, 1>(p, vectorized, stream);
        case 1 * 16 + kSigmoid: return launch_typed<T, kSigmoid, 1>(p, vectorized, stream);
        case 2 * 16 + kTanh:    return launch_typed<T, kTanh, 2>(p, vectorized, stream);
        case 2 * 16 + kSigmoid: return launch_typed<T, kSigmoid, 2>(p, vectorized, stream);
        default:                return cudaErrorInvalidValue;
    }
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& p, DType dtype, bool vectorized, cudaStream_t stream)
{
    if (p.n <= 0) return cudaSuccess;
    switch (dtype) {
        case DType::kFloat:    return launch_for_type<float>(p, vectorized, stream);
        case DType::kHalf:     return launch_for_type<c10::Half>(p, vectorized, stream);
        case DType::kBFloat16: return launch_for_type<c10::BFloat16>(p, vectorized, stream);
        case DType::kDouble:   return launch_for_type<double>(p, vectorized, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace cartoon_stylegan
