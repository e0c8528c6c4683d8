// A CUDA-graph decode step's input and output through mapped pinned host memory
// (cuda_graphs.StepMailbox; included by kernels.cu after launch_k and pdl_entry).
//
// Without it, a look-ahead replay is four stream operations besides the graph: the step's
// indices copied in (H2D), the last step's sampled ids copied into them (D2D), its own ids
// copied out (D2H) and an event. Each waits for the one before it, so they sit between two
// graphs on the GPU (~15 us a step on the H200, RESULTS.md round 10). Here the graph's first
// kernel reads the indices straight from pinned memory and its last writes the ids straight
// back: between two replays only the event remains.
//
// The host stages replay s's input in slot s % 2 and reads its ids from output slot s % 2
// (two steps in flight at most: the host waits for a slot's last replay before reusing it).
// The replay number lives on the device (`state` = {next replay, error}); step_out_k
// advances it. A slot whose header is not this replay's (a replay the host did not stage)
// sets the sticky error flag, which every later output carries, and sends the step's KV
// writes to the scratch block: a replay never writes a real sequence's cache from stale input.

namespace mailbox {

constexpr int IN_HEAD = 4;   // input slot: replay number, feed, rows, length; then the indices
constexpr int OUT_HEAD = 2;  // output slot: replay number, error; then the sampled ids

// meta[0, len) = input slot state[0] % 2's indices; with its feed flag set, the first `rows`
// token ids come from last_ids (the previous replay's sampled ids) instead. `slot_b`: where
// the rows' KV-write blocks sit in meta (`bucket` of them), `scratch` the padding block.
__global__ void step_in_k(int64_t* __restrict__ meta, int64_t len, const int64_t* in,
                          int64_t in_stride, int64_t* state, const int64_t* __restrict__ last_ids,
                          int64_t slot_b, int64_t bucket, int64_t scratch) {
  pdl_entry();
  const int64_t s = state[0];
  const int64_t* src = in + (s & 1) * in_stride;
  if (__ldcv(src) != s || __ldcv(src + 3) != len) {
    if (blockIdx.x == 0) {
      for (int64_t i = threadIdx.x; i < bucket; i += blockDim.x) meta[slot_b + i] = scratch;
      if (threadIdx.x == 0) state[1] = 1;
    }
    return;
  }
  const bool feed = __ldcv(src + 1) != 0;
  const int64_t rows = __ldcv(src + 2);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < len;
       i += (int64_t)gridDim.x * blockDim.x)
    meta[i] = (feed && i < rows) ? last_ids[i] : __ldcv(src + IN_HEAD + i);
}

// the replay's sampled ids into last_ids and output slot state[0] % 2, then that slot's
// error flag and replay number (the host checks it is the replay it waited for); then the
// next replay's number.
__global__ void step_out_k(const int64_t* __restrict__ ids, int64_t bucket,
                           int64_t* __restrict__ last_ids, int64_t* out, int64_t out_stride,
                           int64_t* state) {
  pdl_entry();
  const int64_t s = state[0];
  int64_t* dst = out + (s & 1) * out_stride;
  for (int64_t i = threadIdx.x; i < bucket; i += blockDim.x) {
    const int64_t v = ids[i];
    last_ids[i] = v;
    dst[OUT_HEAD + i] = v;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    dst[1] = state[1];
    __threadfence_system();
    dst[0] = s;
    state[0] = s + 1;
  }
}

}  // namespace mailbox

extern "C" {

// pinned host memory the kernels read and write directly: *host for the CPU, *dev for kernels
int rl_host_alloc_mapped(void** host, void** dev, int64_t nbytes) {
  cudaError_t e = cudaHostAlloc(host, (size_t)nbytes, cudaHostAllocMapped);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaHostGetDevicePointer(dev, *host, 0);
}

int rl_step_in(void* meta, int64_t len, const void* in, int64_t in_stride, void* state,
               const void* last_ids, int64_t slot_b, int64_t bucket, int64_t scratch,
               void* stream) {
  const int threads = 256;
  int64_t blocks = (len + threads - 1) / threads;
  blocks = blocks < 1 ? 1 : (blocks > 64 ? 64 : blocks);
  launch_k(mailbox::step_in_k, dim3((unsigned)blocks), threads, 0, (cudaStream_t)stream,
           (int64_t*)meta, len, (const int64_t*)in, in_stride, (int64_t*)state,
           (const int64_t*)last_ids, slot_b, bucket, scratch);
  return (int)cudaGetLastError();
}

int rl_step_out(const void* ids, int64_t bucket, void* last_ids, void* out, int64_t out_stride,
                void* state, void* stream) {
  launch_k(mailbox::step_out_k, dim3(1), 128, 0, (cudaStream_t)stream, (const int64_t*)ids,
           bucket, (int64_t*)last_ids, (int64_t*)out, out_stride, (int64_t*)state);
  return (int)cudaGetLastError();
}

}  // extern "C"
