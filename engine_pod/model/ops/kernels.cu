// The decoder's non-GEMM ops as CUDA kernels (built for sm_90 by ops/build.py).
//
// Launched from Python through ctypes on raw device pointers of Paddle tensors and on
// Paddle's current CUDA stream, so they need nothing from Paddle but memory: PyPI's
// paddlepaddle-gpu 2.6.2 has no Hopper kernels for its own element-wise ops (see
// bench/gpu/RESULTS.md), only cuBLAS matmul works there. Every launcher is
// `extern "C" int rl_<op>(..., int dtype, void* stream)` and returns the CUDA error
// (0 = ok). dtype: 0 float32, 1 bfloat16, 2 float16. Index arrays are int64.
//
// Numerics follow the Paddle-native path (ops/native.py): element-wise results are
// rounded to the model dtype at the same places Paddle rounds them; reductions
// (RMSNorm variance, attention) accumulate in float32.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <type_traits>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
// round a float to T and back (what a Paddle op in dtype T does to its result)
template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) part[w] = v;
  __syncthreads();
  if (w == 0) {
    float s = lane < nw ? part[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// 1 / rms of row x[0, h) (every thread of the block calls it; all get the value): the scale an
// RMSNorm with unit weight applies, for kernels that take a raw residual row's GEMM product
// (norm weights folded into the GEMM's weights: `rl_qkv_rope_cache_rms`, `rl_silu_mul_rms`)
template <typename T>
__device__ float row_rrms(const T* __restrict__ x, int h, float eps) {
  float ss = 0.f;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    const float v = to_f(x[j]);
    ss += v * v;
  }
  return rsqrtf(block_sum(ss) / (float)h + eps);
}

// ---------------------------------------------------------------- programmatic dependent launch
// Every kernel here is launched with programmatic stream serialization (sm_90 PDL, when
// `g_pdl` is on): it may start while the kernel before it on the stream is finishing, so
// the launch latency and whatever a kernel does before `pdl_wait()` overlap that kernel's
// tail. `pdl_wait()` returns once the previous kernel has completed and its writes are
// visible; every kernel calls it before it touches memory a previous kernel writes or reads,
// unconditionally in every block (a block that exited without it would let the kernel after
// this one start before the one before it had finished). `pdl_launch()` lets the next kernel
// start launching. Both are no-ops for a normal launch.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// the common start of a kernel: wait for the previous one, let the next one launch
__device__ __forceinline__ void pdl_entry() {
  pdl_wait();
  pdl_launch();
}

// ---------------------------------------------------------------- gather rows
// out[i, :] = table[idx[i], :]   (embedding lookup; also index_select of rows)
template <typename T>
__global__ void gather_rows_k(T* __restrict__ out, const T* __restrict__ table,
                              const int64_t* __restrict__ idx, int h) {
  pdl_entry();
  int64_t r = idx[blockIdx.x];
  const T* src = table + r * (int64_t)h;
  T* dst = out + (int64_t)blockIdx.x * h;
  for (int j = threadIdx.x; j < h; j += blockDim.x) dst[j] = src[j];
}

// ---------------------------------------------------------------- split-K partials
// A streaming GEMM may hand its product over unreduced: float32 partial sums
// parts[s][row][col] (s < nparts, pstride = rows x cols elements apart). Its value is the
// sum over s in order, rounded once to T — what the GEMM itself would have written.
// parts_values4 writes elements i .. i + 3 (i % 4 == 0, pstride % 4 == 0) to dst, loading 16
// partials at a time (all in flight: the sums are latency-bound, not bandwidth-bound).
template <typename T>
__device__ __forceinline__ void parts_values4(float* dst, const float* __restrict__ parts,
                                              int nparts, int64_t pstride, int64_t i) {
  constexpr int BATCH = 16;
  float a[4] = {0.f, 0.f, 0.f, 0.f};
  for (int s0 = 0; s0 < nparts; s0 += BATCH) {
    float4 v[BATCH];
#pragma unroll
    for (int u = 0; u < BATCH; ++u)
      if (s0 + u < nparts) v[u] = __ldcg(reinterpret_cast<const float4*>(parts + (s0 + u) * pstride + i));
#pragma unroll
    for (int u = 0; u < BATCH; ++u)
      if (s0 + u < nparts) a[0] += v[u].x, a[1] += v[u].y, a[2] += v[u].z, a[3] += v[u].w;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) dst[e] = rnd<T>(a[e]);
}

// ---------------------------------------------------------------- (residual add +) RMSNorm
// row r = rows ? rows[b] : b;  v = x[r] (+ delta[r], rounded to T);  if x_out: x_out[r] = v
// out[b] = T(T(v * rsqrt(mean(v^2) + eps)) * w)
// parts (instead of delta): delta[r] is the value of split-K partials (parts_values4; h % 4
// == 0), summed into dynamic shared memory (h floats) first.
template <typename T>
__global__ void rms_norm_k(T* __restrict__ out, T* x_out, const T* x, const T* __restrict__ delta,
                           const float* __restrict__ parts, int nparts, int64_t pstride,
                           const int64_t* __restrict__ rows, const T* __restrict__ w, int h,
                           float eps) {
  extern __shared__ float vrow[];  // [h] when parts
  pdl_entry();
  int64_t r = rows ? rows[blockIdx.x] : blockIdx.x;
  const T* xr = x + r * h;
  const T* dr = delta ? delta + r * h : nullptr;
  if (parts) {
    for (int q = threadIdx.x; q < h / 4; q += blockDim.x)
      parts_values4<T>(vrow + 4 * q, parts, nparts, pstride, r * h + 4 * q);
    __syncthreads();
  }
  float ss = 0.f;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {  // (the same order with or without parts)
    float v = to_f(xr[j]);
    if (dr) v = rnd<T>(v + to_f(dr[j]));
    if (parts) v = vrow[j] = rnd<T>(v + vrow[j]);  // thread j's own element from here on
    ss += v * v;
  }
  float rs = rsqrtf(block_sum(ss) / (float)h + eps);
  T* o = out + (int64_t)blockIdx.x * h;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    float v;  // each thread re-reads only the elements it read above
    if (parts) {
      v = vrow[j];
    } else {
      v = to_f(xr[j]);
      if (dr) v = rnd<T>(v + to_f(dr[j]));
    }
    if (x_out) x_out[r * h + j] = from_f<T>(v);
    o[j] = from_f<T>(rnd<T>(v * rs) * to_f(w[j]));
  }
}

// ---------------------------------------------------------------- bias, SiLU*mul, cast
template <typename T>
__global__ void add_bias_k(T* x, const T* __restrict__ b, int64_t n, int h) {
  pdl_entry();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = from_f<T>(to_f(x[i]) + to_f(b[i % h]));
}

// out[t, c] = T(T(silu(gu[t, c])) * gu[t, I + c])
template <typename T>
__global__ void silu_mul_k(T* __restrict__ out, const T* __restrict__ gu, int64_t n, int inter) {
  pdl_entry();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / inter, c = i - t * inter;
    float g = to_f(gu[t * 2 * inter + c]);
    float u = to_f(gu[t * 2 * inter + inter + c]);
    out[i] = from_f<T>(rnd<T>(g / (1.f + expf(-g))) * u);
  }
}

// silu_mul_k where gu = xn[t] . W'^T, the raw residual row's product with the post-attention
// norm's weight folded into W': g and u scaled by 1 / rms(xn[t]) and rounded. Block (t, y)
// takes SILU_RMS_PER x blockDim.x columns of row t; each thread loads all its g and u before
// the row's sum of squares, so the two reads overlap (one round trip, not one a column).
constexpr int SILU_RMS_PER = 8;
template <typename T>
__global__ void silu_mul_rms_k(T* __restrict__ out, const T* __restrict__ gu,
                               const T* __restrict__ xn, int hn, float eps, int inter) {
  pdl_entry();
  const int64_t t = blockIdx.x;
  const int c0 = blockIdx.y * blockDim.x * SILU_RMS_PER + threadIdx.x;
  const T* g_row = gu + t * 2 * inter;
  float g[SILU_RMS_PER], u[SILU_RMS_PER];
#pragma unroll
  for (int k = 0; k < SILU_RMS_PER; ++k) {
    const int c = c0 + k * blockDim.x;
    g[k] = c < inter ? to_f(g_row[c]) : 0.f;
    u[k] = c < inter ? to_f(g_row[inter + c]) : 0.f;
  }
  const float sc = row_rrms(xn + t * hn, hn, eps);
#pragma unroll
  for (int k = 0; k < SILU_RMS_PER; ++k) {
    const int c = c0 + k * blockDim.x;
    if (c < inter) {
      const float gs = rnd<T>(g[k] * sc), us = rnd<T>(u[k] * sc);
      out[t * inter + c] = from_f<T>(rnd<T>(gs / (1.f + expf(-gs))) * us);
    }
  }
}

template <typename T>
__global__ void cast_f32_k(float* __restrict__ out, const T* __restrict__ in, int64_t n) {
  pdl_entry();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = to_f(in[i]);
}

// ---------------------------------------------------------------- QKV bias + RoPE + paged-KV write
// qkv [T, (hq + 2 hkv) * d] (the GEMM output, without bias); cos/sin tables [max_pos, d] in T.
// q_out [T, hq, d] gets rope(q); K cache gets rope(k), V cache gets v at slot
// (slot_b[t], slot_o[t]); caches are [num_blocks, bs, hkv, d]. parts (instead of qkv): the
// GEMM's split-K partials (parts_values4; [nparts][T][width], width % 4 == 0). xn (else NULL):
// qkv is the product of the raw residual rows xn [T, hn] (the input norm's weight folded into
// the projection's), so each value is first scaled by 1 / rms(xn[t]) and rounded to T.
template <typename T>
__global__ void qkv_rope_cache_k(T* __restrict__ q_out, const T* __restrict__ qkv,
                                 const T* __restrict__ bias, const T* __restrict__ cos_t,
                                 const T* __restrict__ sin_t, const int64_t* __restrict__ pos,
                                 const int64_t* __restrict__ slot_b,
                                 const int64_t* __restrict__ slot_o, T* kc, T* vc, int hq, int hkv,
                                 int d, int bs, const float* __restrict__ parts, int nparts,
                                 const T* __restrict__ xn, int hn, float eps) {
  extern __shared__ float prow[];  // [width] when parts: the row's summed partials
  pdl_entry();
  int t = blockIdx.x;
  int width = (hq + 2 * hkv) * d, half = d / 2;
  const T* row = qkv + (int64_t)t * width;
  int64_t p = pos[t];
  int64_t slot = slot_b[t] * bs + slot_o[t];
  const float sc = xn ? row_rrms(xn + (int64_t)t * hn, hn, eps) : 1.f;
  if (parts) {
    const int64_t pstride = (int64_t)gridDim.x * width;
    for (int q = threadIdx.x; q < width / 4; q += blockDim.x)
      parts_values4<T>(prow + 4 * q, parts, nparts, pstride, (int64_t)t * width + 4 * q);
    __syncthreads();
  }
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    int head = i / d, j = i - head * d;
    float a = parts ? prow[i] : to_f(row[i]);
    if (xn) a = rnd<T>(a * sc);
    if (bias) a = rnd<T>(a + to_f(bias[i]));
    if (head < hq + hkv) {
      int pi = j < half ? i + half : i - half;
      float pv = parts ? prow[pi] : to_f(row[pi]);
      if (xn) pv = rnd<T>(pv * sc);
      if (bias) pv = rnd<T>(pv + to_f(bias[pi]));
      float rot = j < half ? -pv : pv;
      float c = to_f(cos_t[p * d + j]), s = to_f(sin_t[p * d + j]);
      float r = rnd<T>(rnd<T>(a * c) + rnd<T>(rot * s));
      if (head < hq)
        q_out[((int64_t)t * hq + head) * d + j] = from_f<T>(r);
      else
        kc[(slot * hkv + (head - hq)) * d + j] = from_f<T>(r);
    } else {
      vc[(slot * hkv + (head - hq - hkv)) * d + j] = from_f<T>(a);
    }
  }
}

