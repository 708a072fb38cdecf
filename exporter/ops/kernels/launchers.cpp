// ---- The launchers of plugins/common/kernels.h (static part of kernels.cpp; exporter/ops/aot.py puts the
// cubin tables above it). Not compiled on its own.
//
// Why it is written this way:
// - No link-time libcuda: CI and the TensorRT-RTX builder load plugin libraries on machines without a
//   driver, so libcuda.so.1 (or $EXPORTER_LIBCUDA) is dlopen'ed on the first launch and a missing driver
//   is CUDA_ERROR_NOT_INITIALIZED (3).
// - The few driver types and entry points used are declared here (ABI of cuda.h), no CUDA headers needed.
// - Modules belong to a context: each context gets its own CUfunction table, filled on first use of a
//   variant (cuModuleLoadData + cuModuleGetFunction under a mutex).
// - A cubin runs only on its own architecture (sm_90+ are Triton's 'a' targets) or, below 9.0, on a
//   later minor of the same major; no match is CUDA_ERROR_NO_BINARY_FOR_GPU (209).
// - Triton 3.8 kernel parameters: the non-constexpr arguments in order, then two device pointers
//   (global scratch, profile scratch; both null: every kernel here was checked to need none).
//   Block = num_warps * 32 threads, dynamic shared memory = the compiled size, no clusters.

namespace {

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUstream_st* CUstream;
typedef unsigned long long CUdeviceptr;

constexpr CUresult kSuccess = 0;
constexpr CUresult kInvalidValue = 1;         // CUDA_ERROR_INVALID_VALUE
constexpr CUresult kNotInitialized = 3;       // CUDA_ERROR_NOT_INITIALIZED: no libcuda.so.1
constexpr CUresult kInvalidContext = 201;     // CUDA_ERROR_INVALID_CONTEXT: no current context
constexpr CUresult kNoBinaryForGpu = 209;     // CUDA_ERROR_NO_BINARY_FOR_GPU
constexpr int kAttrCcMajor = 75;              // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kAttrCcMinor = 76;              // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
constexpr int kFuncAttrMaxDynamicShared = 8;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

struct Driver {
  CUresult (*cuInit)(unsigned int);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuCtxGetDevice)(CUdevice*);
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void**, void**);
  CUresult status;  // kSuccess once every entry point resolved and cuInit succeeded
};

template <typename F>
bool resolve(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  return *fn != nullptr;
}

