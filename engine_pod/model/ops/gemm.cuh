// Skinny bf16 GEMMs for decode steps (included by kernels.cu, before its launchers).
//
//   y[M, N] = x[M, K] . W[N, K]^T      bf16 in / out, float32 accumulation, one rounding
//
// for M = 1..128 rows (decode batches) and the weights of a small decoder (N and K of a few
// thousand). At these shapes the weight bytes are the cost, so every weight element is read
// once, straight from global memory into registers (16-byte loads, several chunks in flight a
// warp), and fed to the tensor cores as the A operand of mma.m16n8k16 (rows = output columns,
// 16 a warp); the x rows are the B operand (8 rows of x an n-tile, so M = 1 pads to 8, not 16),
// staged once a block into shared memory (cp.async, rows >= M zero-filled and never read).
// A thread loads 8 consecutive k of a weight row and feeds them to two k16 steps: the k order
// inside a 32-wide slice is permuted the same way for A and B, so no ldmatrix / shuffle is needed.
//
// Grid: (S splits of K, N / BN column tiles). The S blocks of one column tile form a thread
// block cluster (S <= 8): each block sums its K range into a float32 tile in its shared memory,
// then, after a cluster barrier, block r merges rows r, r + S, ... of the tile reading the S
// partials through distributed shared memory in split order (deterministic, no workspace, no
// counters, nothing to reset between launches or graph replays), applies the epilogue and
// writes the bf16 result. Inside a block, 8 warps = WN column groups (16 columns each,
// BN = 16 WN) x WK = 8 / WN k groups (interleaved 64-wide chunks), summed in k-group order.
//
// Fusions (template flags):
//   NORM  prologue RMSNorm: the GEMM input is h = rms_norm(x [+ delta]) exactly as rms_norm_k
//         computes it (v = x (+ delta, rounded), rs = rsqrtf(sum(v^2) / K + eps),
//         h = bf16(bf16(v * rs) * norm_w)); the sum of squares is a warp sum a row inside each
//         block's K range plus the cluster's partials in split order, so it may differ from
//         block_sum's order (rs by an ulp at most, then h by 1 bf16 ulp rarely). With delta,
//         v = bf16(x + delta) and, if x_out is given (it must not alias x or delta: other blocks
//         are still reading x), the blocks of column tile 0 write v to x_out.
//   EPI_RES  out[M, N] = bf16(out + bf16(acc)), in place (out is the residual stream).
//   EPI_SILU W is [2I, K] (gate rows, then up rows); a column tile holds BN/2 gate rows and the
//         matching BN/2 up rows; out[M, I] = bf16(bf16(silu(g)) * u), g = bf16(acc_gate),
//         u = bf16(acc_up), as silu_mul_k.
//
// The launchers (extern "C", return the CUDA error, 0 = ok; 801 = cudaErrorNotSupported for
// shapes they do not take, so the caller falls back to cuBLAS) need: bf16 tensors, contiguous
// rows, 16-byte aligned pointers; 1 <= M <= 128; K % 64 == 0; N % 32 == 0 (I % 16 for SiLU);
// the x tile of a split (M padded to a power of two >= 8, times K / S) within shared memory.
// `ws` and `counters` are accepted for interface stability and not used (may be NULL):
// rl_gemm_ws_bytes() returns 0.

#include <cooperative_groups.h>

