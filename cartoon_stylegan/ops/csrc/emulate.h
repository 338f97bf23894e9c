// Test-only CUDA emulation: compiles the kernel sources as plain C++ and runs every CUDA
// thread of a block as a std::thread, with __syncthreads() as a std::barrier.
//
// Used by tests/ops/test_ops_cuda_build.py (macro CSG_EMULATE_CUDA) to execute the real
// kernels -- index arithmetic, shared-memory tiling, polyphase alignment, both thread
// mappings -- on machines without a GPU. Never part of a real build.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = void*;

inline const char* cudaGetErrorString(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : (e == cudaErrorInvalidValue ? "invalid argument" : "invalid configuration");
}

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one copy per kernel instantiation; launches run one at a time

namespace csg_emulate {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, Args... args)
{
    const unsigned nt = block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidConfiguration;
    std::barrier<> bar(nt);
    block_barrier = &bar;
    block_dim = block;
    grid_dim = grid;
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned t = 0; t < nt; ++t) {
        threads.emplace_back([&, t] {
            thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        block_idx = dim3(bx, by, bz);
                        kernel(args...);
                        bar.arrive_and_wait();  // the block is done before its shared memory is reused
                    }
        });
    }
    for (auto& th : threads) th.join();
    block_barrier = nullptr;
    return cudaSuccess;
}
}  // namespace csg_emulate

#define threadIdx (::csg_emulate::thread_idx)
#define blockIdx (::csg_emulate::block_idx)
#define blockDim (::csg_emulate::block_dim)
#define gridDim (::csg_emulate::grid_dim)

inline void __syncthreads() { ::csg_emulate::block_barrier->arrive_and_wait(); }
template <typename T> inline T __ldg(const T* p) { return *p; }
