// sim_runtime.h -- the CPU kernel simulator's runtime, compiled once into each kernel
// library that gpulayers/simulator/__init__.py builds from a .cu file.
//
// A launch runs the grid one block at a time. A block's threads are cooperative fibers
// (one stack each, created with makecontext, switched with _setjmp/_longjmp) that run
// until they finish or reach __syncthreads()/a warp collective; the scheduler releases a
// barrier when every thread of the block waits at it, and a warp collective when every
// lane of its mask waits at it. A barrier that some threads skip, or a collective that a
// lane of its mask never reaches, is reported instead of hanging.
//
// Global memory: each array argument is copied into its own mapping between two
// inaccessible guard pages, flush against one of them (the trailing one by default, the
// leading one on request), the slack on the other side filled with a canary. An access
// across the flush side faults at once; a write into the slack is caught by the canary
// check after the launch; either becomes an error message naming the kernel and argument.
//
// With GLSIM_ANALYSIS defined (the analysis build, see sim_analysis.h) every global and
// shared memory access of a simulated thread is also a scheduling point, so that a warp's
// lanes issue each instruction together, and the accesses are measured and checked.
#pragma once
#include "cuda_sim.h"

#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace glsim {

uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

enum State { RUNNABLE, WAIT_BARRIER, WAIT_WARP, DONE, WAIT_ACCESS };

struct Fiber {
    jmp_buf env;
    ucontext_t uc;
    char* stack = nullptr;  // mapping: guard page, then the stack
    size_t mapped = 0;
    int state = DONE;
    unsigned tid = 0;  // linear thread index in the block
    uint3 idx{0, 0, 0};
    unsigned mask = 0;             // mask of the pending warp collective
    unsigned long long deposit = 0;  // this lane's value in it
    unsigned group = 0;            // lanes released together in the last collective
    int barriers = 0;              // __syncthreads() calls so far
#ifdef GLSIM_ANALYSIS
    struct {
        uintptr_t addr, pc;
        unsigned size;
        unsigned char write, atomic;
    } access;                      // the pending memory access (state WAIT_ACCESS)
    unsigned long long last_collective = 0;  // id of the last warp collective this lane took part in
#endif
};

const size_t kStack = 256 * 1024;
const size_t kMaxThreads = 1024;
const size_t kMaxDynamicShared = 48 * 1024;

struct Guarded {
    void* original;
    size_t nbytes;
    char* base;     // mapping start (guard page)
    size_t mapped;  // mapping size
    char* data;     // where the kernel sees the array
    int arg;        // argument position
};

struct Runtime {
    jmp_buf sched_env;
    sigjmp_buf fault_env;
    ucontext_t creator;
    Fiber* cur = nullptr;
    std::vector<Fiber*> fibers;
    bool fibers_valid = false;
    void (*body)(void*) = nullptr;
    void* body_ctx = nullptr;
    unsigned long long warp_values[32][32];  // [warp][lane] of the last released collective
    std::vector<Guarded> guarded;
    void* fault_addr = nullptr;
    long page = 4096;
    char* altstack = nullptr;
    bool in_fiber = false;  // a simulated thread (not the scheduler) is running
};
static Runtime R;

GLSIM_RT static void fiber_main(unsigned lo, unsigned hi) {
    Fiber* f = reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | (uintptr_t)lo);
    if (_setjmp(f->env) == 0) setcontext(&R.creator);
    for (;;) {
        R.body(R.body_ctx);
        f->state = DONE;
        if (_setjmp(f->env) == 0) _longjmp(R.sched_env, 1);
    }
}

GLSIM_RT static void destroy_fibers() {
    for (Fiber* f : R.fibers) {
        if (f->stack) munmap(f->stack, f->mapped);
        delete f;
    }
    R.fibers.clear();
    R.fibers_valid = true;
}

