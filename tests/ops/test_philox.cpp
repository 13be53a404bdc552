// Philox4x32-10 (src/ref/philox.h) against the known-answer vectors of the Random123 distribution
// (kat_vectors), and the 64x64 -> high-64 product used to map draws onto [0, total).
#include <gtest/gtest.h>

#include <cstdint>

#include "ref/philox.h"

namespace fq {
namespace {

TEST(Philox, MatchesKnownAnswerVectors) {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const ref::Philox4 r =
        ref::philox4x32_10(ref::Philox4{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(r.v[i], k.out[i]) << "word " << i << " for counter 0x" << std::hex << k.ctr[0] << " key 0x"
                                  << k.key[0];
  }
}

TEST(Philox, MulHi64) {
  EXPECT_EQ(ref::mulhi64(0, 12345), 0u);
  EXPECT_EQ(ref::mulhi64(~0ull, 1000), 999u);
  EXPECT_EQ(ref::mulhi64(1ull << 63, 1000), 500u);
  EXPECT_EQ(ref::mulhi64(0xFFFFFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull), 0xFFFFFFFFFFFFFFFEull);
  EXPECT_EQ(ref::mulhi64(0x123456789ABCDEF0ull, 0x0FEDCBA987654321ull), 0x121FA00AD77D742ull);
}

}  // namespace
}  // namespace fq
