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

// ---------------------------------------------------------------- gather rows
// out[i, :] = table[idx[i], :]   (embedding lookup; also index_select of rows)
template <typename T>
__global__ void gather_rows_k(T* __restrict__ out, const T* __restrict__ table,
                              const int64_t* __restrict__ idx, int h) {
  int64_t r = idx[blockIdx.x];
  const T* src = table + r * (int64_t)h;
  T* dst = out + (int64_t)blockIdx.x * h;
  for (int j = threadIdx.x; j < h; j += blockDim.x) dst[j] = src[j];
}

// ---------------------------------------------------------------- (residual add +) RMSNorm
// row r = rows ? rows[b] : b;  v = x[r] (+ delta[r], rounded to T);  if x_out: x_out[r] = v
// out[b] = T(T(v * rsqrt(mean(v^2) + eps)) * w)
template <typename T>
__global__ void rms_norm_k(T* __restrict__ out, T* x_out, const T* x, const T* __restrict__ delta,
                           const int64_t* __restrict__ rows, const T* __restrict__ w, int h,
                           float eps) {
  int64_t r = rows ? rows[blockIdx.x] : blockIdx.x;
  const T* xr = x + r * h;
  const T* dr = delta ? delta + r * h : nullptr;
  float ss = 0.f;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    float v = to_f(xr[j]);
    if (dr) v = rnd<T>(v + to_f(dr[j]));
    ss += v * v;
  }
  float rs = rsqrtf(block_sum(ss) / (float)h + eps);
  T* o = out + (int64_t)blockIdx.x * h;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    float v = to_f(xr[j]);  // each thread re-reads only the elements it read above
    if (dr) v = rnd<T>(v + to_f(dr[j]));
    if (x_out) x_out[r * h + j] = from_f<T>(v);
    o[j] = from_f<T>(rnd<T>(v * rs) * to_f(w[j]));
  }
}

// ---------------------------------------------------------------- bias, SiLU*mul, cast
template <typename T>
__global__ void add_bias_k(T* x, const T* __restrict__ b, int64_t n, int h) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = from_f<T>(to_f(x[i]) + to_f(b[i % h]));
}

// out[t, c] = T(T(silu(gu[t, c])) * gu[t, I + c])
template <typename T>
__global__ void silu_mul_k(T* __restrict__ out, const T* __restrict__ gu, int64_t n, int inter) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / inter, c = i - t * inter;
    float g = to_f(gu[t * 2 * inter + c]);
    float u = to_f(gu[t * 2 * inter + inter + c]);
    out[i] = from_f<T>(rnd<T>(g / (1.f + expf(-g))) * u);
  }
}

template <typename T>
__global__ void cast_f32_k(float* __restrict__ out, const T* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = to_f(in[i]);
}

