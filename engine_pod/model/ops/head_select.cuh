// The LM head's GEMM and the token selection in one kernel, for bf16 steps of <= 64 sampled
// rows (included by kernels.cu after gemm.cuh — skinny::ld_stream, skinny::mma16816 — the
// selection kernels — SelBest, sel_take, sel_merge, sel_load_cg, sel_write, select_mode —
// launch_k and num_sms).
//
// Unfused, a step's head is three launches: cuBLAS's x . W^T writes [M, V] bf16 logits (V =
// 151936 for Qwen2: 19 MB at 64 rows), select_k reads them back, sample_k draws the rows with
// a top-k / top-p cut. Here:
//
//   - each warp streams a contiguous run of W's rows (token ids) straight from DRAM into
//     registers, 32 rows x 64 k a chunk (each row's 128 bytes read by 4 lanes, two 16-byte
//     loads each; DEPTH chunks in flight, the first ones issued before the PDL wait: weights
//     are never written by the kernels ahead);
//   - x (all M rows) sits in shared memory in mma B-fragment order, two 16-byte loads a lane
//     per 8 rows and 64 k; the products run on tensor cores (mma.m16n8k16, float32 sums);
//   - after a tile's last chunk, each logit is rounded to bf16 (what the GEMM would have
//     written), staged in shared memory, and each lane takes its two rows' 32 new logits into
//     their running selection with select_k's rule and noise (sel_take: the argmax for greedy
//     rows, the Gumbel-max draw for plain temperature rows);
//   - blocks leave their best per row in `part`; the last block to finish merges them and
//     writes the token ids (and `info`, as select_k does).
//
// Logits are written only when the caller needs them or a row has a cut (the launcher then
// runs sample_k for those rows, which reads them). Inside each 16-wide k step the k order is
// permuted alike for A and B (a lane's 16 consecutive k of a chunk feed its four steps), so
// every fragment is half of one load. A row's logits depend only on its own x row and W
// (fixed k order): a batch and its padded graph give the same tokens. Launcher:
// rl_head_select (kernels.cu); rl_head_select_part_bytes says which shapes it takes.
//
// Measured on the H200 (bench/gpu/RESULTS.md round 10): right, but slower than cuBLAS +
// select_k at 1-64 rows — loads through registers read the head at <= 3.4 TB/s, cuBLAS's TMA
// copies at 4.2 — so the engine runs it only when RLFLEET_HEAD_SELECT_ROWS asks.

