// Philox4x64-10 (see rng.h).
#include "sample/rng.h"

namespace hwaga {

namespace {

constexpr uint64_t kM0 = 0xD2E7470EE14C6C93ull;  // round multipliers
constexpr uint64_t kM1 = 0xCA5A826395121157ull;
constexpr uint64_t kW0 = 0x9E3779B97F4A7C15ull;  // key schedule (Weyl) increments
constexpr uint64_t kW1 = 0xBB67AE8584CAA73Bull;

inline void mulhilo(uint64_t a, uint64_t b, uint64_t& hi, uint64_t& lo) {
  unsigned __int128 p = (unsigned __int128)a * b;
  hi = uint64_t(p >> 64);
  lo = uint64_t(p);
}

}  // namespace

std::array<uint64_t, 4> philox4x64_10(std::array<uint64_t, 4> c, std::array<uint64_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k[0] += kW0;
      k[1] += kW1;
    }
    uint64_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c[0], hi0, lo0);
    mulhilo(kM1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

uint64_t Rng::next_u64() {
  const uint64_t block = pos_ / 4;
  if (block != cached_block_) {
    buf_ = philox4x64_10({block, 0, 0, 0}, key_);
    cached_block_ = block;
  }
  return buf_[pos_++ % 4];
}

double Rng::next_double() { return double(next_u64() >> 11) * 0x1.0p-53; }

float Rng::next_float() { return float(next_u64() >> 40) * 0x1.0p-24f; }

}  // namespace hwaga
