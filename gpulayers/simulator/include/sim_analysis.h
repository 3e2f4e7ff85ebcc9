// sim_analysis.h -- the analysis mode of the CPU kernel simulator (GLSIM_ANALYSIS).
//
// The kernel translation unit is compiled with g++ -fsanitize=thread and linked without
// libtsan: every load and store the compiler emits calls one of the __tsan_* hooks below,
// whose return address identifies the instruction. The hook classifies the address (an
// array argument: global memory; this library's thread-local block, where __shared__
// variables live: shared memory; anything else, such as the thread's stack: ignored),
// parks the simulated thread in state WAIT_ACCESS and yields to the scheduler.
//
// Warp model: the scheduler (run_block in sim_runtime.h) first lets every runnable thread
// run to its next access, barrier or warp collective. Then, in each warp, the lanes waiting at
// the lowest instruction address issue that instruction together: one request. Lanes
// elsewhere are inactive for it and issue later. Lanes thus advance in lockstep, and a loop
// whose trip count differs between lanes runs its extra iterations with the other lanes
// inactive. Lowest address first is the reconvergence order of structured code as the host
// compiler lays it out; it holds for loops with per-lane trip counts and for branches around
// code without memory accesses, not always for a branch around an access inside a loop (lanes
// that skip it run on to the next iteration's accesses: the requests split, or, when the next
// iteration reaches the skipped access again, may group lanes of two iterations). Barriers and
// collectives are released only when no lane waits at an access.
//
// Per request (Nsight Compute's definitions): global loads, stores and atomics count their
// 32-byte sectors and the ideal (the fewest sectors that could hold the bytes the active
// lanes asked for); DRAM traffic is the number of distinct sectors read and written over the
// launch, each counted once (a perfect L2); shared memory counts wavefronts over 32 banks of
// 4 bytes (lanes reading one 32-bit word are a broadcast; 8-byte accesses are served per
// half-warp and 16-byte ones per quarter-warp) against the ideal.
//
// Hazards: shared memory RAW/WAR/WAW between two threads of a block with no __syncthreads()
// between them (lanes of one warp count as ordered only after a warp collective or
// __syncwarp() both took part in, never implicitly); reads of shared bytes that nothing in
// the block has written (shared memory is filled with 0xFF bytes at each block start);
// global memory: two different threads writing the same bytes (unless a barrier of their
// block separates them), or a thread reading bytes that another block writes. Atomics are
// exempt. Arrays start page-aligned, as device allocations are.
#pragma once
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" void* __tls_get_addr(void*);
// Generated with each library (simulator/__init__.py): the extern __shared__ arrays' addresses.
extern "C" int glsim_dynamic_shared(void** out, int max);