namespace head {

constexpr int WARPS = 8, THREADS = WARPS * 32;
constexpr int TROWS = 32;   // W rows a warp tile (two mma m-tiles)
constexpr int PITCH = 72;   // floats a staged tile row (64 + 8: the lanes' float2 stores and
                            // loads touch every bank twice, the least for 256 bytes)
constexpr int KC = 64;      // k a chunk (a W row's 128 bytes)
constexpr int DEPTH = 2;    // chunks a warp has in flight beyond the one it multiplies
constexpr int MAX_ROWS = 64;
constexpr int SMEM_MAX = 227 * 1024 - 64;  // the opt-in limit, less the static flag

__host__ __device__ constexpr int n_tiles(int M) {  // 8-row mma n-tiles the kernel holds
  return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : M <= 48 ? 6 : 8;
}

__host__ __device__ inline size_t smem_bytes(int NT, int K) {
  return (size_t)(K / KC) * NT * 2 * 32 * 16        // x as B fragments
         + (size_t)WARPS * TROWS * PITCH * 4        // staged tiles (later: per-warp bests)
         + (size_t)MAX_ROWS * sizeof(RowSel);
}

inline bool takes(int M, int V, int K) {
  return M >= 1 && M <= MAX_ROWS && V >= 1 && K >= KC && K % KC == 0 &&
         smem_bytes(n_tiles(M), K) <= (size_t)SMEM_MAX;
}

__device__ __forceinline__ float bf16_round(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

template <int NT>
__global__ void __launch_bounds__(THREADS, 1)
    head_select_k(int64_t* __restrict__ out, int64_t* __restrict__ info,
                  SelBest* __restrict__ part, unsigned* __restrict__ counter,
                  bf16* __restrict__ logits, const bf16* __restrict__ x,
                  const bf16* __restrict__ w, const int64_t* __restrict__ params, int M, int V,
                  int K, int need_logits) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int nq = K / KC;
  uint4* xs = reinterpret_cast<uint4*>(smem);  // [nq][NT][2][32 lanes]
  float* tiles = reinterpret_cast<float*>(xs + (size_t)nq * NT * 64);  // [WARPS][TROWS][PITCH]
  RowSel* rsel = reinterpret_cast<RowSel*>(tiles + WARPS * TROWS * PITCH);  // [MAX_ROWS]
  __shared__ bool s_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;

  // this warp's W rows: a contiguous run of 16-row units, runs balanced over all warps
  const int units = (V + 15) / 16, nw = gridDim.x * WARPS, gw = blockIdx.x * WARPS + warp;
  const int r_beg = (int)((int64_t)units * gw / nw) * 16;
  const int r_end = min(V, (int)((int64_t)units * (gw + 1) / nw) * 16);
  const int total = (r_end > r_beg ? (r_end - r_beg + TROWS - 1) / TROWS : 0) * nq;

  // chunk f = (tile f / nq, k chunk f % nq): rows g, g + 8, g + 16, g + 24 of the tile, this
  // lane's 16 k of the chunk (k 16c .. 16c + 15)
  uint4 buf[DEPTH + 1][4][2];
  auto load = [&](int f, uint4(&b)[4][2]) {
    const int t = f / nq, q = f - t * nq;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = r_beg + t * TROWS + g + 8 * i;
      const bf16* p = w + (size_t)r * K + q * KC + c * 16;
      b[i][0] = r < r_end ? skinny::ld_stream(p) : make_uint4(0, 0, 0, 0);
      b[i][1] = r < r_end ? skinny::ld_stream(p + 8) : make_uint4(0, 0, 0, 0);
    }
  };
#pragma unroll
  for (int d = 0; d < DEPTH; ++d)
    if (d < total) load(d, buf[d]);