// ---------------------------------------------------------------- paged attention
// One block per (query token t, kv head kh): the G = hq / hkv query heads of that kv head
// attend to positions 0..pos[t] of sequence seq[t] (causal; decode and prefill alike),
// read through block_tables[seq[t], :] (int64, row stride bt_stride). Online softmax over
// tiles of ATT_TILE keys, float32 throughout; out [T, hq * d].
#define ATT_TILE 64
template <typename T>
__global__ void paged_attention_k(T* __restrict__ out, const T* __restrict__ q,
                                  const T* __restrict__ kc, const T* __restrict__ vc,
                                  const int64_t* __restrict__ block_tables, int bt_stride,
                                  const int64_t* __restrict__ seq, const int64_t* __restrict__ pos,
                                  int hq, int hkv, int d, int bs, float scale) {
  pdl_entry();
  extern __shared__ float sm[];
  int t = blockIdx.x, kh = blockIdx.y, G = hq / hkv;
  float* q_s = sm;                    // [G * d]  (pre-scaled)
  float* acc = q_s + G * d;           // [G * d]
  float* s = acc + G * d;             // [G * ATT_TILE] scores, then probabilities
  float* m = s + G * ATT_TILE;        // [G] running max
  float* l = m + G;                   // [G] running sum
  float* alpha = l + G;               // [G] rescale of this tile
  int64_t* rowoff = (int64_t*)(alpha + G + (G & 1 ? 1 : 0) + 0);  // [ATT_TILE]
  // keep rowoff 8-byte aligned: the float count before it is 2Gd + G*TILE + 3G (+1 if G odd)
  const int64_t* bt = block_tables + seq[t] * (int64_t)bt_stride;
  int L = (int)pos[t] + 1;
  const T* qt = q + ((int64_t)t * hq + (int64_t)kh * G) * d;
  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    q_s[i] = to_f(qt[i]) * scale;
    acc[i] = 0.f;
  }
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int64_t kv_stride = (int64_t)hkv * d;
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int n = min(ATT_TILE, L - k0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      int k = k0 + j;
      rowoff[j] = (bt[k / bs] * bs + (k % bs)) * kv_stride + (int64_t)kh * d;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * n; i += blockDim.x) {
      int g = i / n, j = i - g * n;
      const T* kr = kc + rowoff[j];
      const float* qg = q_s + g * d;
      float dot = 0.f;
      for (int e = 0; e < d; ++e) dot += qg[e] * to_f(kr[e]);
      s[g * ATT_TILE + j] = dot;
    }
    __syncthreads();
    for (int g = wid; g < G; g += nw) {
      float mx = -INFINITY;
      for (int j = lane; j < n; j += 32) mx = fmaxf(mx, s[g * ATT_TILE + j]);
      mx = warp_max(mx);
      float mnew = fmaxf(m[g], mx);
      float sum = 0.f;
      for (int j = lane; j < n; j += 32) {
        float pr = expf(s[g * ATT_TILE + j] - mnew);
        s[g * ATT_TILE + j] = pr;
        sum += pr;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        float a = expf(m[g] - mnew);  // m = -inf on the first tile: a = 0
        alpha[g] = a;
        l[g] = l[g] * a + sum;
        m[g] = mnew;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
      int g = i / d, e = i - g * d;
      float a = acc[i] * alpha[g];
      const float* pg = s + g * ATT_TILE;
      for (int j = 0; j < n; ++j) a += pg[j] * to_f(vc[rowoff[j] + e]);
      acc[i] = a;
    }
    __syncthreads();
  }
  T* ot = out + ((int64_t)t * hq + (int64_t)kh * G) * d;
  for (int i = threadIdx.x; i < G * d; i += blockDim.x) ot[i] = from_f<T>(acc[i] / l[i / d]);
}


// ---------------------------------------------------------------- paged attention, split-K (v2)
// Flash-decoding layout: block (token t, kv head kh, split sp) of 4 warps. Each warp walks
// keys k = begin + warp, begin + warp + 4, ... of its split; a lane holds EPL consecutive
// elements of the head dim, so a K/V row is one coalesced warp read, and the warp keeps
// all G query heads' online-softmax state (m, l, acc) in registers (G <= MAXG, unrolled).
// The 4 warps are merged through shared memory; with several splits the partial (m, l,
// acc) go to a float32 workspace and attn_combine_k merges them. The last split runs to
// pos[t] whatever its nominal length, so a CUDA graph captured with fewer keys stays right.
template <typename T, int EPL, int MAXG>
__global__ void __launch_bounds__(128) paged_attention_v2_k(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
    const int64_t* __restrict__ block_tables, int bt_stride, const int64_t* __restrict__ seq,
    const int64_t* __restrict__ pos, int hq, int hkv, int d, int bs, float scale,
    int keys_per_split) {
  pdl_entry();
  __shared__ float s_acc[4][MAXG][EPL * 32];
  __shared__ float s_m[4][MAXG], s_l[4][MAXG];
  int t = blockIdx.x, kh = blockIdx.y, sp = blockIdx.z, nsplit = gridDim.z;
  int G = hq / hkv;
  int L = (int)pos[t] + 1;
  int k_begin = sp * keys_per_split;
  int k_end = sp == nsplit - 1 ? L : min(L, k_begin + keys_per_split);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t* tab = block_tables + seq[t] * (int64_t)bt_stride;
  const T* qt = q + ((int64_t)t * hq + (int64_t)kh * G) * d;
  float qr[MAXG][EPL], acc[MAXG][EPL], m[MAXG], l[MAXG];
#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      int e = lane * EPL + i;
      qr[g][i] = (g < G && e < d) ? to_f(qt[g * d + e]) * scale : 0.f;
      acc[g][i] = 0.f;
    }
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  int64_t kv_stride = (int64_t)hkv * d;
#pragma unroll 4
  for (int k = k_begin + w; k < k_end; k += 4) {  // unrolled: loads of later keys issue early
    int64_t off = (tab[k / bs] * bs + (k % bs)) * kv_stride + (int64_t)kh * d;
    float kr[EPL], vr[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      int e = lane * EPL + i;
      kr[i] = e < d ? to_f(kc[off + e]) : 0.f;
      vr[i] = e < d ? to_f(vc[off + e]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
      if (g < G) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < EPL; ++i) s += qr[g][i] * kr[i];
        s = warp_sum(s);
        float mn = fmaxf(m[g], s);
        float a = expf(m[g] - mn);
        float p = expf(s - mn);
        l[g] = l[g] * a + p;
#pragma unroll
        for (int i = 0; i < EPL; ++i) acc[g][i] = acc[g][i] * a + p * vr[i];
        m[g] = mn;
      }
    }
  }
#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
    if (g < G) {
#pragma unroll
      for (int i = 0; i < EPL; ++i) s_acc[w][g][lane * EPL + i] = acc[g][i];
      if (lane == 0) {
        s_m[w][g] = m[g];
        s_l[w][g] = l[g];
      }
    }
  }
  __syncthreads();
  for (int g = w; g < G; g += 4) {
    float M = fmaxf(fmaxf(s_m[0][g], s_m[1][g]), fmaxf(s_m[2][g], s_m[3][g]));
    float f[4], Ls = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[j] = s_m[j][g] == -INFINITY ? 0.f : expf(s_m[j][g] - M);
      Ls += s_l[j][g] * f[j];
    }
    int h = kh * G + g;
    for (int e = lane; e < d; e += 32) {
      float A = s_acc[0][g][e] * f[0] + s_acc[1][g][e] * f[1] + s_acc[2][g][e] * f[2] +
                s_acc[3][g][e] * f[3];
      if (nsplit == 1) {
        out[((int64_t)t * hq + h) * d + e] = from_f<T>(A / Ls);
      } else {
        part_acc[(((int64_t)t * hq + h) * nsplit + sp) * d + e] = A;
      }
    }
    if (nsplit > 1 && lane == 0) {
      int64_t pi = (((int64_t)t * hq + h) * nsplit + sp) * 2;
      part_ml[pi] = M;  // -inf for an empty split
      part_ml[pi + 1] = Ls;
    }
  }
}

// ---------------------------------------------------------------- paged attention, split-K (v3)
// v2's grid, splits and merge, but a warp works on 32 / LPK keys at once: LPK lanes a key, 8
// consecutive head-dim elements a lane (one 16-byte load of K and of V in bf16), so a score
// is reduced over LPK lanes (log2 LPK shuffles) instead of 32, and the dependent
// block-table → K/V load chain of a warp is 32 / LPK times shorter. d = 8 * LPK, G <= MAXG.
template <typename T> __device__ __forceinline__ void load8(const T* p, float* o);
template <> __device__ __forceinline__ void load8<float>(const float* p, float* o) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}
template <> __device__ __forceinline__ void load8<bf16>(const bf16* p, float* o) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const bf16* h = reinterpret_cast<const bf16*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __bfloat162float(h[i]);
}
template <> __device__ __forceinline__ void load8<__half>(const __half* p, float* o) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half* h = reinterpret_cast<const __half*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __half2float(h[i]);
}

template <typename T, int LPK, int MAXG>
__global__ void __launch_bounds__(128) paged_attention_v3_k(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
    const int64_t* __restrict__ block_tables, int bt_stride, const int64_t* __restrict__ seq,
    const int64_t* __restrict__ pos, int hq, int hkv, int bs, float scale, int keys_per_split) {
  pdl_entry();
  constexpr int D = 8 * LPK, KPW = 32 / LPK;
  __shared__ float s_acc[4][MAXG][D];
  __shared__ float s_m[4][MAXG], s_l[4][MAXG];
  int t = blockIdx.x, kh = blockIdx.y, sp = blockIdx.z, nsplit = gridDim.z;
  int G = hq / hkv;
  int L = (int)pos[t] + 1;
  int k_begin = sp * keys_per_split;
  int k_end = sp == nsplit - 1 ? L : min(L, k_begin + keys_per_split);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int sub = lane / LPK, part = lane % LPK;  // which key of the warp's KPW; which 8 elements
  const int64_t* tab = block_tables + seq[t] * (int64_t)bt_stride;
  const T* qt = q + ((int64_t)t * hq + (int64_t)kh * G) * D + part * 8;
  float qr[MAXG][8], acc[MAXG][8], m[MAXG], l[MAXG];
#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      qr[g][i] = g < G ? to_f(qt[g * D + i]) * scale : 0.f;
      acc[g][i] = 0.f;
    }
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  const int64_t kv_stride = (int64_t)hkv * D;
  for (int k0 = k_begin + w * KPW; k0 < k_end; k0 += 4 * KPW) {  // warp-uniform
    int k = k0 + sub;
    bool valid = k < k_end;
    float kr[8], vr[8];
    if (valid) {
      int64_t off = (tab[k / bs] * bs + (k % bs)) * kv_stride + (int64_t)kh * D + part * 8;
      load8(kc + off, kr);
      load8(vc + off, vr);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) kr[i] = vr[i] = 0.f;
    }
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
      if (g < G) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s += qr[g][i] * kr[i];
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid) {
          float mn = fmaxf(m[g], s);
          float a = expf(m[g] - mn);
          float p = expf(s - mn);
          l[g] = l[g] * a + p;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] = acc[g][i] * a + p * vr[i];
          m[g] = mn;
        }
      }
    }
  }
  // merge the warp's KPW key streams (lanes part, part + LPK, ... hold the same elements)
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
      if (g < G) {
        float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
        float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
        float mn = fmaxf(m[g], mo);
        float a = m[g] == -INFINITY ? 0.f : expf(m[g] - mn);
        float b = mo == -INFINITY ? 0.f : expf(mo - mn);
        l[g] = l[g] * a + lo * b;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
          acc[g][i] = acc[g][i] * a + ao * b;
        }
        m[g] = mn;
      }
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
      if (g < G) {
#pragma unroll
        for (int i = 0; i < 8; ++i) s_acc[w][g][part * 8 + i] = acc[g][i];
        if (part == 0) {
          s_m[w][g] = m[g];
          s_l[w][g] = l[g];
        }
      }
    }
  }
  __syncthreads();
  for (int g = w; g < G; g += 4) {
    float M = fmaxf(fmaxf(s_m[0][g], s_m[1][g]), fmaxf(s_m[2][g], s_m[3][g]));
    float f[4], Ls = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[j] = s_m[j][g] == -INFINITY ? 0.f : expf(s_m[j][g] - M);
      Ls += s_l[j][g] * f[j];
    }
    int h = kh * G + g;
    for (int e = lane; e < D; e += 32) {
      float A = s_acc[0][g][e] * f[0] + s_acc[1][g][e] * f[1] + s_acc[2][g][e] * f[2] +
                s_acc[3][g][e] * f[3];
      if (nsplit == 1) {
        out[((int64_t)t * hq + h) * D + e] = from_f<T>(A / Ls);
      } else {
        part_acc[(((int64_t)t * hq + h) * nsplit + sp) * D + e] = A;
      }
    }
    if (nsplit > 1 && lane == 0) {
      int64_t pi = (((int64_t)t * hq + h) * nsplit + sp) * 2;
      part_ml[pi] = M;  // -inf for an empty split
      part_ml[pi + 1] = Ls;
    }
  }
}