namespace glsim {
namespace analysis {

enum Space { GLOBAL = 0, SHARED = 1 };
enum Kind { RAW = 0, WAR = 1, WAW = 2, UNINIT = 3 };

// Exported to Python (gpulayers/simulator/analysis.py mirrors both layouts).
struct HazardOut {
    int kind, space;
    unsigned long long pc1, pc2;  // module offsets of the two instructions (pc1 = 0: none)
    unsigned block1[3], thread1[3], block2[3], thread2[3];
    int arg;             // global: argument index; shared: -1
    long long offset;    // byte offset in that argument, or in shared memory
    unsigned long long count;  // occurrences with the same kind, space and instructions
};
struct ReportOut {
    unsigned long long load_requests, load_sectors, load_ideal_sectors;
    unsigned long long store_requests, store_sectors, store_ideal_sectors;
    unsigned long long atomic_requests, atomic_sectors;
    unsigned long long dram_read_bytes, dram_write_bytes;
    unsigned long long shared_requests, shared_wavefronts, shared_ideal_wavefronts;
    unsigned long long hazard_count;  // accesses with a hazard (each lane's access counts once)
    unsigned long long shared_bytes;  // dynamic shared memory the launch gave
    int hazards_stored;               // distinct (kind, space, instruction pair), at most kMaxHazards
    int global_hazards_checked;       // 0 when the arrays were too large to shadow
};

const int kMaxHazards = 256;
const size_t kMaxShadowBytes = 6u << 20;  // global hazard shadows are kept up to this many array bytes

struct Rec {  // one access, for ordering checks
    unsigned block = 0;
    int tid = -1;              // -1: none
    unsigned epoch = 0;        // barriers its block had passed
    unsigned long long sync = 0;  // __syncwarp releases its warp had seen
    uint32_t pc = 0;
};
struct Cell {  // per byte of shared memory, and of a global array
    Rec w, r1, r2;        // last write; a reader, and a reader from another warp or block than r1
    unsigned char w_atomic, init;
};
struct Array {
    uintptr_t lo, hi, map_lo, map_hi;
    int arg;
    std::vector<unsigned char> sectors;  // bit 0 read from DRAM, bit 1 written
    std::vector<Cell> cells;
};
struct Release {  // a __syncwarp: its id in the warp, and the lanes it ordered
    unsigned long long id;
    unsigned lanes;
};

struct State {
    bool active = false;
    bool in_hook = false;  // the analysis' own (instrumented) library code calls the hooks too
    bool access_reported = false;
    std::string error;
    ReportOut report;
    std::vector<HazardOut> hazards;
    std::unordered_map<std::string, int> hazard_index;
    std::vector<Array> arrays;
    int last_array = 0;
    uintptr_t sh_lo = 0, sh_hi = 0;
    std::vector<Cell> shared;
    std::vector<uint32_t> shared_touched;  // offsets whose cells this block changed
    std::vector<std::pair<uintptr_t, uintptr_t>> dynamic;  // [usable end, declared end) of extern __shared__ arrays
    bool track_global = false;
    unsigned nthreads = 0, block_linear = 0, epoch = 0;
    unsigned long long warp_syncs[32];
    std::vector<Release> releases[32];
    uintptr_t module_base = 0;
};
static State A;

GLSIM_RT static uintptr_t module_base() {
    Dl_info info;
    dladdr((void*)&module_base, &info);
    return (uintptr_t)info.dli_fbase;
}

GLSIM_RT static int find_tls(dl_phdr_info* info, size_t, void* out) {
    if ((uintptr_t)info->dlpi_addr != A.module_base) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i)
        if (info->dlpi_phdr[i].p_type == PT_TLS) *(size_t*)out = info->dlpi_phdr[i].p_memsz;
    return 1;
}

// This library's thread-local block: every __shared__ variable of the kernels.
GLSIM_RT static void locate_shared() {
    A.sh_lo = A.sh_hi = 0;
    size_t size = 0;
    dl_iterate_phdr(find_tls, &size);
    Dl_info info;
    if (!size || !dladdr((void*)&locate_shared, &info)) return;
    void* handle = dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_LAZY);
    if (!handle) return;
    size_t modid = 0;
    if (dlinfo(handle, RTLD_DI_TLS_MODID, &modid) == 0 && modid) {
        struct { unsigned long module, offset; } index = {modid, 0};
        A.sh_lo = (uintptr_t)__tls_get_addr(&index);
        A.sh_hi = A.sh_lo + size;
    }
    dlclose(handle);
}

GLSIM_RT static void decode(unsigned block, int tid, unsigned* b, unsigned* t) {
    b[0] = block % grid_dim.x;
    b[1] = (block / grid_dim.x) % grid_dim.y;
    b[2] = block / (grid_dim.x * grid_dim.y);
    t[0] = tid % block_dim.x;
    t[1] = (tid / block_dim.x) % block_dim.y;
    t[2] = tid / (block_dim.x * block_dim.y);
}

