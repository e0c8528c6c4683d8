// cuBLASLt matmuls with an algorithm chosen by measurement (included by kernels.cu).
//
//   y[M, N] = bf16(x[M, K] . W[N, K]^T)     bf16 in / out, float32 accumulation (as cuBLAS)
//
// At 17-64-row decode steps the 0.5B layer GEMMs are latency-bound, and cuBLASLt's heuristic's
// first choice is not always the fastest kernel it has for the shape: other tiles, cluster
// shapes and split-K settings can be. So:
//
//   - rl_lt_candidates lists algorithms for (M, N, K): the heuristic's answers, and each of
//     them again with split-K 2..16 where the algorithm takes split-K (checked with
//     cublasLtMatmulAlgoCheck, workspace within the caller's limit);
//   - rl_lt_time times them with cold weights (scratch copies in a CUDA graph); the caller
//     keeps one (lt_gemm.py);
//   - rl_lt_gemm runs the kept algorithm (opaque 64 bytes) on a stream, capturable in a graph.
//
// cuBLASLt is opened with dlopen (RLFLEET_CUBLASLT, else libcublasLt.so.12, .so.13): nothing
// is linked, so the library loads where cuBLASLt is absent (rl_lt_available says why not).
// Only the stable C ABI subset used here is declared (cublasLt.h of CUDA 12.x).

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace lt {

struct Algo {  // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct Heuristic {  // cublasLtMatmulHeuristicResult_t
  Algo algo;
  size_t workspace;
  int state;
  float waves;
  int reserved[4];
};
using Handle = void*;  // cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, ...

// enum values of cublasLt.h / library_types.h / cublas_api.h
constexpr int R_32F = 0, R_16BF = 14, COMPUTE_32F = 68, OP_T = 1;
constexpr int DESC_SCALE_TYPE = 1, DESC_TRANSA = 3, PREF_MAX_WORKSPACE = 1;
constexpr int CONFIG_ID = 0, CONFIG_TILE = 1, CONFIG_SPLITK = 2, CONFIG_REDUCTION = 3,
              CONFIG_SWIZZLE = 4, CONFIG_STAGES = 6, CONFIG_CLUSTER = 8;
constexpr int CAP_SPLITK = 0, CAP_REDUCTION_MASK = 1;
constexpr int REDUCTION_INPLACE = 1, REDUCTION_COMPUTE_TYPE = 2;

struct Api {
  int error = -1;  // 0: usable; else why not (1: no library, 2: a symbol missing, 3: create)
  Handle handle = nullptr;
  int (*create)(Handle*);
  size_t (*version)();
  int (*desc_create)(Handle*, int, int);
  int (*desc_set)(Handle, int, const void*, size_t);
  int (*layout_create)(Handle*, int, uint64_t, uint64_t, int64_t);
  int (*pref_create)(Handle*);
  int (*pref_set)(Handle, int, const void*, size_t);
  int (*pref_destroy)(Handle);
  int (*heuristic)(Handle, Handle, Handle, Handle, Handle, Handle, Handle, int, Heuristic*, int*);
  int (*check)(Handle, Handle, Handle, Handle, Handle, Handle, const Algo*, Heuristic*);
  int (*cap_get)(const Algo*, int, void*, size_t, size_t*);
  int (*config_set)(Algo*, int, const void*, size_t);
  int (*config_get)(const Algo*, int, void*, size_t, size_t*);
  int (*matmul)(Handle, Handle, const void*, const void*, Handle, const void*, Handle, const void*,
                const void*, Handle, void*, Handle, const Algo*, void*, size_t, cudaStream_t);
};

template <typename F>
bool sym(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

// the first of $env_var, name.so.12, name.so.13 that dlopen opens (NULL: none)
inline void* open_library(const char* env_var, const char* name) {
  const std::string base(name);
  const std::string v12 = base + ".so.12", v13 = base + ".so.13";
  const char* names[] = {getenv(env_var), v12.c_str(), v13.c_str()};
  for (const char* n : names)
    if (n && *n)
      if (void* lib = dlopen(n, RTLD_NOW | RTLD_LOCAL)) return lib;
  return nullptr;
}

inline Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = open_library("RLFLEET_CUBLASLT", "libcublasLt");
    if (!lib) {
      a.error = 1;
      return;
    }
    bool ok = sym(lib, "cublasLtCreate", a.create) && sym(lib, "cublasLtGetVersion", a.version) &&
              sym(lib, "cublasLtMatmulDescCreate", a.desc_create) &&
              sym(lib, "cublasLtMatmulDescSetAttribute", a.desc_set) &&
              sym(lib, "cublasLtMatrixLayoutCreate", a.layout_create) &&
              sym(lib, "cublasLtMatmulPreferenceCreate", a.pref_create) &&
              sym(lib, "cublasLtMatmulPreferenceSetAttribute", a.pref_set) &&
              sym(lib, "cublasLtMatmulPreferenceDestroy", a.pref_destroy) &&
              sym(lib, "cublasLtMatmulAlgoGetHeuristic", a.heuristic) &&
              sym(lib, "cublasLtMatmulAlgoCheck", a.check) &&
              sym(lib, "cublasLtMatmulAlgoCapGetAttribute", a.cap_get) &&
              sym(lib, "cublasLtMatmulAlgoConfigSetAttribute", a.config_set) &&
              sym(lib, "cublasLtMatmulAlgoConfigGetAttribute", a.config_get) &&
              sym(lib, "cublasLtMatmul", a.matmul);
    if (!ok) {
      a.error = 2;
      return;
    }
    a.error = a.create(&a.handle) ? 3 : 0;
  });
  return a;
}