const Driver& driver() {
  static Driver d = [] {
    Driver r{};
    r.status = kNotInitialized;
    const char* path = std::getenv("EXPORTER_LIBCUDA");  // tests: a missing or a fake driver
    void* lib = dlopen(path != nullptr && *path != '\0' ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return r;
    bool ok = resolve(lib, "cuInit", &r.cuInit) && resolve(lib, "cuCtxGetCurrent", &r.cuCtxGetCurrent) &&
              resolve(lib, "cuCtxGetDevice", &r.cuCtxGetDevice) &&
              resolve(lib, "cuDeviceGetAttribute", &r.cuDeviceGetAttribute) &&
              resolve(lib, "cuModuleLoadData", &r.cuModuleLoadData) &&
              resolve(lib, "cuModuleGetFunction", &r.cuModuleGetFunction) &&
              resolve(lib, "cuFuncSetAttribute", &r.cuFuncSetAttribute) &&
              resolve(lib, "cuLaunchKernel", &r.cuLaunchKernel);
    if (ok) r.status = r.cuInit(0);
    return r;
  }();  // thread-safe: a function-local static is initialised once
  return d;
}

struct ContextKernels {
  CUcontext ctx;
  int arch;  // index into kArchs of the cubins this context's device runs, or -1
  CUfunction fn[kNumVariants];
};

std::mutex g_mutex;
std::vector<ContextKernels*> g_contexts;  // never freed: a context's modules live as long as it does

// The cubin architecture a device of compute capability `cc` runs: its own, else (below 9.0) the
// highest earlier minor of its major.
int pick_arch(int cc) {
  int best = -1;
  for (int i = 0; i < kNumArchs; ++i) {
    int a = kArchs[i];
    if (a == cc) return i;
    if (cc < 90 && a < 90 && a / 10 == cc / 10 && a < cc && (best < 0 || a > kArchs[best])) best = i;
  }
  return best;
}

ContextKernels* context_kernels(const Driver& d, CUcontext ctx, CUresult* err) {
  for (ContextKernels* c : g_contexts)
    if (c->ctx == ctx) return c;
  CUdevice dev;
  int major = 0, minor = 0;
  if ((*err = d.cuCtxGetDevice(&dev)) != kSuccess) return nullptr;
  if ((*err = d.cuDeviceGetAttribute(&major, kAttrCcMajor, dev)) != kSuccess) return nullptr;
  if ((*err = d.cuDeviceGetAttribute(&minor, kAttrCcMinor, dev)) != kSuccess) return nullptr;
  ContextKernels* c = new ContextKernels{};
  c->ctx = ctx;
  c->arch = pick_arch(major * 10 + minor);
  g_contexts.push_back(c);
  return c;
}

// Launch op's kernel for `dtype` on the smallest compiled block >= need, grid (gx, gy, 1).
CUresult launch(int op, int dtype, int need, unsigned gx, unsigned gy, void* stream, void** params) {
  const Driver& d = driver();
  if (d.status != kSuccess) return d.status;
  if (gx == 0 || gy == 0) return kSuccess;
  CUcontext ctx = nullptr;
  CUresult err = d.cuCtxGetCurrent(&ctx);
  if (err != kSuccess) return err;
  if (ctx == nullptr) return kInvalidContext;
  CUfunction fn = nullptr;
  int v = -1;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    ContextKernels* c = context_kernels(d, ctx, &err);
    if (c == nullptr) return err;
    if (c->arch < 0) return kNoBinaryForGpu;
    for (int i = 0; i < kNumVariants; ++i) {
      const Variant& k = kVariants[i];
      if (k.op == op && k.dtype == dtype && k.arch == c->arch && k.block >= need &&
          (v < 0 || k.block < kVariants[v].block))
        v = i;
    }
    if (v < 0) return kInvalidValue;  // more tokens than the largest compiled block
    if (c->fn[v] == nullptr) {
      CUmodule module;
      CUfunction f;
      if ((err = d.cuModuleLoadData(&module, kVariants[v].cubin)) != kSuccess) return err;
      if ((err = d.cuModuleGetFunction(&f, module, kVariants[v].name)) != kSuccess) return err;
      if (kVariants[v].shared > 49152 &&
          (err = d.cuFuncSetAttribute(f, kFuncAttrMaxDynamicShared, kVariants[v].shared)) != kSuccess)
        return err;
      c->fn[v] = f;
    }
    fn = c->fn[v];
  }
  const Variant& k = kVariants[v];
  return d.cuLaunchKernel(fn, gx, gy, 1, 32u * k.warps, 1, 1, k.shared, static_cast<CUstream>(stream), params,
                          nullptr);
}

bool bad_dtype(int dtype) { return dtype != 0 && dtype != 1; }

}  // namespace

extern "C" {

size_t exporter_topk_prune_workspace(int, int, int, int, int, int) { return 0; }
size_t exporter_evovit_select_workspace(int, int, int, int, int) { return 0; }
size_t exporter_evovit_restore_workspace(int, int, int, int, int) { return 0; }
size_t exporter_tome_merge_workspace(int, int, int, int, int, int) { return 0; }
size_t exporter_diffrate_reduce_workspace(int, int, int, int, int, int) { return 0; }
size_t exporter_hilo_attention_workspace(int, int, int, int, int, int, int) { return 0; }

int exporter_topk_prune(void* stream, int dtype, int B, int N, int C, int k, int fuse, const void* x,
                        const float* score, void* tokens, int64_t* idx, void*) {
  if (bad_dtype(dtype) || B < 0 || C < 1 || k < 1 || k >= N - 1 || (fuse != 0 && fuse != 1)) return kInvalidValue;
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&x, &score, &tokens, &idx, &N, &C, &k, &fuse, &scratch, &profile};
  return launch(kTopkPrune, dtype, N - 1, B, 1, stream, params);
}

