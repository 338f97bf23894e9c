// Test-only CUDA emulation: compiles the kernel sources as plain C++ and runs each block's
// CUDA threads as fibers (ucontext) on the calling CPU thread.
//
// Used by tests/ops/test_ops_cuda_build.py (macro CSG_EMULATE_CUDA) to execute the real
// kernels -- index arithmetic, shared-memory tiling, polyphase alignment, both thread
// mappings -- on machines without a GPU. Never part of a real build.
//
// Scheduling: the fibers of a block run round-robin, each until its next __syncthreads()
// or its end, so every barrier phase of every thread completes before the next phase of
// any thread starts -- exactly the guarantee CUDA gives, and no more: a missing barrier
// shows up as a wrong result, deterministically.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <functional>
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
#define __shared__ static  // one copy per kernel instantiation; blocks run one at a time

namespace csg_emulate {

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
};

inline dim3 thread_idx, block_idx, block_dim, grid_dim;
inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline unsigned current = 0;
inline const std::function<void()>* body = nullptr;

inline void trampoline()
{
    (*body)();
    fibers[current].done = true;  // returning resumes uc_link (the scheduler)
}

inline void sync_threads() { swapcontext(&fibers[current].ctx, &scheduler); }

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, Args... args)
{
    const unsigned nt = block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidConfiguration;
    const std::function<void()> run = [&] { kernel(args...); };
    body = &run;
    block_dim = block;
    grid_dim = grid;
    fibers.resize(nt);
    for (auto& f : fibers)
        if (f.stack.size() < (1 << 16)) f.stack.resize(1 << 16);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_idx = dim3(bx, by, bz);
                for (unsigned t = 0; t < nt; ++t) {
                    Fiber& f = fibers[t];
                    f.done = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &scheduler;
                    makecontext(&f.ctx, trampoline, 0);
                }
                for (bool pending = true; pending;) {  // one barrier phase per round
                    pending = false;
                    for (unsigned t = 0; t < nt; ++t) {
                        if (fibers[t].done) continue;
                        current = t;
                        thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        swapcontext(&scheduler, &fibers[t].ctx);
                        pending = pending || !fibers[t].done;
                    }
                }
            }
    body = nullptr;
    return cudaSuccess;
}

}  // namespace csg_emulate

#define threadIdx (::csg_emulate::thread_idx)
#define blockIdx (::csg_emulate::block_idx)
#define blockDim (::csg_emulate::block_dim)
#define gridDim (::csg_emulate::grid_dim)

inline void __syncthreads() { ::csg_emulate::sync_threads(); }
template <typename T> inline T __ldg(const T* p) { return *p; }
