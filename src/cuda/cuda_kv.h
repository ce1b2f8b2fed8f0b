// CUDA encode and fused decode attention over compressed KV records
// (issue #9). Plain C++: no CUDA type appears here, so CPU code, tests and
// benchmarks include it without nvcc; the kernels live in the .cu files.
//
// Records are byte-identical to the CPU codec's (codec/format.h): a cache
// encoded on the GPU decodes on the CPU and the other way round.
//
// Device cache layout, one stream (keys or values):
//   codec records  (n_seq, n_kv_head, capacity, record_bytes)
//   fp16 rows      (n_seq, n_kv_head, capacity, head_dim)
// capacity (positions per (sequence, kv head)) must be a multiple of 16: a
// 16-position tile is then a 16-byte aligned block the kernels copy whole.
//
// Decode attention (flash-decoding, Dao et al. 2023): one CTA per
// (split of the sequence, kv head, sequence); its warps read a kv head's
// records once for all query heads of the GQA group (mma.sync m16n8k16 with
// 16 positions as rows and the group's heads as the 8 columns: S^T = K Q^T,
// O^T += V^T P^T), each warp keeping an online-softmax state {m, d, o} over
// its 16-position tiles; the CTA merges its warps into one partial state
// per split; the splits are merged exactly (kv/online_softmax.h) and
// normalized by the CTAs of each (sequence, kv head) themselves, as one
// thread block cluster through distributed shared memory (record kernels
// with 1-4 splits on sm_90), or by a second kernel. Keys and values are
// expanded from their packed indices straight into the mma operand
// registers (one lookup in a shared-memory table of centroid pairs per two
// elements, times the record's fp16 group scale): no float copy of a key or
// value is written anywhere. Operands are fp16 (the query, expanded keys
// and values, softmax weights), accumulation is fp32.
//
// Supported: decode attention over mse and group records at 2 to 5 bits and
// at 8 bits (the far and near tiers of every turbo scheme; 8-bit records
// pair only with 8-bit records or fp16 rows; any group size the codec
// allows; not split records) and fp16 rows, head_dim 64 and 128, 1..8
// query heads per kv head, with an optional tail of fp16 rows in the same
// call (a cache's raw window and its expanded near tier); encoding of mse
// and group records at 1 to 8 bits and fp16 rows, and their expansion into
// fp16 rows.
// An expanded key or value (fp16 scale times centroid) must fit in fp16.
// Anything else throws turbokv::Error naming what is unsupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codec/format.h"
#include "codec/rotation.h"

namespace turbokv::cuda {

// ---- device, memory ---------------------------------------------------------------

// Whether a CUDA device is present and usable (never throws).
bool device_available();

struct DeviceInfo {
  std::string name;
  int sm_count = 0;
  int major = 0, minor = 0;
  size_t total_memory = 0;         // bytes
  size_t l2_bytes = 0;
  double peak_bandwidth_gbs = 0;   // 2 * memory clock * bus width / 8 (driver attributes)
};
DeviceInfo device_info();

// Owning device allocation (cudaMalloc), move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  void upload(const void* src, size_t bytes, size_t offset = 0);
  void download(void* dst, size_t bytes, size_t offset = 0) const;
  void fill(uint8_t byte);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
DeviceBuffer upload_vector(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
  return b;
}

void synchronize();

// Fills `count` floats at dst with N(0,1)·scale values from a counter hash
// (seeded; for benchmarks and tests that need big inputs).
void fill_random(float* dst, size_t count, uint64_t seed, float scale);

// Enqueues on `stream` (a cudaStream_t; null: the default stream) a
// one-thread kernel that spins for `microseconds` of the GPU's global
// timer. Benchmarks put it before a timed region so that the host enqueues
// the region while the GPU is still busy: the region's events then time the
// GPU's work and not the host's launch latency (nvbench's blocking kernel).
// end_stamp, if not null: device, where the kernel writes the global timer
// (ns) as it returns (AttentionArgs::timeline's reference point).
void hold_stream(void* stream, double microseconds, uint64_t* end_stamp = nullptr);

// Enqueues on `stream` one kernel that reads the a_bytes at a and the
// b_bytes at b once (16-byte loads, several in flight per thread, a grid
// that fills the card) and does nothing else: what a plain read of the
// same bytes takes, the floor a kernel over them can approach (the
// benchmark's read_us). `sink` (device, 4 bytes) receives a value only
// where the bytes fold to a rare word, so the loads cannot be dropped.
// Buffers from cudaMalloc (16-byte aligned); any sizes.
void read_bytes(const void* a, size_t a_bytes, const void* b, size_t b_bytes, void* stream, uint32_t* sink);

// ---- streams --------------------------------------------------------------------

// How one stream (keys or values) is stored on the device.
struct StreamFormat {
  bool fp16 = true;       // fp16 rows; else codec records of `spec`
  codec::CodecSpec spec;  // when !fp16: mse or group (decode attention: 2..5 and 8 bits; encoder: 1..8)