// Records a hazard; an access (one lane, all its bytes) is reported at most once.
GLSIM_RT static void hazard(int kind, int space, const Rec& first, const Rec& second, int arg, long long offset) {
    if (A.access_reported) return;
    A.access_reported = true;
    A.report.hazard_count++;
    char key[96];
    std::snprintf(key, sizeof key, "%d/%d/%u/%u", kind, space, first.pc, second.pc);
    auto it = A.hazard_index.find(key);
    if (it != A.hazard_index.end()) {
        A.hazards[it->second].count++;
        return;
    }
    if ((int)A.hazards.size() >= kMaxHazards) return;
    HazardOut h;
    std::memset(&h, 0, sizeof h);
    h.kind = kind;
    h.space = space;
    h.pc1 = first.pc;
    h.pc2 = second.pc;
    if (first.tid >= 0) decode(first.block, first.tid, h.block1, h.thread1);
    decode(second.block, second.tid, h.block2, h.thread2);
    h.arg = arg;
    h.offset = offset;
    h.count = 1;
    A.hazard_index[key] = (int)A.hazards.size();
    A.hazards.push_back(h);
}

GLSIM_RT static Array* find_array(uintptr_t a) {
    const int n = (int)A.arrays.size();
    if (n == 0) return nullptr;
    Array* last = &A.arrays[A.last_array < n ? A.last_array : 0];
    if (a >= last->map_lo && a < last->map_hi) return last;
    for (int i = 0; i < n; ++i)
        if (a >= A.arrays[i].map_lo && a < A.arrays[i].map_hi) {
            A.last_array = i;
            return &A.arrays[i];
        }
    return nullptr;
}

GLSIM_RT static void out_of_bounds(const char* what) {
    if (!A.error.empty()) return;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s in block (%u,%u,%u) thread (%u,%u,%u)", what, block_idx.x, block_idx.y,
                  block_idx.z, R.cur->idx.x, R.cur->idx.y, R.cur->idx.z);
    A.error = buf;
}

// Called by the hooks on every instrumented access.
GLSIM_RT static void on_access(void* p, unsigned size, bool write, bool atomic, void* pc) {
    if (!A.active || !R.in_fiber || A.in_hook || size == 0) return;
    A.in_hook = true;  // the library code used below is instrumented too
    const uintptr_t a = (uintptr_t)p;
    bool tracked = false;
    if (a >= A.sh_lo && a < A.sh_hi) {
        tracked = true;
        for (const auto& d : A.dynamic)
            if (a + size > d.first && a < d.second) {
                char buf[160];
                std::snprintf(buf, sizeof buf, "dynamic shared memory %s past the %llu bytes the launch gave",
                              write ? "write" : "read", (unsigned long long)A.report.shared_bytes);
                out_of_bounds(buf);
            }
    } else {
        Array* arr = find_array(a);
        if (arr && (a < arr->lo || a + size > arr->hi)) {
            char buf[200];
            std::snprintf(buf, sizeof buf, "out-of-bounds global memory %s: argument %d (%zu bytes) accessed at byte "
                          "offset %ld", write ? "write" : "read", arr->arg, (size_t)(arr->hi - arr->lo),
                          (long)(a - arr->lo));
            out_of_bounds(buf);
            arr = nullptr;
        }
        tracked = arr != nullptr;  // else the thread's stack, the runtime's own data, or out of bounds
    }
    A.in_hook = false;
    if (!tracked) return;
    Fiber* f = R.cur;
    f->access.addr = a;
    f->access.pc = (uintptr_t)pc;
    f->access.size = size;
    f->access.write = write;
    f->access.atomic = atomic;
    yield_as(WAIT_ACCESS);
}

// Is `first` (an earlier access) ordered before an access by thread tid of the running block?
// Different blocks: never. Same block: a __syncthreads() between them, or (same warp) a
// __syncwarp() both lanes took part in.
GLSIM_RT static bool ordered(const Rec& first, int tid) {
    if (first.tid < 0) return true;
    if (first.block != A.block_linear) return false;
    if (first.tid == tid || first.epoch < A.epoch) return true;
    if (first.tid / 32 != tid / 32) return false;
    const unsigned both = (1u << (first.tid % 32)) | (1u << (tid % 32));
    const std::vector<Release>& rel = A.releases[tid / 32];
    for (size_t i = rel.size(); i-- > 0 && rel[i].id > first.sync;)
        if ((rel[i].lanes & both) == both) return true;
    return false;
}

GLSIM_RT static Rec current(Fiber* f) {
    Rec r;
    r.block = A.block_linear;
    r.tid = (int)f->tid;
    r.epoch = A.epoch;
    r.sync = A.warp_syncs[f->tid / 32];
    r.pc = (uint32_t)(f->access.pc - A.module_base);
    return r;
}