GLSIM_RT static void ensure_fibers(size_t n) {
    if (!R.fibers_valid) destroy_fibers();
    while (R.fibers.size() < n) {
        Fiber* f = new Fiber();
        f->mapped = kStack + R.page;
        f->stack = (char*)mmap(nullptr, f->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(f->stack, R.page, PROT_NONE);  // stack overflow faults here
        getcontext(&f->uc);
        f->uc.uc_stack.ss_sp = f->stack + R.page;
        f->uc.uc_stack.ss_size = kStack;
        f->uc.uc_link = nullptr;
        uintptr_t p = (uintptr_t)f;
        makecontext(&f->uc, (void (*)())fiber_main, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
        swapcontext(&R.creator, &f->uc);  // runs fiber_main up to its first _setjmp
        R.fibers.push_back(f);
    }
}

GLSIM_RT static inline void yield_as(int state) {
    Fiber* f = R.cur;
    f->state = state;
    if (_setjmp(f->env) == 0) _longjmp(R.sched_env, 1);
    thread_idx = f->idx;  // resumed: restore this thread's index
}

GLSIM_RT void syncthreads() {
    R.cur->barriers++;
    yield_as(WAIT_BARRIER);
}

GLSIM_RT void warp_collective(unsigned mask, unsigned long long bits) {
    Fiber* f = R.cur;
    f->mask = mask;
    f->deposit = bits;
    yield_as(WAIT_WARP);
}

GLSIM_RT unsigned long long warp_value(int lane) { return R.warp_values[R.cur->tid / 32][lane]; }
GLSIM_RT unsigned warp_group_mask() { return R.cur->group; }
GLSIM_RT int lane_id() { return (int)(R.cur->tid % 32); }

#ifdef GLSIM_ANALYSIS
}  // namespace glsim
#include "sim_analysis.h"
namespace glsim {
#endif

struct SimError {
    std::string message;
};

GLSIM_RT static std::string block_name() {
    char buf[96];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u)", block_idx.x, block_idx.y, block_idx.z);
    return buf;
}

// Runs one block to completion; returns an error message or "".
GLSIM_RT static std::string run_block(unsigned nthreads) {
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber* f = R.fibers[t];
        f->state = RUNNABLE;
        f->tid = t;
        f->idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
        f->barriers = 0;
    }
    const unsigned nwarps = (nthreads + 31) / 32;
    for (;;) {
        for (unsigned t = 0; t < nthreads; ++t) {
            Fiber* f = R.fibers[t];
            if (f->state != RUNNABLE) continue;
            R.cur = f;
            thread_idx = f->idx;
            R.in_fiber = true;
            if (_setjmp(R.sched_env) == 0) _longjmp(f->env, 1);
            R.in_fiber = false;
        }
#ifdef GLSIM_ANALYSIS
        if (analysis::issue_accesses(nthreads)) continue;  // lanes at a memory access go first
#endif
        unsigned done = 0, at_barrier = 0, runnable = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            const int s = R.fibers[t]->state;
            done += s == DONE;
            at_barrier += s == WAIT_BARRIER;
        }
        if (done == nthreads) return "";
        if (at_barrier == nthreads) {
            for (unsigned t = 0; t < nthreads; ++t) R.fibers[t]->state = RUNNABLE;
#ifdef GLSIM_ANALYSIS
            analysis::barrier_released();
#endif
            continue;
        }
        // Warp collectives: release a warp's waiting lanes once every lane of their masks waits.
        for (unsigned w = 0; w < nwarps; ++w) {
            unsigned present = 0, waiting = 0, wanted = 0;
            for (unsigned l = 0; l < 32 && w * 32 + l < nthreads; ++l) {
                Fiber* f = R.fibers[w * 32 + l];
                present |= 1u << l;
                if (f->state == WAIT_WARP) { waiting |= 1u << l; wanted |= f->mask; }
            }
            if (!waiting || (wanted & present & ~waiting)) continue;
#ifdef GLSIM_ANALYSIS
            analysis::collective_released(w, waiting);
#endif
            for (unsigned l = 0; l < 32; ++l)
                if ((waiting >> l) & 1u) {
                    Fiber* f = R.fibers[w * 32 + l];
                    R.warp_values[w][l] = f->deposit;
                    f->group = waiting;
                    f->state = RUNNABLE;
                }
            ++runnable;
        }
        if (runnable) continue;
        // Nothing can run: the block would hang on a GPU (or misbehave). Say why.
        char buf[512];
        if (at_barrier) {
            unsigned t_wait = 0, t_other = 0;
            bool have_wait = false, have_other = false;
            for (unsigned t = 0; t < nthreads; ++t) {
                const int s = R.fibers[t]->state;
                if (s == WAIT_BARRIER && !have_wait) { t_wait = t; have_wait = true; }
                if (s != WAIT_BARRIER && !have_other) { t_other = t; have_other = true; }
            }
            std::snprintf(buf, sizeof buf,
                          "divergent __syncthreads() in %s: %u of %u threads wait at a barrier "
                          "(thread %u at its barrier #%d) while the others %s (thread %u, %d barriers)",
                          block_name().c_str(), at_barrier, nthreads, t_wait,
                          R.fibers[t_wait]->barriers, done ? "have exited or wait elsewhere" : "wait elsewhere",
                          t_other, R.fibers[t_other]->barriers);
        } else {
            std::snprintf(buf, sizeof buf,
                          "warp collective in %s can never complete: a lane named in its mask has "
                          "exited or is not in the block", block_name().c_str());
        }
        return buf;
    }
}

