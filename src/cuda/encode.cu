// Rotation, quantization and packing of KV records on the GPU, bit-identical
// to the CPU codec (codec/codec.cpp, codec/rotation.cpp).
//
// Bit-identity needs the same float operations in the same order: this file
// is compiled with -fmad=false (no fused multiply-add contraction; the CPU
// build has none either), IEEE division and square root (nvcc's defaults),
// every sum is accumulated sequentially by one thread in the CPU's order, and
// the fast Walsh–Hadamard transform runs the CPU's butterflies (each output
// is the same tree of additions whatever order a stage's butterflies run in).
//
// Work split: the rotation runs one warp per vector (butterflies in shared
// memory). Quantization runs 10 lanes per (vector, group) with scale search
// (1 without): lane k tries the k-th grid placement of the CPU's search
// (lane 0 the default one) over the whole group, sequentially; the item's
// first lane picks the best with the CPU's tie-break (first in its order),
// writes the fp16 scale, and the item's lanes pack the winning indices
// LSB-first, 8 elements at a time. Scale search is ~10x the work of one
// placement: a 32K-token prefix of one layer (8 kv heads, keys and values,
// head_dim 128) takes 1.7 ms on an H200 (docs/RESULTS.md section 7).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "codec/codec.h"
#include "cuda/cuda_check.cuh"
#include "cuda/cuda_kv.h"