GLSIM_RT static bool same_group(const Rec& a, const Rec& b) {  // the same block and warp
    return a.block == b.block && a.tid / 32 == b.tid / 32;
}

// One byte: checks the access `me` against what the cell remembers, then records it.
// Plain accesses race with any unordered access of another thread that writes; atomics race
// only with plain accesses. `shared`: also report reads of never-written bytes.
GLSIM_RT static void check_cell(Cell& c, const Rec& me, bool write, bool atomic, int space, int arg, long long off) {
    if (space == SHARED && !c.init && !write && !atomic) {
        Rec none;
        hazard(UNINIT, SHARED, none, me, -1, off);
    }
    if (write || atomic) {
        if (c.w.tid >= 0 && !(atomic && c.w_atomic) && !ordered(c.w, me.tid)) hazard(WAW, space, c.w, me, arg, off);
        if (c.r1.tid >= 0 && !ordered(c.r1, me.tid)) hazard(WAR, space, c.r1, me, arg, off);
        else if (c.r2.tid >= 0 && !ordered(c.r2, me.tid)) hazard(WAR, space, c.r2, me, arg, off);
        c.w = me;
        c.w_atomic = atomic;
        c.r1.tid = c.r2.tid = -1;
        c.init = 1;
    } else {
        if (c.w.tid >= 0 && !ordered(c.w, me.tid)) hazard(RAW, space, c.w, me, arg, off);
        if (c.r1.tid < 0 || c.r1.tid == me.tid && c.r1.block == me.block) c.r1 = me;
        else if (!same_group(c.r1, me)) c.r2 = me;  // keep one reader of another warp or block
        c.init = 1;  // report an uninitialised byte once
    }
}

GLSIM_RT static void shared_hazards(Fiber* f) {
    const Rec me = current(f);
    A.access_reported = false;
    for (unsigned k = 0; k < f->access.size; ++k) {
        const uint32_t off = (uint32_t)(f->access.addr + k - A.sh_lo);
        Cell& c = A.shared[off];
        if (c.w.tid < 0 && c.r1.tid < 0 && !c.init) A.shared_touched.push_back(off);
        check_cell(c, me, f->access.write, f->access.atomic, SHARED, -1, off);
    }
}

GLSIM_RT static void global_hazards(Fiber* f, Array* arr) {
    if (arr->cells.empty()) return;
    const Rec me = current(f);
    const uintptr_t base = f->access.addr - arr->lo;
    A.access_reported = false;
    for (unsigned k = 0; k < f->access.size; ++k)
        check_cell(arr->cells[base + k], me, f->access.write, f->access.atomic, GLOBAL, arr->arg,
                   (long long)(base + k));
}

// Distinct 32-byte sectors touched, and the fewest sectors that could hold the bytes asked for.
GLSIM_RT static void sectors(Fiber** lanes, int n, unsigned long long& touched, unsigned long long& ideal) {
    std::vector<uintptr_t> secs;
    std::vector<std::pair<uintptr_t, uintptr_t>> spans;
    secs.reserve(2 * n);
    spans.reserve(n);
    for (int i = 0; i < n; ++i) {
        const uintptr_t a = lanes[i]->access.addr, e = a + lanes[i]->access.size;
        for (uintptr_t s = a >> 5; s <= (e - 1) >> 5; ++s) secs.push_back(s);
        spans.push_back({a, e});
    }
    std::sort(secs.begin(), secs.end());
    touched = std::unique(secs.begin(), secs.end()) - secs.begin();
    std::sort(spans.begin(), spans.end());
    uintptr_t bytes = 0, lo = 0, hi = 0;
    bool open = false;
    for (auto& s : spans) {
        if (open && s.first <= hi) { hi = std::max(hi, s.second); continue; }
        if (open) bytes += hi - lo;
        lo = s.first; hi = s.second; open = true;
    }
    if (open) bytes += hi - lo;
    ideal = (bytes + 31) / 32;
}