  static StreamFormat rows_fp16() { return {}; }
  static StreamFormat records(const codec::CodecSpec& s) { return {false, s}; }
  // Bytes of one position's row or record.
  size_t row_bytes(int head_dim) const;
};

// Sign vectors of a Hadamard rotation (codec::Rotation of kind Hadamard),
// recovered through its public forward(): R e_j = s_j H e_j / sqrt(d), and
// row 0 of H is all ones, so s_j = sign((R e_j)_0). Throws for other kinds.
std::vector<float> hadamard_signs(const codec::Rotation& rot);  // (dim) of ±1

// Per-kv-head Hadamard rotations on the device: y = H (s ⊙ x) / sqrt(d),
// the same butterflies and roundings as codec::Rotation::forward.
class DeviceRotations {
 public:
  // signs: (n_kv_head, head_dim).
  DeviceRotations(const std::vector<float>& signs, int n_kv_head, int head_dim);
  int head_dim() const { return head_dim_; }
  int n_kv_head() const { return n_kv_head_; }
  const float* signs() const { return signs_.as<float>(); }
  float wht_scale() const { return wht_scale_; }
  // x, y: device (n_vec, head_dim); vector v uses kv head (v / heads_per_kv) % n_kv_head.
  // forward: y = R x; inverse: y = R^T x. x == y allowed.
  void forward(const float* x, float* y, size_t n_vec, int heads_per_kv) const;
  void inverse(const float* x, float* y, size_t n_vec, int heads_per_kv) const;

 private:
  DeviceBuffer signs_;
  int n_kv_head_ = 0, head_dim_ = 0;
  float wht_scale_ = 0;
};

// ---- encode -----------------------------------------------------------------------

// Where a batch of new tokens goes: token t of sequence s is position
// pos0[s] + t (pos0 a device array, or first_pos for every sequence).
struct EncodeArgs {
  const float* x = nullptr;   // device (n_seq, n_tok, n_kv_head, head_dim), original space
  int n_seq = 1, n_tok = 0;
  const int* pos0 = nullptr;  // device (n_seq) or null
  int first_pos = 0;
  void* cache = nullptr;      // device stream buffer (n_seq, n_kv_head, capacity, row_bytes)
  int capacity = 0;
  // Optional per-(kv head, channel) calibration, as the CPU cache applies it
  // before rotating: x' = (x - mean) * channel_scale.   device (n_kv_head, head_dim)
  const float* mean = nullptr;
  const float* channel_scale = nullptr;
};

// Rotation + quantization + packing of codec records, bit-identical to
// codec::Codec::encode(rot, x) (scale rules and scale search included:
// the GPU evaluates the same float operations in the same order, with no
// fused multiply-adds), or fp16 rows (round to nearest even).
class Encoder {
 public:
  // rotations may be null for fp16 rows and must be non-null for records.
  Encoder(const StreamFormat& format, int head_dim, int n_kv_head, const DeviceRotations* rotations);
  ~Encoder();
  const StreamFormat& format() const { return format_; }
  size_t row_bytes() const { return row_bytes_; }
  // Throws Error if an input is NaN/Inf or a norm or scale overflows fp16
  // (the CPU codec's errors); the records written so far are then undefined.
  // Synchronizes (it reads the error flag back).
  void encode(const EncodeArgs& args);

