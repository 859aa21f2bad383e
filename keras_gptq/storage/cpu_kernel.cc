// keras_gptq's CPU matmul for packed 2-, 4- and 8-bit levels: an XLA FFI
// handler, compiled on first use by keras_gptq/storage/cpu_kernel.py.
//
// y[B, N] = x[B, K][:, perm] @ W.T with W[o, i] = (q[o, i] - z[o, g]) s[o, g]
// (perm: an act-order layer's stored column order, or empty: in order),
// computed without a float copy of W as
//   y[b, o] = sum_g s[o, g] * (sum_{i in g} x[b, i] q[o, i]
//                              - z[o, g] * sum_{i in g} x[b, i]).
// Levels: uint8 [N, W], 8 / BITS levels a byte, low bits first (column
// 8/BITS * j + p of a row sits in byte j, bits [BITS p, BITS (p + 1))),
// rows padded with zero levels. Groups are contiguous, `group_bytes` bytes
// each (the last may be shorter); scales f32 [N, ng], zeros uint8 [N, ng].
//
// Three paths, chosen per call:
// - lookup (2 and 4 bits, groups of whole 64-byte chunks or one a row,
//   fewer than kBlockedFrom rows: decode): see `Lookup` below; one vpermps
//   against the group's 16 dequantized values turns 16 levels into weights.
// - blocked (from kBlockedFrom rows, groups of whole 32-bit words: prefill):
//   blocks of 32 weight rows are dequantized into a float buffer and
//   multiplied by all rows as outer products (see `blocked_rows`).
// - byte planes (everything else, and CPUs without AVX-512BW): x is split
//   once per call into 8 / BITS planes, plane p holding the columns that
//   sit at bit offset BITS p, so one 16-byte load of a row meets 16
//   consecutive floats of each plane. Several output rows share each load
//   of x; per-group partial sums stay in vector registers.
// Threads: the rows are cut into chunks claimed from an atomic counter by
// the calling thread and by tasks on XLA's intra-op pool; the caller
// waits (condition variable, no spinning) only for chunks already running.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef uint8_t vb __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;

struct Problem {
  const float* planes;  // [B][P][stride]
  const float* xsum;    // [B][ng]
  const uint8_t* q;     // [N][W]
  const float* s;       // [N][ng]
  const uint8_t* z;     // [N][ng]
  float* y;             // [B][N]
  int64_t B, N, W, ng, group_bytes, stride;
};

inline float hsum(vf v) {
  float t = 0.f;
  for (int i = 0; i < kLanes; ++i) t += v[i];
  return t;
}