// ---------------------------------------------------------------- paged attention, tiled split-K (v4)
// v2's grid (token t, kv head kh, split sp) of 128 threads, but the split's keys are taken in
// tiles: each thread issues its share of the tile's K and V rows as 16-byte loads, all in
// flight together (the next tile's while this one is computed), into shared memory as
// float32; then scores (a thread a key, MAXG / 2 heads), online softmax (a warp a head) and
// P.V (a thread 4 head-dim elements of a head) from shared memory. So a block keeps
// 2 x TILE rows in flight instead of v2's dependent block-table -> row chains.
// Splits are merged in the same launch when `counters` is given: every split writes its
// partial (acc, m, l), and the last of a (t, kh)'s splits to finish (an atomic counter,
// which it resets to 0 for the next launch or graph replay) merges them in split order, so
// the result does not depend on which split finished last. counters NULL: attn_combine_k.
template <typename T> struct Raw8 {  // 8 elements of T as raw 16-byte words
  uint4 u[sizeof(T) / 2];
};
template <typename T> __device__ __forceinline__ Raw8<T> load_raw8(const T* p) {
  Raw8<T> r;
#pragma unroll
  for (int i = 0; i < (int)(sizeof(T) / 2); ++i) r.u[i] = reinterpret_cast<const uint4*>(p)[i];
  return r;
}
template <typename T> __device__ __forceinline__ void raw8_to_f(const Raw8<T>& r, float* o) {
  if constexpr (sizeof(T) == 4) {
    const float* f = reinterpret_cast<const float*>(r.u);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = f[i];
  } else {
    const T* h = reinterpret_cast<const T*>(r.u);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = to_f(h[i]);
  }
}

// The in-launch merge of split-K attention: called by each of the first `count` splits of a
// (token, kv head) after it wrote its partial (acc [G, D] unnormalized, (m, l) natural-log max
// and sum; partials `nsplit` apart). The last split to arrive (atomic counter `cnt`, which it
// resets to 0 for the next launch or graph replay) merges them in split order, so the result
// does not depend on timing. (Splits past `count` hold no key: they would add nothing.)
template <typename T, int D>
__device__ void merge_splits_last(T* __restrict__ out, const float* __restrict__ part_acc,
                                  const float* __restrict__ part_ml, unsigned* cnt,
                                  int64_t head0, int G, int nsplit, int count) {
  __shared__ bool s_last;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  __threadfence();  // this split's partial is visible before it is counted
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(cnt, 1u) == (unsigned)(count - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // the last split merges every split: a warp a head, a lane a split's (m, l) (32 at a
  // time), the lanes' head-dim elements summed over the splits in split order
  constexpr int EPL = (D + 31) / 32;
  for (int g = w; g < G; g += (int)(blockDim.x >> 5)) {
    const int64_t base = (head0 + g) * nsplit;
    float M = -INFINITY;
    for (int s = lane; s < count; s += 32) M = fmaxf(M, __ldcg(part_ml + (base + s) * 2));
    M = warp_max(M);
    float Ls = 0.f, A[EPL];
#pragma unroll
    for (int k = 0; k < EPL; ++k) A[k] = 0.f;
    for (int s0 = 0; s0 < count; s0 += 32) {
      const int s = s0 + lane, n = min(32, count - s0);
      const float ms = s < count ? __ldcg(part_ml + (base + s) * 2) : -INFINITY;
      const float f = ms == -INFINITY ? 0.f : expf(ms - M);
      Ls += s < count ? __ldcg(part_ml + (base + s) * 2 + 1) * f : 0.f;
      const float* pa = part_acc + (base + s0) * D;
#pragma unroll 8
      for (int j = 0; j < n; ++j) {
        const float fj = __shfl_sync(0xffffffffu, f, j);
#pragma unroll
        for (int k = 0; k < EPL; ++k)
          if (lane + 32 * k < D) A[k] += __ldcg(pa + j * D + lane + 32 * k) * fj;
      }
    }
    Ls = warp_sum(Ls);
#pragma unroll
    for (int k = 0; k < EPL; ++k)
      if (lane + 32 * k < D) out[(head0 + g) * D + lane + 32 * k] = from_f<T>(A[k] / Ls);
  }
  if (tid == 0) *cnt = 0u;  // ready for the next launch
}

template <typename T, int D, int MAXG>
__global__ void __launch_bounds__(128) paged_attention_v4_k(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    unsigned* __restrict__ counters, const T* __restrict__ q, const T* __restrict__ kc,
    const T* __restrict__ vc, const int64_t* __restrict__ block_tables, int bt_stride,
    const int64_t* __restrict__ seq, const int64_t* __restrict__ pos, int hq, int hkv, int bs,
    float scale, int keys_per_split) {
  pdl_entry();
  constexpr int TILE = D <= 64 ? 64 : 32;      // keys a tile
  constexpr int CH = D / 8;                    // 8-element chunks a row
  constexpr int LOADS = TILE * CH / 128;       // chunks of K (and of V) a thread loads a tile
  constexpr int KP = D + 4;                    // padded K row: float4 reads by key hit no bank twice
  constexpr int KG = 128 / TILE;               // score groups (a thread: key tid % TILE)
  constexpr int GPT = MAXG / KG;               // heads a thread scores
  constexpr int QPH = D / 4;                   // float4 quads of a head's output
  constexpr int NQ = (MAXG * QPH + 127) / 128; // output quads a thread accumulates
  static_assert(LOADS >= 1 && TILE * CH % 128 == 0, "head dim");
  __shared__ __align__(16) float Ks[TILE * KP];
  __shared__ __align__(16) float Vs[TILE * D];
  __shared__ __align__(16) float Qs[MAXG * D];
  __shared__ __align__(16) float P[MAXG][TILE + 4];  // padded: a warp's two heads, other banks
  __shared__ float s_m[MAXG], s_l[MAXG], s_alpha[MAXG];
  const int t = blockIdx.x, kh = blockIdx.y, sp = blockIdx.z, nsplit = gridDim.z;
  const int G = hq / hkv, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int L = (int)pos[t] + 1;
  const int k_begin = sp * keys_per_split;
  const int k_end = sp == nsplit - 1 ? L : min(L, k_begin + keys_per_split);
  const int64_t* tab = block_tables + seq[t] * (int64_t)bt_stride;
  const int64_t kv_stride = (int64_t)hkv * D;
  const T* qt = q + ((int64_t)t * hq + (int64_t)kh * G) * D;
  for (int i = tid; i < MAXG * D; i += 128) Qs[i] = i < G * D ? to_f(qt[i]) * scale : 0.f;
  if (tid < MAXG) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.f;
  }
  float4 acc[NQ];
#pragma unroll
  for (int i = 0; i < NQ; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  Raw8<T> kr[LOADS], vr[LOADS];
  auto issue = [&](int k0) {  // the loads of the tile at k0 (rows past k_end: zeros)
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      int c = tid + i * 128, k = k0 + c / CH;
      if (k < k_end) {
        int64_t off = (tab[k / bs] * bs + (k % bs)) * kv_stride + (int64_t)kh * D + (c % CH) * 8;
        kr[i] = load_raw8(kc + off);
        vr[i] = load_raw8(vc + off);
      } else {
#pragma unroll
        for (int j = 0; j < (int)(sizeof(T) / 2); ++j) kr[i].u[j] = vr[i].u[j] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  if (k_begin < k_end) issue(k_begin);
  __syncthreads();
  for (int k0 = k_begin; k0 < k_end; k0 += TILE) {
    const int n = min(TILE, k_end - k0);
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      int c = tid + i * 128, row = c / CH, col = (c % CH) * 8;
      float f[8];
      raw8_to_f(kr[i], f);
      *reinterpret_cast<float4*>(Ks + row * KP + col) = make_float4(f[0], f[1], f[2], f[3]);
      *reinterpret_cast<float4*>(Ks + row * KP + col + 4) = make_float4(f[4], f[5], f[6], f[7]);
      raw8_to_f(vr[i], f);
      *reinterpret_cast<float4*>(Vs + row * D + col) = make_float4(f[0], f[1], f[2], f[3]);
      *reinterpret_cast<float4*>(Vs + row * D + col + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
    __syncthreads();
    if (k0 + TILE < k_end) issue(k0 + TILE);  // in flight while this tile is computed
    {  // scores of key kj for heads kg, kg + KG, ...
      const int kj = tid % TILE, kg = tid / TILE;
      float s[GPT];
#pragma unroll
      for (int h = 0; h < GPT; ++h) s[h] = 0.f;
      const float4* kp = reinterpret_cast<const float4*>(Ks + kj * KP);
#pragma unroll 4
      for (int e4 = 0; e4 < D / 4; ++e4) {
        float4 kv = kp[e4];
#pragma unroll
        for (int h = 0; h < GPT; ++h) {
          float4 qv = reinterpret_cast<const float4*>(Qs + (kg + h * KG) * D)[e4];
          s[h] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
        }
      }
#pragma unroll
      for (int h = 0; h < GPT; ++h) P[kg + h * KG][kj] = kj < n ? s[h] : -INFINITY;
    }
    __syncthreads();
    for (int g = w; g < G; g += 4) {  // online softmax: a warp a head
      float mx = -INFINITY;
      for (int j = lane; j < TILE; j += 32) mx = fmaxf(mx, P[g][j]);
      mx = warp_max(mx);
      const float mold = s_m[g], mn = fmaxf(mold, mx);
      float sum = 0.f;
      for (int j = lane; j < TILE; j += 32) {
        float x = P[g][j];
        float p = x == -INFINITY ? 0.f : expf(x - mn);
        P[g][j] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        float a = mold == -INFINITY ? 0.f : expf(mold - mn);
        s_alpha[g] = a;
        s_l[g] = s_l[g] * a + sum;
        s_m[g] = mn;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NQ; ++i) {  // P.V: quad (head g, elements 4 e4 .. 4 e4 + 3)
      const int qi = tid + i * 128, g = qi / QPH, e4 = qi % QPH;
      if (g < G) {
        const float a = s_alpha[g];
        float4 A = make_float4(acc[i].x * a, acc[i].y * a, acc[i].z * a, acc[i].w * a);
        const float4* pg = reinterpret_cast<const float4*>(P[g]);
#pragma unroll 2
        for (int j4 = 0; j4 < TILE / 4; ++j4) {
          float4 p = pg[j4];
          const float* vb = Vs + (j4 * 4) * D + e4 * 4;
          float4 v0 = *reinterpret_cast<const float4*>(vb);
          float4 v1 = *reinterpret_cast<const float4*>(vb + D);
          float4 v2 = *reinterpret_cast<const float4*>(vb + 2 * D);
          float4 v3 = *reinterpret_cast<const float4*>(vb + 3 * D);
          A.x += p.x * v0.x + p.y * v1.x + p.z * v2.x + p.w * v3.x;
          A.y += p.x * v0.y + p.y * v1.y + p.z * v2.y + p.w * v3.y;
          A.z += p.x * v0.z + p.y * v1.z + p.z * v2.z + p.w * v3.z;
          A.w += p.x * v0.w + p.y * v1.w + p.z * v2.w + p.w * v3.w;
        }
        acc[i] = A;
      }
    }
    __syncthreads();  // the next tile overwrites Ks, Vs, P
  }
  const int64_t head0 = (int64_t)t * hq + (int64_t)kh * G;
  if (nsplit == 1) {
#pragma unroll
    for (int i = 0; i < NQ; ++i) {
      const int qi = tid + i * 128, g = qi / QPH, e4 = qi % QPH;
      if (g < G) {
        const float inv = 1.f / s_l[g];
        T* o = out + (head0 + g) * D + e4 * 4;
        o[0] = from_f<T>(acc[i].x * inv), o[1] = from_f<T>(acc[i].y * inv);
        o[2] = from_f<T>(acc[i].z * inv), o[3] = from_f<T>(acc[i].w * inv);
      }
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    const int qi = tid + i * 128, g = qi / QPH, e4 = qi % QPH;
    if (g < G) *reinterpret_cast<float4*>(part_acc + ((head0 + g) * nsplit + sp) * D + e4 * 4) = acc[i];
  }
  if (tid < G) {
    part_ml[((head0 + tid) * nsplit + sp) * 2] = s_m[tid];  // -inf for an empty split
    part_ml[((head0 + tid) * nsplit + sp) * 2 + 1] = s_l[tid];
  }
  if (counters) merge_splits_last<T, D>(out, part_acc, part_ml, counters + (int64_t)t * hkv + kh,
                                         head0, G, nsplit, nsplit);
}

// ---------------------------------------------------------------- paged attention on tensor cores (v5)
// v4's grid, split lengths and in-launch merge, for bf16 / fp16 caches, with the math on the
// tensor cores: tiles of 64 keys come into shared memory with cp.async (16-byte chunks;
// rows past the split zero-filled), NST of them in flight (a ring of NST stages: 2, or 4 / 8
// for long splits, whose tiles then load at once, two at a time computed by two groups of 4
// warps); within a group each of the 4 warps
// takes 16 keys of the tile: S = Q K^T by mma.m16n8k16 (the G <= 16 query heads of the kv
// head are the 16 rows; Q's fragments stay in registers), online softmax on the accumulators
// (base-2 exponent), O += P V by mma, P packed to T straight from S's accumulators (their
// layout is the A operand's). The warps' states merge through shared memory at the end.
// P rounded to T is the one rounding v4 does not have (checked against float64: bf16 output
// error stays at the output's own rounding).
namespace attn5 {
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
// 16 bytes global -> shared, or 16 zero bytes when !full (src is then not read)
__device__ __forceinline__ void cp16(void* dst, const void* src, bool full) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src),
               "r"(full ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, bf16>::value)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <typename T> __device__ __forceinline__ uint32_t pack(float lo, float hi) {
  T a = from_f<T>(lo), b = from_f<T>(hi);
  return (uint32_t)(*reinterpret_cast<uint16_t*>(&a)) |
         ((uint32_t)(*reinterpret_cast<uint16_t*>(&b)) << 16);
}
// Q [16] + K, V [NST][64] rows of D + 8
template <int D, int NST = 2> __host__ __device__ constexpr int smem_bytes() {
  return (16 + 2 * NST * 64) * (D + 8) * 2;
}
}  // namespace attn5

template <typename T, int D, int NST>
__global__ void __launch_bounds__(NST >= 4 ? 256 : 128) paged_attention_v5_k(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    unsigned* __restrict__ counters, const T* __restrict__ q, const T* __restrict__ kc,
    const T* __restrict__ vc, const int64_t* __restrict__ block_tables, int bt_stride,
    const int64_t* __restrict__ seq, const int64_t* __restrict__ pos, int hq, int hkv, int bs,
    float scale, int keys_per_split, int prefetch) {
  using namespace attn5;
  constexpr int TILE = 64, RS = D + 8;  // keys a tile; shared row stride (16-byte pad: no conflicts)
  // WG groups of 4 warps, each on its own tile: two tiles computed at once with 4+ stages
  // (H200: faster than one; four were slower), one with 2
  constexpr int WG = NST >= 4 ? 2 : 1, NW = 4 * WG, THR = 32 * NW;
  constexpr int CH = D / 8, LOADS = TILE * CH / THR, KST = D / 16, NT = D / 8;
  static_assert(NW * 16 * D * 4 + 2 * NW * 16 * 4 <= smem_bytes<D, NST>(), "merge area");
  static_assert(NST % WG == 0, "stages");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [16][RS]
  T* Ks = Qs + 16 * RS;                    // [NST][TILE][RS]
  T* Vs = Ks + NST * TILE * RS;            // [NST][TILE][RS]
  const int t = blockIdx.x, kh = blockIdx.y, sp = blockIdx.z, nsplit = gridDim.z;
  const int G = hq / hkv, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int L = (int)pos[t] + 1;
  const int k_begin = sp * keys_per_split;
  // With the in-launch merge, a split past the context holds no key and leaves at once (the
  // merge counts only the first `live` splits); split 0 always holds one, so some block of
  // the grid still waits for the previous kernel below.
  const int live = min(nsplit, (L + keys_per_split - 1) / keys_per_split);
  if (counters && nsplit > 1 && sp >= live) return;
  const int k_end = sp == nsplit - 1 ? L : min(L, k_begin + keys_per_split);
  const int64_t* tab = block_tables + seq[t] * (int64_t)bt_stride;
  const int64_t kv_stride = (int64_t)hkv * D;
  const int64_t head0 = (int64_t)t * hq + (int64_t)kh * G;
  // the split's block-table entries (up to TABN) in shared memory, read in one parallel load:
  // a tile's copies then wait on no global load (the host writes the tables before the step,
  // so this also runs before the wait for the previous kernel)
  constexpr int TABN = 64;
  __shared__ int64_t tab_s[TABN];
  const int b0 = k_begin / bs, nb = k_begin < k_end ? min(TABN, (k_end - 1) / bs - b0 + 1) : 0;
  for (int i = tid; i < nb; i += THR) tab_s[i] = tab[b0 + i];
  __syncthreads();
  auto issue = [&](int k0, int stage) {  // the tile at k0 into stage (rows past k_end: zeros), one group
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int c = tid + i * THR, row = c / CH, col = (c % CH) * 8, k = k0 + row;
      const bool ok = k < k_end;
      const int bi = k / bs - b0;
      const int64_t off =
          ok ? ((bi < nb ? tab_s[bi] : tab[k / bs]) * bs + (k % bs)) * kv_stride + (int64_t)kh * D + col
             : 0;
      cp16(Ks + (stage * TILE + row) * RS + col, kc + off, ok);
      cp16(Vs + (stage * TILE + row) * RS + col, vc + off, ok);
    }
    cp_commit();
  };
  const int ntiles = k_begin < k_end ? (k_end - k_begin + TILE - 1) / TILE : 0;
  // The first min(ntiles, NST) tiles go in flight at once, one cp.async group each, padded with
  // empty groups to NST (so tiles it0 .. it0 + WG - 1 are complete once at most NST - WG
  // groups are pending; each round commits WG more).
  // With `prefetch` (every row the only token of its sequence this step, so the kernels
  // before wrote no key but the row's last), those holding no key of the last position load
  // before the wait for the previous kernel: the block tables are the host's, the older keys
  // an earlier step's.
  const int first = min(ntiles, NST);
  int issued = 0;
  if (prefetch)
    while (issued < first && min(k_end, k_begin + (issued + 1) * TILE) < L) {
      issue(k_begin + issued * TILE, issued);
      ++issued;
    }
  pdl_entry();
  for (; issued < first; ++issued) issue(k_begin + issued * TILE, issued);
  for (int e = first; e < NST; ++e) cp_commit();
  for (int c = tid; c < 16 * CH; c += THR) {  // Q rows = heads, zero past G
    const int r = c / CH, col = (c % CH) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < G) v = *reinterpret_cast<const uint4*>(q + (head0 + r) * D + col);
    *reinterpret_cast<uint4*>(Qs + r * RS + col) = v;
  }
  __syncthreads();
  uint32_t qa[KST][4];
#pragma unroll
  for (int ks = 0; ks < KST; ++ks)
    ldsm4(qa[ks], Qs + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + ks * 16 + (lane >> 4) * 8);
  const float sl2 = scale * 1.4426950408889634f;  // scores in log2 units: exp2f below
  const int r = lane >> 2, cq = lane & 3;         // accumulator rows r, r + 8; columns 2cq, 2cq + 1
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  const int wq = w & 3;  // the warp's 16 keys of its group's tile
  for (int it0 = 0; it0 < ntiles; it0 += WG) {
    const int it = it0 + w / 4;  // this warp group's tile
    const int stage = it % NST, kw = k_begin + it * TILE + wq * 16;  // this warp's first key
    cp_wait<NST - WG>();
    __syncthreads();  // tiles it0 .. it0 + WG - 1 are in shared memory for every warp
    if (it < ntiles) {
    const T* kt = Ks + (stage * TILE + wq * 16) * RS;
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < KST; ++ks) {
      uint32_t kb[4];
      ldsm4(kb, kt + ((lane & 7) + (lane >> 4) * 8) * RS + ks * 16 + ((lane >> 3) & 1) * 8);
      mma<T>(s[0], qa[ks], kb[0], kb[1]);
      mma<T>(s[1], qa[ks], kb[2], kb[3]);
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const bool ok = kw + n * 8 + 2 * cq + j < k_end;
        s[n][j] = ok ? s[n][j] * sl2 : -INFINITY;
        s[n][2 + j] = ok ? s[n][2 + j] * sl2 : -INFINITY;
        mx0 = fmaxf(mx0, s[n][j]);
        mx1 = fmaxf(mx1, s[n][2 + j]);
      }
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float a0 = m0 == -INFINITY ? 0.f : exp2f(m0 - mn0);
    const float a1 = m1 == -INFINITY ? 0.f : exp2f(m1 - mn1);
    m0 = mn0, m1 = mn1;
    l0 *= a0, l1 *= a1;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        s[n][j] = s[n][j] == -INFINITY ? 0.f : exp2f(s[n][j] - mn0);
        s[n][2 + j] = s[n][2 + j] == -INFINITY ? 0.f : exp2f(s[n][2 + j] - mn1);
        l0 += s[n][j], l1 += s[n][2 + j];
      }
    }
#pragma unroll
    for (int n = 0; n < NT; ++n) o[n][0] *= a0, o[n][1] *= a0, o[n][2] *= a1, o[n][3] *= a1;
    const uint32_t pa[4] = {pack<T>(s[0][0], s[0][1]), pack<T>(s[0][2], s[0][3]),
                            pack<T>(s[1][0], s[1][1]), pack<T>(s[1][2], s[1][3])};
    const T* vt = Vs + (stage * TILE + wq * 16) * RS;
#pragma unroll
    for (int d0 = 0; d0 < D; d0 += 16) {
      uint32_t vb[4];
      ldsm4_t(vb, vt + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + d0 + (lane >> 4) * 8);
      mma<T>(o[d0 / 8], pa, vb[0], vb[1]);
      mma<T>(o[d0 / 8 + 1], pa, vb[2], vb[3]);
    }
    }  // it < ntiles
    __syncthreads();  // every warp is done with these stages before they are loaded again
#pragma unroll
    for (int g = 0; g < WG; ++g) {
      if (it0 + g + NST < ntiles)
        issue(k_begin + (it0 + g + NST) * TILE, (it0 + g) % NST);
      else
        cp_commit();  // (an empty group keeps the count)
    }
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  // the NW warps' (O, m, l) through shared memory (the tiles' space), merged per (head, element)
  float* Ow = reinterpret_cast<float*>(smem_raw);  // [NW][16][D]
  float* Mw = Ow + NW * 16 * D;                    // [NW][16]
  float* Lw = Mw + NW * 16;                        // [NW][16]
  __syncthreads();
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    float* row0 = Ow + (w * 16 + r) * D + n * 8 + 2 * cq;
    row0[0] = o[n][0], row0[1] = o[n][1];
    row0[8 * D] = o[n][2], row0[8 * D + 1] = o[n][3];
  }
  if (cq == 0) {
    Mw[w * 16 + r] = m0, Mw[w * 16 + r + 8] = m1;
    Lw[w * 16 + r] = l0, Lw[w * 16 + r + 8] = l1;
  }
  __syncthreads();
  // one live split (the in-launch merge would only divide A by Ls too): the output directly
  const bool direct = nsplit == 1 || (counters && live == 1);
  for (int i = tid; i < G * D; i += THR) {
    const int g = i / D, e = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int j = 0; j < NW; ++j) M = fmaxf(M, Mw[j * 16 + g]);
    float Ls = 0.f, A = 0.f;
#pragma unroll
    for (int j = 0; j < NW; ++j) {
      const float f = Mw[j * 16 + g] == -INFINITY ? 0.f : exp2f(Mw[j * 16 + g] - M);
      Ls += Lw[j * 16 + g] * f;
      A += Ow[(j * 16 + g) * D + e] * f;
    }
    if (direct) {
      out[(head0 + g) * D + e] = from_f<T>(A / Ls);
    } else {
      part_acc[((head0 + g) * nsplit + sp) * D + e] = A;
      if (e == 0) {  // (m, l) in natural-log units, as the merge reads them; -inf: empty split
        part_ml[((head0 + g) * nsplit + sp) * 2] = M * 0.6931471805599453f;
        part_ml[((head0 + g) * nsplit + sp) * 2 + 1] = Ls;
      }
    }
  }
  if (!direct && counters)
    merge_splits_last<T, D>(out, part_acc, part_ml, counters + (int64_t)t * hkv + kh, head0, G,
                            nsplit, live);
}

