// upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample -- in one pass.
//
// Two kernels:
//
// * upfirdn2d_tile_kernel: the StyleGAN2 cases (up 2, down 2, and 1/1 blur, filters of
//   up to 4x4 taps, 2-D or separable). A block stages an input tile (with halo) in
//   shared memory as the accumulation type; every thread then computes a small block of
//   outputs -- a whole polyphase group for up=2 -- sliding a register window down the
//   rows it needs, so each shared-memory value is read once per thread and reused by
//   every output and tap that touches it. The filter lives in registers: the output
//   tile is aligned to the polyphase period, which makes every tap index a compile-time
//   constant. For down=2 the tile is stored phase-split (even columns, then odd ones)
//   so the stride-2 reads of a warp stay free of bank conflicts. NCHW maps a warp to 32
//   consecutive x; channels_last maps it to 32 consecutive channels; both coalesce.
//
// * upfirdn2d_general_kernel: any factor, filter size and padding; one thread per
//   output, taps read through the read-only cache. A separable filter larger than the
//   tile kernel handles is run as two 1-D passes by the binding (ops.cpp).

#include "ops.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace cartoon_stylegan {
namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__host__ __device__ __forceinline__ int floor_div(int a, int b)  // b > 0
{
    const int q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

// Correlation tap (ty, tx) of the filter: the filter as given when `flip`, else flipped
// (upfirdn2d convolves). Zero outside the filter, so templates may over-allocate taps.
template <typename S>
__device__ __forceinline__ S filter_tap(const Upfirdn2dParams& p, int ty, int tx)
{
    if (ty >= p.fh || tx >= p.fw) return S(0);
    const int fy = p.flip ? ty : p.fh - 1 - ty;
    const int fx = p.flip ? tx : p.fw - 1 - tx;
    if (p.separable) return S(__ldg(p.f + fy * p.f_sy)) * S(__ldg(p.f + fx * p.f_sx));
    return S(__ldg(p.f + fy * p.f_sy + fx * p.f_sx));
}

//------------------------------------------------------------------------------
// General kernel.

template <typename T>
__global__ void __launch_bounds__(256) upfirdn2d_general_kernel(const Upfirdn2dParams p)
{
    using S = typename AccType<T>::type;
    const T* __restrict__ x = static_cast<const T*>(p.x);
    T* __restrict__ y = static_cast<T*>(p.y);

    // NCHW: x = threadIdx.x + 32*blockIdx.x, y = threadIdx.y + 8*blockIdx.y, z = plane.
    // NHWC: c = threadIdx.x + 32*blockIdx.x, x = threadIdx.y + 8*blockIdx.y, z = (n, y).
    int ox, oy;
    int64_t c, n;
    int64_t zcount;
    if (p.channels_last) {
        c = (int64_t)blockIdx.x * 32 + threadIdx.x;
        ox = blockIdx.y * 8 + threadIdx.y;
        if (c >= p.channels || ox >= p.out_w) return;
        zcount = p.batch * p.out_h;
    } else {
        ox = blockIdx.x * 32 + threadIdx.x;
        oy = blockIdx.y * 8 + threadIdx.y;
        if (ox >= p.out_w || oy >= p.out_h) return;
        zcount = p.batch * p.channels;
    }

    for (int64_t z = blockIdx.z; z < zcount; z += gridDim.z) {
        if (p.channels_last) { n = z / p.out_h; oy = (int)(z - n * p.out_h); }
        else                 { n = z / p.channels; c = z - n * p.channels; }

        // First input sample and first tap of this output, per axis.
        const int basex = ox * p.downx - p.padx0, basey = oy * p.downy - p.pady0;
        const int ix0 = floor_div(basex + p.upx - 1, p.upx), iy0 = floor_div(basey + p.upy - 1, p.upy);
        const int tx0 = ix0 * p.upx - basex, ty0 = iy0 * p.upy - basey;

        const T* xp = x + n * p.sx_n + c * p.sx_c;
        S acc = S(0);
        for (int ty = ty0, iy = iy0; ty < p.fh; ty += p.upy, ++iy) {
            if (iy < 0 || iy >= p.in_h) continue;
            for (int tx = tx0, ix = ix0; tx < p.fw; tx += p.upx, ++ix) {
                if (ix < 0 || ix >= p.in_w) continue;
                acc += S(xp[iy * p.sx_h + ix * p.sx_w]) * filter_tap<S>(p, ty, tx);
            }
        }
        y[n * p.sy_n + c * p.sy_c + (int64_t)oy * p.sy_h + (int64_t)ox * p.sy_w] = T(acc * S(p.gain));
    }
}

//------------------------------------------------------------------------------
// Tile kernel.

// Input offset of output j (relative to a polyphase-aligned origin) and its first tap.
template <int UP, int DN> struct Phase {
    static_assert(UP == 1 || DN == 1, "the tile kernel does not combine up- and downsampling");
    static constexpr __host__ __device__ int in_off(int j) { return UP == 1 ? j * DN : j / UP; }
    static constexpr __host__ __device__ int tap0(int j) { return UP == 1 ? 0 : UP - 1 - j % UP; }
};

// T: element type. UP/DN: factors (both axes). FP: taps per axis the filter is padded to.
// PX x RY: outputs per thread (x, y). CB x TXS x TYS: thread layout (channels, x, y).
template <typename T, int UP, int DN, int FP, int PX, int RY, int CB, int TXS, int TYS>
struct TileCfg {
    using Ph = Phase<UP, DN>;
    static constexpr int kThreads = CB * TXS * TYS;
    static constexpr int kTileW = TXS * PX, kTileH = TYS * RY;       // outputs per block
    static constexpr int kTaps = FP / UP;                            // taps per output per axis
    static constexpr int kInW = Ph::in_off(kTileW - 1) + kTaps;     // input tile incl. halo
    static constexpr int kInH = Ph::in_off(kTileH - 1) + kTaps;
    static constexpr int kWinW = Ph::in_off(PX - 1) + kTaps;        // per-thread window
    static constexpr int kWinH = Ph::in_off(RY - 1) + kTaps;
    static constexpr bool kSplit = (CB == 1 && DN > 1);              // phase-split columns
    static constexpr int kInWS = kSplit ? ((kInW + DN - 1) / DN) * DN : kInW;
    static_assert(FP % UP == 0 && PX % UP == 0 && RY % UP == 0, "tile must cover whole polyphase groups");
    static_assert(kThreads <= 1024, "block too large");

    __device__ static __forceinline__ int scol(int col)
    {
        return kSplit ? (col % DN) * (kInWS / DN) + col / DN : col;
    }
};

template <typename T, int UP, int DN, int FP, int PX, int RY, int CB, int TXS, int TYS>
__global__ void __launch_bounds__(CB * TXS * TYS)
upfirdn2d_tile_kernel(const Upfirdn2dParams p, const int ox_start, const int oy_start)
{
    using S = typename AccType<T>::type;
    using C = TileCfg<T, UP, DN, FP, PX, RY, CB, TXS, TYS>;
    using Ph = typename C::Ph;
    constexpr int K = C::kTaps;
    __shared__ S smem[C::kInH * C::kInWS * CB];

    const T* __restrict__ x = static_cast<const T*>(p.x);
    T* __restrict__ y = static_cast<T*>(p.y);

    // Filter in registers, as correlation taps g[ty][tx].
    S g[FP][FP];
    #pragma unroll
    for (int ty = 0; ty < FP; ++ty)
        #pragma unroll
        for (int tx = 0; tx < FP; ++tx)
            g[ty][tx] = filter_tap<S>(p, ty, tx);

    // This thread's slot within the block.
    const int cs = threadIdx.x % CB;
    const int xs = (threadIdx.x / CB) % TXS;
    const int ys = threadIdx.x / (CB * TXS);

    // Output tile origin (aligned to the polyphase period) and its first input sample.
    const int ox0 = ox_start + (int)blockIdx.x * C::kTileW;
    const int oy0 = oy_start + (int)blockIdx.y * C::kTileH;
    const int ix0 = floor_div(ox0 * DN - p.padx0 + UP - 1, UP);
    const int iy0 = floor_div(oy0 * DN - p.pady0 + UP - 1, UP);

    const int64_t cblocks = (p.channels + CB - 1) / CB;
    const int64_t zcount = p.batch * cblocks;
    for (int64_t z = blockIdx.z; z < zcount; z += gridDim.z) {
        const int64_t n = z / cblocks;
        const int64_t c0 = (z - n * cblocks) * CB;
        const T* xp = x + n * p.sx_n + c0 * p.sx_c;

        // Stage the input tile; zero outside the image (that is the padding).
        __syncthreads();
        for (int i = threadIdx.x; i < C::kInH * C::kInW * CB; i += C::kThreads) {
            const int cc = i % CB;
            const int t = i / CB;
            const int col = t % C::kInW;
            const int row = t / C::kInW;
            const int ix = ix0 + col, iy = iy0 + row;
            S v = S(0);
            if (ix >= 0 && ix < p.in_w && iy >= 0 && iy < p.in_h && c0 + cc < p.channels)
                v = S(xp[cc * p.sx_c + (int64_t)iy * p.sx_h + (int64_t)ix * p.sx_w]);
            smem[(row * C::kInWS + C::scol(col)) * CB + cc] = v;
        }
        __syncthreads();

        // Each thread: RY x PX outputs from a (kWinH x kWinW) input window.
        S acc[RY][PX];
        #pragma unroll
        for (int ry = 0; ry < RY; ++ry)
            #pragma unroll
            for (int px = 0; px < PX; ++px)
                acc[ry][px] = S(0);

        const int rbase = Ph::in_off(ys * RY);
        const int cbase = Ph::in_off(xs * PX);
        #pragma unroll
        for (int r = 0; r < C::kWinH; ++r) {
            S win[C::kWinW];
            #pragma unroll
            for (int k = 0; k < C::kWinW; ++k)
                win[k] = smem[((rbase + r) * C::kInWS + C::scol(cbase + k)) * CB + cs];
            #pragma unroll
            for (int ry = 0; ry < RY; ++ry) {
                const int ky = r - Ph::in_off(ry);           // compile-time after unrolling
                if (ky >= 0 && ky < K) {
                    #pragma unroll
                    for (int px = 0; px < PX; ++px)
                        #pragma unroll
                        for (int kx = 0; kx < K; ++kx)
                            acc[ry][px] += win[Ph::in_off(px) + kx] * g[Ph::tap0(ry) + UP * ky][Ph::tap0(px) + UP * kx];
                }
            }
        }

        const int64_t c = c0 + cs;
        if (c < p.channels) {
            T* yp = y + n * p.sy_n + c * p.sy_c;
            const S gain = S(p.gain);
            #pragma unroll
            for (int ry = 0; ry < RY; ++ry) {
                const int oy = oy0 + ys * RY + ry;
                if (oy < 0 || oy >= p.out_h) continue;
                #pragma unroll
                for (int px = 0; px < PX; ++px) {
                    const int ox = ox0 + xs * PX + px;
                    if (ox >= 0 && ox < p.out_w)
                        yp[(int64_t)oy * p.sy_h + (int64_t)ox * p.sy_w] = T(acc[ry][px] * gain);
                }
            }
        }
    }
}

// First output index of the tile grid: the largest o <= 0 whose polyphase group starts at
// o, i.e. (o*down - pad0) == 1 (mod up). For up == 1 it is 0.
inline int aligned_start(int up, int pad0)
{
    if (up == 1) return 0;
    int r = (pad0 + 1) % up;
    if (r < 0) r += up;
    return r == 0 ? 0 : r - up;
}

inline unsigned clamp_grid(int64_t v, int64_t limit) { return (unsigned)(v < 1 ? 1 : (v > limit ? limit : v)); }

template <typename T, int UP, int DN, int FP, int PX, int RY, int CB, int TXS, int TYS>
cudaError_t launch_tile(const Upfirdn2dParams& p, cudaStream_t stream)
{
    using C = TileCfg<T, UP, DN, FP, PX, RY, CB, TXS, TYS>;
    const int ox_start = aligned_start(UP, p.padx0);
    const int oy_start = aligned_start(UP, p.pady0);
    const int64_t tiles_x = (p.out_w - ox_start + C::kTileW - 1) / C::kTileW;
    const int64_t tiles_y = (p.out_h - oy_start + C::kTileH - 1) / C::kTileH;
    const int64_t planes = p.batch * ((p.channels + CB - 1) / CB);
    if (tiles_y > 65535) return cudaErrorInvalidConfiguration;
    dim3 grid(clamp_grid(tiles_x, 0x7fffffff), clamp_grid(tiles_y, 65535), clamp_grid(planes, 65535));
    void (*kernel)(const Upfirdn2dParams, const int, const int) =
        upfirdn2d_tile_kernel<T, UP, DN, FP, PX, RY, CB, TXS, TYS>;
    return CSG_LAUNCH(kernel, grid, dim3(C::kThreads), stream, p, ox_start, oy_start);
}

// The instantiated configurations. NCHW: a warp spans 32 x positions, 8 warps span y.
// channels_last: a warp spans 32 channels, 8 warps span x.
template <typename T>
cudaError_t launch_tile_for_type(const Upfirdn2dParams& p, cudaStream_t stream)
{
    const int up = p.upx, dn = p.downx;
    if (!p.channels_last) {
        if (up == 1 && dn == 1) return launch_tile<T, 1, 1, 4, 1, 4, 1, 32, 8>(p, stream);   // 32x32 out
        if (up == 2 && dn == 1) return launch_tile<T, 2, 1, 4, 2, 4, 1, 32, 8>(p, stream);   // 64x32 out
        if (up == 1 && dn == 2) return launch_tile<T, 1, 2, 4, 1, 2, 1, 32, 8>(p, stream);   // 32x16 out
    } else {
        if (up == 1 && dn == 1) return launch_tile<T, 1, 1, 4, 1, 8, 32, 8, 1>(p, stream);   // 8x8 x 32ch
        if (up == 2 && dn == 1) return launch_tile<T, 2, 1, 4, 2, 8, 32, 8, 1>(p, stream);   // 16x8 x 32ch
        if (up == 1 && dn == 2) return launch_tile<T, 1, 2, 4, 1, 4, 32, 8, 1>(p, stream);   // 8x4 x 32ch
    }
    return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_general(const Upfirdn2dParams& p, cudaStream_t stream)
{
    dim3 block(32, 8, 1);
    dim3 grid;
    if (p.channels_last)
        grid = dim3(clamp_grid((p.channels + 31) / 32, 0x7fffffff), clamp_grid((p.out_w + 7) / 8, 65535),
                    clamp_grid(p.batch * p.out_h, 65535));
    else
        grid = dim3(clamp_grid((p.out_w + 31) / 32, 0x7fffffff), clamp_grid((p.out_h + 7) / 8, 65535),
                    clamp_grid(p.batch * p.channels, 65535));
    if ((p.channels_last ? (p.out_w + 7) / 8 : (p.out_h + 7) / 8) > 65535) return cudaErrorInvalidConfiguration;
    void (*kernel)(const Upfirdn2dParams) = upfirdn2d_general_kernel<T>;
    return CSG_LAUNCH(kernel, grid, block, stream, p);
}

template <typename T>
cudaError_t launch_for_type(const Upfirdn2dParams& p, cudaStream_t stream, int* path)
{
    if (upfirdn2d_tile_supported(p.upx, p.upy, p.downx, p.downy, p.fw, p.fh)) {
        if (path) *path = kPathTile;
        return launch_tile_for_type<T>(p, stream);
    }
    if (path) *path = kPathGeneral;
    return launch_general<T>(p, stream);
}

}  // namespace

bool upfirdn2d_tile_supported(int upx, int upy, int downx, int downy, int fw, int fh)
{
    if (upx != upy || downx != downy || fw > 4 || fh > 4) return false;
    return (upx == 1 && downx == 1) || (upx == 2 && downx == 1) || (upx == 1 && downx == 2);
}

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType dtype, cudaStream_t stream, int* path)
{
    if (p.batch * p.channels == 0 || p.out_h <= 0 || p.out_w <= 0) return cudaSuccess;
    switch (dtype) {
        case DType::kFloat:    return launch_for_type<float>(p, stream, path);
        case DType::kHalf:     return launch_for_type<c10::Half>(p, stream, path);
        case DType::kBFloat16: return launch_for_type<c10::BFloat16>(p, stream, path);
        case DType::kDouble:   return launch_for_type<double>(p, stream, path);
    }
    return cudaErrorInvalidValue;
}

}  // namespace cartoon_stylegan
