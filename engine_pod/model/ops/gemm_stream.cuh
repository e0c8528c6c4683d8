// Streaming bf16 GEMMs for mid-sized decode steps (included by kernels.cu after gemm.cuh).
//
//   y[M, N] = bf16(x[M, K] . W[N, K]^T)     float32 accumulation, one rounding (as cuBLAS)
//
// for 1 <= M <= 64 rows and weights whose 64-row tiles, split along K over a cluster of up to
// 8 blocks, fill the GPU in one wave with a block's whole weight slice in shared memory.
// At M = 32..64 a decoder's qkv / o / down GEMMs are latency-bound (cuBLAS: ~4 us for 2 MB),
// so the point is when the bytes move, not how fast they are multiplied:
//
//   1. a block issues cp.async copies of its whole weight slice (64 rows x K / S) into shared
//      memory *before* `griddepcontrol.wait`: weights are never written by the kernels
//      before it, so under a programmatic dependent launch their DRAM reads overlap the
//      previous kernel's tail;
//   2. waits for the previous kernel, copies its x slice (L2-resident: just written) the
//      same way (rows >= M are not copied: they reach no output);
//   3. multiplies (ldmatrix + mma.m16n8k16: weights are the A operand, 16 output columns an
//      m-tile; x rows the B operand, 8 an n-tile). 8 warps = 2 (32 weight rows) x 2 (MR / 2
//      x rows) x 2 k groups (even / odd k16 steps);
//   4. pushes each float32 partial sum to the block of the cluster that owns its x row
//      (row m: block m % S) with distributed-shared-memory stores — no block waits on a
//      read from another SM — and crosses one cluster barrier;
//   5. each block sums its rows' S x 2 partials in split order (deterministic; no workspace,
//      no counters) and writes bf16.
//
// PARTS mode (Mode::parts) skips 4 and 5 and the cluster: each block adds its two k groups
// and stores its float32 partial sums to parts[split][m][n] (plain coalesced stores), and the
// kernel that reads the product next sums the S partials in split order and rounds once
// (kernels.cu: parts_values4; rms_norm_k, qkv_rope_cache_k) — the same value, deterministic,
// with no block of the GEMM waiting on another. Splits are then not bound to a cluster.
//
// Launchers: rl_stream_gemm, rl_stream_gemm_rope, rl_stream_gemm_parts (extern "C" in
// kernels.cu); 801 (cudaErrorNotSupported) for shapes they do not take, so the caller uses
// cuBLAS. Needs bf16, contiguous rows, 16-byte aligned pointers, N % 64 == 0, K % 16 == 0.

