// Counter-based edge sampling shared bit for bit by every backend (spec:
// tgrep/kernels/reference/rng.py): edge e is present in row r of a search with seed s iff
//   (mix32(e ^ mix32(r ^ mix32(s ^ kGolden))) >> 8) < ceil(p_e * 2^24),
// which equals the reference's u < p_e with u = (h >> 8) * 2^-24.
#pragma once
#include <cstdint>

namespace tgrep {

constexpr uint32_t kGolden = 0x9E3779B9u;

// lowbias32 (C. Wellons), all arithmetic modulo 2^32.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The per-call part of the key: mix32(seed ^ kGolden).
inline uint32_t seed_key(int64_t seed) { return mix32(static_cast<uint32_t>(seed & 0xFFFFFFFFll) ^ kGolden); }

}  // namespace tgrep
