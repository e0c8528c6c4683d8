// The MLP's gate_up projection and SiLU * mul in one kernel, for 17..64-row decode steps
// (included by kernels.cu after gemm.cuh, gemm_stream.cuh and launch_k).
//
//   out[M, I] = bf16(bf16(silu(g)) * u),  g = bf16(x . Wg^T), u = bf16(x . Wu^T)
//
// W is [2I, K] (gate rows, then up rows), x [M, K], bf16 in / out, float32 accumulation; the
// roundings are silu_mul_k's on the GEMM's bf16 product. cuBLAS runs this GEMM as a plain
// launch (no early start) and SiLU * mul is a second launch over a [M, 2I] product that a
// third kernel reads back; here:
//
//   - the GPU's SMs each take a contiguous run of units, a unit = 8 output columns = the 8 gate
//     rows and the matching 8 up rows of W (one 16-row mma tile: gate rows 0-7, up rows 8-15,
//     so a thread's accumulators hold g and u of the same output element);
//   - a block copies all its units' weight rows into shared memory (cp.async, one commit
//     group a unit) *before* `griddepcontrol.wait`: weights are never written by the kernels
//     ahead, so under a programmatic dependent launch their DRAM reads overlap the previous
//     kernel (the whole 17 MB of a 0.5B model's gate_up fits the GPU's shared memory);
//   - after the wait, each warp loads its k range of x (all M rows) straight into registers
//     as mma B fragments, once for all units (so x needs no shared memory);
//   - per unit: each of the 8 warps multiplies its k range (mma.m16n8k16, A from shared
//     memory), the 8 partial tiles are summed in warp order through shared memory, and the
//     epilogue applies SiLU * mul and writes bf16.
//
// Inside each 16-wide k step the k order is permuted alike for A and B (a thread's 4
// consecutive k feed logical k 2q, 2q + 1 and 8 + 2q, 9 + 2q), so A and B fragments are single
// 8-byte loads. A row's result depends only on its own x row (fixed k split, fixed sum order):
// a batch and its padded graph give the same values. Launcher: rl_gate_up_silu (kernels.cu);
// 801 (cudaErrorNotSupported) for shapes it does not take: M > 64, I % 8, K % 16, K > 1024,
// or more units a block than fit in shared memory.

namespace gusilu {

constexpr int THREADS = 256;  // 8 warps, each a k range
constexpr int WARPS = 8;
constexpr int KW = 8;          // most k16 steps a warp holds (K <= 8 x 8 x 16 = 1024)
constexpr int UROWS = 16;      // weight rows of a unit (8 gate + 8 up)
constexpr int SMEM_MAX = 227 * 1024;

// shared row stride (elements) of a weight row: K + pad with (stride / 2) % 32 == 8, so the
// 8-byte A loads of a warp's 4 rows x 4 lanes (one 16-lane phase) hit 32 distinct banks
__host__ __device__ inline int row_stride(int K) { return K + ((16 - K % 64) + 64) % 64; }

__host__ __device__ constexpr int red_bytes(int NT) { return WARPS * NT * 4 * 32 * 4; }

__host__ inline size_t smem_bytes(int MR, int K, int units) {
  return (size_t)units * UROWS * row_stride(K) * 2 + red_bytes(MR / 8);
}

// wait until at most n (0..7) commit groups of this thread are pending
__device__ __forceinline__ void wait_pending(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
}
__device__ __forceinline__ void mma(float (&c)[4], uint2 a_lo, uint2 a_hi, uint2 b) {
  // a_lo = (a0, a2): row g; a_hi = (a1, a3): row g + 8; b = (b0, b1)
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
               "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a_lo.x), "r"(a_hi.x), "r"(a_lo.y), "r"(a_hi.y), "r"(b.x), "r"(b.y));
}

// MR: x rows the kernel holds (32 or 64; M <= MR). Grid: one block per SM (or per unit).
template <int MR>
__global__ void __launch_bounds__(THREADS, 1)
    gate_up_silu_k(bf16* __restrict__ out, const bf16* __restrict__ x, const bf16* __restrict__ w,
                   int M, int I, int K) {
  constexpr int NT = MR / 8;  // n-tiles: 8 x rows each
  extern __shared__ __align__(16) unsigned char smem[];
  const int rs = row_stride(K);
  bf16* ws = reinterpret_cast<bf16*>(smem);  // [units][16][rs]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  const int units = I / 8, G = gridDim.x;
  const int u0 = (int)((int64_t)blockIdx.x * units / G);
  const int nu = (int)((int64_t)(blockIdx.x + 1) * units / G) - u0;
  float* red = reinterpret_cast<float*>(smem + (size_t)nu * UROWS * rs * 2);  // [8][NT][4][32]

  // 1. every unit's weight rows, one commit group a unit, before the wait
  const int vpr = K / 8;  // 16-byte vectors a row
  for (int j = 0; j < nu; ++j) {
    const int col0 = (u0 + j) * 8;
    for (int v = tid; v < UROWS * vpr; v += THREADS) {
      const int r = v / vpr, c = v - r * vpr;
      const int row = r < 8 ? col0 + r : I + col0 + r - 8;
      skinny::cp_async16(ws + (j * UROWS + r) * rs + c * 8, w + (size_t)row * K + c * 8, true);
    }
    stream::cp_async_commit();
  }

  // 2. x, once the kernel before this one has written it: this warp's k range of every row
  // as B fragments (rows >= M: zeros, not read)
  pdl_wait();
  pdl_launch();
  const int ks = K / 16, kwt = (ks + WARPS - 1) / WARPS;
  const int s0 = warp * kwt, ns = max(0, min(ks, s0 + kwt) - s0);
  uint2 xb[NT][KW];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int m = nt * 8 + g;
    const bf16* xr = x + (size_t)m * K + s0 * 16 + 4 * q;
#pragma unroll
    for (int s = 0; s < KW; ++s)
      xb[nt][s] = (s < ns && m < M) ? *reinterpret_cast<const uint2*>(xr + s * 16) : make_uint2(0, 0);
  }

