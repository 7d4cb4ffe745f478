// Causal flash attention on the CPU, float32, as XLA FFI custom calls.
//
// Built on first use by seqscale/ops/native_attention.py with the machine's own compiler
// and -march=native, so the vector code below (GCC vector extensions, 16 floats) becomes
// AVX-512, AVX2 or NEON instructions as the CPU allows. The math is that of
// ops/blockwise_attention.py; only the loops and the matrix products are written by hand:
// XLA's batched matmul at attention's block shapes ([64..512] x 64) runs at 0.56 to 0.82
// of torch.bmm's rate on the same shapes, and every product here is one register-tiled
// kernel (``Tile``).
//
// Layout: q, k, v, out, dout, dq, dk, dv are [B, T, H, K] (the models' layout: a row of
// one head is K contiguous floats, rows are H * K apart); lse and delta are [B, H, T].
// T is a multiple of kAlign (the caller pads; causality hides the padded keys), K a
// multiple of 16 up to 128. Each task first copies its head's operands into contiguous
// rows and transposed panels (``Pack``), so every product reads contiguous memory.
//
//   forward  (one task per batch and head, or per run of query blocks where heads are
//            fewer than 4 per thread): per block of kBlock queries, online softmax over
//            key blocks of up to kKeyBlock, the causal diagonal masked; out and
//            lse = m + log(l);
//   backward (one task per batch and head): per block of kKeyRows keys, over the
//            queries that see it in steps of kQueryStep, scores transposed ([key, query]):
//            p = exp(s - lse), dv += p do, dp = v do^T, ds = p (dp - delta) scale,
//            dk += ds q, dq += ds^T k.
//
// Tasks run on XLA's intra-op thread pool, the calling thread included.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

// Block sizes, chosen by same-process timings against SDPA (B = 4, H = 8, K = 64, causal
// fwd+bwd): 64 to 256 rows per block were within 3% at T = 2048; at T = 8192 these were
// the fastest (0.98 of SDPA's time, the others up to 1.07).
constexpr int kBlock = 64;       // the panel width; forward: query rows per step
constexpr int kKeyBlock = 128;   // forward: keys per step
constexpr int kKeyRows = 128;    // backward: keys per step
constexpr int kQueryStep = 128;  // backward: queries per step
constexpr int kAlign = 64;       // T must be a multiple of this (the caller pads)
constexpr int kPrefetch = 8;     // B rows read ahead in Tile: 9% faster than none at
                                 // T = 4096 (4 or 16 rows: 2 to 3%)

inline v16 load(const float* p) {
  v16 r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
inline void store(float* p, v16 x) { std::memcpy(p, &x, sizeof(x)); }
inline v16 splat(float a) { return v16{} + a; }

// exp on 16 lanes: n = round(x / ln 2), r = x - n ln 2 (two parts), e^r by its Taylor
// series to degree 7 (|r| <= 0.35: relative error below 1e-8), times 2^n built in the
// exponent bits. Inputs are clamped to [-87, 88] (2^n stays a normal float).
inline v16 vexp(v16 x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  v16 n = (x * 1.44269504088896341f + magic) - magic;
  v16 r = x - n * 0.693145751953125f - n * 1.42860682030941723e-06f;
  v16 p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
#ifdef __AVX512F__
  return _mm512_scalef_ps(p, n);  // p 2^n in one instruction
#else
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
#endif
}

inline float hmax(v16 x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, x[i]);
  return m;
}
inline float hsum(v16 x) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// C[R, 16 NV] (+)= A[R, L] B[L, 16 NV]: A[r, l] at A + r lda + l lsa (lsa = 1: A by
// rows; lda = 1: A stored transposed), B by rows (ldb apart).
template <int R, int NV>
inline void Tile(int L, const float* A, long lda, long lsa, const float* B, long ldb,
                 float* C, long ldc, bool accumulate) {
  v16 c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      c[r][v] = accumulate ? load(C + r * ldc + 16 * v) : v16{};
  for (int l = 0; l < L; ++l) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) __builtin_prefetch(B + (l + kPrefetch) * ldb + 16 * v);
    for (int v = 0; v < NV; ++v) b[v] = load(B + l * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const float a = A[r * lda + l * lsa];
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(C + r * ldc + 16 * v, c[r][v]);
}