namespace stream {

constexpr int THREADS = 256;  // 8 warps
constexpr int BN = 64;        // weight rows (output columns) of a block
constexpr int MAX_SPLIT = 8;  // portable cluster size (merge and RoPE modes)
constexpr int MAX_PARTS = 32;  // splits of PARTS mode (no cluster)
constexpr int AUTO_PARTS = 8;  // the most pick_splits chooses in PARTS mode (H200: best)
constexpr int PAD = 8;        // bf16 padding a shared row: ldmatrix's 8 rows hit 8 bank groups
constexpr int SMEM_MAX = 227 * 1024;

enum class Mode { merge, rope, parts };

struct Params {
  bf16* out;       // [M, N]
  float* parts;    // PARTS: [S][M][N] float32 partial sums
  const bf16* x;   // [M, K]
  const bf16* w;   // [N, K]
  int M, N, K;
  int ks;          // K / 16
  int rs;          // shared row stride, elements (the largest k range of a split + PAD)
  int dbg;         // lab only: bit 0 skip weight copies, 1 x copies, 2 products, 3 merge
  // ROPE epilogue (the qkv projection): as qkv_rope_cache_k on the bf16 product
  const bf16* bias;  // [N] or NULL
  const bf16* cos_t;
  const bf16* sin_t;
  const int64_t* pos;
  const int64_t* slot_b;
  const int64_t* slot_o;
  bf16* kc;
  bf16* vc;
  int hq, hkv, d, bs;  // out = q [M, hq * d]
};

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;" ::: "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// x rows a block's partial sums are pushed for: owner(m) = m % S, slot m / S
__host__ __device__ constexpr int owned_rows(int MR, int S) { return (MR + S - 1) / S; }

// bytes of a block's ws / xs tiles (or, if larger, ROPE's output tile over them)
__host__ __device__ inline int tiles_bytes(int MR, int rs, int ro, bool rope) {
  const int t = (BN + MR) * rs * 2, o = rope ? ro * BN * 4 : 0;
  return t > o ? t : o;
}

// PARTS: one k group's accumulators, stashed for the other (over ws / xs): 4 warps x 32 lanes
// x 2 x NT x 4 floats
__host__ __device__ constexpr int stash_bytes(int MR) { return 4 * 32 * 2 * (MR / 16) * 4 * 4; }

// Calls f(i, j, e, wrow, xrow) for each accumulator acc[i][j][e] of warp (wm, wx): the weight
// row (the tile's output column) and the x row its mma.m16n8k16 fragment element holds.
template <int MR, typename F>
__device__ __forceinline__ void for_each_acc(int wm, int wx, int lane, F&& f) {
  const int g8 = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < MR / 16; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        f(i, j, e, wm * 32 + i * 16 + g8 + (e >> 1) * 8, wx * (MR / 2) + j * 8 + 2 * t4 + (e & 1));
}

// MR: x rows a block holds (32 or 64; M <= MR). ROPE: the block's bf16 outputs get qkv
// bias + RoPE + the paged-KV write of qkv_rope_cache_k instead of going to `out` as they are
// (needs d | BN: a tile holds whole heads). PARTS: float32 partials to p.parts (no cluster).
template <int MR, bool ROPE, bool PARTS>
__global__ void __launch_bounds__(THREADS, 2) stream_gemm_k(const Params p) {
  constexpr int NT = MR / 16;  // n-tiles (8 x rows) of a warp: MR / 2 rows
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* ws = reinterpret_cast<bf16*>(smem);  // [BN][rs]
  bf16* xs = ws + BN * p.rs;                 // [MR][rs]
  const int RO = owned_rows(MR, gridDim.x);
  // [S][2 k groups][owned rows][BN]: the partials of this block's x rows, from every split
  // (after ws / xs, and after ROPE's [RO][BN] output tile, which overlays them at step 5)
  float* recv = reinterpret_cast<float*>(smem + tiles_bytes(MR, p.rs, RO, ROPE));

  const int S = gridDim.x, split = blockIdx.x, tile = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int s_begin = split * p.ks / S, s_end = (split + 1) * p.ks / S;  // k16 steps
  const int nks = s_end - s_begin, k0 = s_begin * 16, vpr = nks * 2;  // 16-byte vectors a row
  const int K = p.K, M = p.M;

  // 1. the weight slice (rows tile*64 .., k0 .. k0 + 16 nks), before the wait
  const bf16* wsrc = p.w + (size_t)tile * BN * K + k0;
  if (!(p.dbg & 1))
    for (int v = tid; v < BN * vpr; v += THREADS) {
      const int r = v / vpr, c = v - r * vpr;
      skinny::cp_async16(ws + r * p.rs + c * 8, wsrc + (size_t)r * K + c * 8, true);
    }
  cp_async_commit();
  if (!PARTS && S > 1) cluster_arrive_relaxed();  // this block runs (peers write into it, 4)
  // ROPE: the cos / sin entries of this block's rows (m = split + S lr) and the KV slots —
  // step inputs written before the step's first kernel, so also readable before the wait
  float* rope_s = recv + S * 2 * RO * BN;  // [2][RO][BN]: cos, sin
  int64_t* slot_s = reinterpret_cast<int64_t*>(rope_s + 2 * RO * BN);  // [RO]
  if constexpr (ROPE) {
    for (int u = tid; u < RO * BN; u += THREADS) {
      const int lr = u / BN, c = u - lr * BN, m = lr * S + split;
      if (m < M) {
        const int j = (tile * BN + c) % p.d;
        const int64_t ps = p.pos[m];
        rope_s[u] = to_f(p.cos_t[ps * p.d + j]);
        rope_s[RO * BN + u] = to_f(p.sin_t[ps * p.d + j]);
        if (c == 0) slot_s[lr] = p.slot_b[m] * p.bs + p.slot_o[m];
      }
    }
  }

  // 2. the x slice, once the kernel before this one has written it (rows >= M: not read
  // into any output)
  pdl_wait();
  pdl_launch();
  if (!(p.dbg & 2)) {
    for (int v = tid; v < M * vpr; v += THREADS) {
      const int m = v / vpr, c = v - m * vpr;
      skinny::cp_async16(xs + m * p.rs + c * 8, p.x + (size_t)m * K + k0 + c * 8, true);
    }
  }
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // 3. products: 8 warps = 2 (32 weight rows) x 2 (MR / 2 x rows) x 2 k groups
  const int wm = warp & 1, wx = (warp >> 1) & 1, wk = warp >> 2;
  float acc[2][NT][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
  // ldmatrix row addresses: A (weights) rows wm*32 + i*16 + lane%16, k + (lane/16)*8;
  // B (x) rows wx*MR/2 + jj*16 + (lane/16)*8 + lane%8, k + ((lane/8)%2)*8
  const bf16* a_base = ws + (wm * 32 + (lane & 15)) * p.rs + (lane >> 4) * 8;
  const bf16* b_base =
      xs + (wx * (MR / 2) + (lane >> 4) * 8 + (lane & 7)) * p.rs + ((lane >> 3) & 1) * 8;
  for (int s = wk; s < ((p.dbg & 4) ? 0 : nks); s += 2) {
    uint32_t af[2][4], bfr[NT / 2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) ldsm_x4(af[i], a_base + i * 16 * p.rs + s * 16);
#pragma unroll
    for (int jj = 0; jj < NT / 2; ++jj) ldsm_x4(bfr[jj], b_base + jj * 16 * p.rs + s * 16);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
        skinny::mma16816(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3],
                         bfr[j / 2][(j & 1) * 2], bfr[j / 2][(j & 1) * 2 + 1]);
  }
  if (p.dbg & 8) return;

  if constexpr (PARTS) {  // k group 1 stashes its sums, k group 0 adds them and stores
    __syncthreads();       // every warp is done with ws / xs
    float* stash = reinterpret_cast<float*>(smem);
    const int base = (warp & 3) * 2 * NT * 4;
    if (wk == 1) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) stash[(base + (i * NT + j) * 4 + e) * 32 + lane] = acc[i][j][e];
    }
    __syncthreads();
    if (wk == 0) {
      float* dst = p.parts + (size_t)split * M * p.N + tile * BN;
      for_each_acc<MR>(wm, wx, lane, [&](int i, int j, int e, int wrow, int xrow) {
        if (xrow < M)
          dst[(size_t)xrow * p.N + wrow] =
              acc[i][j][e] + stash[(base + (i * NT + j) * 4 + e) * 32 + lane];
      });
    }
    return;
  }

  // 4. push each partial sum to the block that owns its x row (distributed shared memory
  // stores: nothing waits on a read from another SM), then one cluster barrier
  float* dst[MAX_SPLIT];
  if (S > 1) {
    cluster_wait();  // every block of the cluster has started
    auto cl = cooperative_groups::this_cluster();
#pragma unroll
    for (int r = 0; r < MAX_SPLIT; ++r) dst[r] = r < S ? cl.map_shared_rank(recv, r) : recv;
  } else {
#pragma unroll
    for (int r = 0; r < MAX_SPLIT; ++r) dst[r] = recv;
  }
  const int slot0 = (split * 2 + wk) * RO;
  for_each_acc<MR>(wm, wx, lane, [&](int i, int j, int e, int wrow, int xrow) {
    if (xrow < M) dst[xrow % S][(slot0 + xrow / S) * BN + wrow] = acc[i][j][e];
  });
  if (S > 1) {
    cluster_arrive_release();
    cluster_wait();
  } else {
    __syncthreads();
  }

  // 5. this block's x rows: the partials summed in split order, bf16 out
  constexpr int QPR = BN / 4;  // 4-column groups a row
  const int mine = split < M ? (M - 1 - split) / S + 1 : 0;
  float* os = reinterpret_cast<float*>(smem);  // ROPE: [RO][BN] the bf16 products, over ws
  for (int u = tid; u < mine * QPR; u += THREADS) {
    const int lr = u / QPR, q = u - lr * QPR, m = lr * S + split;
    float a[4] = {0.f, 0.f, 0.f, 0.f};
    for (int sp = 0; sp < S; ++sp) {
      const float4 v0 = *reinterpret_cast<const float4*>(recv + ((sp * 2) * RO + lr) * BN + 4 * q);
      const float4 v1 =
          *reinterpret_cast<const float4*>(recv + ((sp * 2 + 1) * RO + lr) * BN + 4 * q);
      a[0] += v0.x + v1.x, a[1] += v0.y + v1.y, a[2] += v0.z + v1.z, a[3] += v0.w + v1.w;
    }
    if constexpr (ROPE) {
#pragma unroll
      for (int e = 0; e < 4; ++e) os[lr * BN + 4 * q + e] = rnd<bf16>(a[e]);
    } else {
      *reinterpret_cast<uint2*>(p.out + (size_t)m * p.N + tile * BN + 4 * q) =
          make_uint2(skinny::pack2(a[0], a[1]), skinny::pack2(a[2], a[3]));
    }
  }
  if constexpr (ROPE) {  // qkv_rope_cache_k's arithmetic, element by element
    __syncthreads();
    const int d = p.d, half = d / 2, hq = p.hq, hkv = p.hkv;
    for (int u = tid; u < mine * BN; u += THREADS) {
      const int lr = u / BN, c = u - lr * BN, m = lr * S + split, col = tile * BN + c;
      const int head = col / d, j = col - head * d;
      float a = os[u];
      if (p.bias) a = rnd<bf16>(a + to_f(p.bias[col]));
      const int64_t slot = slot_s[lr];
      if (head < hq + hkv) {
        const int pc = j < half ? c + half : c - half;
        float pv = os[lr * BN + pc];
        if (p.bias) pv = rnd<bf16>(pv + to_f(p.bias[tile * BN + pc]));
        const float rot = j < half ? -pv : pv;
        const float r = rnd<bf16>(rnd<bf16>(a * rope_s[u]) + rnd<bf16>(rot * rope_s[RO * BN + u]));
        if (head < hq)
          p.out[((int64_t)m * hq + head) * d + j] = from_f<bf16>(r);
        else
          p.kc[(slot * hkv + (head - hq)) * d + j] = from_f<bf16>(r);
      } else {
        p.vc[(slot * hkv + (head - hq - hkv)) * d + j] = from_f<bf16>(a);
      }
    }
  }
}