// Wavefronts of one shared-memory request: per phase (the whole warp for accesses of up to
// 4 bytes, half-warps for 8, quarter-warps for 16 or more), the largest number of distinct
// 32-bit words in one bank; the ideal is the distinct words over 32.
GLSIM_RT static void wavefronts(Fiber** lanes, int n, unsigned long long& actual, unsigned long long& ideal) {
    const unsigned size = lanes[0]->access.size;
    const int per_phase = size <= 4 ? 32 : (size <= 8 ? 16 : 8);
    for (int phase = 0; phase < 32 / per_phase; ++phase) {
        std::vector<uintptr_t> words;
        for (int i = 0; i < n; ++i) {
            if ((int)(lanes[i]->tid % 32) / per_phase != phase) continue;
            const uintptr_t a = lanes[i]->access.addr - A.sh_lo, e = a + lanes[i]->access.size;
            for (uintptr_t w = a >> 2; w <= (e - 1) >> 2; ++w) words.push_back(w);
        }
        if (words.empty()) continue;
        std::sort(words.begin(), words.end());
        words.erase(std::unique(words.begin(), words.end()), words.end());
        unsigned per_bank[32] = {0};
        unsigned most = 0;
        for (uintptr_t w : words) most = std::max(most, ++per_bank[w % 32]);
        if (lanes[0]->access.atomic) {  // atomics on one word are served one lane at a time
            std::vector<uintptr_t> all;
            for (int i = 0; i < n; ++i)
                if ((int)(lanes[i]->tid % 32) / per_phase == phase) all.push_back((lanes[i]->access.addr - A.sh_lo) >> 2);
            std::sort(all.begin(), all.end());
            for (size_t i = 0, j = 0; i < all.size(); i = j) {
                while (j < all.size() && all[j] == all[i]) ++j;
                most = std::max(most, (unsigned)(j - i));
            }
        }
        actual += most;
        ideal += (words.size() + 31) / 32;
    }
}

GLSIM_RT static void issue(Fiber** lanes, int n) {
    // One instruction may touch both spaces through a generic pointer: split it.
    Fiber* shared[32];
    Fiber* global[32];
    int ns = 0, ng = 0;
    for (int i = 0; i < n; ++i) {
        const uintptr_t a = lanes[i]->access.addr;
        if (a >= A.sh_lo && a < A.sh_hi) shared[ns++] = lanes[i];
        else global[ng++] = lanes[i];
    }
    ReportOut& r = A.report;
    if (ns) {
        r.shared_requests++;
        wavefronts(shared, ns, r.shared_wavefronts, r.shared_ideal_wavefronts);
        for (int i = 0; i < ns; ++i) shared_hazards(shared[i]);
    }
    if (ng) {
        unsigned long long touched = 0, ideal = 0;
        sectors(global, ng, touched, ideal);
        const bool atomic = global[0]->access.atomic, write = global[0]->access.write;
        if (atomic) { r.atomic_requests++; r.atomic_sectors += touched; }
        else if (write) { r.store_requests++; r.store_sectors += touched; r.store_ideal_sectors += ideal; }
        else { r.load_requests++; r.load_sectors += touched; r.load_ideal_sectors += ideal; }
        for (int i = 0; i < ng; ++i) {
            Fiber* f = global[i];
            Array* arr = find_array(f->access.addr);
            const uintptr_t a = f->access.addr - arr->lo, e = a + f->access.size;
            // bit 0: read from DRAM (a read before any write of the launch: a perfect L2 serves
            // reads of sectors this launch wrote); bit 1: written
            for (uintptr_t s = a >> 5; s <= (e - 1) >> 5; ++s) {
                unsigned char& flags = arr->sectors[s];
                if ((atomic || !f->access.write) && !(flags & 2)) flags |= 1;
                if (atomic || f->access.write) flags |= 2;
            }
            if (A.track_global) global_hazards(f, arr);
        }
    }
}