namespace skinny {

constexpr int THREADS = 256;  // 8 warps
constexpr int KCH = 64;       // k elements of a chunk (a warp's unit of work)
constexpr int MAX_SPLIT = 8;  // portable cluster size
constexpr int EPI_NONE = 0, EPI_RES = 1, EPI_SILU = 2;
constexpr int SMEM_MAX = 227 * 1024;

struct Params {
  bf16* out;            // [M, N] (EPI_RES: also the residual read)
  const bf16* x;        // [M, K]
  const bf16* w;        // [N or 2I, K]
  const bf16* delta;    // NORM: optional [M, K]
  bf16* x_out;          // NORM with delta: optional [M, K], gets bf16(x + delta)
  const bf16* norm_w;   // NORM: [K]
  float eps;
  int M, N, K;          // N = output columns (I for SiLU; W then has 2N rows)
  int chunks;           // K / KCH
  int xs;               // shared row stride of the x tile, elements (== 32 mod 64)
};

__device__ __forceinline__ uint4 ld_stream(const bf16* p) {  // read once: skip L1
  uint4 r;  // volatile: issued where written (the prefetch), not sunk to the first use
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool full) {
  unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src),
               "r"(full ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// the two bf16 of a 32-bit word as floats (exact)
__device__ __forceinline__ float lo_f(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi_f(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ uint32_t pack2(float a, float b) {  // a in the low half
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
  f[0] = lo_f(u.x), f[1] = hi_f(u.x), f[2] = lo_f(u.y), f[3] = hi_f(u.y);
  f[4] = lo_f(u.z), f[5] = hi_f(u.z), f[6] = lo_f(u.w), f[7] = hi_f(u.w);
}
__device__ __forceinline__ uint4 pack8(const float* f) {
  return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
}

template <int MT>
__host__ __device__ constexpr int pipe_depth() {  // weight chunks a warp holds in registers
  return MT >= 16 ? 2 : (MT >= 8 ? 3 : 4);
}

// MT: n-tiles of 8 rows of x (M padded to 8 MT); WN: 16-column warp groups (BN = 16 WN).
template <int MT, int WN, bool NORM, int EPI>
__global__ void __launch_bounds__(THREADS, MT >= 16 ? 1 : 2) skinny_gemm_k(const Params p) {
  constexpr int WK = 8 / WN;
  constexpr int BN = 16 * WN;
  constexpr int MP = 8 * MT;
  constexpr int PS = BN + 4;  // float row stride of the partial tile (conflict-free stores)
  constexpr int D = pipe_depth<MT>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);   // [MP][xs]: the block's x (or h) tile
  float* part = reinterpret_cast<float*>(smem);  // [MP][PS]: after the main loop, over xs
  const int region = max(MP * p.xs * 2, MP * PS * 4);
  float* ss_part = reinterpret_cast<float*>(smem + region);  // [MP] (NORM)
  float* rs_s = ss_part + MP;                                 // [MP] (NORM)
  bf16* nws = reinterpret_cast<bf16*>(rs_s + MP);             // [xs] (NORM): norm_w slice

  const int S = gridDim.x, split = blockIdx.x, tile = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % WN, wk = warp / WN;
  const int g = lane >> 2, t = lane & 3;
  const int c_begin = split * p.chunks / S, c_end = (split + 1) * p.chunks / S;
  const int nch = c_end - c_begin, k0 = c_begin * KCH;
  const int M = p.M, K = p.K;

  // ---- weight rows of this thread (16 wn + g and + 8 of the tile), first chunks in flight
  const int lrow = 16 * wn + g;
  int wrow;
  if constexpr (EPI == EPI_SILU) {
    constexpr int H = BN / 2;  // a warp's 16 rows lie in one half (WN >= 2)
    wrow = lrow < H ? tile * H + lrow : p.N + tile * H + (lrow - H);
  } else {
    wrow = tile * BN + lrow;
  }
  const bf16* wp = p.w + (size_t)wrow * K + k0 + wk * KCH + t * 8;
  const size_t row8 = (size_t)8 * K;
  const int nw = nch > wk ? (nch - wk + WK - 1) / WK : 0;  // chunks of this warp
  uint4 wr[D][4];
  auto wload = [&](uint4(&r)[4], int i) {
    const bf16* q = wp + (size_t)i * (WK * KCH);
    r[0] = ld_stream(q);
    r[1] = ld_stream(q + row8);
    r[2] = ld_stream(q + 32);
    r[3] = ld_stream(q + row8 + 32);
  };
#pragma unroll
  for (int i = 0; i < D - 1; ++i)
    if (i < nw) wload(wr[i], i);

  // ---- x tile -> shared (rows >= M: zeros, not read)
  const int vpr = nch * (KCH / 8);  // 16-byte vectors a row
  for (int v = tid; v < MP * vpr; v += THREADS) {
    const int m = v / vpr, c8 = v - m * vpr;
    const bool in = m < M;
    const bf16* src = in ? p.x + (size_t)m * K + k0 + c8 * 8 : p.x;
    cp_async16(xs + m * p.xs + c8 * 8, src, in);
  }
  if constexpr (NORM)
    for (int v = tid; v < vpr; v += THREADS) cp_async16(nws + v * 8, p.norm_w + k0 + v * 8, true);
  cp_async_wait_all();
  __syncthreads();

  if constexpr (NORM) {
    if (p.delta) {  // v = bf16(x + delta) in place (4 vectors a thread in flight)
      const int total = M * vpr;
      for (int v0 = tid; v0 < total; v0 += 4 * THREADS) {
        uint4 d[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int v = v0 + r * THREADS, m = v / vpr, c8 = v - m * vpr;
          if (v < total)
            d[r] = __ldg(reinterpret_cast<const uint4*>(p.delta + (size_t)m * K + k0 + c8 * 8));
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int v = v0 + r * THREADS, m = v / vpr, c8 = v - m * vpr;
          if (v < total) {
            uint4* q = reinterpret_cast<uint4*>(xs + m * p.xs + c8 * 8);
            float f[8], e8[8];
            unpack8(*q, f);
            unpack8(d[r], e8);
#pragma unroll
            for (int e = 0; e < 8; ++e) f[e] = rnd<bf16>(f[e] + e8[e]);
            const uint4 u = pack8(f);
            *q = u;
            if (p.x_out && tile == 0)
              *reinterpret_cast<uint4*>(p.x_out + (size_t)m * K + k0 + c8 * 8) = u;
          }
        }
      }
      __syncthreads();
    }
    // this block's part of sum(v^2) a row (a warp a row, lane-strided, then a warp sum)
    for (int m = warp; m < M; m += THREADS / 32) {
      const bf16* row = xs + m * p.xs;
      float ss = 0.f;
      for (int c8 = lane; c8 < vpr; c8 += 32) {
        float f[8];
        unpack8(*reinterpret_cast<const uint4*>(row + c8 * 8), f);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += f[e] * f[e];
      }
      ss = warp_sum(ss);
      if (lane == 0) ss_part[m] = ss;
    }
    if (S > 1) {
      cooperative_groups::this_cluster().sync();
    } else {
      __syncthreads();
    }
    if (tid < M) {
      float tot = 0.f;
      if (S > 1) {
        auto cl = cooperative_groups::this_cluster();
        for (int s = 0; s < S; ++s) tot += cl.map_shared_rank(ss_part, s)[tid];
      } else {
        tot = ss_part[tid];
      }
      rs_s[tid] = rsqrtf(tot / (float)K + p.eps);
    }
    __syncthreads();
    // h = bf16(bf16(v * rs) * norm_w), in place
    for (int v = tid; v < M * vpr; v += THREADS) {
      const int m = v / vpr, c8 = v - m * vpr;
      uint4* q = reinterpret_cast<uint4*>(xs + m * p.xs + c8 * 8);
      float f[8], nwf[8];
      unpack8(*q, f);
      unpack8(*reinterpret_cast<const uint4*>(nws + c8 * 8), nwf);
      const float r = rs_s[m];
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = rnd<bf16>(rnd<bf16>(f[e] * r) * nwf[e]);
      *q = pack8(f);
    }
    __syncthreads();
  }

  // ---- main loop: chunk i of this warp is tile chunk wk + i WK
  float acc[MT][4];
#pragma unroll
  for (int j = 0; j < MT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  const bf16* xb = xs + g * p.xs + wk * KCH + t * 8;
  auto compute = [&](const uint4(&r)[4], int i) {
    const bf16* xc = xb + i * (WK * KCH);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 a = r[2 * h], b = r[2 * h + 1];  // rows g, g + 8; k 32 h + 8 t .. + 7
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        const uint4 xv = *reinterpret_cast<const uint4*>(xc + j * 8 * p.xs + h * 32);
        mma16816(acc[j], a.x, b.x, a.y, b.y, xv.x, xv.y);
        mma16816(acc[j], a.z, b.z, a.w, b.w, xv.z, xv.w);
      }
    }
  };
  for (int i0 = 0; i0 < nw; i0 += D) {
#pragma unroll
    for (int j = 0; j < D; ++j) {
      const int i = i0 + j;
      if (i + D - 1 < nw) wload(wr[(j + D - 1) % D], i + D - 1);
      if (i < nw) compute(wr[j], i);
    }
  }

  // ---- the block's partial tile part[m][col] (k groups summed in order)
  __syncthreads();  // every warp is done with xs, which part overlays
#pragma unroll 1
  for (int kg = 0; kg < WK; ++kg) {
    if (wk == kg) {
#pragma unroll
      for (int j = 0; j < MT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float* q = part + (j * 8 + 2 * t + (e & 1)) * PS + lrow + (e >> 1) * 8;
          *q = kg == 0 ? acc[j][e] : *q + acc[j][e];
        }
      }
    }
    __syncthreads();
  }
  if (S > 1) cooperative_groups::this_cluster().sync();

  // ---- merge the cluster's partials in split order, epilogue, bf16 out
  constexpr int BNO = EPI == EPI_SILU ? BN / 2 : BN;  // output columns of the tile
  constexpr int QPR = BNO / 4;                         // 4-column groups a row
  const float* ps[MAX_SPLIT];
#pragma unroll
  for (int s = 0; s < MAX_SPLIT; ++s)
    ps[s] = S > 1 && s < S ? cooperative_groups::this_cluster().map_shared_rank(part, s) : part;
  constexpr int R = 4;  // output groups a thread has in flight
  const int units = M * QPR, ustep = S * THREADS;
  for (int u0 = split * THREADS + tid; u0 < units; u0 += R * ustep) {
    uint2 rv[R];
    if constexpr (EPI == EPI_RES) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int u = u0 + r * ustep, m = u / QPR, q = u - m * QPR;
        if (u < units) rv[r] = *reinterpret_cast<const uint2*>(p.out + (size_t)m * p.N + tile * BNO + 4 * q);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int u = u0 + r * ustep, m = u / QPR, q = u - m * QPR;
      if (u >= units) break;
      float4 va[MAX_SPLIT], vb[MAX_SPLIT];
#pragma unroll
      for (int s = 0; s < MAX_SPLIT; ++s) {
        if (s < S) {
          va[s] = *reinterpret_cast<const float4*>(ps[s] + m * PS + 4 * q);
          if constexpr (EPI == EPI_SILU)
            vb[s] = *reinterpret_cast<const float4*>(ps[s] + m * PS + BN / 2 + 4 * q);
        }
      }
      float a[4] = {0.f, 0.f, 0.f, 0.f}, b[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int s = 0; s < MAX_SPLIT; ++s) {  // in split order
        if (s < S) {
          a[0] += va[s].x, a[1] += va[s].y, a[2] += va[s].z, a[3] += va[s].w;
          if constexpr (EPI == EPI_SILU) b[0] += vb[s].x, b[1] += vb[s].y, b[2] += vb[s].z, b[3] += vb[s].w;
        }
      }
      float o[4];
      if constexpr (EPI == EPI_SILU) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float gg = rnd<bf16>(a[e]), uu = rnd<bf16>(b[e]);
          o[e] = rnd<bf16>(gg / (1.f + expf(-gg))) * uu;
        }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[e] = a[e];
      }
      if constexpr (EPI == EPI_RES) {
        o[0] = lo_f(rv[r].x) + rnd<bf16>(o[0]);
        o[1] = hi_f(rv[r].x) + rnd<bf16>(o[1]);
        o[2] = lo_f(rv[r].y) + rnd<bf16>(o[2]);
        o[3] = hi_f(rv[r].y) + rnd<bf16>(o[3]);
      }
      *reinterpret_cast<uint2*>(p.out + (size_t)m * p.N + tile * BNO + 4 * q) =
          make_uint2(pack2(o[0], o[1]), pack2(o[2], o[3]));
    }
  }
  if (S > 1) cooperative_groups::this_cluster().sync();  // partials stay until all have read
}