GLSIM_RT static void on_fault(int, siginfo_t* info, void*) {
    R.fault_addr = info->si_addr;
    siglongjmp(R.fault_env, 1);
}

GLSIM_RT static std::string describe_fault() {
    const char* a = (const char*)R.fault_addr;
    char buf[512];
    char where[160];
    if (R.cur)
        std::snprintf(where, sizeof where, "%s thread (%u,%u,%u)", block_name().c_str(), R.cur->idx.x,
                      R.cur->idx.y, R.cur->idx.z);
    else
        std::snprintf(where, sizeof where, "%s", block_name().c_str());
    for (const Guarded& g : R.guarded) {
        const char* end = g.data + g.nbytes;
        if (a >= g.base && a < g.base + g.mapped) {
            if (a >= end)
                std::snprintf(buf, sizeof buf,
                              "out-of-bounds global memory access in %s: argument %d (%zu bytes) "
                              "accessed at byte offset %ld, past its end", where, g.arg, g.nbytes,
                              (long)(a - g.data));
            else
                std::snprintf(buf, sizeof buf,
                              "out-of-bounds global memory access in %s: argument %d (%zu bytes) "
                              "accessed at byte offset %ld, before its start", where, g.arg, g.nbytes,
                              (long)(a - g.data));
            return buf;
        }
    }
    for (Fiber* f : R.fibers)
        if (a >= f->stack && a < f->stack + R.page) {
            std::snprintf(buf, sizeof buf, "stack overflow in %s (simulated stacks hold %zu KiB)", where,
                          kStack / 1024);
            return buf;
        }
    std::snprintf(buf, sizeof buf,
                  "invalid memory access in %s at address %p, outside every array argument", where,
                  (void*)a);
    return buf;
}

static const unsigned char kCanary = 0xA5;