// Each warp with lanes waiting at a memory access issues the instruction with the lowest
// address among them, with every lane waiting there. Returns whether anything was issued.
GLSIM_RT static bool issue_accesses(unsigned nthreads) {
    bool any = false;
    for (unsigned w = 0; w * 32 < nthreads; ++w) {
        uintptr_t best = UINTPTR_MAX;
        const unsigned end = std::min(nthreads, (w + 1) * 32);
        for (unsigned t = w * 32; t < end; ++t) {
            Fiber* f = R.fibers[t];
            if (f->state == WAIT_ACCESS && f->access.pc < best) best = f->access.pc;
        }
        if (best == UINTPTR_MAX) continue;
        Fiber* lanes[32];
        int n = 0;
        for (unsigned t = w * 32; t < end; ++t) {
            Fiber* f = R.fibers[t];
            if (f->state == WAIT_ACCESS && f->access.pc == best) {
                lanes[n++] = f;
                f->state = RUNNABLE;
            }
        }
        issue(lanes, n);
        any = true;
    }
    return any;
}

GLSIM_RT static void barrier_released() { A.epoch++; }

// A released warp collective: each __syncwarp() group (lanes with the same mask) orders the
// memory accesses of its lanes; shuffles and votes order nothing.
GLSIM_RT static void collective_released(unsigned warp, unsigned lanes) {
    unsigned done = 0;
    for (unsigned l = 0; l < 32; ++l) {
        if (!((lanes >> l) & 1u) || ((done >> l) & 1u)) continue;
        Fiber* f = R.fibers[warp * 32 + l];
        const unsigned group = f->mask & lanes;
        done |= group | (1u << l);
        if (!f->fence) continue;
        A.releases[warp].push_back(Release{++A.warp_syncs[warp], group});
    }
}

GLSIM_RT static void launch_begin(unsigned nthreads, unsigned long long shared_bytes) {
    A.active = true;
    A.error.clear();
    std::memset(&A.report, 0, sizeof A.report);
    A.report.shared_bytes = shared_bytes;
    A.hazards.clear();
    A.hazard_index.clear();
    A.module_base = module_base();
    A.nthreads = nthreads;
    locate_shared();
    A.shared.assign(A.sh_hi - A.sh_lo, Cell());
    A.shared_touched.clear();
    A.dynamic.clear();
    void* dyn[16];
    const int ndyn = glsim_dynamic_shared(dyn, 16);
    for (int i = 0; i < ndyn; ++i)
        A.dynamic.push_back({(uintptr_t)dyn[i] + shared_bytes, (uintptr_t)dyn[i] + kMaxDynamicShared});
    A.arrays.clear();
    A.last_array = 0;
    size_t total = 0;
    for (const Guarded& g : R.guarded) total += g.nbytes;
    A.track_global = total <= kMaxShadowBytes;
    A.report.global_hazards_checked = A.track_global;
    for (const Guarded& g : R.guarded) {
        Array arr;
        arr.lo = (uintptr_t)g.data;
        arr.hi = arr.lo + g.nbytes;
        arr.map_lo = (uintptr_t)g.base;
        arr.map_hi = arr.map_lo + g.mapped;
        arr.arg = g.arg;
        arr.sectors.assign((g.nbytes + 31) / 32 + 1, 0);
        if (A.track_global) arr.cells.assign(g.nbytes, Cell());
        A.arrays.push_back(std::move(arr));
    }
}

GLSIM_RT static void block_begin() {
    A.block_linear = block_idx.x + grid_dim.x * (block_idx.y + grid_dim.y * block_idx.z);
    A.epoch = 0;
    std::memset(A.warp_syncs, 0, sizeof A.warp_syncs);
    for (auto& r : A.releases) r.clear();
    if (A.sh_hi > A.sh_lo) {
        std::memset((void*)A.sh_lo, 0xFF, A.sh_hi - A.sh_lo);  // uninitialised shared memory is garbage
        for (uint32_t off : A.shared_touched) A.shared[off] = Cell();
        A.shared_touched.clear();
    }
}

GLSIM_RT static std::string launch_end() {
    A.active = false;
    for (const Array& arr : A.arrays)
        for (unsigned char s : arr.sectors) {
            A.report.dram_read_bytes += (s & 1) ? 32 : 0;
            A.report.dram_write_bytes += (s & 2) ? 32 : 0;
        }
    A.report.hazards_stored = (int)A.hazards.size();
    return A.error;
}

}  // namespace analysis