// ---------------------------------------------------------------- host side
inline int mt_for(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : M <= 64 ? 8 : 16; }

inline size_t smem_bytes(int MT, int WN, int chunks, int S, bool norm) {
  const int maxch = (chunks + S - 1) / S;
  const size_t MP = 8 * MT, xs = (size_t)maxch * KCH + 32;
  size_t region = MP * xs * 2, ptile = MP * (16 * WN + 4) * 4;
  return (region > ptile ? region : ptile) + (norm ? 2 * MP * 4 + xs * 2 : 0);
}

inline bool config_ok(int MT, int WN, int S, int N, int chunks, bool norm, bool silu) {
  if (WN != 2 && WN != 4 && WN != 8) return false;
  if (S < 1 || S > MAX_SPLIT || S > chunks) return false;
  if (silu ? N % (8 * WN) : N % (16 * WN)) return false;
  return smem_bytes(MT, WN, chunks, S, norm) <= (size_t)SMEM_MAX;
}

// Default tile / split choice (N = output columns), from the H200 sweep of bench/gpu/gemm_lab.py
// on the Qwen2-0.5B shapes: wide weights (gate_up) want big column tiles and few splits, deep
// ones (down) and small square ones at M > 16 the 8-way split; small square ones at M <= 16 one
// split of 32-column tiles, up to M = 32 a 5-way split of 64-column tiles. The first valid candidate wins; else any valid configuration.
inline void pick_config(int M, int N, int K, bool norm, bool silu, int* wn_out, int* s_out) {
  const int MT = mt_for(M), chunks = K / KCH, rows = silu ? 2 * N : N;
  int cand[4][2];
  int nc = 0;
  auto add = [&](int wn, int s) { cand[nc][0] = wn, cand[nc][1] = s, ++nc; };
  if (rows >= 4096) {
    add(8, M <= 16 ? 1 : 3), add(4, M <= 16 ? 1 : 2), add(2, 1);
  } else if (K >= 2048) {
    add(4, 8), add(2, 8), add(2, 4);
  } else if (M <= 8) {
    add(2, 1), add(4, 4), add(2, 4);
  } else if (M <= 32) {
    add(4, 5), add(2, 4), add(4, 4);
  } else {  // the norm prologue is redone by every column tile: fewer, wider tiles with it
    if (norm) add(8, 8);
    add(4, M <= 64 ? 7 : 8), add(4, 8), add(2, 4);
  }
  for (int c = 0; c < nc; ++c)
    if (config_ok(MT, cand[c][0], cand[c][1], N, chunks, norm, silu)) {
      *wn_out = cand[c][0], *s_out = cand[c][1];
      return;
    }
  *wn_out = *s_out = 0;
  for (int WN = 8; WN >= 2; WN /= 2)
    for (int S = 1; S <= MAX_SPLIT; ++S)
      if (config_ok(MT, WN, S, N, chunks, norm, silu)) {
        *wn_out = WN, *s_out = S;
        return;
      }
}