// merge the splits: out[t, h*d + e] = sum_s acc_s[e] e^(m_s - M) / sum_s l_s e^(m_s - M)
template <typename T>
__global__ void attn_combine_k(T* __restrict__ out, const float* __restrict__ part_acc,
                               const float* __restrict__ part_ml, int hq, int d, int nsplit) {
  pdl_entry();
  int t = blockIdx.x, h = blockIdx.y;
  int64_t base = ((int64_t)t * hq + h) * nsplit;
  float M = -INFINITY;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, part_ml[(base + s) * 2]);
  float Ls = 0.f;
  for (int s = 0; s < nsplit; ++s) {
    float ms = part_ml[(base + s) * 2];
    if (ms != -INFINITY) Ls += part_ml[(base + s) * 2 + 1] * expf(ms - M);
  }
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float A = 0.f;
    for (int s = 0; s < nsplit; ++s) {
      float ms = part_ml[(base + s) * 2];
      if (ms != -INFINITY) A += part_acc[(base + s) * d + e] * expf(ms - M);
    }
    out[((int64_t)t * hq + h) * d + e] = from_f<T>(A / Ls);
  }
}

// ---------------------------------------------------------------- greedy sampling
// argmax of row[0, vocab) over the block: first index among equal maxima (like numpy), NaN
// ignored; the result is valid in thread 0. Every thread of the block must call it.
template <typename T>
__device__ int block_argmax(const T* __restrict__ row, int vocab) {
  float best = -INFINITY;
  int bi = 0x7fffffff;
  #pragma unroll 8  // independent loads in flight (one row is latency-bound)
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float v = to_f(row[j]);
    if (v > best || (v == best && j < bi) || (bi == 0x7fffffff && v == best)) {
      best = v;
      bi = j;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ob = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ob > best || (ob == best && oi < bi)) {
      best = ob;
      bi = oi;
    }
  }
  __shared__ float sb[32];
  __shared__ int si[32];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) {
    sb[w] = best;
    si[w] = bi;
  }
  __syncthreads();
  int res = 0;
  if (w == 0) {
    best = lane < nw ? sb[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ob > best || (ob == best && oi < bi)) {
        best = ob;
        bi = oi;
      }
    }
    res = bi == 0x7fffffff ? 0 : bi;
  }
  __syncthreads();  // sb / si may be reused by a later call
  return res;
}