// at_start == 0: the array ends flush against the trailing guard page (reads and writes past
// the end fault; writes before the start are caught by the leading canary). at_start != 0:
// the array starts flush after the leading guard page (reads and writes before the start
// fault; writes past the end are caught by the trailing canary).
GLSIM_RT static void guard_arrays(void** args, int narrays, const int* arg_index, const unsigned long long* nbytes,
                         int at_start) {
    for (int j = 0; j < narrays; ++j) {
        void** slot = (void**)args[arg_index[j]];
        void* original = *slot;
        bool shared = false;
        for (const Guarded& g : R.guarded)
            if (g.original == original && g.nbytes == nbytes[j]) { *slot = g.data; shared = true; break; }
        if (shared) continue;
        Guarded g;
        g.original = original;
        g.nbytes = nbytes[j];
        g.arg = arg_index[j];
        const size_t pages = (g.nbytes + R.page - 1) / R.page;
        g.mapped = (pages + 2) * R.page;
        g.base = (char*)mmap(nullptr, g.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char* tail_guard = g.base + (pages + 1) * R.page;
        g.data = at_start ? g.base + R.page : tail_guard - g.nbytes;
        std::memset(g.base + R.page, kCanary, g.data - (g.base + R.page));
        std::memset(g.data + g.nbytes, kCanary, tail_guard - (g.data + g.nbytes));
        if (g.nbytes) std::memcpy(g.data, original, g.nbytes);
        mprotect(g.base, R.page, PROT_NONE);
        mprotect(tail_guard, R.page, PROT_NONE);
        *slot = g.data;
        R.guarded.push_back(g);
    }
}

GLSIM_RT static std::string unguard_arrays(bool copy_back) {
    std::string err;
    for (Guarded& g : R.guarded) {
        const char* tail_guard = g.base + g.mapped - R.page;
        for (char* p = g.base + R.page; p < tail_guard && err.empty(); ++p) {
            if (p == g.data) p += g.nbytes;
            if (p < tail_guard && (unsigned char)*p != kCanary) {
                char buf[256];
                std::snprintf(buf, sizeof buf,
                              "out-of-bounds global memory write: argument %d (%zu bytes) was written "
                              "at byte offset %ld, %s", g.arg, g.nbytes, (long)(p - g.data),
                              p < g.data ? "before its start" : "past its end");
                err = buf;
            }
        }
        if (copy_back && g.nbytes) std::memcpy(g.original, g.data, g.nbytes);
        munmap(g.base, g.mapped);
    }
    R.guarded.clear();
    return err;
}

GLSIM_RT static int launch(void (*body)(void*), void* ctx, const unsigned* grid, const unsigned* block,
                  unsigned long long shared_bytes, void** args, int narrays, const int* arg_index,
                  const unsigned long long* nbytes, int guard_at_start, char* err, int errlen) {
    R.page = sysconf(_SC_PAGESIZE);
    auto fail = [&](const std::string& m) {
        std::snprintf(err, errlen, "%s", m.c_str());
        return 1;
    };
    const unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    char buf[256];
    if (block[0] == 0 || block[1] == 0 || block[2] == 0 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) {
        std::snprintf(buf, sizeof buf, "invalid launch: grid (%u,%u,%u) and block (%u,%u,%u) must be positive",
                      grid[0], grid[1], grid[2], block[0], block[1], block[2]);
        return fail(buf);
    }
    if (nthreads > kMaxThreads || block[0] > 1024 || block[1] > 1024 || block[2] > 64) {
        std::snprintf(buf, sizeof buf,
                      "invalid launch: block (%u,%u,%u) = %llu threads; a block holds at most 1024 "
                      "threads, (1024, 1024, 64) per dimension", block[0], block[1], block[2], nthreads);
        return fail(buf);
    }
    if (grid[0] > 2147483647u || grid[1] > 65535u || grid[2] > 65535u) {
        std::snprintf(buf, sizeof buf, "invalid launch: grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)",
                      grid[0], grid[1], grid[2]);
        return fail(buf);
    }
    if (shared_bytes > kMaxDynamicShared) {
        std::snprintf(buf, sizeof buf,
                      "invalid launch: %llu bytes of dynamic shared memory; the device allows %zu "
                      "without opting in", shared_bytes, kMaxDynamicShared);
        return fail(buf);
    }
    ensure_fibers(nthreads);
    R.body = body;
    R.body_ctx = ctx;
    R.cur = nullptr;
    block_dim = dim3{block[0], block[1], block[2]};
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_idx = uint3{0, 0, 0};

    if (!R.altstack) R.altstack = (char*)std::malloc(1 << 16);
    stack_t ss, old_ss;
    ss.ss_sp = R.altstack;
    ss.ss_size = 1 << 16;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_ss);
    struct sigaction sa, old_segv, old_bus;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);

    std::string message;