template <int MT, int WN, bool NORM, int EPI>
int launch_t(const Params& p, int S, cudaStream_t st) {
  auto kern = skinny_gemm_k<MT, WN, NORM, EPI>;
  static bool attr = false;  // raise the dynamic shared memory limit once (outside captures)
  if (!attr) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_MAX);
    if (e != cudaSuccess) return (int)e;
    attr = true;
  }
  constexpr int BN = 16 * WN;
  const int rows = EPI == EPI_SILU ? 2 * p.N : p.N;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)S, (unsigned)(rows / BN), 1);
  cfg.blockDim = dim3(THREADS, 1, 1);
  cfg.dynamicSmemBytes = smem_bytes(MT, WN, p.chunks, S, NORM);
  cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = (unsigned)S;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  cfg.attrs = at;
  cfg.numAttrs = S > 1 ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kern, p);
  return (int)e;
}

template <bool NORM, int EPI>
int launch_flags(const Params& p, int MT, int WN, int S, cudaStream_t st) {
#define SKINNY_CASE(mt, wn) \
  if (MT == mt && WN == wn) return launch_t<mt, wn, NORM, EPI>(p, S, st);
#define SKINNY_MT(mt) SKINNY_CASE(mt, 2) SKINNY_CASE(mt, 4) SKINNY_CASE(mt, 8)
  SKINNY_MT(1) SKINNY_MT(2) SKINNY_MT(4) SKINNY_MT(8) SKINNY_MT(16)
#undef SKINNY_MT
#undef SKINNY_CASE
  return (int)cudaErrorNotSupported;
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// flags: bit 0 NORM; bits 1-2 epilogue (0 none, 1 residual, 2 SiLU). wn / splits 0: default.
inline int gemm_any(void* out, const void* x, const void* w, const void* delta, void* x_out,
                    const void* norm_w, float eps, int M, int N, int K, int flags, int wn,
                    int splits, void* stream) {
  const bool norm = flags & 1;
  const int epi = (flags >> 1) & 3;
  if (M == 0) return 0;
  if (M < 0 || M > 128 || N <= 0 || K <= 0 || K % KCH || epi > 2) return (int)cudaErrorNotSupported;
  if (!out || !x || !w || !aligned16(out) || !aligned16(x) || !aligned16(w))
    return (int)cudaErrorNotSupported;
  if (norm && (!norm_w || !aligned16(norm_w) || (delta && !aligned16(delta)) ||
               (x_out && (!delta || !aligned16(x_out) || x_out == x || x_out == delta))))
    return (int)cudaErrorNotSupported;
  const int MT = mt_for(M), chunks = K / KCH;
  const bool silu = epi == EPI_SILU;
  int dwn = 0, ds = 0;
  if (wn <= 0 || splits <= 0) pick_config(M, N, K, norm, silu, &dwn, &ds);
  if (wn <= 0) wn = dwn;
  if (splits <= 0) splits = ds;
  if (!config_ok(MT, wn, splits, N, chunks, norm, silu)) return (int)cudaErrorNotSupported;
  Params p;
  p.out = (bf16*)out;
  p.x = (const bf16*)x;
  p.w = (const bf16*)w;
  p.delta = norm ? (const bf16*)delta : nullptr;
  p.x_out = norm ? (bf16*)x_out : nullptr;
  p.norm_w = (const bf16*)norm_w;
  p.eps = eps;
  p.M = M, p.N = N, p.K = K;
  p.chunks = chunks;
  p.xs = ((chunks + splits - 1) / splits) * KCH + 32;
  cudaStream_t st = (cudaStream_t)stream;
  int rc;
  if (!norm && epi == EPI_NONE) rc = launch_flags<false, EPI_NONE>(p, MT, wn, splits, st);
  else if (norm && epi == EPI_NONE) rc = launch_flags<true, EPI_NONE>(p, MT, wn, splits, st);
  else if (!norm && epi == EPI_RES) rc = launch_flags<false, EPI_RES>(p, MT, wn, splits, st);
  else if (norm && epi == EPI_RES) rc = launch_flags<true, EPI_RES>(p, MT, wn, splits, st);
  else if (!norm && epi == EPI_SILU) rc = launch_flags<false, EPI_SILU>(p, MT, wn, splits, st);
  else rc = launch_flags<true, EPI_SILU>(p, MT, wn, splits, st);
  if (rc) return rc;
  return (int)cudaGetLastError();
}

}  // namespace skinny

