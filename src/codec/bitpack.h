// Bit packing of small unsigned integers (1..8 bits each), LSB-first.
//
// Element i occupies bits [i*b, (i+1)*b) of the stream; stream bit j is bit
// (j % 8) of byte j / 8. So for b = 4, element 0 is the low nibble of byte 0;
// for b = 3, element 2 straddles bytes 0 and 1 (bits 6..7 of byte 0 hold its
// low two bits). Unused high bits of the last byte are written as zero.
// Any length n is allowed; the packed size is packed_bytes(n, b) (format.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "codec/format.h"

namespace turbokv::codec {

// values: (n), each < 2^bits.   out: (packed_bytes(n, bits)).
void pack_bits(const uint8_t* values, size_t n, int bits, uint8_t* out);
// in: (packed_bytes(n, bits)).   values: (n).
void unpack_bits(const uint8_t* in, size_t n, int bits, uint8_t* values);

// Scalar references, one bit at a time: the oracle for the functions above.
void pack_bits_reference(const uint8_t* values, size_t n, int bits, uint8_t* out);
void unpack_bits_reference(const uint8_t* in, size_t n, int bits, uint8_t* values);

}  // namespace turbokv::codec