#ifdef GLSIM_ANALYSIS
    guard_at_start = 1;  // arrays start page-aligned, as device allocations are 256-byte aligned
#endif
    guard_arrays(args, narrays, arg_index, nbytes, guard_at_start);
#ifdef GLSIM_ANALYSIS
    analysis::launch_begin((unsigned)nthreads);
#endif
    if (sigsetjmp(R.fault_env, 1) == 0) {
        for (unsigned bz = 0; bz < grid[2] && message.empty(); ++bz)
            for (unsigned by = 0; by < grid[1] && message.empty(); ++by)
                for (unsigned bx = 0; bx < grid[0] && message.empty(); ++bx) {
                    block_idx = uint3{bx, by, bz};
#ifdef GLSIM_ANALYSIS
                    analysis::block_begin();
#endif
                    message = run_block((unsigned)nthreads);
                }
    } else {
        message = describe_fault();
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);
    if (!message.empty()) R.fibers_valid = false;  // fibers were abandoned mid-kernel
#ifdef GLSIM_ANALYSIS
    R.in_fiber = false;
    const std::string found = analysis::launch_end();
    if (message.empty()) message = found;
#endif
    const std::string canary = unguard_arrays(true);
    if (message.empty()) message = canary;
    if (!message.empty()) return fail(message);
    return 0;
}

// Calls kernel k with its arguments unpacked from args (pointers to each value).
template <typename... A> struct KernelCall {
    void (*kernel)(A...);
    void** args;
    template <size_t... I> void call(std::index_sequence<I...>) {
        kernel(*static_cast<typename std::decay<A>::type*>(args[I])...);
    }
    static void run(void* self) { static_cast<KernelCall*>(self)->call(std::index_sequence_for<A...>{}); }
};

// Checks each argument against the kernel's parameter: an array for a pointer, a NumPy scalar
// of the same size for a value (arg_sizes[i] = 0 for an array, else the scalar's byte size).
template <typename... A>
GLSIM_RT int check_arguments(const unsigned long long* arg_sizes, char* err, int errlen) {
    const bool pointer[] = {false, std::is_pointer<typename std::decay<A>::type>::value...};
    const unsigned long long size[] = {0, sizeof(typename std::decay<A>::type)...};
    for (int i = 0; i < (int)sizeof...(A); ++i) {
        if (pointer[i + 1] && arg_sizes[i] != 0) {
            std::snprintf(err, errlen, "argument %d: the kernel takes a pointer (pass an array), a %llu-byte "
                          "scalar was passed", i, arg_sizes[i]);
            return 1;
        }
        if (!pointer[i + 1] && arg_sizes[i] != size[i + 1]) {
            if (arg_sizes[i] == 0)
                std::snprintf(err, errlen, "argument %d: the kernel takes a %llu-byte value, an array was passed",
                              i, size[i + 1]);
            else
                std::snprintf(err, errlen, "argument %d: the kernel takes a %llu-byte value, a %llu-byte scalar "
                              "was passed (use the NumPy scalar type of the exact C type)", i, size[i + 1],
                              arg_sizes[i]);
            return 1;
        }
    }
    return 0;
}

template <typename... A>
GLSIM_RT int launch_kernel(void (*kernel)(A...), int nargs, const unsigned* grid, const unsigned* block,
                           unsigned long long shared_bytes, void** args, const unsigned long long* arg_sizes,
                           int narrays, const int* arg_index, const unsigned long long* nbytes, int guard_at_start,
                           char* err, int errlen) {
    if (nargs != (int)sizeof...(A)) {
        std::snprintf(err, errlen, "the kernel takes %d arguments, %d were passed", (int)sizeof...(A), nargs);
        return 1;
    }
    if (check_arguments<A...>(arg_sizes, err, errlen)) return 1;
    KernelCall<A...> call{kernel, args};
    return launch(&KernelCall<A...>::run, &call, grid, block, shared_bytes, args, narrays, arg_index, nbytes,
                  guard_at_start, err, errlen);
}

}  // namespace glsim