// Rows [n0, n0 + R) for batch rows [b0, b0 + BB).
template <int BITS, int R, int BB>
void tile(const Problem& p, int64_t n0, int64_t b0) {
  constexpr int P = 8 / BITS;
  constexpr uint8_t kMask = (uint8_t)((1u << BITS) - 1u);
  const int64_t plane_block = P * p.stride;
  vf lanes[BB][R];
  float scalar[BB][R];
  for (int b = 0; b < BB; ++b)
    for (int r = 0; r < R; ++r) { lanes[b][r] = vf{}; scalar[b][r] = 0.f; }
  for (int64_t g = 0; g < p.ng; ++g) {
    const int64_t j0 = g * p.group_bytes;
    const int64_t j1 = std::min(p.W, j0 + p.group_bytes);
    vf acc[BB][R];
    float tail[BB][R];
    for (int b = 0; b < BB; ++b)
      for (int r = 0; r < R; ++r) { acc[b][r] = vf{}; tail[b][r] = 0.f; }
    int64_t j = j0;
    for (; j + kLanes <= j1; j += kLanes) {
      vf w[R][P];
      for (int r = 0; r < R; ++r) {
        vb raw;
        std::memcpy(&raw, p.q + (n0 + r) * p.W + j, sizeof(raw));
        for (int k = 0; k < P; ++k) {
          vb level = BITS == 8 ? raw : (vb)((raw >> (uint8_t)(BITS * k)) & kMask);
          w[r][k] = __builtin_convertvector(__builtin_convertvector(level, vi), vf);
        }
      }
      for (int b = 0; b < BB; ++b) {
        const float* x = p.planes + (b0 + b) * plane_block + j;
        for (int k = 0; k < P; ++k) {
          vf xv;
          std::memcpy(&xv, x + k * p.stride, sizeof(xv));
          for (int r = 0; r < R; ++r) acc[b][r] += xv * w[r][k];
        }
      }
    }
    for (; j < j1; ++j)
      for (int r = 0; r < R; ++r) {
        const unsigned raw = p.q[(n0 + r) * p.W + j];
        for (int b = 0; b < BB; ++b) {
          const float* x = p.planes + (b0 + b) * plane_block + j;
          for (int k = 0; k < P; ++k)
            tail[b][r] += x[k * p.stride] *
                          (float)((raw >> (BITS * k)) & kMask);
        }
      }
    for (int r = 0; r < R; ++r) {
      const float s = p.s[(n0 + r) * p.ng + g];
      const float z = (float)p.z[(n0 + r) * p.ng + g];
      for (int b = 0; b < BB; ++b) {
        lanes[b][r] += s * acc[b][r];
        scalar[b][r] += s * (tail[b][r] - z * p.xsum[(b0 + b) * p.ng + g]);
      }
    }
  }
  for (int b = 0; b < BB; ++b)
    for (int r = 0; r < R; ++r)
      p.y[(b0 + b) * p.N + n0 + r] = scalar[b][r] + hsum(lanes[b][r]);
}

constexpr int kRows = 4;   // output rows per tile
constexpr int kBatch = 4;  // batch rows per tile (batch > 1)

template <int BITS>
void rows(const Problem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    int64_t b = 0;
    for (; b + kBatch <= p.B; b += kBatch) tile<BITS, kRows, kBatch>(p, n, b);
    for (; b < p.B; ++b) tile<BITS, kRows, 1>(p, n, b);
  }
  for (; n < n1; ++n) {
    int64_t b = 0;
    for (; b + kBatch <= p.B; b += kBatch) tile<BITS, 1, kBatch>(p, n, b);
    for (; b < p.B; ++b) tile<BITS, 1, 1>(p, n, b);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

// The lookup path (2 and 4 bits, groups a multiple of 64 bytes or one a
// row). x is split into 32 / BITS dword planes: plane n holds the columns
// at bit offset BITS n of each 32-bit word, so the levels of plane n are
// the low bits of (word >> BITS n), and one vpermps against a 16-float
// table of the group's dequantized values, (t mod 2^BITS - z) s, turns 16
// of them into weights: no conversion, no zero-point or scale pass.
constexpr bool kLookup = true;

struct Lookup {
  const float* x;       // [B][K]
  const int32_t* cols;  // [K]: stored column k is x's column cols[k]
  const float* planes;  // [B][P][stride] (the lookup path)
  const uint8_t* q;
  const float* s;
  const uint8_t* z;
  float* y;
  int64_t B, K, N, W, ng, group_bytes, stride;
};

template <int BITS>
inline __m512 table(float s, float z) {
  const __m512i t = _mm512_and_si512(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32((1 << BITS) - 1));
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(z)),
                       _mm512_set1_ps(s));
}

// 64 bytes of a row from byte j (zeros past the row's end).
inline __m512i chunk(const uint8_t* row, int64_t j, int64_t W) {
  if (j + 64 <= W) return _mm512_loadu_si512(row + j);
  return _mm512_maskz_loadu_epi8(_cvtu64_mask64(~0ull >> (64 - (W - j))),
                                 row + j);
}