  // 3. per unit: products over this warp's k range, the 8 warps' tiles summed in order,
  // SiLU * mul
  for (int j = 0; j < nu; ++j) {
    wait_pending(nu - 1 - j);
    __syncthreads();  // unit j's rows visible to all; the previous epilogue done with `red`
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    const bf16* a0 = ws + (j * UROWS + g) * rs + s0 * 16 + 4 * q;
#pragma unroll
    for (int s = 0; s < KW; ++s) {
      if (s < ns) {
        const uint2 lo = *reinterpret_cast<const uint2*>(a0 + s * 16);
        const uint2 hi = *reinterpret_cast<const uint2*>(a0 + 8 * rs + s * 16);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma(acc[nt], lo, hi, xb[nt][s]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[((warp * NT + nt) * 4 + e) * 32 + lane] = acc[nt][e];
    __syncthreads();
    if (tid < NT * 32) {  // thread (nt, l): output column col0 + l / 4, x rows nt*8 + 2(l%4) + 0/1
      const int nt = tid >> 5, l = tid & 31;
      float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int wp = 0; wp < WARPS; ++wp)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[e] += red[((wp * NT + nt) * 4 + e) * 32 + l];
      const int col = (u0 + j) * 8 + (l >> 2), m0 = nt * 8 + 2 * (l & 3);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (m0 + e < M) {
          const float gv = rnd<bf16>(c[e]), uv = rnd<bf16>(c[2 + e]);
          out[(size_t)(m0 + e) * I + col] = from_f<bf16>(rnd<bf16>(gv / (1.f + expf(-gv))) * uv);
        }
      }
    }
  }
}

// the most units a block takes, or 0 if the shape is not taken
inline int units_per_block(int M, int I, int K, int sms) {
  if (M < 1 || M > 64 || I <= 0 || I % 8 || K <= 0 || K % 16 || K / 16 > WARPS * KW) return 0;
  const int units = I / 8, G = units < sms ? units : sms;
  const int nu = (units + G - 1) / G;
  return smem_bytes(M <= 32 ? 32 : 64, K, nu) <= (size_t)SMEM_MAX ? nu : 0;
}

template <int MR>
int launch(bf16* out, const bf16* x, const bf16* w, int M, int I, int K, int sms,
           cudaStream_t st) {
  static bool attr = false;  // raise the dynamic shared memory limit once (outside captures)
  if (!attr) {
    cudaError_t e = cudaFuncSetAttribute(gate_up_silu_k<MR>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_MAX);
    if (e != cudaSuccess) return (int)e;
    attr = true;
  }
  const int units = I / 8, G = units < sms ? units : sms, nu = (units + G - 1) / G;
  launch_k(gate_up_silu_k<MR>, dim3(G), dim3(THREADS), smem_bytes(MR, K, nu), st, out, x, w, M,
           I, K);
  return (int)cudaGetLastError();
}

inline int run(void* out, const void* x, const void* w, int M, int I, int K, int sms,
               cudaStream_t st) {
  if (M == 0) return 0;
  if (!units_per_block(M, I, K, sms) || ((uintptr_t)x & 15) || ((uintptr_t)w & 15) || !out)
    return (int)cudaErrorNotSupported;
  return M <= 32 ? launch<32>((bf16*)out, (const bf16*)x, (const bf16*)w, M, I, K, sms, st)
                 : launch<64>((bf16*)out, (const bf16*)x, (const bf16*)w, M, I, K, sms, st);
}

}  // namespace gusilu