namespace turbokv::cuda {

// ---- Hadamard rotations -----------------------------------------------------------------

std::vector<float> hadamard_signs(const codec::Rotation& rot) {
  if (rot.kind() != codec::RotationKind::Hadamard) {
    throw Error(std::string("CUDA kernels support the hadamard rotation only, got ") +
                codec::rotation_name(rot.kind()) + " at head size " + std::to_string(rot.dim()));
  }
  const int d = rot.dim();
  std::vector<float> e(static_cast<size_t>(d), 0.0f), y(static_cast<size_t>(d));
  std::vector<float> signs(static_cast<size_t>(d));
  for (int j = 0; j < d; ++j) {
    e[size_t(j)] = 1.0f;
    rot.forward(e.data(), y.data());
    e[size_t(j)] = 0.0f;
    TKV_ASSERT(y[0] != 0.0f, "Hadamard rotation of a basis vector has a zero first coordinate");
    signs[size_t(j)] = y[0] > 0 ? 1.0f : -1.0f;
  }
  return signs;
}

namespace {

constexpr int kRotateWarps = 4;

// One warp per vector: optional calibration (x - mean) * channel_scale, then
// forward y = H (s ⊙ x) / sqrt(d) or inverse y = s ⊙ (H x / sqrt(d)).
__global__ void rotate_kernel(const float* __restrict__ x, float* __restrict__ y, size_t n_vec, int hd, int n_kv,
                              int heads_per_kv, const float* __restrict__ signs, float wht_scale, bool inverse,
                              const float* __restrict__ mean, const float* __restrict__ cscale) {
  extern __shared__ float buf[];  // (kRotateWarps, hd)
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const size_t v = size_t(blockIdx.x) * kRotateWarps + size_t(warp);
  if (v >= n_vec) return;
  const int g = int((v / size_t(heads_per_kv)) % size_t(n_kv));
  float* b = buf + size_t(warp) * size_t(hd);
  const float* xv = x + v * size_t(hd);
  const float* sg = signs ? signs + size_t(g) * hd : nullptr;
  for (int i = lane; i < hd; i += 32) {
    float val = xv[i];
    if (mean) val = val - mean[size_t(g) * hd + i];
    if (cscale) val = val * cscale[size_t(g) * hd + i];
    if (sg && !inverse) val = val * sg[i];
    b[i] = val;
  }
  __syncwarp();
  if (sg) {
    for (int h = 1; h < hd; h <<= 1) {
      for (int j = lane; j < hd / 2; j += 32) {
        const int i = (j / h) * 2 * h + (j % h);
        const float a = b[i], c = b[i + h];
        b[i] = a + c;
        b[i + h] = a - c;
      }
      __syncwarp();
    }
  }
  float* yv = y + v * size_t(hd);
  for (int i = lane; i < hd; i += 32) {
    float val = b[i];
    if (sg) {
      val = val * wht_scale;
      if (inverse) val = val * sg[i];
    }
    yv[i] = val;
  }
}

void launch_rotate(const float* x, float* y, size_t n_vec, int hd, int n_kv, int heads_per_kv, const float* signs,
                   float wht_scale, bool inverse, const float* mean, const float* cscale) {
  if (n_vec == 0) return;
  const size_t blocks = (n_vec + kRotateWarps - 1) / kRotateWarps;
  rotate_kernel<<<unsigned(blocks), 32 * kRotateWarps, size_t(kRotateWarps) * hd * sizeof(float)>>>(
      x, y, n_vec, hd, n_kv, heads_per_kv, signs, wht_scale, inverse, mean, cscale);
  TKV_CUDA_LAUNCH("rotate_kernel");
}

// ---- quantization -------------------------------------------------------------------------

// The CPU's scale-search factors in its evaluation order: the default
// placement (1.0) first, then the list of codec.cpp without 1.0.
__constant__ float kSlotFactor[10] = {1.0f, 0.8f, 0.87f, 0.93f, 1.07f, 1.15f, 1.25f, 1.35f, 1.45f, 1.6f};
constexpr int kSearchSlots = 10;
constexpr int kQuantWarps = 8;

constexpr int kMaxBits = 8;  // the codec's largest mse and group records
struct QuantParams {
  float boundaries[1 << kMaxBits];  // 2^B - 1 used, then +inf
  float centroids[1 << kMaxBits];   // 2^B used
  int group = 0;         // elements per scale (head_dim for mse)
  int n_groups = 1;
  int is_mse = 0;
  int rule = 0;          // codec::ScaleRule
  int search = 0;
  float outer = 0;       // group: largest centroid
  uint32_t index_offset = 0, record_bytes = 0;
};

// Index of the cell of u: the number of boundaries strictly below u (the
// CPU's branchless binary search; the same count as quantize_reference).
template <int B>
__device__ __forceinline__ uint32_t quantize_cell(const float* t, float u) {
  uint32_t k = 0;
#pragma unroll
  for (uint32_t step = 1u << (B - 1); step > 0; step >>= 1) k += (t[k + step - 1] < u) ? step : 0u;
  return k;
}

// codec.cpp scale_for.
__device__ float scale_for(int rule, float xx, float xc, float cc) {
  if (xx <= 0 || cc <= 0) return 0.0f;
  switch (rule) {
    case int(codec::ScaleRule::Norm): return sqrtf(xx);
    case int(codec::ScaleRule::Auto):
    case int(codec::ScaleRule::MatchedNorm): return sqrtf(xx) / sqrtf(cc);
    case int(codec::ScaleRule::LeastSquares): return xc > 0 ? xc / cc : 0.0f;
    case int(codec::ScaleRule::Unbiased): return xc > 0 ? xx / xc : 0.0f;
  }
  return 0.0f;
}

struct RecordPlace {
  int n_kv, n_tok, capacity;
  const int* pos0;
  int first_pos;
  size_t row_bytes;
  __device__ size_t offset(size_t v) const {  // v: (seq, tok, kv head) flattened
    const size_t g = v % size_t(n_kv);
    const size_t t = (v / size_t(n_kv)) % size_t(n_tok);
    const size_t s = v / (size_t(n_kv) * size_t(n_tok));
    const size_t pos = size_t(pos0 ? pos0[s] : first_pos) + t;
    return ((s * size_t(n_kv) + g) * size_t(capacity) + pos) * row_bytes;
  }
};

// Error flag bits.
constexpr int kErrNonFinite = 1, kErrOverflow = 2;

// One item = one (vector, group); `slots` lanes per item (10 with scale
// search, else 1), 32 / slots items per warp. Lane k of an item tries the
// k-th grid placement over the whole group, sequentially (the CPU's sums in
// the CPU's order); the first lane of the item picks the best in the CPU's
// order (strictly better replaces); then the item's lanes pack the winning
// indices 8 elements (B bytes) at a time.
template <int B>
__global__ void __launch_bounds__(32 * kQuantWarps) quantize_kernel(const float* __restrict__ rot, size_t n_vec,
                                                                    int hd, QuantParams P, int slots,
                                                                    RecordPlace place, uint8_t* __restrict__ cache,
                                                                    int* __restrict__ error) {
  __shared__ float t_s[1 << B], c_s[1 << B];
  __shared__ float r_s[kQuantWarps][32];
  __shared__ int best_s[kQuantWarps][32];
  for (int i = int(threadIdx.x); i < (1 << B); i += int(blockDim.x)) {
    t_s[i] = P.boundaries[i];
    c_s[i] = P.centroids[i];
  }
  __syncthreads();
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int per_warp = 32 / slots;
  const int local = lane / slots, slot = lane % slots;
  const size_t item = (size_t(blockIdx.x) * kQuantWarps + warp) * per_warp + local;  // (vector, group)
  const bool valid = local < per_warp && item < n_vec * size_t(P.n_groups);
  const size_t v = valid ? item / size_t(P.n_groups) : 0;
  const int gi = valid ? int(item % size_t(P.n_groups)) : 0;
  const int G = P.group;
  const float* xg = rot + v * size_t(hd) + size_t(gi) * G;

  float ss = 0, amax = 0, mult0 = 0, norm = 0, xc = 0, cc = 0;
  bool search_on = false;
  if (valid) {
    for (int i = 0; i < G; ++i) {
      ss = ss + xg[i] * xg[i];
      amax = fmaxf(amax, fabsf(xg[i]));
    }
    if (P.is_mse) {
      norm = sqrtf(ss);
      mult0 = norm > 0 ? 1.0f / norm : 0.0f;
    } else {
      mult0 = amax > 0 ? P.outer / amax : 0.0f;
    }
    search_on = P.search && (P.is_mse || amax > 0);
  }
  const bool active = valid && (slot == 0 || search_on);
  float r = INFINITY;
  if (active) {
    const float mult = slot == 0 ? mult0 : mult0 * kSlotFactor[slot];
    for (int i = 0; i < G; ++i) {
      const float cv = c_s[quantize_cell<B>(t_s, xg[i] * mult)];
      xc = xc + xg[i] * cv;
      cc = cc + cv * cv;
    }
    r = cc > 0 ? ss - xc * xc / cc : ss;
  }
  r_s[warp][lane] = r;
  __syncwarp();
  if (valid && slot == 0) {  // the CPU's order: the default first, strictly better replaces
    int best = 0;
    float best_r = r;
    for (int k = 1; k < (search_on ? slots : 1); ++k) {
      const float rk = r_s[warp][lane + k];
      if (rk < best_r) {
        best_r = rk;
        best = k;
      }
    }
    best_s[warp][lane] = best;
  }
  __syncwarp();
  const int best = valid ? best_s[warp][local * slots] : 0;
  const float wxc = __shfl_sync(0xffffffffu, xc, (local * slots + best) & 31);
  const float wcc = __shfl_sync(0xffffffffu, cc, (local * slots + best) & 31);
  if (!valid) return;

  uint8_t* rec = cache + place.offset(v);
  if (slot == 0) {
    // The codec's finiteness check on the whole vector's sum of squares (the
    // group's own sum when the group is the vector).
    float total = ss;
    if (G != hd) {
      total = 0;
      if (gi == 0) {
        const float* x = rot + v * size_t(hd);
        for (int i = 0; i < hd; ++i) total = total + x[i] * x[i];
      }
    }
    if (!isfinite(total)) atomicOr(error, kErrNonFinite);
    float s;
    if (P.is_mse && P.rule == int(codec::ScaleRule::Auto) && !P.search) {
      s = norm;  // TurboQuant_mse exactly: the norm
    } else {
      const int rule = (P.is_mse && P.rule == int(codec::ScaleRule::Auto)) ? int(codec::ScaleRule::Norm) : P.rule;
      s = (P.is_mse || amax > 0) ? scale_for(rule, ss, wxc, wcc) : 0.0f;
    }
    const uint16_t hb = __half_as_ushort(__float2half_rn(s));
    if ((hb & 0x7c00u) == 0x7c00u) atomicOr(error, kErrOverflow);
    rec[2 * gi] = uint8_t(hb & 0xffu);
    rec[2 * gi + 1] = uint8_t(hb >> 8);
  }
  // Pack the group's indices LSB-first, 8 elements (B bytes) per chunk
  // (G * B is a multiple of 8 bytes' worth: G >= 16).
  const float wmult = best == 0 ? mult0 : mult0 * kSlotFactor[best];
  uint8_t* out = rec + P.index_offset + size_t(gi) * G * B / 8;
  for (int chunk = slot; chunk < G / 8; chunk += slots) {
    uint64_t acc = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc |= uint64_t(quantize_cell<B>(t_s, xg[chunk * 8 + i] * wmult)) << (i * B);
#pragma unroll
    for (int b = 0; b < B; ++b) out[chunk * B + b] = uint8_t(acc >> (8 * b));
  }
}

// FP16 rows: round to nearest even, as the CPU's f32_to_fp16.
__global__ void store_fp16_kernel(const float* __restrict__ x, size_t n_vec, int hd, RecordPlace place,
                                  uint8_t* __restrict__ cache) {
  const size_t n = n_vec * size_t(hd);
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const size_t v = i / size_t(hd);
    __half* row = reinterpret_cast<__half*>(cache + place.offset(v));
    row[i % size_t(hd)] = __float2half_rn(x[i]);
  }
}

// Records -> fp16 rows (expand_records): one thread per element, the CPU's
// decode_rotated (scale times centroid in fp32), rounded to nearest even.
template <int B>
__global__ void expand_kernel(const uint8_t* __restrict__ records, size_t n, int hd, QuantParams P,
                              __half* __restrict__ rows) {
  const size_t total = n * size_t(hd);
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int e = int(i % size_t(hd));
    const uint8_t* rec = records + (i / size_t(hd)) * P.record_bytes;
    const uint32_t bit = uint32_t(e) * B, byte = P.index_offset + bit / 8;
    uint32_t bits = rec[byte];
    if ((bit % 8) + B > 8) bits |= uint32_t(rec[byte + 1]) << 8;  // the index spans two bytes
    const uint32_t idx = (bits >> (bit % 8)) & ((1u << B) - 1u);
    const int gi = e / P.group;
    const float scale = __half2float(__ushort_as_half(uint16_t(rec[2 * gi] | (rec[2 * gi + 1] << 8))));
    rows[i] = __float2half_rn(scale * P.centroids[idx]);
  }
}

