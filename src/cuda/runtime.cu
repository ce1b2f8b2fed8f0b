// Device buffers, device properties and small helpers of turbokv_cuda.
#include <cmath>
#include <cstring>

#include "codec/format.h"
#include "cuda/cuda_check.cuh"
#include "cuda/cuda_kv.h"

namespace turbokv::cuda {

bool device_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

DeviceInfo device_info() {
  int dev = 0;
  TKV_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  TKV_CUDA(cudaGetDeviceProperties(&p, dev));
  DeviceInfo info;
  info.name = p.name;
  info.sm_count = p.multiProcessorCount;
  info.major = p.major;
  info.minor = p.minor;
  info.total_memory = p.totalGlobalMem;
  info.l2_bytes = size_t(p.l2CacheSize);
  int clock_khz = 0, bus_bits = 0;
  TKV_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
  TKV_CUDA(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  // Double data rate: two transfers per memory clock.
  info.peak_bandwidth_gbs = 2.0 * double(clock_khz) * 1e3 * double(bus_bits) / 8.0 / 1e9;
  return info;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) TKV_CUDA(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* src, size_t bytes, size_t offset) {
  TKV_ASSERT(offset + bytes <= bytes_, "DeviceBuffer::upload past the end");
  TKV_CUDA(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* dst, size_t bytes, size_t offset) const {
  TKV_ASSERT(offset + bytes <= bytes_, "DeviceBuffer::download past the end");
  TKV_CUDA(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::fill(uint8_t byte) {
  if (bytes_ > 0) TKV_CUDA(cudaMemset(ptr_, byte, bytes_));
}

void synchronize() { TKV_CUDA(cudaDeviceSynchronize()); }

namespace {

__device__ __forceinline__ uint64_t splitmix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Box–Muller on a counter hash: N(0,1) * scale.
__global__ void fill_random_kernel(float* dst, size_t count, uint64_t seed, float scale) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    const uint64_t h = splitmix(seed ^ splitmix(i));
    const float u1 = (float((h >> 40) & 0xffffff) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = float((h >> 8) & 0xffffff) * (1.0f / 16777216.0f);
    dst[i] = scale * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

// One thread that returns once the GPU's global timer has advanced by `ns`.
__global__ void hold_kernel(uint64_t ns, uint64_t* end_stamp) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
  if (end_stamp != nullptr) *end_stamp = t;
}

// Folds n bytes at p into x: 16-byte loads, kReadUnroll of them in flight
// per thread; the tail past the last whole 16 bytes byte by byte.
constexpr int kReadUnroll = 4;
__device__ __forceinline__ uint32_t fold_bytes(const uint8_t* p, size_t n, uint32_t x) {
  const uint4* v = reinterpret_cast<const uint4*>(p);
  const size_t n16 = n / 16, stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kReadUnroll - 1) * stride < n16; i += kReadUnroll * stride) {
    uint4 w[kReadUnroll];
#pragma unroll
    for (int u = 0; u < kReadUnroll; ++u) w[u] = __ldcs(v + i + u * stride);
#pragma unroll
    for (int u = 0; u < kReadUnroll; ++u) x ^= w[u].x ^ w[u].y ^ w[u].z ^ w[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 w = __ldcs(v + i);
    x ^= w.x ^ w.y ^ w.z ^ w.w;
  }
  for (size_t j = 16 * n16 + size_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) x ^= p[j];
  return x;
}

__global__ void read_kernel(const uint8_t* a, size_t na, const uint8_t* b, size_t nb, uint32_t* sink) {
  const uint32_t x = fold_bytes(b, nb, fold_bytes(a, na, 0u));
  if (x == 0x9e3779b9u) *sink = x;
}

}  // namespace

void read_bytes(const void* a, size_t a_bytes, const void* b, size_t b_bytes, void* stream, uint32_t* sink) {
  int dev = 0, sms = 0;
  TKV_CUDA(cudaGetDevice(&dev));
  TKV_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  constexpr int kThreads = 256, kBlocksPerSm = 8;  // 2048 threads: a full SM
  read_kernel<<<unsigned(sms * kBlocksPerSm), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(a), a_bytes, static_cast<const uint8_t*>(b), b_bytes, sink);
  TKV_CUDA_LAUNCH("read_kernel");
}

bool timeline_available() {
#ifdef TURBOKV_CUDA_TIMELINE
  return true;
#else
  return false;
#endif
}

void hold_stream(void* stream, double microseconds, uint64_t* end_stamp) {
  hold_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(uint64_t(microseconds * 1e3), end_stamp);
  TKV_CUDA_LAUNCH("hold_kernel");
}

void fill_random(float* dst, size_t count, uint64_t seed, float scale) {
  if (count == 0) return;
  const int threads = 256;
  const size_t blocks = std::min<size_t>((count + threads - 1) / threads, 65536);
  fill_random_kernel<<<unsigned(blocks), threads>>>(dst, count, seed, scale);
  TKV_CUDA_LAUNCH("fill_random_kernel");
}

size_t StreamFormat::row_bytes(int head_dim) const {
  if (fp16) return size_t(head_dim) * 2;
  return codec::record_bytes(spec, head_dim);
}

}  // namespace turbokv::cuda