// Rows [n0, n0 + R) for batch rows [b0, b0 + BB), straight from the levels.
// At batch 1, even and odd planes keep separate sums (8 FMA chains).
template <int BITS, int R, int BB>
void lookup_tile(const Lookup& p, int64_t n0, int64_t b0) {
  constexpr int P = 32 / BITS, E = BB == 1 ? 2 : 1;
  __m512 acc[E][BB][R];
  for (int e = 0; e < E; ++e)
    for (int b = 0; b < BB; ++b)
      for (int r = 0; r < R; ++r) acc[e][b][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.ng; ++g) {
    const int64_t j1 = std::min(p.W, (g + 1) * p.group_bytes);
    __m512 t[R];
    for (int r = 0; r < R; ++r)
      t[r] = table<BITS>(p.s[(n0 + r) * p.ng + g], p.z[(n0 + r) * p.ng + g]);
    for (int64_t j = g * p.group_bytes; j < j1; j += 64) {
      __m512i v[R];
      for (int r = 0; r < R; ++r) v[r] = chunk(p.q + (n0 + r) * p.W, j, p.W);
      const float* x = p.planes + b0 * P * p.stride + j / 4;
      for (int n = 0; n < P; ++n) {
        __m512 w[R];
        for (int r = 0; r < R; ++r)
          w[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(v[r], BITS * n), t[r]);
        for (int b = 0; b < BB; ++b) {
          const __m512 xv = _mm512_loadu_ps(x + (b * P + n) * p.stride);
          for (int r = 0; r < R; ++r)
            acc[n % E][b][r] = _mm512_fmadd_ps(xv, w[r], acc[n % E][b][r]);
        }
      }
    }
  }
  for (int b = 0; b < BB; ++b)
    for (int r = 0; r < R; ++r)
      p.y[(b0 + b) * p.N + n0 + r] = _mm512_reduce_add_ps(
          E == 1 ? acc[0][b][r] : _mm512_add_ps(acc[0][b][r], acc[E - 1][b][r]));
}

// The blocked path (any row count from kBlockedFrom, any bits, groups of
// whole 32-bit words): blocks of kBlock weight rows are dequantized into a
// float buffer wt[k][kBlock] (in L2) and multiplied by all batch rows of x
// (as given, no planes), kBatchTile at a time, as outer products: per k,
// two vectors of 16 weights times kBatchTile broadcast inputs.
constexpr int kBlock = 32;
constexpr int kBatchTile = 12;

// 32-bit word `word` of rows [r0, r0 + 16) (lanes past `valid` are zero).
inline __m512i gather_words(const Lookup& p, int64_t r0, int valid,
                            int64_t word) {
  const __mmask16 live = (__mmask16)((1u << valid) - 1u);
  if (4 * word + 4 <= p.W) {
    const __m512i offsets = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)p.W));
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, offsets,
                                       p.q + r0 * p.W + 4 * word, 1);
  }
  uint32_t words[16] = {};  // a row's last, partial word
  for (int l = 0; l < valid; ++l)
    std::memcpy(&words[l], p.q + (r0 + l) * p.W + 4 * word, p.W - 4 * word);
  return _mm512_loadu_si512(words);
}

// Rows [m, m + 16) (those below n1) into wt[k][kBlock], lanes [16 h, 16 h + 16).
template <int BITS>
void dequantize_half(const Lookup& p, int64_t m, int64_t n1, int h,
                     float* wt) {
  constexpr int P = 32 / BITS;
  const int valid = (int)std::max<int64_t>(0, std::min<int64_t>(16, n1 - m));
  const int64_t words = (p.W + 3) / 4, group_words = p.group_bytes / 4;
  const __m512i mask = _mm512_set1_epi32((1 << BITS) - 1);
  for (int64_t g = 0; g < p.ng; ++g) {
    float sg[16] = {}, zg[16] = {};
    for (int l = 0; l < valid; ++l) {
      sg[l] = p.s[(m + l) * p.ng + g];
      zg[l] = p.z[(m + l) * p.ng + g];
    }
    const __m512 s = _mm512_loadu_ps(sg);
    const __m512 zs = _mm512_mul_ps(_mm512_loadu_ps(zg), s);
    const int64_t w1 = g == p.ng - 1 ? words : (g + 1) * group_words;
    for (int64_t word = g * group_words; word < w1; ++word) {
      const __m512i v = gather_words(p, m, valid, word);
      for (int n = 0; n < P; ++n) {
        const __m512 level = _mm512_cvtepi32_ps(
            _mm512_and_si512(_mm512_srli_epi32(v, BITS * n), mask));
        _mm512_storeu_ps(wt + (word * P + n) * kBlock + 16 * h,
                         _mm512_fmsub_ps(level, s, zs));
      }
    }
  }
}