int exporter_evovit_select(void* stream, int dtype, int B, int N, int C, int keep, const void* x, const float* g,
                           void* tokens, int64_t* idx, void*) {
  if (bad_dtype(dtype) || B < 0 || C < 1 || keep < 1 || keep >= N - 1) return kInvalidValue;
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&x, &g, &tokens, &idx, &N, &C, &keep, &scratch, &profile};
  return launch(kEvovitSelect, dtype, N - 1, B, 1, stream, params);
}

int exporter_evovit_restore(void* stream, int dtype, int B, int N, int C, int K, const void* x, const void* tokens,
                            const void* moved, const int64_t* idx, void* out, void*) {
  if (bad_dtype(dtype) || B < 0 || C < 1 || K < 1 || K >= N - 1) return kInvalidValue;
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&x, &tokens, &moved, &idx, &out, &N, &C, &K, &scratch, &profile};
  unsigned tiles = static_cast<unsigned>((C + kRestoreBlockC - 1) / kRestoreBlockC);
  return launch(kEvovitRestore, dtype, K, B, tiles, stream, params);
}

int exporter_tome_merge(void* stream, int dtype, int B, int N, int C, int Cm, int r, const void* x, const float* size,
                        const void* metric, void* tokens, float* size_out, int64_t* src, int64_t* dst, void*) {
  if (bad_dtype(dtype) || B < 0 || C < 1 || Cm < 1 || r < 1 || r > (N - 1) / 2) return kInvalidValue;
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&x, &size, &metric, &tokens, &size_out, &src, &dst, &N, &C, &Cm, &r, &scratch, &profile};
  return launch(kTomeMerge, dtype, (N + 1) / 2, B, 1, stream, params);
}

int exporter_diffrate_reduce(void* stream, int dtype, int B, int N, int C, int keep, int merge, const void* x,
                             const float* size, const float* score, void* tokens, float* size_out, int64_t* idx,
                             int64_t* dst, void*) {
  if (bad_dtype(dtype) || B < 0 || C < 1 || merge < 2 || merge >= keep || keep > N) return kInvalidValue;
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&x, &size, &score, &tokens, &size_out, &idx, &dst, &N, &C, &keep, &merge, &scratch, &profile};
  return launch(kDiffrateReduce, dtype, N - 1, B, 1, stream, params);
}

int exporter_hilo_attention(void* stream, int dtype, int B, int H, int W, int C, int window, int heads, const void* qkv,
                            const void* pad, void* out, void*) {
  // the cubins' tile holds kHiloRows tokens: windows up to 8x8; grid y = B * heads (at most 65535)
  if (bad_dtype(dtype) || B < 0 || H < 1 || W < 1 || heads < 1 || C < heads || C % heads != 0 || window < 1 ||
      window * window > kHiloRows || static_cast<long long>(B) * heads > 65535)
    return kInvalidValue;
  int head_dim = C / heads;
  int per_program = kHiloRows / (window * window);
  long long windows = static_cast<long long>((H + window - 1) / window) * ((W + window - 1) / window);
  CUdeviceptr scratch = 0, profile = 0;
  void* params[] = {&qkv, &pad, &out, &H, &W, &window, &heads, &head_dim, &per_program, &scratch, &profile};
  return launch(kHiloAttention, dtype, head_dim, static_cast<unsigned>((windows + per_program - 1) / per_program),
                static_cast<unsigned>(B * heads), stream, params);
}

}  // extern "C"
