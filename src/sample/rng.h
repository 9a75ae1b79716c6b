// Random numbers for sampling: Philox4x64-10, a counter-based generator (Salmon, Moraes, Dror,
// Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the same function as NumPy's
// `numpy.random.Philox` bit generator, which the unit test checks against).
//
// A counter-based generator is a pure function block = Philox(counter, key): there is no hidden
// state to share between threads. hwaga derives one independent stream per candidate:
//
//     key     = {seed, candidate}            (128 bits)
//     counter = {block index, 0, 0, 0}       (256 bits; the index counts 4-word blocks)
//
// so the numbers candidate i sees depend only on (seed, i) and on how many it has drawn, never on
// the batch size, the batch a candidate lands in, or the number of threads.
#pragma once
#include <array>
#include <cstdint>

namespace hwaga {

// One Philox4x64-10 block: 10 rounds, key bumped by the Weyl constants between rounds.
std::array<uint64_t, 4> philox4x64_10(std::array<uint64_t, 4> counter, std::array<uint64_t, 2> key);

class Rng {
 public:
  // The stream of candidate `stream` under `seed`, positioned at its first number.
  Rng(uint64_t seed, uint64_t stream) : key_{seed, stream} {}

  // Next 64 random bits: words 0..3 of block 0, then of block 1, ...
  uint64_t next_u64();
  // Uniform double in [0, 1) with 53 random bits: (next_u64() >> 11) * 2^-53.
  double next_double();
  // Uniform float in [0, 1) with 24 random bits: (next_u64() >> 40) * 2^-24.
  float next_float();

  // Number of 64-bit words drawn so far; seek(n) makes the next draw word n of the stream.
  uint64_t position() const { return pos_; }
  void seek(uint64_t word) { pos_ = word; }

  uint64_t seed() const { return key_[0]; }
  uint64_t stream() const { return key_[1]; }

 private:
  std::array<uint64_t, 2> key_;
  uint64_t pos_ = 0;                   // index of the next word in the stream
  uint64_t cached_block_ = ~uint64_t(0);  // block held in buf_ (none at first)
  std::array<uint64_t, 4> buf_{};
};

}  // namespace hwaga