// The descriptors of one (M, N, K): cuBLAS is column-major, so y^T[N, M] = W[N, K] . x^T[K, M]
// is "A = W (K x N, ld K) transposed, B = x (K x M, ld K), C = D = y (N x M, ld N)".
struct Problem {
  Handle op = nullptr, a = nullptr, b = nullptr, c = nullptr;
};

inline int problem(int M, int N, int K, Problem*& out) {
  static std::map<std::tuple<int, int, int>, Problem> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(M, N, K);
  auto it = cache.find(key);
  if (it != cache.end()) {
    out = &it->second;
    return 0;
  }
  Api& A = api();
  Problem p;
  int scale = R_32F, trans = OP_T, rc;
  if ((rc = A.desc_create(&p.op, COMPUTE_32F, R_32F)) ||
      (rc = A.desc_set(p.op, DESC_SCALE_TYPE, &scale, sizeof scale)) ||
      (rc = A.desc_set(p.op, DESC_TRANSA, &trans, sizeof trans)) ||
      (rc = A.layout_create(&p.a, R_16BF, K, N, K)) ||
      (rc = A.layout_create(&p.b, R_16BF, K, M, K)) ||
      (rc = A.layout_create(&p.c, R_16BF, N, M, N)))
    return 1000 + rc;
  out = &cache.emplace(key, p).first->second;
  return 0;
}

}  // namespace lt