 private:
  StreamFormat format_;
  int head_dim_, n_kv_head_;
  size_t row_bytes_;
  const DeviceRotations* rot_;
  DeviceBuffer rotated_;     // (n_vec, head_dim) rotated vectors of the largest batch so far
  DeviceBuffer error_flag_;  // int: kErrNonFinite | kErrOverflow
  struct Params;
  std::unique_ptr<Params> params_;
};

// Writes n consecutive records of `format` (mse or group, 1 to 8 bits) as
// n consecutive fp16 rows (head_dim each) of what they decode to: element i
// is fp16(scale × centroid[index i]), the CPU codec's decode_rotated
// rounded to nearest even, in the stream's (rotated) space. A cache's near
// tier expanded so, beside its records, is part of decode attention's tail
// (AttentionArgs::tail_keys). Asynchronous on `stream`.
void expand_records(const StreamFormat& format, int head_dim, const void* records, size_t n, void* rows,
                    void* stream = nullptr);

// ---- decode attention --------------------------------------------------------------

struct AttentionArgs {
  int n_seq = 0;
  const int* seq_len = nullptr;  // device (n_seq): positions [0, len) are attended
  int max_seq_len = 0;           // host: max of seq_len (plans the split)
  int capacity = 0;              // positions per (sequence, kv head) in the buffers
  const void* keys = nullptr;    // device key stream
  const void* values = nullptr;  // device value stream
  const float* q = nullptr;      // device (n_seq, n_kv_head * group, head_dim), in the key stream's space; 16-byte aligned (Error otherwise)
  const float* shift = nullptr;  // device (n_seq, n_kv_head * group) added to every dot; may be null
  float scale = 1.0f;            // score = scale * (<q, k̂> + shift)
  float* out = nullptr;          // device (n_seq, n_kv_head * group, head_dim), value stream's space
  // Partial states (both or neither): out then holds each row's output
  // unnormalized, out_m its running maximum (base 2, of the scaled scores)
  // and out_d its softmax denominator, device (n_seq, n_kv_head * group)
  // each. merge_partials folds calls over disjoint positions (a cache's
  // tiers: raw window, near and far records) into the normalized output.
  float* out_m = nullptr;
  float* out_d = nullptr;
  int split = 0;                 // positions per split (multiple of 64); 0 = planned
  void* stream = nullptr;        // cudaStream_t the kernels go to; null: the default stream
  // Optional tail, attended in the same call: tail_len[s] more positions of
  // sequence s held as fp16 rows in each stream's space (keys in the
  // query's, values in the output's), device (n_seq, n_kv_head,
  // tail_capacity, head_dim) each. A cache's raw window and near tier are
  // its newest few dozen positions: kept as such rows (expand_records
  // writes a record tier's), they cost one pass with the far records
  // instead of a call each and a merge_partials. The CTA of each
  // sequence's last split reads them once its warps are done with the
  // records, in fp32 arithmetic, and folds them into its state.
  const int* tail_len = nullptr;  // device (n_seq), each at most tail_capacity (longer: cut to it); null: no tail
  const void* tail_keys = nullptr;    // 16-byte aligned (Error otherwise)
  const void* tail_values = nullptr;  // 16-byte aligned
  int tail_capacity = 0;              // positions per (sequence, kv head) in the tail buffers
  // Optional, for profiling, in builds with -DTURBOKV_CUDA_TIMELINE=ON
  // (timeline_available(); run() throws otherwise): where thread 0 of each
  // CTA of the split kernel writes the GPU's global timer (ns) as it passes
  // the points of TimelinePoint, device (n_seq, n_kv_head, n_split,
  // kTimelineSlots) with n_split = ceil(max_seq_len / split). A point a CTA
  // does not pass keeps what was there.
  uint64_t* timeline = nullptr;
};

// The points of a CTA that AttentionArgs::timeline records, in order.
enum TimelinePoint : int {
  kTimelineEntry = 0,    // the kernel's first instruction
  kTimelineSetup = 1,    // setup done (query, pair table, first tiles issued; one barrier)
  kTimelineRecords = 2,  // every warp done with its tiles of records
  kTimelineTail = 3,     // the tail attended (the CTA of a sequence's last split, with a tail)
  kTimelineState = 4,    // the CTA's partial state written (to the cluster's first CTA or the workspace)
  kTimelineOutput = 5,   // the output written (the cluster's first CTA, where a cluster merges)
  kTimelineSm = 6,       // not a time: the SM the CTA ran on
};
constexpr int kTimelineSlots = 8;
// Whether this build records timelines (-DTURBOKV_CUDA_TIMELINE=ON).
bool timeline_available();

// One call's partial states (AttentionArgs out, out_m, out_d).
struct PartialState {
  const float* m = nullptr;  // device (rows)
  const float* d = nullptr;  // device (rows)
  const float* o = nullptr;  // device (rows, head_dim), unnormalized
};

// Folds 1 to 8 calls' partial states of the same rows (query heads of the
// same sequences, attended over disjoint positions, with their outputs in
// one space) in order and normalizes into out, device (rows, head_dim): the
// exact merge of flash-decoding's splits. An output is linear in o, so a
// part in the rotated space can be rotated back (DeviceRotations::inverse)
// before the merge. Asynchronous on `stream`.
void merge_partials(const std::vector<PartialState>& parts, size_t rows, int head_dim, float* out,
                    void* stream = nullptr);

class DecodeAttention {
 public:
  DecodeAttention(const StreamFormat& keys, const StreamFormat& values, int head_dim, int n_kv_head, int group);
  ~DecodeAttention();
  // Asynchronous on args.stream; allocates nothing once a first call with
  // as many splits has run, so later calls can be captured in a CUDA graph.
  void run(const AttentionArgs& args);
  // The split run() plans for this batch (positions per CTA).
  int planned_split(int n_seq, int max_seq_len) const;
  // Bytes run() reads from the caches for these lengths (host lengths).
  size_t bytes_read(const std::vector<int>& seq_len) const;

 private:
  StreamFormat kf_, vf_;
  int head_dim_, n_kv_head_, group_;
  size_t k_row_, v_row_;
  int sm_count_ = 0;
  DeviceBuffer workspace_;  // partial states of the splits (for merge_kernel)
  DeviceBuffer centroids_;  // fp16 codebooks of the key and value streams (256 entries each)
  struct Params;
  std::unique_ptr<Params> params_;
};

}  // namespace turbokv::cuda