// ---------------------------------------------------------------- sampling (temperature, top-k, top-p, seed)
// The CPU sampler's semantics (engine_pod/model/sampler.py), one block of SAMPLE_THREADS per
// row of logits (float32 or the model's dtype). Per-row parameters, int64 [rows, 5]:
// temperature and top_p as float64 bits, top_k (<= 0: off), seed (uint64 bits), counter
// (tokens generated so far). With skip_fast (as rl_sample launches it), the rows select_k
// draws (greedy, plain temperature) return at once: it handles the rows with a cut.
//  - temperature <= 0 or top_k == 1: argmax (block_argmax); so are rows with no finite logit.
//  - kept set: the finite logits; top-k keeps exactly k of them (the k largest; among equal
//    logits at the cut, the lowest ids); top-p then keeps the fewest largest probabilities
//    (of softmax(logit / T) over the top-k set) whose sum reaches top_p, ties at the cut again
//    by lowest id. Both cuts are found by radix select over an order-preserving 32-bit key of
//    the logit (4 passes of 8 bits; counts for top-k, float64 probability mass for top-p), so
//    the masks are exact, with no sort.
//  - the draw: Gumbel-max (argmax over the kept set of logit / T - log(E_i), E_i ~ Exp(1)),
//    which samples exactly softmax(logit / T) restricted to the kept set. E_i comes from a
//    counter-based hash of (seed, counter, i): the token depends only on the row's logits,
//    seed and counter (never on the batch), and a seeded request is reproducible.
// info (optional) int64 [rows, 4]: cut key T, ties kept N at T, ties C at T, kept count
// (kept = {key > T} + the N lowest-id logits of key T; T = 0: every finite logit; -1: argmax).
#define SAMPLE_THREADS 1024
// which kernel draws a row: select_k (greedy, plain temperature) or sample_k (a cut)
#define SEL_GREEDY 0
#define SEL_TEMP 1
#define SEL_FULL 2
__device__ __forceinline__ int select_mode(double temp, double top_p, int64_t top_k) {
  if (temp <= 0.0 || top_k == 1) return SEL_GREEDY;
  return top_k <= 0 && top_p >= 1.0 ? SEL_TEMP : SEL_FULL;
}

// order-preserving key of a logit: a < b <=> key(a) < key(b); 0 for inf / nan (never kept)
__device__ __forceinline__ uint32_t logit_key(float v) {
  if (!isfinite(v)) return 0u;
  if (v == 0.f) v = 0.f;  // -0 and +0 are one value
  uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // finite keys are >= 0x00800000
}
__device__ __forceinline__ float key_logit(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's output function
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ uint32_t mix32(uint32_t x) {  // a 32-bit integer hash (lowbias32)
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}
// -log(E) with E ~ Exp(1) for element i of the row's stream h (a standard Gumbel variate)
__device__ __forceinline__ float gumbel(uint64_t h, int i) {
  uint32_t bits = mix32(mix32((uint32_t)i ^ (uint32_t)h) + (uint32_t)(h >> 32));
  float w = fminf(((float)bits + 0.5f) * 2.3283064365386963e-10f, 0.99999994f);  // (0, 1)
  return -logf(-log1pf(-w));
}

template <typename V>
__device__ V block_sum_all(V v, V* sh /* [33] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    V x = sh[lane];  // blockDim.x == 1024: 32 warps
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (lane == 0) sh[32] = x;
  }
  __syncthreads();
  V r = sh[32];
  __syncthreads();
  return r;
}

__device__ float block_max_all(float v, float* sh /* [33] */) {
  v = warp_max(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = warp_max(sh[lane]);
    if (lane == 0) sh[32] = x;
  }
  __syncthreads();
  float r = sh[32];
  __syncthreads();
  return r;
}

struct RadixState {  // shared between the threads of a radix-select pass
  uint32_t hist_c[256];
  double hist_m[256];
  uint32_t prefix;
  uint32_t count;  // elements (top-k) or kept ties (top-p) with the chosen key
  int rem_c;
  double rem_m;
};

template <typename T>
__global__ void __launch_bounds__(SAMPLE_THREADS, 1)
    sample_k(int64_t* __restrict__ out, int64_t* __restrict__ info, const T* __restrict__ logits,
             const int64_t* __restrict__ params, int vocab, int skip_fast) {
  pdl_entry();
  __shared__ RadixState rs;
  __shared__ float sh_f[33];
  __shared__ int sh_i[33];
  __shared__ double sh_d[33];
  __shared__ int s_ties[32];
  const int r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const T* row = logits + (int64_t)r * vocab;
  const int64_t* pr = params + (int64_t)r * 5;
  const double temp = __longlong_as_double(pr[0]), top_p = __longlong_as_double(pr[1]);
  const int64_t top_k = pr[2];
  const uint64_t seed = (uint64_t)pr[3], counter = (uint64_t)pr[4];
  if (skip_fast && select_mode(temp, top_p, top_k) != SEL_FULL) return;  // select_k drew it

  // greedy rows, and rows without a finite logit (the CPU falls back to argmax there too)
  float mx = -INFINITY;
  int nfin = 0;
  if (!(temp <= 0.0 || top_k == 1)) {
    #pragma unroll 8  // independent loads in flight (one row is latency-bound)
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
      float v = to_f(row[i]);
      if (isfinite(v)) {
        mx = fmaxf(mx, v);
        ++nfin;
      }
    }
    mx = block_max_all(mx, sh_f);
    nfin = block_sum_all(nfin, sh_i);
  }
  if (nfin == 0) {
    int b = block_argmax(row, vocab);
    if (tid == 0) {
      out[r] = b;
      if (info) {
        info[r * 4] = -1;
        info[r * 4 + 1] = info[r * 4 + 2] = 0;
        info[r * 4 + 3] = 1;
      }
    }
    return;
  }
  const float inv_t = (float)(1.0 / fmax(temp, 1e-6));

  // top-k: the k-th largest key (thr), how many logits have it (c_thr), how many of those to keep
  uint32_t thr = 0;
  int n_thr = 0, c_thr = 0;
  if (top_k > 0 && top_k < nfin) {
    uint32_t prefix = 0, mask = 0;
    int rem = (int)top_k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int j = tid; j < 256; j += SAMPLE_THREADS) rs.hist_c[j] = 0;
      __syncthreads();
      #pragma unroll 8  // independent loads in flight (one row is latency-bound)
      for (int i0 = w * 32; i0 < vocab; i0 += SAMPLE_THREADS) {  // warp-uniform trip count
        int i = i0 + lane;
        uint32_t key = i < vocab ? logit_key(to_f(row[i])) : 0u;
        bool in = key && (key & mask) == prefix;
        uint32_t b = in ? (key >> shift) & 255 : 256u;
        // one atomic per distinct bucket in the warp (the first pass sees few buckets)
        unsigned peers = __match_any_sync(0xffffffffu, b);
        if (in && lane == __ffs(peers) - 1) atomicAdd(&rs.hist_c[b], (uint32_t)__popc(peers));
      }
      __syncthreads();
      if (tid == 0) {
        int cum = 0, b = 255;
        for (; b > 0; --b) {
          if (cum + (int)rs.hist_c[b] >= rem) break;
          cum += rs.hist_c[b];
        }
        rs.rem_c = rem - cum;
        rs.prefix = prefix | ((uint32_t)b << shift);
        rs.count = rs.hist_c[b];
      }
      __syncthreads();
      rem = rs.rem_c;
      prefix = rs.prefix;
      mask |= 255u << shift;
    }
    thr = prefix;
    c_thr = (int)rs.count;
    n_thr = rem;
  }

  // probability mass (unnormalized: exp((logit - max) / T)) of the top-k set
  double z = 0.0;
  #pragma unroll 8  // independent loads in flight (one row is latency-bound)
  for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
    float v = to_f(row[i]);
    if (logit_key(v) > thr) z += (double)expf((v - mx) * inv_t);
  }
  z = block_sum_all(z, sh_d);
  if (thr) z += (double)n_thr * (double)expf((key_logit(thr) - mx) * inv_t);

  // top-p: the cut key cut_k with mass(key > cut_k) < top_p * z <= mass(key >= cut_k).
  // Only candidates count: logits of probability < p_low, n_k * p_low <= (1 - top_p) * z
  // together, are below the cut (the others alone reach top_p * z), so they are skipped.
  uint32_t cut_k = thr;
  int cut_n = n_thr, cut_c = c_thr;
  if (top_p < 1.0) {
    uint32_t prefix = 0, mask = 0;
    double rem = top_p * z;
    const double n_k = thr ? (double)top_k : (double)nfin;
    const double p_low = 0.5 * fmax(0.0, 1.0 - top_p) * z / n_k;  // 0.5: rounding margin
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int j = tid; j < 256; j += SAMPLE_THREADS) rs.hist_c[j] = 0, rs.hist_m[j] = 0.0;
      __syncthreads();
      #pragma unroll 8  // independent loads in flight (one row is latency-bound)
      for (int i0 = w * 32; i0 < vocab; i0 += SAMPLE_THREADS) {  // warp-uniform trip count
        int i = i0 + lane;
        float v = i < vocab ? to_f(row[i]) : 0.f;
        uint32_t key = i < vocab ? logit_key(v) : 0u;
        double pv = 0.0;
        bool in = key > thr && (key & mask) == prefix;
        if (in) {
          pv = (double)expf((v - mx) * inv_t);
          in = pv >= p_low;
        }
        uint32_t b = in ? (key >> shift) & 255 : 256u;
        // one pair of atomics per distinct bucket in the warp: the lanes of a bucket sum
        // their mass in lane order (the first pass sees few buckets, so many lanes share one)
        unsigned peers = __match_any_sync(0xffffffffu, b);
        if (in) {
          double sum = 0.0;
          for (unsigned m = peers; m; m &= m - 1) sum += __shfl_sync(peers, pv, __ffs(m) - 1);
          if (lane == __ffs(peers) - 1) {
            atomicAdd(&rs.hist_c[b], (uint32_t)__popc(peers));
            atomicAdd(&rs.hist_m[b], sum);
          }
        }
      }
      const double p_thr = thr ? (double)expf((key_logit(thr) - mx) * inv_t) : 0.0;
      if (tid == 0 && thr && (thr & mask) == prefix && p_thr >= p_low) {
        int b = (thr >> shift) & 255;  // the n_thr kept ties of the top-k cut
        atomicAdd(&rs.hist_c[b], (uint32_t)n_thr);
        atomicAdd(&rs.hist_m[b], (double)n_thr * p_thr);
      }
      __syncthreads();
      if (tid == 0) {
        double cum = 0.0, total = 0.0;
        int b = -1, lowest = 0;
        for (int j = 255; j >= 0; --j) {
          if (!rs.hist_c[j]) continue;
          lowest = j;
          total += rs.hist_m[j];
          if (b < 0 && cum + rs.hist_m[j] >= rem) b = j;
          if (b < 0) cum += rs.hist_m[j];
        }
        if (b < 0) {  // rounding: the whole set is short of top_p * z: keep it all
          b = lowest;
          cum = total - rs.hist_m[b];
        }
        rs.rem_m = rem - cum;
        rs.prefix = prefix | ((uint32_t)b << shift);
        rs.count = rs.hist_c[b];
      }
      __syncthreads();
      rem = rs.rem_m;
      prefix = rs.prefix;
      mask |= 255u << shift;
    }
    cut_k = prefix;
    double p_cut = (double)expf((key_logit(cut_k) - mx) * inv_t);
    int avail = (int)rs.count;  // ties at cut_k inside the top-k set
    int need = (int)ceil(rem / p_cut - 1e-9);  // ties needed to reach the mass
    cut_n = max(1, min(avail, need));
    cut_c = cut_k == thr ? c_thr : avail;
  }

  // which ties at the cut are kept: the cut_n lowest ids (only counted when some are dropped)
  const bool rank = cut_k != 0 && cut_n < cut_c;
  const int seg = ((vocab + 31) / 32 + 31) / 32 * 32;  // each warp walks one run of ids in order
  const int beg = w * seg, end = min(vocab, beg + seg);
  if (rank) {
    int c = 0;
    #pragma unroll 8  // independent loads in flight (one row is latency-bound)
    for (int i = beg + lane; i < end; i += 32) c += logit_key(to_f(row[i])) == cut_k;
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    if (lane == 0) s_ties[w] = c;
    __syncthreads();
    if (tid == 0) {
      int acc = 0;
      for (int j = 0; j < 32; ++j) {
        int cj = s_ties[j];
        s_ties[j] = acc;
        acc += cj;
      }
    }
    __syncthreads();
  }
  int tie_base = rank ? s_ties[w] : 0;

  // Gumbel-max over the kept set
  const uint64_t h = mix64(seed ^ mix64(counter));
  float best = -INFINITY;
  int bi = 0x7fffffff, kept = 0;
  #pragma unroll 8  // independent loads in flight (one row is latency-bound)
  for (int i0 = beg; i0 < end; i0 += 32) {
    int i = i0 + lane;
    float v = i < end ? to_f(row[i]) : 0.f;
    uint32_t key = i < end ? logit_key(v) : 0u;
    bool tie = cut_k != 0 && key == cut_k;
    unsigned bal = __ballot_sync(0xffffffffu, tie);
    bool keep = key > cut_k || (tie && (!rank || tie_base + __popc(bal & ((1u << lane) - 1u)) < cut_n));
    tie_base += __popc(bal);
    if (keep) {
      ++kept;
      float s = (v - mx) * inv_t + gumbel(h, i);
      if (s > best || (s == best && i < bi)) {
        best = s;
        bi = i;
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ob = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ob > best || (ob == best && oi < bi)) {
      best = ob;
      bi = oi;
    }
  }
  if (lane == 0) {
    sh_f[w] = best;
    sh_i[w] = bi;
  }
  __syncthreads();
  if (w == 0) {
    best = sh_f[lane];
    bi = sh_i[lane];
    for (int o = 16; o > 0; o >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ob > best || (ob == best && oi < bi)) {
        best = ob;
        bi = oi;
      }
    }
  }
  __syncthreads();
  int n_kept = block_sum_all(kept, sh_i);
  if (tid == 0) {
    out[r] = bi == 0x7fffffff ? 0 : bi;
    if (info) {
      info[r * 4] = cut_k;
      info[r * 4 + 1] = cut_n;
      info[r * 4 + 2] = cut_c;
      info[r * 4 + 3] = n_kept;
    }
  }
}