// ---------------------------------------------------------------- host side
inline size_t smem_bytes(int MR, int K, int S, Mode mode = Mode::merge) {
  const int ks = K / 16, maxks = (ks + S - 1) / S, ro = owned_rows(MR, S);
  if (mode == Mode::parts) {
    const size_t t = (size_t)(BN + MR) * (maxks * 16 + PAD) * 2;
    return t > (size_t)stash_bytes(MR) ? t : (size_t)stash_bytes(MR);
  }
  const bool rope = mode == Mode::rope;
  const size_t rope_b = rope ? (size_t)2 * ro * BN * 4 + (size_t)ro * 8 : 0;
  return (size_t)tiles_bytes(MR, maxks * 16 + PAD, ro, rope) + (size_t)S * 2 * ro * BN * 4 +
         rope_b;
}

// The split count for a launch (0: not taken): the most splits (<= 8 in one cluster; PARTS:
// <= AUTO_PARTS; each >= 2 k16 steps) whose blocks, each with its slice in shared memory, fit
// the GPU in one wave.
inline int pick_splits(int M, int N, int K, int sms, bool parts = false) {
  if (M < 1 || M > 64 || N % BN || K % 16 || N <= 0) return 0;
  const int MR = M <= 32 ? 32 : 64, tiles = N / BN, ks = K / 16;
  for (int S = parts ? AUTO_PARTS : MAX_SPLIT; S >= 1; --S) {
    // merge / RoPE: the larger (RoPE) of the two, so both modes split alike
    const size_t bytes = smem_bytes(MR, K, S, parts ? Mode::parts : Mode::rope);
    const int per_sm = bytes * 2 <= (size_t)SMEM_MAX ? 2 : 1;
    if (ks >= 2 * S && bytes <= (size_t)SMEM_MAX && tiles * S <= per_sm * sms) return S;
  }
  return 0;
}