GLSIM_RT void atomic_access(void* p, unsigned size, void* pc) { analysis::on_access(p, size, true, true, pc); }

}  // namespace glsim

// The instrumentation's entry points (libtsan is not linked: these are the whole runtime).
#define GLSIM_TSAN_ACCESS(n)                                                                                     \
    GLSIM_RT void __tsan_read##n(void* p) { glsim::analysis::on_access(p, n, false, false, __builtin_return_address(0)); } \
    GLSIM_RT void __tsan_write##n(void* p) { glsim::analysis::on_access(p, n, true, false, __builtin_return_address(0)); } \
    GLSIM_RT void __tsan_unaligned_read##n(void* p) {                                                           \
        glsim::analysis::on_access(p, n, false, false, __builtin_return_address(0));                           \
    }                                                                                                            \
    GLSIM_RT void __tsan_unaligned_write##n(void* p) {                                                          \
        glsim::analysis::on_access(p, n, true, false, __builtin_return_address(0));                            \
    }
#define GLSIM_TSAN_ATOMIC(bits, type)                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_load(const volatile type* a, int) {                                    \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                          \
    GLSIM_RT void __tsan_atomic##bits##_store(volatile type* a, type v, int) {                                 \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                              \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_exchange(volatile type* a, type v, int) {                              \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_fetch_add(volatile type* a, type v, int) {                             \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_fetch_sub(volatile type* a, type v, int) {                             \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_fetch_and(volatile type* a, type v, int) {                             \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_fetch_or(volatile type* a, type v, int) {                              \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                      \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_fetch_xor(volatile type* a, type v, int) {                             \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    GLSIM_RT int __tsan_atomic##bits##_compare_exchange_strong(volatile type* a, type* c, type v, int, int) {  \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                                          \
    GLSIM_RT int __tsan_atomic##bits##_compare_exchange_weak(volatile type* a, type* c, type v, int, int) {    \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                                          \
    GLSIM_RT type __tsan_atomic##bits##_compare_exchange_val(volatile type* a, type c, type v, int, int) {     \
        glsim::atomic_access((void*)a, sizeof(type), __builtin_return_address(0));                             \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                      \
        return c;                                                                                              \
    }

extern "C" {
GLSIM_RT void __tsan_init() {}
GLSIM_RT void __tsan_func_entry(void*) {}
GLSIM_RT void __tsan_func_exit() {}
GLSIM_RT void __tsan_vptr_update(void**, void*) {}
GLSIM_RT void __tsan_vptr_read(void**) {}
GLSIM_RT void __tsan_read_range(void* p, unsigned long n) {
    glsim::analysis::on_access(p, (unsigned)n, false, false, __builtin_return_address(0));
}
GLSIM_RT void __tsan_write_range(void* p, unsigned long n) {
    glsim::analysis::on_access(p, (unsigned)n, true, false, __builtin_return_address(0));
}
GLSIM_TSAN_ACCESS(1)
GLSIM_TSAN_ACCESS(2)
GLSIM_TSAN_ACCESS(4)
GLSIM_TSAN_ACCESS(8)
GLSIM_TSAN_ACCESS(16)
GLSIM_TSAN_ATOMIC(8, unsigned char)
GLSIM_TSAN_ATOMIC(16, unsigned short)
GLSIM_TSAN_ATOMIC(32, unsigned int)
GLSIM_TSAN_ATOMIC(64, unsigned long long)
GLSIM_RT void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
GLSIM_RT void __tsan_atomic_signal_fence(int) {}

// Results of the last launch: the counters, and up to max_hazards distinct hazards.
GLSIM_RT int glsim_analysis_report(glsim::analysis::ReportOut* report, glsim::analysis::HazardOut* hazards,
                                   int max_hazards) {
    *report = glsim::analysis::A.report;
    const int n = std::min(max_hazards, (int)glsim::analysis::A.hazards.size());
    for (int i = 0; i < n; ++i) hazards[i] = glsim::analysis::A.hazards[i];
    return n;
}
}
