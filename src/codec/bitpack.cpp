#include "codec/bitpack.h"

#include <cstring>

#include "util/error.h"

namespace turbokv::codec {
namespace {

// 64-bit accumulator: push b bits per value, flush whole bytes. B is a
// compile-time constant so the shifts and masks fold (STYLE rule 5).
template <int B>
void pack_impl(const uint8_t* values, size_t n, uint8_t* out) {
  uint64_t acc = 0;
  int filled = 0;
  uint32_t seen = 0;
  size_t o = 0;
  size_t i = 0;
  // 8 values of B bits are exactly B bytes.
  for (; i + 8 <= n; i += 8) {
    uint64_t word = 0;
    for (int k = 0; k < 8; ++k) {
      seen |= values[i + k];
      word |= uint64_t(values[i + k]) << (k * B);
    }
    for (int k = 0; k < B; ++k) out[o++] = uint8_t(word >> (8 * k));
  }
  for (; i < n; ++i) {
    seen |= values[i];
    acc |= uint64_t(values[i]) << filled;
    filled += B;
    while (filled >= 8) { out[o++] = uint8_t(acc); acc >>= 8; filled -= 8; }
  }
  if (filled > 0) out[o++] = uint8_t(acc);
  TKV_ASSERT((seen >> B) == 0, "pack_bits: a value does not fit in the bit width");
}

template <int B>
void unpack_impl(const uint8_t* in, size_t n, uint8_t* values) {
  constexpr uint64_t mask = (uint64_t(1) << B) - 1;
  size_t i = 0;
  const uint8_t* p = in;
  for (; i + 8 <= n; i += 8) {
    uint64_t word = 0;
    for (int k = 0; k < B; ++k) word |= uint64_t(p[k]) << (8 * k);
    p += B;
    for (int k = 0; k < 8; ++k) values[i + k] = uint8_t((word >> (k * B)) & mask);
  }
  uint64_t acc = 0;
  int filled = 0;
  for (; i < n; ++i) {
    while (filled < B) { acc |= uint64_t(*p++) << filled; filled += 8; }
    values[i] = uint8_t(acc & mask);
    acc >>= B;
    filled -= B;
  }
}

}  // namespace

void pack_bits(const uint8_t* values, size_t n, int bits, uint8_t* out) {
  if (n == 0) return;
  switch (bits) {
    case 1: return pack_impl<1>(values, n, out);
    case 2: return pack_impl<2>(values, n, out);
    case 3: return pack_impl<3>(values, n, out);
    case 4: return pack_impl<4>(values, n, out);
    case 5: return pack_impl<5>(values, n, out);
    case 6: return pack_impl<6>(values, n, out);
    case 7: return pack_impl<7>(values, n, out);
    case 8: std::memcpy(out, values, n); return;
    default: TKV_ASSERT(bits == 0, "pack_bits: bits must be 0..8");  // 0 bits: nothing stored
  }
}

void unpack_bits(const uint8_t* in, size_t n, int bits, uint8_t* values) {
  if (n == 0) return;
  switch (bits) {
    case 0: std::memset(values, 0, n); return;
    case 1: return unpack_impl<1>(in, n, values);
    case 2: return unpack_impl<2>(in, n, values);
    case 3: return unpack_impl<3>(in, n, values);
    case 4: return unpack_impl<4>(in, n, values);
    case 5: return unpack_impl<5>(in, n, values);
    case 6: return unpack_impl<6>(in, n, values);
    case 7: return unpack_impl<7>(in, n, values);
    case 8: std::memcpy(values, in, n); return;
    default: TKV_ASSERT(false, "unpack_bits: bits must be 0..8");
  }
}

void pack_bits_reference(const uint8_t* values, size_t n, int bits, uint8_t* out) {
  TKV_ASSERT(bits >= 0 && bits <= 8, "pack_bits_reference: bits must be 0..8");
  if (n == 0) return;
  std::memset(out, 0, packed_bytes(n, bits));
  for (size_t i = 0; i < n; ++i) {
    TKV_ASSERT((uint32_t(values[i]) >> bits) == 0, "pack_bits_reference: value too wide");
    for (int k = 0; k < bits; ++k) {
      const size_t j = i * size_t(bits) + size_t(k);
      if ((values[i] >> k) & 1u) out[j / 8] = uint8_t(out[j / 8] | (1u << (j % 8)));
    }
  }
}

void unpack_bits_reference(const uint8_t* in, size_t n, int bits, uint8_t* values) {
  TKV_ASSERT(bits >= 0 && bits <= 8, "unpack_bits_reference: bits must be 0..8");
  for (size_t i = 0; i < n; ++i) {
    uint32_t v = 0;
    for (int k = 0; k < bits; ++k) {
      const size_t j = i * size_t(bits) + size_t(k);
      v |= uint32_t((in[j / 8] >> (j % 8)) & 1u) << k;
    }
    values[i] = uint8_t(v);
  }
}

}  // namespace turbokv::codec
