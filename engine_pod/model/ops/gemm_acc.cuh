// y[M, N] += x[M, K] . W[N, K]^T on cuBLAS (bf16 in / out, float32 accumulation, beta = 1):
// a GEMM that adds its product into the residual stream itself, one rounding (included by
// kernels.cu after lt_gemm.cuh, whose dlopen helpers `lt::open_library` and `lt::sym` it shares).
//
// Paddle's `matmul` has no beta, so its product would need an add kernel after it — and a
// kernel after a cuBLAS GEMM cannot start early (cuBLAS kernels are no programmatic dependent
// launches). The folded-norm decode path (llama.py `_forward_folded`) runs the o and down
// projections through this instead. cuBLAS is opened with dlopen (RLFLEET_CUBLAS, else
// libcublas.so.12 / .13: the one Paddle loaded, by its soname), with a handle and workspace of
// our own (created on the first call: an eager step, never inside a graph capture).

namespace acc {

constexpr int OP_N = 0, OP_T = 1, R_32F = 0, R_16BF = 14, COMPUTE_32F = 68;
constexpr int GEMM_DEFAULT_TENSOR_OP = 99;
constexpr size_t WORKSPACE = 32u << 20;

struct Api {
  int error = -1;  // 0: usable; 1: no library, 2: a symbol missing, 3: create, 4: workspace
  void* handle = nullptr;
  void* workspace = nullptr;
  int (*create)(void**);
  int (*set_stream)(void*, cudaStream_t);
  int (*set_workspace)(void*, void*, size_t);
  int (*gemm_ex)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*,
                 int, int, const void*, void*, int, int, int, int);
};

inline Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = lt::open_library("RLFLEET_CUBLAS", "libcublas");
    if (!lib) {
      a.error = 1;
      return;
    }
    if (!(lt::sym(lib, "cublasCreate_v2", a.create) &&
          lt::sym(lib, "cublasSetStream_v2", a.set_stream) &&
          lt::sym(lib, "cublasSetWorkspace_v2", a.set_workspace) &&
          lt::sym(lib, "cublasGemmEx", a.gemm_ex))) {
      a.error = 2;
      return;
    }
    if (a.create(&a.handle)) {
      a.error = 3;
      return;
    }
    a.error = cudaMalloc(&a.workspace, WORKSPACE) == cudaSuccess ? 0 : 4;
  });
  return a;
}

}  // namespace acc

extern "C" {

// 0 when rl_gemm_acc can run (cuBLAS found and a handle made), else why not (acc::Api::error)
int rl_gemm_acc_available() { return acc::api().error; }

// y[M, N] += x[M, K] . W[N, K]^T, bf16, on `stream` (cuBLAS column-major: y^T = W . x^T + y^T)
int rl_gemm_acc(void* y, const void* x, const void* w, int M, int N, int K, void* stream) {
  if (M == 0) return 0;
  acc::Api& A = acc::api();
  if (A.error) return (int)cudaErrorNotSupported;
  const float one = 1.f;
  cudaStream_t st = (cudaStream_t)stream;
  if (A.set_stream(A.handle, st) || A.set_workspace(A.handle, A.workspace, acc::WORKSPACE))
    return (int)cudaErrorUnknown;
  int rc = A.gemm_ex(A.handle, acc::OP_T, acc::OP_N, N, M, K, &one, w, acc::R_16BF, K, x,
                     acc::R_16BF, K, &one, y, acc::R_16BF, N, acc::COMPUTE_32F,
                     acc::GEMM_DEFAULT_TENSOR_OP);
  return rc ? (int)cudaErrorUnknown : (int)cudaGetLastError();
}

}  // extern "C"
