// keras_gptq's CPU matmul for packed 2-, 4- and 8-bit levels: an XLA FFI
// handler, compiled on first use by keras_gptq/storage/cpu_kernel.py.
//
// y[B, N] = x[B, K] @ W.T with W[o, i] = (q[o, i] - z[o, g]) * s[o, g],
// computed without a float copy of W as
//   y[b, o] = sum_g s[o, g] * (sum_{i in g} x[b, i] q[o, i]
//                              - z[o, g] * sum_{i in g} x[b, i]).
// Levels: uint8 [N, W], 8 / BITS levels a byte, low bits first (column
// 8/BITS * j + p of a row sits in byte j, bits [BITS p, BITS (p + 1))),
// rows padded with zero levels. Groups are contiguous, `group_bytes` bytes
// each (the last may be shorter); scales f32 [N, ng], zeros uint8 [N, ng].
//
// x is split once per call into 8 / BITS planes, plane p holding the
// columns that sit at bit offset BITS p, so one 16-byte load of a row
// meets 16 consecutive floats of each plane. Several output rows share
// each load of x; per-group partial sums stay in vector registers.
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

// Chunks of rows shared by the caller and pool tasks; see the file comment.
struct Chunks {
  Problem problem;
  void (*run)(const Problem&, int64_t, int64_t);
  int64_t count, size;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;

  // Claims and runs chunks until none is left.
  void work() {
    for (int64_t c; (c = next.fetch_add(1)) < count;) {
      const int64_t n0 = c * size;
      run(problem, n0, std::min(problem.N, n0 + size));
      std::lock_guard<std::mutex> lock(mu);
      if (++done == count) cv.notify_all();
    }
  }
};

template <int BITS>
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                  ffi::Buffer<ffi::U8> q, ffi::Buffer<ffi::F32> s,
                  ffi::Buffer<ffi::U8> z, ffi::ResultBuffer<ffi::F32> y,
                  int64_t group_bytes, int64_t threads) {
  constexpr int P = 8 / BITS;
  const auto xd = x.dimensions();
  const auto qd = q.dimensions();
  const auto sd = s.dimensions();
  if (xd.size() != 2 || qd.size() != 2 || sd.size() != 2 ||
      xd[1] > qd[1] * P || group_bytes <= 0)
    return ffi::Error::InvalidArgument("keras_gptq cpu kernel: bad shapes");
  const int64_t B = xd[0], K = xd[1], N = qd[0], W = qd[1], ng = sd[1];
  const int64_t stride = (W + kLanes - 1) / kLanes * kLanes;
  const int64_t group_columns = group_bytes * P;
  std::vector<float> planes(B * P * stride, 0.f), xsum(B * ng, 0.f);
  const float* xp = x.typed_data();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < K; ++i) {
      const float v = xp[b * K + i];
      planes[(b * P + i % P) * stride + i / P] = v;
      xsum[b * ng + std::min(ng - 1, i / group_columns)] += v;
    }
  Problem problem{planes.data(), xsum.data(), q.typed_data(), s.typed_data(),
                  z.typed_data(), y->typed_data(), B, N, W, ng, group_bytes,
                  stride};
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(threads, N / (8 * kRows)));
  if (chunks == 1) {
    rows<BITS>(problem, 0, N);
    return ffi::Error::Success();
  }
  auto shared = std::make_shared<Chunks>();
  shared->problem = problem;
  shared->run = &rows<BITS>;
  shared->count = chunks;
  shared->size = (N / chunks + kRows - 1) / kRows * kRows;
  shared->count = (N + shared->size - 1) / shared->size;
  for (int64_t t = 1; t < shared->count; ++t)
    pool.Schedule([shared] { shared->work(); });
  shared->work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done == shared->count; });
  return ffi::Error::Success();
}

}  // namespace

#define KERAS_GPTQ_HANDLER(NAME, BITS)                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                            \
      NAME, Matmul<BITS>,                                                   \
      ffi::Ffi::Bind()                                                      \
          .Ctx<ffi::ThreadPool>()                                           \
          .Arg<ffi::Buffer<ffi::F32>>()                                     \
          .Arg<ffi::Buffer<ffi::U8>>()                                      \
          .Arg<ffi::Buffer<ffi::F32>>()                                     \
          .Arg<ffi::Buffer<ffi::U8>>()                                      \
          .Ret<ffi::Buffer<ffi::F32>>()                                     \
          .Attr<int64_t>("group_bytes")                                     \
          .Attr<int64_t>("threads"));

KERAS_GPTQ_HANDLER(KerasGptqMatmul2, 2)
KERAS_GPTQ_HANDLER(KerasGptqMatmul4, 4)
KERAS_GPTQ_HANDLER(KerasGptqMatmul8, 8)