extern "C" {

// 0 when cuBLASLt is open and a handle made; else 1 (no libcublasLt), 2 (a symbol missing),
// 3 (cublasLtCreate failed).
int rl_lt_available() { return lt::api().error; }

// cuBLASLt's version (e.g. 120103 for 12.1.3), 0 when it is not open.
long long rl_lt_version() { return lt::api().error ? 0 : (long long)lt::api().version(); }

// Up to `max_count` algorithms for y[M, N] = x[M, K] . W[N, K]^T: the heuristic's answers
// (its first choice first), then each again with split-K 2, 3, 4, 6, 8, 12,
// 16 (in-place reduction, else the float32 workspace one) where the algorithm takes split-K.
// Each passes cublasLtMatmulAlgoCheck with at most `ws_limit` bytes of workspace. Writes
// `algos` (64 bytes each) and `info` (8 int64 each: workspace bytes, algo id, tile id, split-K,
// reduction scheme, stages id, cluster shape id, CTA swizzle), the count to `count`.
// 0, or 1000 + a cuBLAS status, or rl_lt_available()'s code.
int rl_lt_candidates(int M, int N, int K, int max_count, long long ws_limit, void* algos,
                     long long* info, int* count) {
  lt::Api& A = lt::api();
  *count = 0;
  if (A.error) return A.error;
  lt::Problem* p;
  if (int rc = lt::problem(M, N, K, p)) return rc;
  lt::Handle pref;
  if (int rc = A.pref_create(&pref)) return 1000 + rc;
  size_t lim = (size_t)ws_limit;
  A.pref_set(pref, lt::PREF_MAX_WORKSPACE, &lim, sizeof lim);
  lt::Heuristic heur[32];
  int found = 0;
  int rc = A.heuristic(A.handle, p->op, p->a, p->b, p->c, p->c, pref, 32, heur, &found);
  A.pref_destroy(pref);
  if (rc) return 1000 + rc;
  lt::Algo* out = static_cast<lt::Algo*>(algos);
  int n = 0;
  auto add = [&](const lt::Algo& al) {
    if (n >= max_count) return;
    for (int i = 0; i < n; ++i)
      if (!memcmp(&out[i], &al, sizeof al)) return;
    lt::Heuristic res;
    if (A.check(A.handle, p->op, p->a, p->b, p->c, p->c, &al, &res) || res.workspace > lim) return;
    out[n] = al;
    long long* f = info + 8 * n;
    int32_t id = 0, splitk = 1;
    uint32_t tile = 0, red = 0, stages = 0, swz = 0;
    uint16_t cluster = 0;
    size_t w;
    A.config_get(&al, lt::CONFIG_ID, &id, sizeof id, &w);
    A.config_get(&al, lt::CONFIG_TILE, &tile, sizeof tile, &w);
    A.config_get(&al, lt::CONFIG_SPLITK, &splitk, sizeof splitk, &w);
    A.config_get(&al, lt::CONFIG_REDUCTION, &red, sizeof red, &w);
    A.config_get(&al, lt::CONFIG_STAGES, &stages, sizeof stages, &w);
    A.config_get(&al, lt::CONFIG_CLUSTER, &cluster, sizeof cluster, &w);
    A.config_get(&al, lt::CONFIG_SWIZZLE, &swz, sizeof swz, &w);
    long long v[8] = {(long long)res.workspace, id, tile, splitk, red, stages, cluster, swz};
    memcpy(f, v, sizeof v);
    ++n;
  };
  for (int i = 0; i < found; ++i)
    if (heur[i].state == 0) add(heur[i].algo);
  for (int i = 0; i < found; ++i) {
    if (heur[i].state) continue;
    int32_t can = 0;
    uint32_t mask = 0;
    size_t w;
    A.cap_get(&heur[i].algo, lt::CAP_SPLITK, &can, sizeof can, &w);
    A.cap_get(&heur[i].algo, lt::CAP_REDUCTION_MASK, &mask, sizeof mask, &w);
    if (!can) continue;
    uint32_t red = (mask & lt::REDUCTION_INPLACE) ? lt::REDUCTION_INPLACE
                                                  : lt::REDUCTION_COMPUTE_TYPE;
    for (int32_t s : {2, 3, 4, 6, 8, 12, 16}) {
      if (K / s < 64) break;
      lt::Algo al = heur[i].algo;
      A.config_set(&al, lt::CONFIG_SPLITK, &s, sizeof s);
      A.config_set(&al, lt::CONFIG_REDUCTION, &red, sizeof red);
      add(al);
    }
  }
  *count = n;
  return 0;
}

// 0 when `algo` (64 bytes, e.g. chosen for another row count) runs y = x . W^T at (M, N, K)
// within `ws_limit` bytes of workspace; else 1 (too much workspace) or 1000 + a cuBLAS status.
int rl_lt_check(int M, int N, int K, const void* algo, long long ws_limit) {
  lt::Api& A = lt::api();
  if (A.error) return A.error;
  lt::Problem* p;
  if (int rc = lt::problem(M, N, K, p)) return rc;
  lt::Heuristic res;
  if (int rc = A.check(A.handle, p->op, p->a, p->b, p->c, p->c,
                       static_cast<const lt::Algo*>(algo), &res))
    return 1000 + rc;
  return res.workspace > (size_t)ws_limit ? 1 : 0;
}

// y = x . W^T with `algo` (64 bytes from rl_lt_candidates) on `stream`; `workspace` holds at
// least the algorithm's workspace bytes. 0, or 1000 + a cuBLAS status.
int rl_lt_gemm(void* y, const void* x, const void* w, int M, int N, int K, const void* algo,
               void* workspace, long long ws_bytes, void* stream) {
  lt::Api& A = lt::api();
  if (A.error) return A.error;
  lt::Problem* p;
  if (int rc = lt::problem(M, N, K, p)) return rc;
  const float one = 1.0f, zero = 0.0f;
  int rc = A.matmul(A.handle, p->op, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
                    static_cast<const lt::Algo*>(algo), workspace, (size_t)ws_bytes,
                    static_cast<cudaStream_t>(stream));
  return rc ? 1000 + rc : 0;
}

// GPU µs of one launch of y = x . W^T with each of the `count` algorithms in `algos` (64 bytes
// each), written to `us` (-1 where cuBLASLt declines one): weights cold as a model's layers
// read them (a CUDA graph of launches over distinct weight copies, 128 MB of them, 1 to 64,
// replayed; the best of 3 rounds). Its own buffers, stream and graphs. 0; the CUDA error of an
// allocation; 900 (cudaErrorStreamCaptureUnsupported), touching nothing, while `caller` (the
// caller's stream) is being captured.
int rl_lt_time(int M, int N, int K, const void* algos, int count, void* workspace,
               long long ws_bytes, float* us, void* caller) {
  lt::Api& A = lt::api();
  if (A.error) return A.error;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(caller), &cap) ||
      cap != cudaStreamCaptureStatusNone)
    return (int)cudaErrorStreamCaptureUnsupported;
  lt::Problem* p;
  if (int rc = lt::problem(M, N, K, p)) return rc;
  const size_t wbytes = (size_t)N * K * 2;
  const int copies = (int)std::min<size_t>(64, std::max<size_t>(1, (128u << 20) / wbytes));
  char *w = nullptr, *x = nullptr, *y = nullptr;
  cudaStream_t s = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaError_t err = cudaDeviceSynchronize();  // nothing else on the GPU while timing
  if (!err) err = cudaMalloc(&w, wbytes * copies);
  if (!err) err = cudaMalloc(&x, (size_t)M * K * 2);
  if (!err) err = cudaMalloc(&y, (size_t)M * N * 2);
  if (!err) err = cudaMemset(w, 0x3c, wbytes * copies);  // bf16 0x3c3c: ~0.0115 everywhere
  if (!err) err = cudaMemset(x, 0x3c, (size_t)M * K * 2);
  if (!err) err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (!err) err = cudaEventCreate(&e0);
  if (!err) err = cudaEventCreate(&e1);
  const float one = 1.0f, zero = 0.0f;
  const lt::Algo* al = static_cast<const lt::Algo*>(algos);
  auto launch = [&](int i, int c) {
    return A.matmul(A.handle, p->op, &one, w + wbytes * c, p->a, x, p->b, &zero, y, p->c, y,
                    p->c, &al[i], workspace, (size_t)ws_bytes, s);
  };
  for (int i = 0; i < count && !err; ++i) {
    us[i] = -1.0f;
    if (launch(i, 0) || cudaStreamSynchronize(s)) continue;
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ge = nullptr;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal)) continue;
    bool ok = true;
    for (int c = 0; c < copies; ++c) ok = ok && !launch(i, c);
    if (cudaStreamEndCapture(s, &g) || !ok || cudaGraphInstantiate(&ge, g, 0)) {
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      continue;
    }
    float best = 1e30f;
    cudaGraphLaunch(ge, s);  // warm-up
    for (int round = 0; round < 3; ++round) {
      cudaEventRecord(e0, s);
      for (int r = 0; r < 4; ++r) cudaGraphLaunch(ge, s);
      cudaEventRecord(e1, s);
      float ms = 0;
      if (cudaEventSynchronize(e1) || cudaEventElapsedTime(&ms, e0, e1)) break;
      best = std::min(best, ms * 1000.0f / (4 * copies));
    }
    if (best < 1e30f) us[i] = best;
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (s) cudaStreamDestroy(s);
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  cudaGetLastError();  // a failed allocation must not surface as the next launch's error
  return (int)err;
}

}  // extern "C"
