// KV cache scheme names and what they mean.
//
//   fp16 | f32                      dense caches (dense_cache.h)
//   affine4 | affine8               MLX-style per-group scale + bias, keys and values
//   turbo<K>v<V>                    K, V in {0, 2, 3, 4, 8}; 0 = FP16 (turbo0v4: FP16
//                                   keys, 4-bit values)
//   turbo<B>                        turbo<B>v<B>
// What turbo<K>v<V> and turbo<B> store (chosen by the ablation in
// docs/RESULTS.md):
//   keys     group B-bit, groups of 128, scale search, least-squares scale;
//            mean-centred, query-calibrated (options below)
//   values   group B-bit, groups of 128 when keys are compressed (so that
//            turbo4 stays within 4.25 bits), groups of 16 under FP16 keys
//            (turbo0v<B>, the seed's design); scale search, matched norm
//   window   precision by age: the newest kTurboWindow tokens stay FP16 and
//            the kTurboNear before them are held at one more bit (turbo8:
//            the newest kTurboWindowAlone FP16, no near tier). Attention
//            puts much of its weight on the last few dozen tokens, so their
//            errors dominate the loss: at 512 tokens, for the bits a 4-token
//            FP16 window costs (0.1 bits/element; 0.006 at 8K), this halves
//            turbo3's and turbo4's KLD again (docs/RESULTS.md §3)
//   A head size the group does not divide gets one scale per vector.
//   <kspec>/<vspec>                 any two element specs: fp16, f32, affine4, affine8,
//                                   turbo<B>, mse<B>, group<B>[g<G>], prod<B>
//   ...:<opt>[:<opt>...]            options (ablations and modes):
//       center=0|1    subtract the per-(layer, kv-head) mean key before encoding
//       vcenter=0|1   the same for values
//       calib=none|key|query   per-channel key scales folded into the query:
//                     key   = 1/std of each key channel (whitening),
//                     query = (E[q_j^2] / Var[k_j])^(1/4), which minimises the
//                             expected squared error of q·k (see turbo_cache.h)
//       rot=auto|hadamard|block|dense   rotation kind
//       seed=N        rotation / QJL seed
//       kscale=, vscale=auto|norm|matched|ls|unbiased   how the key / value
//                     encoder picks each stored norm or scale (codec ScaleRule)
//       ksearch=, vsearch=0|1   least-squares search over grid placements
//       window=N      keep the newest N tokens as FP16 and encode each token
//                     once it is N tokens old (a residual window, as in KIVI)
//       near=N        the N tokens after the FP16 window are held at nearbits
//                     (the same codec, more bits) and re-encoded at the
//                     stream's bits once older: precision by age, since
//                     attention weight falls with distance
//       nearbits=B    bits of that tier, at least the streams' (default: one
//                     more than each stream's, at most 8)
//       codebook=beta|gaussian   mse and prod streams: the Lloyd–Max codebook of
//                     the exact coordinate density of a rotated unit vector
//                     (Beta-like, the default) or of N(0, 1/d)
//       outliers=N   keys: the N channels of each (layer, kv head) that carry the
//                     most of the encoded key's energy (s_j^2 Var[k_j], estimated
//                     with the calibration) are rotated and stored apart at one
//                     more bit (a split record, codec/format.h): fractional
//                     rates, e.g. turbo3 + 32 of 128 channels = 3.25 + 0.25 bits
//       voutliers=N   the same for values (by Var[v_j])
//       fp16layers=L[+L...]   keep these layers' keys and values FP16 (indices and
//                     ranges, e.g. 0+4 or 0-1+7): per-layer precision
//       strict        compress from the first token (prefill included), as
//                     llama.cpp's quantized caches do; default is two-phase
//       math=half|f32 the attention kernels' arithmetic: half (default) takes
//                     narrower products where the CPU has them: int8 query
//                     and codebook in the key dots (AVX-512 VNNI and VBMI,
//                     kv/turbo_attention_int8.h), fp16 products
//                     (AVX512-FP16, kv/turbo_attention_half.h); f32 keeps
//                     every product and sum in fp32; the stored records are
//                     the same
//
// A scheme names how keys and values are stored; the cache owns rotations,
// codebooks and calibration (STYLE.md rule 3).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"