  pdl_entry();  // x and params come from the kernels ahead
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int v = tid; v < nq * NT * 64; v += THREADS) {  // v = ((q * NT + j) * 2 + h) * 32 + l
    const int l = v & 31, h = (v >> 5) & 1, j = (v >> 6) % NT, q = (v >> 6) / NT;
    const int m = 8 * j + (l >> 2);
    xs[v] = m < M ? *reinterpret_cast<const uint4*>(x + (size_t)m * K + q * KC + (l & 3) * 16 +
                                                    h * 8)
                  : zero;
  }
  int mode = SEL_FULL;  // rows past M: nothing to select
  if (tid < M) {
    const RowSel s = row_sel(params, tid);
    mode = s.mode;
    rsel[tid] = s;
  }
  const int cut = __syncthreads_or(mode == SEL_FULL && tid < M);  // (also the barrier)
  const bool write = need_logits || cut;

  // the lane's two rows: columns 2 lane and 2 lane + 1 of the staged tile
  const int m0 = 2 * lane;
  const RowSel p0 = m0 < M ? rsel[m0] : RowSel{0.0, 0, SEL_FULL};
  const RowSel p1 = m0 + 1 < M ? rsel[m0 + 1] : RowSel{0.0, 0, SEL_FULL};
  SelBest b0{-INFINITY, -INFINITY, 0x7fffffff, 0x7fffffff, 0}, b1 = b0;
  float* tw = tiles + warp * TROWS * PITCH;

  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.f;

  for (int f0 = 0; f0 < total; f0 += DEPTH + 1) {
#pragma unroll
    for (int d = 0; d <= DEPTH; ++d) {
      const int f = f0 + d;
      if (f >= total) break;
      if (f + DEPTH < total) load(f + DEPTH, buf[(d + DEPTH) % (DEPTH + 1)]);
      const int t = f / nq, q = f - t * nq;
      const uint4(&a)[4][2] = buf[d];
      const uint4* xq = xs + (size_t)q * NT * 64 + lane;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // k 16c + 8h .. + 7 of the chunk: two mma k steps
          const uint4 b = xq[(j * 2 + h) * 32];
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            const uint4 lo = a[2 * mt][h], hi = a[2 * mt + 1][h];  // rows g, g + 8 of m-tile mt
            skinny::mma16816(acc[mt][j], lo.x, hi.x, lo.y, hi.y, b.x, b.y);
            skinny::mma16816(acc[mt][j], lo.z, hi.z, lo.w, hi.w, b.z, b.w);
          }
        }
      }
      if (q != nq - 1) continue;
      // the tile is done: stage its bf16 logits [TROWS][rows], take them, maybe write them
      const int rt = r_beg + t * TROWS, nv = min(TROWS, r_end - rt);
      __syncwarp();
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          float* p = tw + (mt * 16 + g) * PITCH + j * 8 + 2 * c;
          *reinterpret_cast<float2*>(p) =
              make_float2(bf16_round(acc[mt][j][0]), bf16_round(acc[mt][j][1]));
          *reinterpret_cast<float2*>(p + 8 * PITCH) =
              make_float2(bf16_round(acc[mt][j][2]), bf16_round(acc[mt][j][3]));
          acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.f;
        }
      __syncwarp();
      if (m0 < NT * 8) {
        for (int i = 0; i < nv; ++i) {
          const float2 v = *reinterpret_cast<const float2*>(tw + i * PITCH + m0);
          if (p0.mode != SEL_FULL) sel_take(v.x, rt + i, p0.mode == SEL_TEMP, p0.inv_t, p0.h, b0);
          if (p1.mode != SEL_FULL) sel_take(v.y, rt + i, p1.mode == SEL_TEMP, p1.inv_t, p1.h, b1);
        }
      }
      if (write && lane < nv)
        for (int m = 0; m < M; ++m)
          logits[(size_t)m * V + rt + lane] = __float2bfloat16_rn(tw[lane * PITCH + m]);
    }
  }

  // the block's best per row (the staged tiles' space), then the last block's merge
  __syncthreads();
  SelBest* sb = reinterpret_cast<SelBest*>(tiles);  // [WARPS][MAX_ROWS]
  if (m0 < M) sb[warp * MAX_ROWS + m0] = b0;
  if (m0 + 1 < M) sb[warp * MAX_ROWS + m0 + 1] = b1;
  __syncthreads();
  if (tid < M) {
    SelBest b = sb[tid];
    for (int j = 1; j < WARPS; ++j) sel_merge(b, sb[j * MAX_ROWS + tid]);
    part[(size_t)blockIdx.x * MAX_ROWS + tid] = b;
    __threadfence();
  }
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (tid < M && mode != SEL_FULL) {
    SelBest b{-INFINITY, -INFINITY, 0x7fffffff, 0x7fffffff, 0};
    for (int j = 0; j < (int)gridDim.x; ++j)
      sel_merge(b, sel_load_cg(part + (size_t)j * MAX_ROWS + tid));
    sel_write(out, info, tid, b, mode == SEL_TEMP);
  }
  if (tid == 0) *counter = 0u;  // ready for the next launch
}

template <int NT>
int launch(int64_t* out, int64_t* info, SelBest* part, unsigned* counter, bf16* logits,
           const bf16* x, const bf16* w, const int64_t* params, int M, int V, int K,
           int need_logits, int grid, cudaStream_t st) {
  static size_t limit = 0;  // raised to what the shape needs (first call: outside captures)
  const size_t bytes = smem_bytes(NT, K);
  if (bytes > limit) {
    cudaError_t e = cudaFuncSetAttribute(head_select_k<NT>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return (int)e;
    limit = bytes;
  }
  launch_k(head_select_k<NT>, dim3(grid), dim3(THREADS), bytes, st, out, info, part, counter,
           logits, x, w, params, M, V, K, need_logits);
  return (int)cudaGetLastError();
}

inline int run(int64_t* out, int64_t* info, SelBest* part, unsigned* counter, bf16* logits,
               const bf16* x, const bf16* w, const int64_t* params, int M, int V, int K,
               int need_logits, int grid, cudaStream_t st) {
#define HEAD_ARGS out, info, part, counter, logits, x, w, params, M, V, K, need_logits, grid, st
  switch (n_tiles(M)) {
    case 1: return launch<1>(HEAD_ARGS);
    case 2: return launch<2>(HEAD_ARGS);
    case 4: return launch<4>(HEAD_ARGS);
    case 6: return launch<6>(HEAD_ARGS);
    default: return launch<8>(HEAD_ARGS);
  }
#undef HEAD_ARGS
}

}  // namespace head