bool is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

// Calls f(std::integral_constant<int, B>{}) with B = bits (1..kMaxBits,
// checked by quant_params): the kernel instance of a record width.
template <class F>
void with_bits(int bits, F&& f) {
  switch (bits) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
  static_assert(kMaxBits == 8, "with_bits covers 1..kMaxBits");
  TKV_ASSERT(false, "bits checked by quant_params");
}

// The quantizer's parameters of a record format (the encoder's and
// expand_records' checks: mse or group at 1..kMaxBits bits, not split).
QuantParams quant_params(const StreamFormat& format, int head_dim, const char* who) {
  const codec::CodecSpec& s = format.spec;
  codec::validate_spec(s, head_dim);
  if (s.kind != codec::CodecKind::Mse && s.kind != codec::CodecKind::Group) {
    throw Error(std::string(who) + ": codec '" + codec::codec_name(s.kind) + "' is not supported (mse, group)");
  }
  if (s.bits < 1 || s.bits > kMaxBits) {
    throw Error(std::string(who) + ": " + std::to_string(s.bits) + "-bit records are not supported (1.." +
                std::to_string(kMaxBits) + " bits)");
  }
  if (s.split != 0) throw Error(std::string(who) + ": split records (outlier channels) are not supported");
  const codec::Codec c(s, head_dim);  // the CPU's codebook, built once
  const auto cent = c.codebook()->centroids();
  const auto bnd = c.codebook()->boundaries();
  QuantParams P;
  for (int i = 0; i < (1 << kMaxBits); ++i) {
    P.boundaries[i] = i < int(bnd.size()) ? bnd[size_t(i)] : INFINITY;
    P.centroids[i] = i < int(cent.size()) ? cent[size_t(i)] : 0.0f;
  }
  const codec::RecordLayout L = c.layout();
  P.is_mse = s.kind == codec::CodecKind::Mse;
  P.group = P.is_mse ? head_dim : s.effective_group();
  P.n_groups = head_dim / P.group;
  P.rule = int(s.scale_rule);
  P.search = s.scale_search ? 1 : 0;
  P.outer = cent.back();
  P.index_offset = L.index_offset;
  P.record_bytes = L.record_bytes;
  return P;
}

}  // namespace