template <int MR, bool ROPE, bool PARTS>
int launch_mr(const Params& p, int S, bool pdl, cudaStream_t st) {
  auto kern = stream_gemm_k<MR, ROPE, PARTS>;
  static bool attr = false;  // raise the dynamic shared memory limit once (outside captures)
  if (!attr) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_MAX);
    if (e != cudaSuccess) return (int)e;
    attr = true;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)S, (unsigned)(p.N / BN), 1);
  cfg.blockDim = dim3(THREADS, 1, 1);
  cfg.dynamicSmemBytes = smem_bytes(MR, p.K, S, PARTS ? Mode::parts : ROPE ? Mode::rope : Mode::merge);
  cfg.stream = st;
  cudaLaunchAttribute at[2];
  int n = 0;
  if (!PARTS && S > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = (unsigned)S;
    at[n].val.clusterDim.y = 1;
    at[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = at;
  cfg.numAttrs = n;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kern, p);
  return (int)e;
}

inline bool aligned16(const void* q) { return ((uintptr_t)q & 15) == 0; }

// splits 0: pick_splits. Mode::rope: p's ROPE fields are set (out = q); Mode::parts: p.parts
// is set (p.out unused) and must hold splits x M x N floats.
inline int gemm(Params p, int splits, int sms, bool pdl, cudaStream_t st, Mode mode) {
  const int M = p.M, N = p.N, K = p.K;
  const bool rope = mode == Mode::rope, parts = mode == Mode::parts;
  if (M == 0) return 0;
  const int auto_s = pick_splits(M, N, K, sms, parts);
  void* dst = parts ? (void*)p.parts : (void*)p.out;
  if (!auto_s || !dst || !p.x || !p.w || !aligned16(dst) || !aligned16(p.x) || !aligned16(p.w))
    return (int)cudaErrorNotSupported;
  if (rope && (p.d <= 0 || BN % p.d || p.d % 2 || N != (p.hq + 2 * p.hkv) * p.d || !p.cos_t ||
               !p.sin_t || !p.pos || !p.slot_b || !p.slot_o || !p.kc || !p.vc))
    return (int)cudaErrorNotSupported;
  const int S = splits > 0 ? splits : auto_s;
  const int MR = M <= 32 ? 32 : 64;
  if (S > (parts ? MAX_PARTS : MAX_SPLIT) || K / 16 < S ||
      smem_bytes(MR, K, S, mode) > (size_t)SMEM_MAX)
    return (int)cudaErrorNotSupported;
  p.ks = K / 16;
  p.rs = ((p.ks + S - 1) / S) * 16 + PAD;
  int rc;
  if (rope)
    rc = MR == 32 ? launch_mr<32, true, false>(p, S, pdl, st) : launch_mr<64, true, false>(p, S, pdl, st);
  else if (parts)
    rc = MR == 32 ? launch_mr<32, false, true>(p, S, pdl, st) : launch_mr<64, false, true>(p, S, pdl, st);
  else
    rc = MR == 32 ? launch_mr<32, false, false>(p, S, pdl, st)
                  : launch_mr<64, false, false>(p, S, pdl, st);
  if (rc) return rc;
  return (int)cudaGetLastError();
}

inline Params plain(void* out, const void* x, const void* w, int M, int N, int K, int dbg) {
  Params p = {};
  p.out = (bf16*)out;
  p.x = (const bf16*)x;
  p.w = (const bf16*)w;
  p.M = M, p.N = N, p.K = K;
  p.dbg = dbg;
  return p;
}

}  // namespace stream