// ---------------------------------------------------------------- token selection, rows split over blocks
// The rows that need no cut, with each row split over gridDim.y blocks (a one-block row scan
// is latency-bound: 30+ us for 151936 logits): greedy rows (temperature <= 0 or top_k == 1;
// params NULL: every row) get the argmax (first index among equal maxima, NaN ignored);
// plain temperature rows (no top-k, top_p >= 1) get the Gumbel-max draw over the finite
// logits, argmax(logit / T + gumbel(seed, counter, id)) with the same noise as sample_k,
// summed in double so that no logit / T overflows (no max to subtract first), or the argmax
// when no logit is finite (as the CPU sampler). Every block writes its best of both kinds;
// the last block of a row to finish (atomic counter, reset by it) merges them in chunk
// order and writes out[r] (and info[r], as sample_k would). Rows with a cut are left to
// sample_k. One block a row (gridDim.y 1) needs no counters.
#define SEL_THREADS 256
// gumbel() < 22.9 (its uniform is at least 2^-33): a logit with logit / T + 24 below the best
// score so far cannot be drawn, so its noise is not computed
#define SEL_GUMBEL_MAX 24.0
struct SelBest {  // a chunk's best: argmax (a, ai), Gumbel-max (g, gi), finite logits
  double g;
  float a;
  int ai, gi, nfin;
};
__device__ __forceinline__ void sel_take(float v, int i, bool temp, double inv_t, uint64_t h,
                                         SelBest& b) {
  if (v > b.a || (v == b.a && i < b.ai)) b.a = v, b.ai = i;
  if (temp && isfinite(v)) {
    ++b.nfin;
    const double base = (double)v * inv_t;
    if (base + SEL_GUMBEL_MAX < b.g) return;  // cannot win: skip the noise (exact)
    double s = base + (double)gumbel(h, i);
    if (s > b.g || (s == b.g && i < b.gi)) b.g = s, b.gi = i;
  }
}
__device__ __forceinline__ void sel_merge(SelBest& b, const SelBest& o) {
  if (o.a > b.a || (o.a == b.a && o.ai < b.ai)) b.a = o.a, b.ai = o.ai;
  if (o.g > b.g || (o.g == b.g && o.gi < b.gi)) b.g = o.g, b.gi = o.gi;
  b.nfin += o.nfin;
}
__device__ __forceinline__ SelBest sel_load_cg(const SelBest* p) {  // another block's, via L2
  SelBest o;
  o.g = __ldcg(&p->g), o.a = __ldcg(&p->a), o.ai = __ldcg(&p->ai);
  o.gi = __ldcg(&p->gi), o.nfin = __ldcg(&p->nfin);
  return o;
}
// a row's token from its merged best: the Gumbel-max draw (temperature rows with a finite
// logit), else the argmax (0 when no logit beat -inf); info as sample_k reports it
__device__ __forceinline__ void sel_write(int64_t* out, int64_t* info, int r, const SelBest& b,
                                          bool temp) {
  const bool drawn = temp && b.nfin > 0;
  out[r] = drawn ? b.gi : (b.ai == 0x7fffffff ? 0 : b.ai);
  if (info) {  // the kept set is every finite logit, or the argmax
    info[r * 4] = drawn ? 0 : -1;
    info[r * 4 + 1] = info[r * 4 + 2] = 0;
    info[r * 4 + 3] = drawn ? b.nfin : 1;
  }
}
__device__ __forceinline__ SelBest sel_shfl(const SelBest& b, int o) {
  SelBest r;
  r.g = __shfl_xor_sync(0xffffffffu, b.g, o);
  r.a = __shfl_xor_sync(0xffffffffu, b.a, o);
  r.ai = __shfl_xor_sync(0xffffffffu, b.ai, o);
  r.gi = __shfl_xor_sync(0xffffffffu, b.gi, o);
  r.nfin = __shfl_xor_sync(0xffffffffu, b.nfin, o);
  return r;
}

// a sampled row's selection from its sampling parameters (params int64 [rows, 5], NULL: all
// greedy): its mode, 1 / T, and its noise stream (seed, step)
struct RowSel {
  double inv_t;
  uint64_t h;
  int mode;
};
__device__ __forceinline__ RowSel row_sel(const int64_t* params, int r) {
  if (!params) return RowSel{0.0, 0, SEL_GREEDY};
  const int64_t* pr = params + (int64_t)r * 5;
  const double temp = __longlong_as_double(pr[0]);
  return RowSel{1.0 / fmax(temp, 1e-6), mix64((uint64_t)pr[3] ^ mix64((uint64_t)pr[4])),
                select_mode(temp, __longlong_as_double(pr[1]), pr[2])};
}

template <typename T>
__global__ void __launch_bounds__(SEL_THREADS) select_k(
    int64_t* __restrict__ out, int64_t* __restrict__ info, SelBest* __restrict__ part,
    unsigned* __restrict__ counters, const T* __restrict__ logits,
    const int64_t* __restrict__ params, int vocab, int chunk) {
  pdl_entry();
  __shared__ SelBest sb[SEL_THREADS / 32];
  __shared__ bool s_last;
  const int r = blockIdx.x, c = blockIdx.y, nc = gridDim.y, tid = threadIdx.x;
  const RowSel rs = row_sel(params, r);
  const int mode = rs.mode;
  const double inv_t = rs.inv_t;
  const uint64_t h = rs.h;
  if (mode == SEL_FULL) return;
  const bool temp = mode == SEL_TEMP;
  const T* row = logits + (int64_t)r * vocab;
  const int beg = c * chunk, end = min(vocab, beg + chunk);
  SelBest b{-INFINITY, -INFINITY, 0x7fffffff, 0x7fffffff, 0};
  if (vocab % 8 == 0 && chunk % 8 == 0) {  // 16-byte loads (rows and chunks 8-aligned)
#pragma unroll 4
    for (int i = beg + tid * 8; i < end; i += SEL_THREADS * 8) {
      float f[8];
      raw8_to_f(load_raw8(row + i), f);
#pragma unroll
      for (int j = 0; j < 8; ++j) sel_take(f[j], i + j, temp, inv_t, h, b);
    }
  } else {
#pragma unroll 8
    for (int i = beg + tid; i < end; i += SEL_THREADS) sel_take(to_f(row[i]), i, temp, inv_t, h, b);
  }
  for (int o = 16; o > 0; o >>= 1) sel_merge(b, sel_shfl(b, o));
  if ((tid & 31) == 0) sb[tid >> 5] = b;
  __syncthreads();
  if (tid == 0) {
    for (int j = 1; j < SEL_THREADS / 32; ++j) sel_merge(b, sb[j]);
    s_last = true;
    if (nc > 1) {
      part[(int64_t)r * nc + c] = b;
      __threadfence();
      s_last = atomicAdd(counters + r, 1u) == (unsigned)(nc - 1);
      if (s_last) {
        __threadfence();
        b = SelBest{-INFINITY, -INFINITY, 0x7fffffff, 0x7fffffff, 0};
        for (int j = 0; j < nc; ++j) sel_merge(b, sel_load_cg(part + (int64_t)r * nc + j));
        counters[r] = 0u;  // ready for the next launch
      }
    }
    if (s_last) sel_write(out, info, r, b, temp);
  }
}

#include "gemm.cuh"  // skinny decode GEMMs (tensor cores), with their launchers

// ================================================================ launchers
static inline int grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  return (int)(g < 1 ? 1 : (g > 65535 * 4 ? 65535 * 4 : g));
}
static inline int rows_threads(int h) {
  int t = ((h + 31) / 32) * 32;
  return t < 64 ? 64 : (t > 1024 ? 1024 : t);
}

static bool g_pdl = true;  // rl_set_pdl: launch with programmatic stream serialization

// kernel<<<grid, block, smem, st>>>(args...), as a programmatic dependent launch when g_pdl
template <typename... P, typename... A>
static void launch_k(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                     A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = g_pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, ((P)args)...);  // errors: cudaGetLastError in the caller
}

#include "gemm_stream.cuh"  // streaming GEMMs for 17..64-row decode steps, with their launcher

static int num_sms() {  // of the current device, cached
  static int n = 0;
  if (!n && cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) n = 132;
  return n;
}

#include "gemm_silu.cuh"  // gate_up + SiLU * mul in one kernel for 17..64-row decode steps
#include "lt_gemm.cuh"    // cuBLASLt matmuls with a measured algorithm choice
#include "head_select.cuh"  // the LM head's GEMM + token selection in one kernel
#include "gemm_acc.cuh"     // y += x . W^T on cuBLAS (beta = 1): the folded-norm path's o / down

// split-K attention's partials merged by a second launch (attn_combine_k), when the splits
// did not merge in their own launch
template <typename T>
static void combine_splits(void* out, void* part_acc, void* part_ml, int tokens, int hq, int d,
                           int nsplit, cudaStream_t st) {
  launch_k(attn_combine_k<T>, dim3(tokens, hq), d < 32 ? 32 : (d > 128 ? 128 : d), 0, st,
      (T*)out, (const float*)part_acc, (const float*)part_ml, hq, d, nsplit);
}

// the rows of a selection with a top-k / top-p cut drawn by sample_k from their logits (one
// block a row; it returns at once for rows select_k drew)
template <typename T>
static void launch_cut_rows(int64_t* out, int64_t* info, const T* logits, const int64_t* params,
                            int rows, int vocab, cudaStream_t st) {
  launch_k(sample_k<T>, dim3(rows), dim3(SAMPLE_THREADS), 0, st, out, info, logits, params, vocab,
           1);
}

#define DISPATCH(dtype, ...)                  \
  switch (dtype) {                            \
    case 0: { typedef float T; __VA_ARGS__; } break;  \
    case 1: { typedef bf16 T; __VA_ARGS__; } break;   \
    case 2: { typedef __half T; __VA_ARGS__; } break; \
    default: return (int)cudaErrorInvalidValue;       \
  }