// y[b0 .. b0 + BB, n0 .. n0 + 32) (columns below n1) from wt.
template <int BB>
void outer_tile(const Lookup& p, const float* wt, int64_t n0, int64_t n1,
                int64_t b0) {
  const int64_t length = p.K;
  __m512 acc[BB][2];
  for (int b = 0; b < BB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
  const float* x = p.x + b0 * length;
  for (int64_t k = 0; k < length; ++k) {
    const __m512 w0 = _mm512_loadu_ps(wt + k * kBlock);
    const __m512 w1 = _mm512_loadu_ps(wt + k * kBlock + 16);
    const float* xk = x + p.cols[k];
    for (int b = 0; b < BB; ++b) {
      const __m512 xb = _mm512_set1_ps(xk[b * length]);
      acc[b][0] = _mm512_fmadd_ps(xb, w0, acc[b][0]);
      acc[b][1] = _mm512_fmadd_ps(xb, w1, acc[b][1]);
    }
  }
  const int64_t live = std::min<int64_t>(kBlock, n1 - n0);
  const __mmask16 m0 = (__mmask16)(live >= 16 ? 0xffffu : (1u << live) - 1u);
  const __mmask16 m1 =
      (__mmask16)(live >= 32 ? 0xffffu : live <= 16 ? 0u
                                                    : (1u << (live - 16)) - 1u);
  for (int b = 0; b < BB; ++b) {
    float* y = p.y + (b0 + b) * p.N + n0;
    _mm512_mask_storeu_ps(y, m0, acc[b][0]);
    _mm512_mask_storeu_ps(y + 16, m1, acc[b][1]);
  }
}

// The tiles of batch rows [b0, b0 + BB) against `blocks` dequantized
// blocks (`size` floats apart) from row m: the inputs stay in L1.
template <int BB>
void panel(const Lookup& p, const float* wt, int64_t size, int64_t blocks,
           int64_t m, int64_t n1, int64_t b0) {
  for (int64_t k = 0; k < blocks; ++k)
    outer_tile<BB>(p, wt + k * size, m + k * kBlock, n1, b0);
}

// From kPanelFrom batch rows, kPanel blocks (kPanel * kBlock rows, in L2)
// are dequantized at a time, so each tile of kBatchTile inputs meets all of
// them before the next tile: long prefills read x kPanel times less often
// (faster at 1024 rows and more, slower at 65: benchmarks/RESULTS.md).
constexpr int kPanel = 4;
constexpr int64_t kPanelFrom = 512;

template <int BITS>
void blocked_rows(const Lookup& p, int64_t n0, int64_t n1) {
  const int64_t size = (p.W + 3) / 4 * (32 / BITS) * kBlock;
  const int64_t most = p.B >= kPanelFrom ? kPanel : 1;
  std::vector<float> wt(most * size);
  for (int64_t m = n0; m < n1; m += most * kBlock) {
    const int64_t blocks =
        std::min<int64_t>(most, (n1 - m + kBlock - 1) / kBlock);
    for (int64_t k = 0; k < blocks; ++k)
      for (int h = 0; h < 2; ++h)
        dequantize_half<BITS>(p, m + k * kBlock + 16 * h, n1, h,
                              wt.data() + k * size);
    int64_t b = 0;
    for (; b + kBatchTile <= p.B; b += kBatchTile)
      panel<kBatchTile>(p, wt.data(), size, blocks, m, n1, b);
    for (; b + 4 <= p.B; b += 4) panel<4>(p, wt.data(), size, blocks, m, n1, b);
    for (; b < p.B; ++b) panel<1>(p, wt.data(), size, blocks, m, n1, b);
  }
}

constexpr int kLookupRows = 4;  // output rows per lookup tile
constexpr int kLookupBatch = 4;

template <int BITS>
void lookup_rows(const Lookup& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kLookupRows <= n1; n += kLookupRows) {
    int64_t b = 0;
    for (; b + kLookupBatch <= p.B; b += kLookupBatch)
      lookup_tile<BITS, kLookupRows, kLookupBatch>(p, n, b);
    for (; b + 2 <= p.B; b += 2) lookup_tile<BITS, kLookupRows, 2>(p, n, b);
    for (; b < p.B; ++b) lookup_tile<BITS, kLookupRows, 1>(p, n, b);
  }
  for (; n < n1; ++n)
    for (int64_t b = 0; b < p.B; ++b) lookup_tile<BITS, 1, 1>(p, n, b);
}
#else
constexpr bool kLookup = false;
#endif