namespace turbokv::kv {

enum class StreamKind : uint8_t { F32 = 0, Fp16 = 1, Codec = 2 };

// The FP16 window and the near tier of the named turbo schemes (`window=N`
// and `near=N` override them): 2 FP16 tokens and 26 at one more bit cost
// what 4 FP16 tokens cost at 3 bits. turbo8, whose streams have no more
// bits to give, keeps the 4-token FP16 window alone.
inline constexpr int kTurboWindow = 2;
inline constexpr int kTurboNear = 26;
inline constexpr int kTurboWindowAlone = 4;

// How one of the two streams (keys or values) is stored.
struct StreamSpec {
  StreamKind kind = StreamKind::Fp16;
  codec::CodecSpec codec{};  // when kind == Codec (for turbo<B>, before resolve_codec)
  std::string name;          // the element spec as written: "fp16", "turbo4", "group4g32"...
  // turbo<B> streams: the preferred group size. The codec is resolved per
  // head size (resolve_codec): `group` with this group where it divides the
  // head size, else one scale per vector (`mse` with the same encoder rules).
  int turbo_group = 0;
  // Channels per (layer, kv head) stored apart at one more bit (scheme
  // options outliers= / voutliers=; codec streams of kind mse or group).
  int outliers = 0;
  bool operator==(const StreamSpec& o) const {
    return kind == o.kind && (kind != StreamKind::Codec || (codec == o.codec && outliers == o.outliers));
  }
};

enum class Calibration : uint8_t { None = 0, Key = 1, Query = 2 };
const char* calibration_name(Calibration c);

struct SchemeSpec {
  std::string name;  // canonical name, options included
  StreamSpec key, value;
  bool center_keys = true;
  bool center_values = false;
  Calibration calibration = Calibration::Query;
  codec::RotationKind rotation = codec::RotationKind::Auto;
  uint64_t seed = 0x74757262'6f6b7631ull;  // "turbokv1"
  bool strict = false;
  bool f32_math = false;  // math=f32: fp32 attention kernels on every CPU
  int window = 0;  // the newest `window` tokens stay FP16 (encoded once older)
  int near = 0;       // the `near` tokens after the window: codec records at near_bits
  int near_bits = 0;  // 0: one more than each codec stream's bits, at most 8
  std::vector<int> fp16_layers;  // sorted, unique: layers never encoded

  bool is_dense() const {  // served by DenseKvCache
    return key.kind != StreamKind::Codec && value.kind != StreamKind::Codec && key == value;
  }
  // Stored bits per element of one stream at this head size (records and
  // dense elements only; per-head calibration state is counted by the cache).
  static double stream_bits(const StreamSpec& s, int head_dim);
  // The codec a codec stream uses at this head size.
  static codec::CodecSpec resolve_codec(const StreamSpec& s, int head_dim);
  // A codec stream's near tier: the same stream at near_bits (an 8-bit
  // stream's near tier is the stream itself).
  StreamSpec near_stream(const StreamSpec& s) const;
  // Bits per element of a cache holding n_tokens (>= 1) after its first
  // decode step, everything counted: records, the near tier, the raw window, and the
  // calibration state of each (layer, kv head) (key mean 16 bits and key
  // scale 8 bits a channel, value mean 16 bits, one bit a channel marking
  // the outlier channels of a split stream). fp16layers are not counted
  // (they depend on the model's layer count).
  double bits_at(int head_dim, int n_tokens) const;
};

// Parses a scheme name; throws Error naming the bad part and listing the
// valid forms.
SchemeSpec parse_scheme(std::string_view name);
// The scheme name of separate key and value element specs (--kv-k/--kv-v):
// "<k>/<v>", with fp16 for a side left empty (llama.cpp's -ctk/-ctv default).
std::string scheme_name(std::string_view key_spec, std::string_view value_spec);
// Builds a scheme from separate key and value element specs.
SchemeSpec parse_scheme(std::string_view key_spec, std::string_view value_spec);

// The valid forms, for help texts and errors.
std::string scheme_forms();

// The named schemes `turbokv schemes` lists and the evaluator runs by default.
std::vector<std::string> listed_schemes();

}  // namespace turbokv::kv