extern "C" {

int rl_version() { return 10; }

// out[M, N] = bf16(x[M, K] . W[N, K]^T) on the streaming kernel (gemm_stream.cuh), launched as
// a programmatic dependent launch when PDL is on; splits 0: the default.
// 801 (cudaErrorNotSupported): a shape it does not take (use cuBLAS).
int rl_stream_gemm(void* out, const void* x, const void* w, int M, int N, int K, int splits,
                   void* stream) {
  return stream::gemm(stream::plain(out, x, w, M, N, K, 0), splits, num_sms(), g_pdl,
                      (cudaStream_t)stream, stream::Mode::merge);
}

// The product left unreduced: parts[splits][M][N] (float32) get the split-K partial sums,
// which rl_rms_norm_parts / rl_qkv_rope_cache_parts sum in order and round once — the same
// values rl_stream_gemm writes. splits: as rl_stream_gemm_parts_splits gives (the caller
// sizes `parts` by it), or another count (1..32). 801: not taken (use cuBLAS).
int rl_stream_gemm_parts(void* parts, const void* x, const void* w, int M, int N, int K,
                         int splits, void* stream) {
  stream::Params p = stream::plain(nullptr, x, w, M, N, K, 0);
  p.parts = (float*)parts;
  return stream::gemm(p, splits, num_sms(), g_pdl, (cudaStream_t)stream, stream::Mode::parts);
}

// the split count rl_stream_gemm_parts takes for these sizes by default (0: not taken)
int rl_stream_gemm_parts_splits(int M, int N, int K) {
  return stream::pick_splits(M, N, K, num_sms(), true);
}

// The qkv projection with rl_qkv_rope_cache's work in its epilogue (bf16):
// q_out[M, hq * d] and the K / V cache slots get what rl_stream_gemm then rl_qkv_rope_cache
// would write (N = (hq + 2 hkv) d; d must divide 64). 801: not taken (use the two calls).
int rl_stream_gemm_rope(void* q_out, const void* x, const void* w, int M, int N, int K,
                        const void* bias, const void* cos_t, const void* sin_t, const void* pos,
                        const void* slot_b, const void* slot_o, void* kc, void* vc, int hq,
                        int hkv, int d, int bs, int splits, void* stream) {
  stream::Params p = stream::plain(q_out, x, w, M, N, K, 0);
  p.bias = (const bf16*)bias;
  p.cos_t = (const bf16*)cos_t;
  p.sin_t = (const bf16*)sin_t;
  p.pos = (const int64_t*)pos;
  p.slot_b = (const int64_t*)slot_b;
  p.slot_o = (const int64_t*)slot_o;
  p.kc = (bf16*)kc;
  p.vc = (bf16*)vc;
  p.hq = hq, p.hkv = hkv, p.d = d, p.bs = bs;
  return stream::gemm(p, splits, num_sms(), g_pdl, (cudaStream_t)stream, stream::Mode::rope);
}

// lab only: rl_stream_gemm (parts NULL) or rl_stream_gemm_parts (out NULL) with parts of the
// kernel skipped (gemm_stream.cuh Params.dbg)
int rl_stream_gemm_dbg(void* out, void* parts, const void* x, const void* w, int M, int N, int K,
                       int splits, int dbg, void* stream) {
  stream::Params p = stream::plain(out, x, w, M, N, K, dbg);
  p.parts = (float*)parts;
  return stream::gemm(p, splits, num_sms(), g_pdl, (cudaStream_t)stream,
                      parts ? stream::Mode::parts : stream::Mode::merge);
}

// out[M, I] = bf16(bf16(silu(g)) * u) with [g | u] = x[M, K] . W[2I, K]^T (gate rows, then up
// rows): the MLP's gate_up GEMM and SiLU * mul in one launch (gemm_silu.cuh; bf16; the values
// rl_silu_mul writes on a bf16 product). 801: a shape it does not take (use the two calls).
int rl_gate_up_silu(void* out, const void* x, const void* w, int M, int I, int K, void* stream) {
  return gusilu::run(out, x, w, M, I, K, num_sms(), (cudaStream_t)stream);
}

// the most output units (8 columns) a block of rl_gate_up_silu takes (0: shape not taken)
int rl_gate_up_silu_units(int M, int I, int K) {
  return gusilu::units_per_block(M, I, K, num_sms());
}

// bytes of `part` that rl_head_select needs for M rows, V tokens, hidden size K; 0 when it
// does not take the shape
int rl_head_select_part_bytes(int M, int V, int K) {
  return head::takes(M, V, K) ? num_sms() * head::MAX_ROWS * (int)sizeof(SelBest) : 0;
}

// The LM head and token selection in one launch (head_select.cuh; bf16): out int64 [M] gets
// what rl_sample would draw from the logits x[M, K] . W[V, K]^T rounded to bf16. params int64
// [M, 5] as rl_sample's, or NULL (every row greedy); info int64 [M, 4] or NULL. logits bf16
// [M, V] is written when need_logits is set or a row has a top-k / top-p cut (sample_k then
// draws those rows from it). part: rl_head_select_part_bytes; counter: one uint32, zeroed
// once (each launch leaves it zero). 801: a shape it does not take (use logits + rl_sample).
int rl_head_select(void* out, void* info, void* logits, const void* x, const void* w,
                   const void* params, int M, int V, int K, int need_logits, void* part,
                   void* counter, void* stream) {
  if (M == 0) return 0;
  if (!head::takes(M, V, K) || !out || !logits || !part || !counter || ((uintptr_t)x & 15) ||
      ((uintptr_t)w & 15))
    return (int)cudaErrorNotSupported;
  cudaStream_t st = (cudaStream_t)stream;
  int rc = head::run((int64_t*)out, (int64_t*)info, (SelBest*)part, (unsigned*)counter,
                     (bf16*)logits, (const bf16*)x, (const bf16*)w, (const int64_t*)params, M, V,
                     K, need_logits, num_sms(), st);
  if (rc || !params) return rc;
  launch_cut_rows((int64_t*)out, (int64_t*)info, (const bf16*)logits, (const int64_t*)params, M,
                  V, st);
  return (int)cudaGetLastError();
}

// the split count rl_stream_gemm would use for these sizes (0: not taken)
int rl_stream_gemm_splits(int M, int N, int K) { return stream::pick_splits(M, N, K, num_sms()); }

// programmatic dependent launches on (1, the default) or off (0); returns the old setting
int rl_set_pdl(int on) {
  int old = g_pdl ? 1 : 0;
  g_pdl = on != 0;
  return old;
}

int rl_zero(void* p, int64_t nbytes, void* stream) {
  cudaMemsetAsync(p, 0, (size_t)nbytes, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

int rl_gather_rows(void* out, const void* table, const void* idx, int n, int h, int dtype,
                   void* stream) {
  if (n == 0) return 0;
  int th = h >= 256 ? 256 : 128;
  DISPATCH(dtype, launch_k(gather_rows_k<T>, n, th, 0, (cudaStream_t)stream,
                      (T*)out, (const T*)table, (const int64_t*)idx, h));
  return (int)cudaGetLastError();
}

int rl_rms_norm(void* out, void* x_out, const void* x, const void* delta, const void* rows,
                const void* w, int n, int h, float eps, int dtype, void* stream) {
  if (n == 0) return 0;
  int th = rows_threads(h / 4 > 0 ? h / 4 : 1);
  DISPATCH(dtype, launch_k(rms_norm_k<T>, n, th, 0, (cudaStream_t)stream,
                      (T*)out, (T*)x_out, (const T*)x, (const T*)delta, (const float*)nullptr, 0,
                      (int64_t)0, (const int64_t*)rows, (const T*)w, h, eps));
  return (int)cudaGetLastError();
}

// rl_rms_norm with delta given as split-K partials: parts float32 [nparts][m][h] (m: the
// GEMM's rows; row r of x takes row r of the partials), as rl_stream_gemm_parts writes them
int rl_rms_norm_parts(void* out, void* x_out, const void* x, const void* parts, int nparts, int m,
                      const void* rows, const void* w, int n, int h, float eps, int dtype,
                      void* stream) {
  if (n == 0) return 0;
  if (!parts || nparts < 1 || h % 4 || ((uintptr_t)parts & 15)) return (int)cudaErrorInvalidValue;
  int th = rows_threads(h / 4 > 0 ? h / 4 : 1);
  DISPATCH(dtype, launch_k(rms_norm_k<T>, n, th, (size_t)h * 4, (cudaStream_t)stream,
                      (T*)out, (T*)x_out, (const T*)x, (const T*)nullptr, (const float*)parts,
                      nparts, (int64_t)m * h, (const int64_t*)rows, (const T*)w, h, eps));
  return (int)cudaGetLastError();
}

int rl_add_bias(void* x, const void* b, int64_t n, int h, int dtype, void* stream) {
  if (n == 0) return 0;
  DISPATCH(dtype, launch_k(add_bias_k<T>, grid_for(n, 256), 256, 0, (cudaStream_t)stream,
                      (T*)x, (const T*)b, n, h));
  return (int)cudaGetLastError();
}

int rl_silu_mul(void* out, const void* gu, int64_t tokens, int inter, int dtype, void* stream) {
  int64_t n = tokens * inter;
  if (n == 0) return 0;
  DISPATCH(dtype, launch_k(silu_mul_k<T>, grid_for(n, 256), 256, 0, (cudaStream_t)stream,
                      (T*)out, (const T*)gu, n, inter));
  return (int)cudaGetLastError();
}

// rl_silu_mul of gu = xn[tokens, hn] . W'^T (the post-attention norm's weight folded into W')
int rl_silu_mul_rms(void* out, const void* gu, const void* xn, int hn, float eps, int tokens,
                    int inter, int dtype, void* stream) {
  if (tokens == 0) return 0;
  if (!xn || hn <= 0) return (int)cudaErrorInvalidValue;
  const int threads = 256, cols = threads * SILU_RMS_PER;
  const dim3 grid((unsigned)tokens, (unsigned)((inter + cols - 1) / cols));
  DISPATCH(dtype, launch_k(silu_mul_rms_k<T>, grid, threads, 0, (cudaStream_t)stream, (T*)out,
                      (const T*)gu, (const T*)xn, hn, eps, inter));
  return (int)cudaGetLastError();
}

int rl_cast_f32(void* out, const void* in, int64_t n, int dtype, void* stream) {
  if (n == 0) return 0;
  DISPATCH(dtype, launch_k(cast_f32_k<T>, grid_for(n, 256), 256, 0, (cudaStream_t)stream,
                      (float*)out, (const T*)in, n));
  return (int)cudaGetLastError();
}

static int qkv_rope_launch(void* q_out, const void* qkv, const void* parts, int nparts,
                           const void* bias, const void* cos_t, const void* sin_t, const void* pos,
                           const void* slot_b, const void* slot_o, void* kc, void* vc, int tokens,
                           int hq, int hkv, int d, int bs, int dtype, void* stream,
                           const void* xn = nullptr, int hn = 0, float eps = 0.f) {
  if (tokens == 0) return 0;
  int width = (hq + 2 * hkv) * d;
  int th = rows_threads(width / 2);
  if (th > 512) th = 512;
  size_t smem = parts ? (size_t)width * 4 : 0;
  DISPATCH(dtype, launch_k(qkv_rope_cache_k<T>, tokens, th, smem, (cudaStream_t)stream,
                      (T*)q_out, (const T*)qkv, (const T*)bias, (const T*)cos_t, (const T*)sin_t,
                      (const int64_t*)pos, (const int64_t*)slot_b, (const int64_t*)slot_o, (T*)kc,
                      (T*)vc, hq, hkv, d, bs, (const float*)parts, nparts, (const T*)xn, hn,
                      eps));
  return (int)cudaGetLastError();
}

int rl_qkv_rope_cache(void* q_out, const void* qkv, const void* bias, const void* cos_t,
                      const void* sin_t, const void* pos, const void* slot_b, const void* slot_o,
                      void* kc, void* vc, int tokens, int hq, int hkv, int d, int bs, int dtype,
                      void* stream) {
  return qkv_rope_launch(q_out, qkv, nullptr, 0, bias, cos_t, sin_t, pos, slot_b, slot_o, kc, vc,
                         tokens, hq, hkv, d, bs, dtype, stream);
}

// rl_qkv_rope_cache where qkv = xn[tokens, hn] . W'^T, the raw residual rows' product with the
// input norm's weight folded into W': each value is scaled by 1 / rms(xn[t]) first
int rl_qkv_rope_cache_rms(void* q_out, const void* qkv, const void* bias, const void* cos_t,
                          const void* sin_t, const void* pos, const void* slot_b,
                          const void* slot_o, void* kc, void* vc, const void* xn, int hn,
                          float eps, int tokens, int hq, int hkv, int d, int bs, int dtype,
                          void* stream) {
  if (!xn || hn <= 0) return (int)cudaErrorInvalidValue;
  return qkv_rope_launch(q_out, qkv, nullptr, 0, bias, cos_t, sin_t, pos, slot_b, slot_o, kc, vc,
                         tokens, hq, hkv, d, bs, dtype, stream, xn, hn, eps);
}

// rl_qkv_rope_cache on the qkv projection's split-K partials: parts float32
// [nparts][tokens][(hq + 2 hkv) d], as rl_stream_gemm_parts writes them
int rl_qkv_rope_cache_parts(void* q_out, const void* parts, int nparts, const void* bias,
                            const void* cos_t, const void* sin_t, const void* pos,
                            const void* slot_b, const void* slot_o, void* kc, void* vc,
                            int tokens, int hq, int hkv, int d, int bs, int dtype, void* stream) {
  if (!parts || nparts < 1 || ((hq + 2 * hkv) * d) % 4 || ((uintptr_t)parts & 15))
    return (int)cudaErrorInvalidValue;
  return qkv_rope_launch(q_out, nullptr, parts, nparts, bias, cos_t, sin_t, pos, slot_b, slot_o,
                         kc, vc, tokens, hq, hkv, d, bs, dtype, stream);
}

int rl_paged_attention_smem(int hq, int hkv, int d) {
  int G = hq / hkv;
  return (2 * G * d + G * ATT_TILE + 3 * G + (G & 1 ? 1 : 0)) * 4 + ATT_TILE * 8;
}

int rl_paged_attention(void* out, const void* q, const void* kc, const void* vc,
                       const void* block_tables, int bt_stride, const void* seq, const void* pos,
                       int tokens, int hq, int hkv, int d, int bs, float scale, int dtype,
                       void* stream) {
  if (tokens == 0) return 0;
  int smem = rl_paged_attention_smem(hq, hkv, d);
  dim3 grid(tokens, hkv);
  int th = 128;
  DISPATCH(dtype, {
    if (smem > 48 * 1024) {
      cudaError_t e = cudaFuncSetAttribute(paged_attention_k<T>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (e != cudaSuccess) return (int)e;
    }
    launch_k(paged_attention_k<T>, grid, th, smem, (cudaStream_t)stream,
        (T*)out, (const T*)q, (const T*)kc, (const T*)vc, (const int64_t*)block_tables,
        bt_stride, (const int64_t*)seq, (const int64_t*)pos, hq, hkv, d, bs, scale);
  });
  return (int)cudaGetLastError();
}


// v2: returns cudaErrorNotSupported (801) when the shape has no instance (then use v1).
// part_acc / part_ml: float32 workspaces of tokens*hq*nsplit*d and *2 (unused if nsplit 1).
int rl_paged_attention_v2(void* out, void* part_acc, void* part_ml, const void* q,
                          const void* kc, const void* vc, const void* block_tables, int bt_stride,
                          const void* seq, const void* pos, int tokens, int hq, int hkv, int d,
                          int bs, float scale, int nsplit, int keys_per_split, int dtype,
                          void* stream) {
  if (tokens == 0) return 0;
  int G = hq / hkv;
  int epl = d <= 32 ? 1 : (d <= 64 ? 2 : (d <= 128 ? 4 : 0));
  int maxg = G <= 8 ? 8 : (G <= 16 ? 16 : 0);
  if (!epl || !maxg || nsplit < 1) return (int)cudaErrorNotSupported;
  dim3 grid(tokens, hkv, nsplit);
  cudaStream_t st = (cudaStream_t)stream;
#define V2(E, MG)                                                                            \
  if (epl == E && maxg == MG)                                                                \
    launch_k(paged_attention_v2_k<T, E, MG>, grid, 128, 0, st,                               \
        (T*)out, (float*)part_acc, (float*)part_ml, (const T*)q, (const T*)kc, (const T*)vc, \
        (const int64_t*)block_tables, bt_stride, (const int64_t*)seq, (const int64_t*)pos,   \
        hq, hkv, d, bs, scale, keys_per_split);
  DISPATCH(dtype, {
    V2(1, 8) V2(2, 8) V2(4, 8) V2(1, 16) V2(2, 16) V2(4, 16)
    if (nsplit > 1) combine_splits<T>(out, part_acc, part_ml, tokens, hq, d, nsplit, st);
  });
#undef V2
  return (int)cudaGetLastError();
}

// v3: the same contract as v2; 801 (cudaErrorNotSupported) unless d in {16, 32, 64, 128}
// and hq / hkv <= 8 (then use v2).
int rl_paged_attention_v3(void* out, void* part_acc, void* part_ml, const void* q,
                          const void* kc, const void* vc, const void* block_tables, int bt_stride,
                          const void* seq, const void* pos, int tokens, int hq, int hkv, int d,
                          int bs, float scale, int nsplit, int keys_per_split, int dtype,
                          void* stream) {
  if (tokens == 0) return 0;
  int G = hq / hkv;
  if (G > 8 || nsplit < 1 || !(d == 16 || d == 32 || d == 64 || d == 128))
    return (int)cudaErrorNotSupported;
  dim3 grid(tokens, hkv, nsplit);
  cudaStream_t st = (cudaStream_t)stream;
#define V3(LPK)                                                                               \
  if (d == 8 * LPK)                                                                           \
    launch_k(paged_attention_v3_k<T, LPK, 8>, grid, 128, 0, st,                               \
        (T*)out, (float*)part_acc, (float*)part_ml, (const T*)q, (const T*)kc, (const T*)vc,  \
        (const int64_t*)block_tables, bt_stride, (const int64_t*)seq, (const int64_t*)pos, hq, \
        hkv, bs, scale, keys_per_split);
  DISPATCH(dtype, {
    V3(2) V3(4) V3(8) V3(16)
    if (nsplit > 1) combine_splits<T>(out, part_acc, part_ml, tokens, hq, d, nsplit, st);
  });
#undef V3
  return (int)cudaGetLastError();
}

// v4: the same contract as v2, plus `counters` (tokens * hkv zeroed uint32, or NULL: the
// splits are then merged by attn_combine_k in a second launch); 801 unless d in {16, 32, 64,
// 128} and hq / hkv <= 8.
int rl_paged_attention_v4(void* out, void* part_acc, void* part_ml, void* counters,
                          const void* q, const void* kc, const void* vc, const void* block_tables,
                          int bt_stride, const void* seq, const void* pos, int tokens, int hq,
                          int hkv, int d, int bs, float scale, int nsplit, int keys_per_split,
                          int dtype, void* stream) {
  if (tokens == 0) return 0;
  int G = hq / hkv;
  if (G > 8 || nsplit < 1 || !(d == 16 || d == 32 || d == 64 || d == 128))
    return (int)cudaErrorNotSupported;
  dim3 grid(tokens, hkv, nsplit);
  cudaStream_t st = (cudaStream_t)stream;
  unsigned* cnt = nsplit > 1 ? (unsigned*)counters : NULL;
#define V4(DD)                                                                               \
  if (d == DD)                                                                               \
    launch_k(paged_attention_v4_k<T, DD, 8>, grid, 128, 0, st,                               \
        (T*)out, (float*)part_acc, (float*)part_ml, cnt, (const T*)q, (const T*)kc,          \
        (const T*)vc, (const int64_t*)block_tables, bt_stride, (const int64_t*)seq,          \
        (const int64_t*)pos, hq, hkv, bs, scale, keys_per_split);
  DISPATCH(dtype, {
    V4(16) V4(32) V4(64) V4(128)
    if (nsplit > 1 && !cnt) combine_splits<T>(out, part_acc, part_ml, tokens, hq, d, nsplit, st);
  });
#undef V4
  return (int)cudaGetLastError();
}

// v5: the same contract as v4, plus `prefetch` (1: every row is the only token of its
// sequence in this step; see the kernel) and `stages` (tiles of 64 keys in flight: 2, or 4 / 8
// for d = 64); 801 unless the caches are bf16, d in {64, 128} and hq / hkv <= 16 (then use
// v4). (The kernel has an fp16 instance too, not yet checked on a device: not launched.)
int rl_paged_attention_v5(void* out, void* part_acc, void* part_ml, void* counters,
                          const void* q, const void* kc, const void* vc, const void* block_tables,
                          int bt_stride, const void* seq, const void* pos, int tokens, int hq,
                          int hkv, int d, int bs, float scale, int nsplit, int keys_per_split,
                          int prefetch, int stages, int dtype, void* stream) {
  if (tokens == 0) return 0;
  if (hq / hkv > 16 || nsplit < 1 || !(d == 64 || d == 128) || dtype != 1 ||
      !(stages == 2 || ((stages == 4 || stages == 8) && d == 64)))
    return (int)cudaErrorNotSupported;
  dim3 grid(tokens, hkv, nsplit);
  cudaStream_t st = (cudaStream_t)stream;
  unsigned* cnt = nsplit > 1 ? (unsigned*)counters : NULL;
#define V5(TT, DD, NS)                                                                         \
  if (d == DD && stages == NS) {                                                               \
    constexpr int smem = attn5::smem_bytes<DD, NS>();                                          \
    static bool attr = false;                                                                  \
    if (!attr) {                                                                               \
      cudaError_t e = cudaFuncSetAttribute(paged_attention_v5_k<TT, DD, NS>,                  \
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem); \
      if (e != cudaSuccess) return (int)e;                                                     \
      attr = true;                                                                             \
    }                                                                                          \
    launch_k(paged_attention_v5_k<TT, DD, NS>, grid, NS >= 4 ? 256 : 128, smem, st,            \
        (TT*)out, (float*)part_acc, (float*)part_ml, cnt, (const TT*)q, (const TT*)kc,         \
        (const TT*)vc, (const int64_t*)block_tables, bt_stride, (const int64_t*)seq,           \
        (const int64_t*)pos, hq, hkv, bs, scale, keys_per_split, prefetch);                    \
    if (nsplit > 1 && !cnt)                                                                    \
      combine_splits<TT>(out, part_acc, part_ml, tokens, hq, d, nsplit, st);                   \
  }
  V5(bf16, 64, 2) V5(bf16, 128, 2) V5(bf16, 64, 4) V5(bf16, 64, 8)
#undef V5
  return (int)cudaGetLastError();
}

// Token selection. select_k over `nchunk` blocks a row (counters: rows zeroed uint32, part:
// rows * nchunk SelBest = 24 bytes each; both unused when nchunk is 1).
static int launch_select(void* out, void* info, void* part, void* counters, const void* logits,
                         const void* params, int rows, int vocab, int nchunk, int dtype,
                         cudaStream_t st) {
  if (nchunk < 1 || (nchunk > 1 && (!part || !counters))) return (int)cudaErrorInvalidValue;
  int chunk = (vocab + nchunk - 1) / nchunk;
  chunk = (chunk + 7) / 8 * 8;
  dim3 grid(rows, nchunk);
  DISPATCH(dtype, launch_k(select_k<T>, grid, SEL_THREADS, 0, st,
                      (int64_t*)out, (int64_t*)info, (SelBest*)part, (unsigned*)counters,
                      (const T*)logits, (const int64_t*)params, vocab, chunk));
  return (int)cudaGetLastError();
}

int rl_select_part_bytes() { return (int)sizeof(SelBest); }

// out[r] = argmax(logits[r, :]) (first index among equal maxima)
int rl_argmax(void* out, const void* logits, int rows, int vocab, int dtype, void* part,
              void* counters, int nchunk, void* stream) {
  if (rows == 0) return 0;
  return launch_select(out, NULL, part, counters, logits, NULL, rows, vocab, nchunk, dtype,
                       (cudaStream_t)stream);
}

// sampling: out int64 [rows]; params int64 [rows, 5]; info int64 [rows, 4] or NULL (see
// sample_k). Greedy and plain temperature rows: select_k (nchunk blocks a row); rows with a
// top-k / top-p cut: sample_k (one block a row; it returns at once for the others).
int rl_sample(void* out, void* info, const void* logits, const void* params, int rows, int vocab,
              int dtype, void* part, void* counters, int nchunk, void* stream) {
  if (rows == 0) return 0;
  cudaStream_t st = (cudaStream_t)stream;
  int rc = launch_select(out, info, part, counters, logits, params, rows, vocab, nchunk, dtype, st);
  if (rc) return rc;
  DISPATCH(dtype, launch_cut_rows((int64_t*)out, (int64_t*)info, (const T*)logits,
                                  (const int64_t*)params, rows, vocab, st));
  return (int)cudaGetLastError();
}

int rl_sync() { return (int)cudaDeviceSynchronize(); }

// host → device copy on the stream (for static buffers that a CUDA graph reads)
int rl_h2d(void* dst, const void* src, int64_t nbytes, void* stream) {
  cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyHostToDevice, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

// device → device copy on the stream (new weights into the buffers a CUDA graph reads)
int rl_d2d(void* dst, const void* src, int64_t nbytes, void* stream) {
  cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

// device → host copy on the stream (into pinned memory: returns at once)
int rl_d2h(void* dst, const void* src, int64_t nbytes, void* stream) {
  cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyDeviceToHost, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

// pinned (page-locked) host memory: copies from / to it are truly asynchronous
int rl_host_alloc(void** out, int64_t nbytes) {
  return (int)cudaHostAlloc(out, (size_t)nbytes, cudaHostAllocDefault);
}
int rl_host_free(void* p) { return (int)cudaFreeHost(p); }

// events: a point in a stream the host can wait for without waiting for what follows it
int rl_event_create(void** out) {
  return (int)cudaEventCreateWithFlags((cudaEvent_t*)out, cudaEventDisableTiming);
}
int rl_event_record(void* ev, void* stream) {
  return (int)cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream);
}
int rl_event_sync(void* ev) { return (int)cudaEventSynchronize((cudaEvent_t)ev); }

}  // extern "C"