// Batch rows from which the lookup path dequantizes blocks of rows.
constexpr int64_t kBlockedFrom = 16;

// Runs run(n0, n1) over [0, N) in `chunks` pieces (multiples of `align`
// rows), claimed from an atomic counter by the caller and by tasks on
// XLA's intra-op pool; the caller waits (condition variable, no spinning)
// only for pieces already running.
template <typename Pool, typename Run>
void parallel_rows(Pool& pool, int64_t N, int64_t chunks,
                   int64_t align, Run run) {
  chunks = std::max<int64_t>(1, std::min(chunks, N / (8 * align)));
  if (chunks == 1) return run(0, N);
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int64_t done = 0, count = 0, size = 0;
  };
  auto shared = std::make_shared<Shared>();
  shared->size = (N / chunks + align - 1) / align * align;
  shared->count = (N + shared->size - 1) / shared->size;
  auto work = [shared, N, run] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < shared->count;) {
      run(c * shared->size, std::min(N, (c + 1) * shared->size));
      std::lock_guard<std::mutex> lock(shared->mu);
      if (++shared->done == shared->count) shared->cv.notify_all();
    }
  };
  for (int64_t t = 1; t < shared->count; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done == shared->count; });
}

// Whether the lookup path takes this layer: 2 or 4 bits, groups of whole
// 64-byte chunks (or one group a row).
inline bool lookup_applies(int bits, int64_t group_bytes, int64_t ng) {
  return kLookup && bits != 8 && (ng == 1 || group_bytes % 64 == 0);
}

// Whether the blocked path takes a call of B rows: groups of whole words.
inline bool blocked_applies(int64_t B, int64_t group_bytes, int64_t ng) {
  return kLookup && B >= kBlockedFrom && (ng == 1 || group_bytes % 4 == 0);
}

// The operands of one call: x [B, K], q [N, W], s and z [N, ng], y [B, N];
// perm [K] (or null): the stored column k of W is x's column perm[k]
// (act-order layers, sorted by group once at load).
struct Call {
  const float* x;
  const int32_t* perm;
  const uint8_t* q;
  const float* s;
  const uint8_t* z;
  float* y;
  int64_t B, K, N, W, ng, group_bytes;
};