void expand_records(const StreamFormat& format, int head_dim, const void* records, size_t n, void* rows,
                    void* stream) {
  if (format.fp16) throw Error("CUDA expand_records: the stream holds fp16 rows already, not records");
  const QuantParams P = quant_params(format, head_dim, "CUDA expand_records");
  if (n == 0) return;
  const size_t total = n * size_t(head_dim);
  const unsigned blocks = unsigned(std::min<size_t>((total + 255) / 256, 65536));
  const auto* in = static_cast<const uint8_t*>(records);
  auto* out = static_cast<__half*>(rows);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  with_bits(format.spec.bits, [&](auto b) {
    expand_kernel<decltype(b)::value><<<blocks, 256, 0, st>>>(in, n, head_dim, P, out);
  });
  TKV_CUDA_LAUNCH("expand_kernel");
}

DeviceRotations::DeviceRotations(const std::vector<float>& signs, int n_kv_head, int head_dim)
    : n_kv_head_(n_kv_head), head_dim_(head_dim) {
  if (!is_pow2(head_dim) || head_dim < 16 || head_dim > codec::kMaxDim) {
    throw Error("CUDA rotations need a power-of-two head size in 16..1024, got " + std::to_string(head_dim));
  }
  if (signs.size() != size_t(n_kv_head) * head_dim) {
    throw Error("DeviceRotations: expected " + std::to_string(size_t(n_kv_head) * head_dim) + " signs, got " +
                std::to_string(signs.size()));
  }
  signs_ = upload_vector(signs);
  wht_scale_ = 1.0f / std::sqrt(float(head_dim));  // walsh_hadamard_blocks' scale, same rounding
}