// ---------------------------------------------------------------- QKV bias + RoPE + paged-KV write
// qkv [T, (hq + 2 hkv) * d] (the GEMM output, without bias); cos/sin tables [max_pos, d] in T.
// q_out [T, hq, d] gets rope(q); K cache gets rope(k), V cache gets v at slot
// (slot_b[t], slot_o[t]); caches are [num_blocks, bs, hkv, d].
template <typename T>
__global__ void qkv_rope_cache_k(T* __restrict__ q_out, const T* __restrict__ qkv,
                                 const T* __restrict__ bias, const T* __restrict__ cos_t,
                                 const T* __restrict__ sin_t, const int64_t* __restrict__ pos,
                                 const int64_t* __restrict__ slot_b,
                                 const int64_t* __restrict__ slot_o, T* kc, T* vc, int hq, int hkv,
                                 int d, int bs) {
  int t = blockIdx.x;
  int width = (hq + 2 * hkv) * d, half = d / 2;
  const T* row = qkv + (int64_t)t * width;
  int64_t p = pos[t];
  int64_t slot = slot_b[t] * bs + slot_o[t];
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    int head = i / d, j = i - head * d;
    float a = to_f(row[i]);
    if (bias) a = rnd<T>(a + to_f(bias[i]));
    if (head < hq + hkv) {
      int pi = j < half ? i + half : i - half;
      float pv = to_f(row[pi]);
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

// merge the splits: out[t, h*d + e] = sum_s acc_s[e] e^(m_s - M) / sum_s l_s e^(m_s - M)
template <typename T>
__global__ void attn_combine_k(T* __restrict__ out, const float* __restrict__ part_acc,
                               const float* __restrict__ part_ml, int hq, int d, int nsplit) {
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
// out[r] = argmax(logits[r, :]) (first index among equal maxima, like numpy)
template <typename T>
__global__ void argmax_k(int64_t* __restrict__ out, const T* __restrict__ logits, int vocab) {
  const T* row = logits + (int64_t)blockIdx.x * vocab;
  float best = -INFINITY;
  int bi = 0x7fffffff;
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
    if (lane == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
  }
}

// ================================================================ launchers
static inline int grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  return (int)(g < 1 ? 1 : (g > 65535 * 4 ? 65535 * 4 : g));
}
static inline int rows_threads(int h) {
  int t = ((h + 31) / 32) * 32;
  return t < 64 ? 64 : (t > 1024 ? 1024 : t);
}

#define DISPATCH(dtype, ...)                  \
  switch (dtype) {                            \
    case 0: { typedef float T; __VA_ARGS__; } break;  \
    case 1: { typedef bf16 T; __VA_ARGS__; } break;   \
    case 2: { typedef __half T; __VA_ARGS__; } break; \
    default: return (int)cudaErrorInvalidValue;       \
  }

extern "C" {

int rl_version() { return 3; }

int rl_zero(void* p, int64_t nbytes, void* stream) {
  cudaMemsetAsync(p, 0, (size_t)nbytes, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

int rl_gather_rows(void* out, const void* table, const void* idx, int n, int h, int dtype,
                   void* stream) {
  if (n == 0) return 0;
  int th = h >= 256 ? 256 : 128;
  DISPATCH(dtype, gather_rows_k<T><<<n, th, 0, (cudaStream_t)stream>>>(
                      (T*)out, (const T*)table, (const int64_t*)idx, h));
  return (int)cudaGetLastError();
}

int rl_rms_norm(void* out, void* x_out, const void* x, const void* delta, const void* rows,
                const void* w, int n, int h, float eps, int dtype, void* stream) {
  if (n == 0) return 0;
  int th = rows_threads(h / 4 > 0 ? h / 4 : 1);
  DISPATCH(dtype, rms_norm_k<T><<<n, th, 0, (cudaStream_t)stream>>>(
                      (T*)out, (T*)x_out, (const T*)x, (const T*)delta, (const int64_t*)rows,
                      (const T*)w, h, eps));
  return (int)cudaGetLastError();
}

int rl_add_bias(void* x, const void* b, int64_t n, int h, int dtype, void* stream) {
  if (n == 0) return 0;
  DISPATCH(dtype, add_bias_k<T><<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(
                      (T*)x, (const T*)b, n, h));
  return (int)cudaGetLastError();
}

int rl_silu_mul(void* out, const void* gu, int64_t tokens, int inter, int dtype, void* stream) {
  int64_t n = tokens * inter;
  if (n == 0) return 0;
  DISPATCH(dtype, silu_mul_k<T><<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(
                      (T*)out, (const T*)gu, n, inter));
  return (int)cudaGetLastError();
}

int rl_cast_f32(void* out, const void* in, int64_t n, int dtype, void* stream) {
  if (n == 0) return 0;
  DISPATCH(dtype, cast_f32_k<T><<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(
                      (float*)out, (const T*)in, n));
  return (int)cudaGetLastError();
}

int rl_qkv_rope_cache(void* q_out, const void* qkv, const void* bias, const void* cos_t,
                      const void* sin_t, const void* pos, const void* slot_b, const void* slot_o,
                      void* kc, void* vc, int tokens, int hq, int hkv, int d, int bs, int dtype,
                      void* stream) {
  if (tokens == 0) return 0;
  int th = rows_threads((hq + 2 * hkv) * d / 2);
  if (th > 512) th = 512;
  DISPATCH(dtype, qkv_rope_cache_k<T><<<tokens, th, 0, (cudaStream_t)stream>>>(
                      (T*)q_out, (const T*)qkv, (const T*)bias, (const T*)cos_t, (const T*)sin_t,
                      (const int64_t*)pos, (const int64_t*)slot_b, (const int64_t*)slot_o, (T*)kc,
                      (T*)vc, hq, hkv, d, bs));
  return (int)cudaGetLastError();
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
    paged_attention_k<T><<<grid, th, smem, (cudaStream_t)stream>>>(
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
    paged_attention_v2_k<T, E, MG><<<grid, 128, 0, st>>>(                                    \
        (T*)out, (float*)part_acc, (float*)part_ml, (const T*)q, (const T*)kc, (const T*)vc, \
        (const int64_t*)block_tables, bt_stride, (const int64_t*)seq, (const int64_t*)pos,   \
        hq, hkv, d, bs, scale, keys_per_split);
  DISPATCH(dtype, {
    V2(1, 8) V2(2, 8) V2(4, 8) V2(1, 16) V2(2, 16) V2(4, 16)
    if (nsplit > 1)
      attn_combine_k<T><<<dim3(tokens, hq), d < 32 ? 32 : (d > 128 ? 128 : d), 0, st>>>(
          (T*)out, (const float*)part_acc, (const float*)part_ml, hq, d, nsplit);
  });
#undef V2
  return (int)cudaGetLastError();
}

int rl_argmax(void* out, const void* logits, int rows, int vocab, int dtype, void* stream) {
  if (rows == 0) return 0;
  DISPATCH(dtype, argmax_k<T><<<rows, 1024, 0, (cudaStream_t)stream>>>(
                      (int64_t*)out, (const T*)logits, vocab));
  return (int)cudaGetLastError();
}

int rl_sync() { return (int)cudaDeviceSynchronize(); }

// host → device copy on the stream (for static buffers that a CUDA graph reads)
int rl_h2d(void* dst, const void* src, int64_t nbytes, void* stream) {
  cudaMemcpyAsync(dst, src, (size_t)nbytes, cudaMemcpyHostToDevice, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

}  // extern "C"