extern "C" {

// Workspace / counters the launchers need: none (splits merge through the cluster's shared
// memory). Kept so callers can size buffers uniformly; ws / counters may be NULL.
int rl_gemm_ws_bytes(int M, int N, int K) { return 0 * (M + N + K); }
int rl_gemm_counters(int M, int N, int K) { return 0 * (M + N + K); }

// The (wn, splits) a launch of these sizes would use: -> BN = 16 wn columns a block, `splits`
// blocks (one cluster) a column tile; 0 if unsupported. flags as rl_gemm_ex.
int rl_gemm_config(int M, int N, int K, int flags, int* wn, int* splits) {
  *wn = *splits = 0;
  if (M < 1 || M > 128 || K % skinny::KCH) return 0;
  skinny::pick_config(M, N, K, flags & 1, ((flags >> 1) & 3) == skinny::EPI_SILU, wn, splits);
  return *wn ? 1 : 0;
}

// Everything at once (lab / tuning): flags bit 0 NORM, bits 1-2 epilogue (0, 1 residual,
// 2 SiLU with N = I); wn in {2, 4, 8} and splits in 1..8 force a configuration (0: default).
int rl_gemm_ex(void* out, const void* x, const void* w, const void* delta, void* x_out,
               const void* norm_w, float eps, int M, int N, int K, int flags, int wn, int splits,
               void* stream) {
  return skinny::gemm_any(out, x, w, delta, x_out, norm_w, eps, M, N, K, flags, wn, splits,
                          stream);
}

// out[M, N] = bf16(x[M, K] . W[N, K]^T)
int rl_gemm(void* out, const void* x, const void* w, int M, int N, int K, void* ws,
            void* counters, void* stream) {
  (void)ws, (void)counters;
  return skinny::gemm_any(out, x, w, nullptr, nullptr, nullptr, 0.f, M, N, K, 0, 0, 0, stream);
}

// out = bf16(rms_norm(x [+ delta]) . W^T); norm_w [K]; delta may be NULL; with delta, x_out
// (optional; not x or delta) gets bf16(x + delta).
int rl_gemm_norm(void* out, const void* x, const void* delta, void* x_out, const void* norm_w,
                 float eps, const void* w, int M, int N, int K, void* ws, void* counters,
                 void* stream) {
  (void)ws, (void)counters;
  return skinny::gemm_any(out, x, w, delta, x_out, norm_w, eps, M, N, K, 1, 0, 0, stream);
}

// res[M, N] = bf16(res + bf16(x . W^T)), in place
int rl_gemm_residual(void* res, const void* x, const void* w, int M, int N, int K, void* ws,
                     void* counters, void* stream) {
  (void)ws, (void)counters;
  return skinny::gemm_any(res, x, w, nullptr, nullptr, nullptr, 0.f, M, N, K, 2, 0, 0, stream);
}

// W [2I, K] (gate rows, then up rows): out[M, I] = bf16(bf16(silu(g)) * u)
int rl_gemm_silu(void* out, const void* x, const void* w, int M, int I, int K, void* ws,
                 void* counters, void* stream) {
  (void)ws, (void)counters;
  return skinny::gemm_any(out, x, w, nullptr, nullptr, nullptr, 0.f, M, I, K, 4, 0, 0, stream);
}

// RMSNorm prologue + SiLU.mul epilogue (gate_up of a decoder layer)
int rl_gemm_norm_silu(void* out, const void* x, const void* delta, void* x_out,
                      const void* norm_w, float eps, const void* w, int M, int I, int K, void* ws,
                      void* counters, void* stream) {
  (void)ws, (void)counters;
  return skinny::gemm_any(out, x, w, delta, x_out, norm_w, eps, M, I, K, 5, 0, 0, stream);
}

}  // extern "C"