void DeviceRotations::forward(const float* x, float* y, size_t n_vec, int heads_per_kv) const {
  launch_rotate(x, y, n_vec, head_dim_, n_kv_head_, heads_per_kv, signs(), wht_scale_, false, nullptr, nullptr);
}

void DeviceRotations::inverse(const float* x, float* y, size_t n_vec, int heads_per_kv) const {
  launch_rotate(x, y, n_vec, head_dim_, n_kv_head_, heads_per_kv, signs(), wht_scale_, true, nullptr, nullptr);
}

struct Encoder::Params {
  QuantParams q;
};

Encoder::Encoder(const StreamFormat& format, int head_dim, int n_kv_head, const DeviceRotations* rotations)
    : format_(format), head_dim_(head_dim), n_kv_head_(n_kv_head), rot_(rotations),
      params_(std::make_unique<Params>()) {
  row_bytes_ = format.row_bytes(head_dim);
  error_flag_ = DeviceBuffer(sizeof(int));
  if (format.fp16) return;
  params_->q = quant_params(format, head_dim, "CUDA encoder");
  if (!rotations || rotations->head_dim() != head_dim || rotations->n_kv_head() != n_kv_head) {
    throw Error("CUDA encoder: records need the rotations of every kv head at head size " + std::to_string(head_dim));
  }
}

Encoder::~Encoder() = default;

void Encoder::encode(const EncodeArgs& a) {
  if (a.n_seq <= 0 || a.n_tok <= 0) return;
  if (a.capacity % 16 != 0) throw Error("CUDA cache capacity must be a multiple of 16, got " + std::to_string(a.capacity));
  const size_t n_vec = size_t(a.n_seq) * a.n_tok * n_kv_head_;
  const RecordPlace place{n_kv_head_, a.n_tok, a.capacity, a.pos0, a.first_pos, row_bytes_};
  uint8_t* cache = static_cast<uint8_t*>(a.cache);
  if (format_.fp16) {
    const size_t n = n_vec * size_t(head_dim_);
    const size_t blocks = std::min<size_t>((n + 255) / 256, 65536);
    store_fp16_kernel<<<unsigned(blocks), 256>>>(a.x, n_vec, head_dim_, place, cache);
    TKV_CUDA_LAUNCH("store_fp16_kernel");
    return;
  }
  const size_t need = n_vec * size_t(head_dim_) * sizeof(float);
  if (rotated_.bytes() < need) rotated_ = DeviceBuffer(need);
  float* rot = rotated_.as<float>();
  launch_rotate(a.x, rot, n_vec, head_dim_, n_kv_head_, 1, rot_->signs(), rot_->wht_scale(), false, a.mean,
                a.channel_scale);
  TKV_CUDA(cudaMemsetAsync(error_flag_.data(), 0, sizeof(int)));
  const QuantParams& P = params_->q;
  const int slots = P.search ? kSearchSlots : 1;
  const size_t items_per_block = size_t(32 / slots) * kQuantWarps;
  const unsigned blocks = unsigned((n_vec * size_t(P.n_groups) + items_per_block - 1) / items_per_block);
  int* err = error_flag_.as<int>();
  with_bits(format_.spec.bits, [&](auto b) {
    quantize_kernel<decltype(b)::value><<<blocks, 32 * kQuantWarps>>>(rot, n_vec, head_dim_, P, slots, place, cache, err);
  });
  TKV_CUDA_LAUNCH("quantize_kernel");
  int flag = 0;
  error_flag_.download(&flag, sizeof(int));  // synchronizes: the codec's errors surface here
  if (flag & kErrNonFinite) {
    throw Error("CUDA encoder: an input vector (dim " + std::to_string(head_dim_) +
                ") contains NaN or Inf, or its squared norm overflows float");
  }
  if (flag & kErrOverflow) throw Error("CUDA encoder: a norm or group scale does not fit in fp16 (max 65504)");
}

}  // namespace turbokv::cuda
