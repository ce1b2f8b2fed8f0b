#include <gtest/gtest.h>

#include <vector>

#include "codec/bitpack.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

TEST(BitPack, LsbFirstLayout) {
  // b = 3: values 1, 2, 7 -> stream bits 001 010 111 (LSB first) ->
  // byte 0 = 0b11010001 (bits 0-7), byte 1 = 0b0000000 1.
  const uint8_t v[3] = {1, 2, 7};
  uint8_t out[2] = {0xff, 0xff};
  pack_bits(v, 3, 3, out);
  EXPECT_EQ(out[0], 0b11010001);
  EXPECT_EQ(out[1], 0b00000001);
  const uint8_t n4[3] = {0xa, 0x5, 0xc};
  uint8_t o4[2];
  pack_bits(n4, 3, 4, o4);
  EXPECT_EQ(o4[0], 0x5a);
  EXPECT_EQ(o4[1], 0x0c);  // unused high nibble is zero
}

// Fast pack/unpack equal the bit-by-bit references, and round-trip, for every
// width and lengths that are not multiples of 8.
TEST(BitPack, RoundTripMatchesReferenceAllWidthsOddLengths) {
  Rng rng(42);
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n : {size_t(0), size_t(1), size_t(3), size_t(7), size_t(8), size_t(9), size_t(15),
                     size_t(17), size_t(63), size_t(80), size_t(127), size_t(128), size_t(257)}) {
      std::vector<uint8_t> v(n);
      for (auto& x : v) x = uint8_t(rng.next_u64() & ((1u << bits) - 1));
      const size_t nb = packed_bytes(n, bits);
      std::vector<uint8_t> fast(nb + 1, 0xee), ref(nb + 1, 0xee);
      pack_bits(v.data(), n, bits, fast.data());
      pack_bits_reference(v.data(), n, bits, ref.data());
      EXPECT_EQ(fast, ref) << "bits " << bits << " n " << n;
      EXPECT_EQ(fast[nb], 0xee) << "wrote past packed_bytes";
      std::vector<uint8_t> back(n, 0xff), back_ref(n, 0xff);
      unpack_bits(fast.data(), n, bits, back.data());
      unpack_bits_reference(fast.data(), n, bits, back_ref.data());
      EXPECT_EQ(back, v) << "bits " << bits << " n " << n;
      EXPECT_EQ(back_ref, v) << "bits " << bits << " n " << n;
    }
  }
}

TEST(BitPack, ZeroBitsStoresNothing) {
  const uint8_t v[5] = {0, 0, 0, 0, 0};
  uint8_t back[5] = {9, 9, 9, 9, 9};
  EXPECT_EQ(packed_bytes(5, 0), 0u);
  pack_bits(v, 5, 0, nullptr);
  unpack_bits(nullptr, 5, 0, back);
  for (uint8_t b : back) EXPECT_EQ(b, 0);
}

}  // namespace
}  // namespace turbokv::codec