// C[M, N] (+)= A[M, L] B[L, N], M a multiple of 16 / NV: B's columns copied into one
// contiguous panel of 16 NV (rows of B lie T or H K floats apart, and such strides map
// to a few cache sets: 97 to 112 GFLOP/s on one core read in place, 155 to 187 packed),
// then row tiles of R = 16 / NV (16 accumulators).
constexpr int kMaxL = 128;  // the longest inner dimension: kKeyBlock, kQueryStep, K

template <int NV>
void GemmPanel(int M, int L, const float* A, long lda, long lsa, const float* B, long ldb,
               float* C, long ldc, bool accumulate) {
  constexpr int W = 16 * NV, R = 16 / NV;
  alignas(64) static thread_local float panel[kMaxL * 64];
  const float* b = B;
  if (ldb != W) {  // already a panel otherwise
    for (int l = 0; l < L; ++l) std::memcpy(panel + l * W, B + l * ldb, W * sizeof(float));
    b = panel;
  }
  for (int m = 0; m < M; m += R)
    Tile<R, NV>(L, A + m * lda, lda, lsa, b, W, C + m * ldc, ldc, accumulate);
}

void Gemm(int M, int N, int L, const float* A, long lda, long lsa, const float* B, long ldb,
          float* C, long ldc, bool accumulate) {
  int n = 0;
  for (; n + 64 <= N; n += 64)
    GemmPanel<4>(M, L, A, lda, lsa, B + n, ldb, C + n, ldc, accumulate);
  for (; n + 32 <= N; n += 32)
    GemmPanel<2>(M, L, A, lda, lsa, B + n, ldb, C + n, ldc, accumulate);
  for (; n < N; n += 16)
    GemmPanel<1>(M, L, A, lda, lsa, B + n, ldb, C + n, ldc, accumulate);
}

// Runs task(i) for i in [0, n) on the pool's threads and this one; returns when all ran.
// Helpers that start after the work is gone leave without touching it.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& task) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int> active{0};
    std::atomic<bool> closed{false};
    const std::function<void(int64_t)>* task;
    int64_t n;
  };
  auto state = std::make_shared<State>();
  state->task = &task;
  state->n = n;
  auto work = [](State* s) {
    for (int64_t i; (i = s->next.fetch_add(1)) < s->n;) (*s->task)(i);
  };
  int helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int h = 0; h < helpers; ++h) {
    pool.Schedule([state, work]() {
      state->active.fetch_add(1);
      if (!state->closed.load()) work(state.get());
      state->active.fetch_sub(1);
    });
  }
  work(state.get());
  state->closed.store(true);
  while (state->active.load() > 0) std::this_thread::yield();
}

struct Dims {
  int64_t B, T, H, K;
  long row() const { return H * K; }  // floats between consecutive positions of a head
  const float* at(const float* x, int64_t b, int64_t t, int64_t h) const {
    return x + ((b * T + t) * H + h) * K;
  }
  float* at(float* x, int64_t b, int64_t t, int64_t h) const {
    return x + ((b * T + t) * H + h) * K;
  }
};

// Rows [t0, t1) of head (b, h) of x [B, T, H, K]: as rows [t1 - t0, K] (``rows``), and
// transposed in panels of kBlock positions [(t1 - t0) / kBlock, K, kBlock] (``panels``,
// so that a product against x^T reads one contiguous panel per kBlock columns).
void Pack(const Dims& d, const float* x, int64_t b, int64_t h, int64_t t0, int64_t t1,
          float* rows, float* panels) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* src = d.at(x, b, t, h);
    if (rows) std::memcpy(rows + (t - t0) * d.K, src, d.K * sizeof(float));
    if (panels) {
      float* dst = panels + (t - t0) / kBlock * d.K * kBlock + (t - t0) % kBlock;
      for (int64_t c = 0; c < d.K; ++c) dst[c * kBlock] = src[c];
    }
  }
}

// C[M, N] (+)= A[M, L] x^T with x^T given as panels (``Pack``): one panel per kBlock
// columns, each [L, kBlock] contiguous.
void GemmPanels(int M, int N, int L, const float* A, long lda, const float* panels,
                float* C, long ldc, bool accumulate) {
  static_assert(kBlock == 64, "a panel is one 64-column GemmPanel<4>");
  for (int n = 0; n < N; n += kBlock)
    GemmPanel<4>(M, L, A, lda, 1, panels + n / kBlock * L * kBlock, kBlock, C + n, ldc,
                 accumulate);
}