// y = x @ W.T on `threads` pieces of rows shared with `pool`.
template <int BITS, typename Pool>
void compute(Pool& pool, const Call& c, int64_t threads) {
  // Columns a plane element stands for: bytes (byte planes) or 32-bit
  // words (dword planes: the lookup and blocked paths).
  const bool blocked = blocked_applies(c.B, c.group_bytes, c.ng);
  const bool lookup = blocked || lookup_applies(BITS, c.group_bytes, c.ng);
  const int64_t word = lookup ? 4 : 1, P = 8 * word / BITS;
  const int64_t stride =
      ((c.W + word - 1) / word + kLanes - 1) / kLanes * kLanes;
  const int64_t group_columns = c.group_bytes * (8 / BITS);
  std::vector<int32_t> cols(c.K);
  for (int64_t k = 0; k < c.K; ++k) cols[k] = c.perm ? c.perm[k] : (int32_t)k;
  std::vector<float> planes(blocked ? 0 : c.B * P * stride, 0.f);
  std::vector<float> xsum(lookup ? 0 : c.B * c.ng, 0.f);
  for (int64_t b = 0; b < c.B && !blocked; ++b)
    for (int64_t n = 0; n < P; ++n)
      for (int64_t i = 0; P * i + n < c.K; ++i)
        planes[(b * P + n) * stride + i] = c.x[b * c.K + cols[P * i + n]];
  for (int64_t b = 0; b < c.B && !lookup; ++b)
    for (int64_t i = 0; i < c.K; ++i)
      xsum[b * c.ng + std::min(c.ng - 1, i / group_columns)] +=
          c.x[b * c.K + cols[i]];
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const Lookup p{c.x, cols.data(), planes.data(), c.q, c.s, c.z, c.y, c.B, c.K, c.N, c.W,
                 c.ng, c.ng == 1 ? c.W : c.group_bytes, stride};
  if (blocked) {
    parallel_rows(pool, c.N, threads, kBlock, [&p](int64_t n0, int64_t n1) {
      blocked_rows<BITS>(p, n0, n1);
    });
    return;
  }
  if (lookup && BITS != 8) {
    constexpr int kBits = BITS == 8 ? 4 : BITS;  // 8 never gets here
    parallel_rows(pool, c.N, threads, kLookupRows,
                  [&p](int64_t n0, int64_t n1) {
                    lookup_rows<kBits>(p, n0, n1);
                  });
    return;
  }
#endif
  const Problem bytes{planes.data(), xsum.data(), c.q, c.s, c.z, c.y, c.B,
                      c.N, c.W, c.ng, c.group_bytes, stride};
  parallel_rows(pool, c.N, threads, kRows, [&bytes](int64_t n0, int64_t n1) {
    rows<BITS>(bytes, n0, n1);
  });
}

template <int BITS>
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                  ffi::Buffer<ffi::S32> perm, ffi::Buffer<ffi::U8> q,
                  ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::U8> z,
                  ffi::ResultBuffer<ffi::F32> y, int64_t group_bytes,
                  int64_t threads) {
  const auto xd = x.dimensions();
  const auto qd = q.dimensions();
  const auto sd = s.dimensions();
  const int64_t columns = (int64_t)perm.element_count();
  if (xd.size() != 2 || qd.size() != 2 || sd.size() != 2 ||
      xd[1] > qd[1] * (8 / BITS) || group_bytes <= 0 ||
      (columns != 0 && columns != xd[1]))
    return ffi::Error::InvalidArgument("keras_gptq cpu kernel: bad shapes");
  compute<BITS>(pool, Call{x.typed_data(),
                           columns ? perm.typed_data() : nullptr,
                           q.typed_data(), s.typed_data(),
                           z.typed_data(), y->typed_data(), xd[0], xd[1],
                           qd[0], qd[1], sd[1], group_bytes},
                threads);
  return ffi::Error::Success();
}

}  // namespace

#define KERAS_GPTQ_HANDLER(NAME, BITS)                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                            \
      NAME, Matmul<BITS>,                                                   \
      ffi::Ffi::Bind()                                                      \
          .Ctx<ffi::ThreadPool>()                                           \
          .Arg<ffi::Buffer<ffi::F32>>()                                     \
          .Arg<ffi::Buffer<ffi::S32>>()                                     \
          .Arg<ffi::Buffer<ffi::U8>>()                                      \
          .Arg<ffi::Buffer<ffi::F32>>()                                     \
          .Arg<ffi::Buffer<ffi::U8>>()                                      \
          .Ret<ffi::Buffer<ffi::F32>>()                                     \
          .Attr<int64_t>("group_bytes")                                     \
          .Attr<int64_t>("threads"));

// Whether calls of 2- and 4-bit layers with groups of whole 64-byte chunks
// take the lookup path at any row count (1) or only the byte-plane path (0:
// built without AVX-512BW).
extern "C" int KerasGptqLookup() { return kLookup ? 1 : 0; }

KERAS_GPTQ_HANDLER(KerasGptqMatmul2, 2)
KERAS_GPTQ_HANDLER(KerasGptqMatmul4, 4)
KERAS_GPTQ_HANDLER(KerasGptqMatmul8, 8)