float* Scratch(std::vector<float>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

void Forward(const Dims& d, float scale, const float* q, const float* k, const float* v,
             float* out, float* lse, ffi::ThreadPool& pool) {
  const int64_t nq = d.T / kBlock, heads = d.B * d.H;
  // One task per head when there are enough of them; else heads cut into runs of query
  // blocks, each task packing the keys it needs.
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t runs = std::min<int64_t>(nq, (4 * threads + heads - 1) / heads);
  ParallelFor(pool, heads * runs, [&](int64_t task) {
    const int64_t run = runs - 1 - task / heads, bh = task % heads;  // longest first
    const int64_t b = bh / d.H, h = bh % d.H;
    const int64_t i0 = run * nq / runs, i1 = (run + 1) * nq / runs, keys = i1 * kBlock;
    static thread_local std::vector<float> k_buf, v_buf;
    float* k_p = Scratch(k_buf, keys * d.K);
    float* v_r = Scratch(v_buf, keys * d.K);
    Pack(d, k, b, h, 0, keys, nullptr, k_p);
    Pack(d, v, b, h, 0, keys, v_r, nullptr);
    alignas(64) static thread_local float s[kBlock * kKeyBlock], acc[kBlock * 128],
        m[kBlock], l[kBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t q0 = i * kBlock, end = q0 + kBlock;
      std::fill(m, m + kBlock, -std::numeric_limits<float>::infinity());
      std::fill(l, l + kBlock, 0.0f);
      std::fill(acc, acc + kBlock * d.K, 0.0f);
      for (int64_t k0 = 0; k0 < end; k0 += kKeyBlock) {
        const int n = std::min<int64_t>(kKeyBlock, end - k0);
        GemmPanels(kBlock, n, d.K, d.at(q, b, q0, h), d.row(), k_p + k0 * d.K, s, n, false);
        const bool diagonal = k0 + n > q0;
        for (int r = 0; r < kBlock; ++r) {
          float* sr = s + r * n;
          const int visible = diagonal ? static_cast<int>(q0 + r - k0 + 1) : n;
          v16 vmx = splat(-std::numeric_limits<float>::infinity());
          const v16 vs = splat(scale);
          int j = 0;
          for (; j + 16 <= visible; j += 16) {
            const v16 x = load(sr + j) * vs;
            vmx = vmx > x ? vmx : x;
          }
          float mx = std::max(m[r], hmax(vmx));
          for (; j < visible; ++j) mx = std::max(mx, sr[j] * scale);
          const float alpha = std::exp(m[r] - mx);  // 0 on the first block (m = -inf)
          v16 sum{};
          const v16 vm = splat(mx);
          for (j = 0; j + 16 <= visible; j += 16) {
            v16 p = vexp(load(sr + j) * vs - vm);
            store(sr + j, p);
            sum += p;
          }
          float tail = 0;
          for (; j < visible; ++j) tail += (sr[j] = std::exp(sr[j] * scale - mx));
          for (; j < n; ++j) sr[j] = 0.0f;
          l[r] = l[r] * alpha + hsum(sum) + tail;
          m[r] = mx;
          if (alpha != 1.0f)
            for (int c = 0; c < d.K; c += 16)
              store(acc + r * d.K + c, load(acc + r * d.K + c) * alpha);
        }
        Gemm(kBlock, d.K, n, s, n, 1, v_r + k0 * d.K, d.K, acc, d.K, true);
      }
      for (int r = 0; r < kBlock; ++r) {
        const float inv = 1.0f / l[r];
        float* o = d.at(out, b, q0 + r, h);
        for (int c = 0; c < d.K; ++c) o[c] = acc[r * d.K + c] * inv;
        lse[bh * d.T + q0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

// lse, delta: [B, H, T]. One task per head.
void Backward(const Dims& d, float scale, const float* q, const float* k, const float* v,
              const float* dout, const float* lse, const float* delta, float* dq, float* dk,
              float* dv, ffi::ThreadPool& pool) {
  ParallelFor(pool, d.B * d.H, [&](int64_t bh) {
    const int64_t b = bh / d.H, h = bh % d.H, TK = d.T * d.K;
    const float* lse_h = lse + bh * d.T;
    const float* delta_h = delta + bh * d.T;
    static thread_local std::vector<float> buffer;
    float* q_r = Scratch(buffer, 6 * TK);
    float* q_p = q_r + TK;
    float* do_r = q_p + TK;
    float* do_p = do_r + TK;
    float* k_r = do_p + TK;
    float* dq_h = k_r + TK;
    Pack(d, q, b, h, 0, d.T, q_r, q_p);
    Pack(d, dout, b, h, 0, d.T, do_r, do_p);
    Pack(d, k, b, h, 0, d.T, k_r, nullptr);
    std::fill(dq_h, dq_h + TK, 0.0f);
    constexpr int BK = kKeyRows, BQ = kQueryStep;
    alignas(64) static thread_local float p[BK * BQ], ds[BK * BQ], dk_j[BK * 128],
        dv_j[BK * 128];
    for (int64_t k0 = 0; k0 < d.T; k0 += BK) {
      const int rows = std::min<int64_t>(BK, d.T - k0);  // a multiple of kAlign
      std::fill(dk_j, dk_j + rows * d.K, 0.0f);
      std::fill(dv_j, dv_j + rows * d.K, 0.0f);
      for (int64_t t0 = k0; t0 < d.T; t0 += BQ) {
        const int n = std::min<int64_t>(BQ, d.T - t0);
        // p = exp(k q^T scale - lse) [keys, queries]; dp = v do^T.
        GemmPanels(rows, n, d.K, k_r + k0 * d.K, d.K, q_p + t0 * d.K, p, n, false);
        GemmPanels(rows, n, d.K, d.at(v, b, k0, h), d.row(), do_p + t0 * d.K, ds, n, false);
        for (int r = 0; r < rows; ++r) {
          float* pr = p + r * n;
          float* dr = ds + r * n;
          // query t0 + c sees key k0 + r when t0 + c >= k0 + r
          const int first = static_cast<int>(std::clamp<int64_t>(k0 + r - t0, 0, n));
          int c = 0;
          for (; c < first; ++c) pr[c] = dr[c] = 0.0f;
          for (; c < first + ((n - first) & ~15); c += 16) {
            v16 pv = vexp(load(pr + c) * scale - load(lse_h + t0 + c));
            store(pr + c, pv);
            store(dr + c, pv * (load(dr + c) - load(delta_h + t0 + c)) * scale);
          }
          for (; c < n; ++c) {
            pr[c] = std::exp(pr[c] * scale - lse_h[t0 + c]);
            dr[c] = pr[c] * (dr[c] - delta_h[t0 + c]) * scale;
          }
        }
        Gemm(rows, d.K, n, p, n, 1, do_r + t0 * d.K, d.K, dv_j, d.K, true);
        Gemm(rows, d.K, n, ds, n, 1, q_r + t0 * d.K, d.K, dk_j, d.K, true);
        // dq[t0 + c] += sum_r ds[r, c] k[k0 + r]: ds read transposed.
        Gemm(n, d.K, rows, ds, 1, n, k_r + k0 * d.K, d.K, dq_h + t0 * d.K, d.K, true);
      }
      for (int r = 0; r < rows; ++r) {
        std::memcpy(d.at(dk, b, k0 + r, h), dk_j + r * d.K, d.K * sizeof(float));
        std::memcpy(d.at(dv, b, k0 + r, h), dv_j + r * d.K, d.K * sizeof(float));
      }
    }
    for (int64_t t = 0; t < d.T; ++t)
      std::memcpy(d.at(dq, b, t, h), dq_h + t * d.K, d.K * sizeof(float));
  });
}

Dims DimsOf(ffi::Buffer<ffi::F32> x) {
  auto s = x.dimensions();
  return Dims{s[0], s[1], s[2], s[3]};
}

ffi::Error Check(const Dims& d) {
  if (d.T % kAlign != 0 || d.K % 16 != 0 || d.K > 128)
    return ffi::Error::InvalidArgument("flash attention: T must be a multiple of 64 and K "
                                       "a multiple of 16 up to 128");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                       ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                       float scale) {
  Dims d = DimsOf(q);
  if (ffi::Error e = Check(d); e.failure()) return e;
  Forward(d, scale, q.typed_data(), k.typed_data(), v.typed_data(), out->typed_data(),
          lse->typed_data(), pool);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                        ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> dout, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> delta, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                        float scale) {
  Dims d = DimsOf(q);
  if (ffi::Error e = Check(d); e.failure()) return e;
  Backward(d, scale, q.typed_data(), k.typed_data(), v.typed_data(), dout.typed_data(),
           lse.typed_data(), delta.typed_data(), dq->typed_data(), dk->typed_data(),
           dv->typed_data(), pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqscaleFlashForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqscaleFlashBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
