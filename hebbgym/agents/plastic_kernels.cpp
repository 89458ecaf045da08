// Fused CPU kernels of the plastic recurrence (hebbgym/agents/fused.py has the equations and
// the derivation of every gradient). Compiled on first use and loaded through ctypes.
//
// Layout: traces [B, N, N] indexed [batch, pre i, post j], row-major, contiguous; sequences
// [T, B, ...]. Batch elements are independent in the recurrence, so every kernel is written
// for one element (the *_elem functions) and the drivers split the batch over OpenMP threads
// (torch's thread count and OpenMP runtime):
//
// * per-step drivers (hg_update, hg_backward): one time step of the whole batch, for the
//   autograd Function of a single step (its forward is the sequence forward over one step);
// * sequence drivers (hg_sequence_forward, hg_sequence_backward): every time step of one batch
//   element after the other, so that its [N, N] trace, trace gradient and the weights stay in
//   the core's cache for the whole episode instead of streaming B traces through memory at
//   every step.
//
// Built with -ffp-contract=fast and -fassociative-math (the compiler fuses multiply-adds and
// reorders sums as it sees fit, the same way every time for a given build); the one value
// that forward and backward must compute identically, the pre-clamp trace U whose clamp mask
// backward recomputes, is written with explicit std::fma in both. Replays run the forward's
// own update code, hence its values bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>

#ifdef HG_LIBMVEC
// glibc's vector math library (libmvec) has SIMD tanh; declaring the simd variants lets the
// compiler call them from `omp simd` loops (glibc declares them only under -ffast-math).
extern "C" {
__attribute__((simd("notinbranch"))) float tanhf(float) noexcept;
__attribute__((simd("notinbranch"))) double tanh(double) noexcept;
}
#endif

namespace {

enum Rule { DECAY = 0, OJA = 1, CLIP = 2 };
enum Neuromod { NONE = 0, SIMPLE = 1, RETRO = 2 };

// One time step of a batch. The element kernels read only its shared fields (sizes, rule,
// eta, clip, alpha, wm); the drivers offset the per-element pointers.
template <typename T>
struct Step {
  int64_t B, N, K;
  int rule, neuromod, scalar_alpha, threads;
  T eta, clip;
  const T* H;       // [B, N, N] incoming Hebb trace
  const T* E;       // [B, N, N] incoming eligibility trace (retroactive) or null
  const T* hp;      // [B, N] h_{t-1}
  const T* h;       // [B, N] h_t
  const T* m;       // [B, K] M_t or null
  const T* alpha;   // [N, N] or a single value
  const T* wm;      // [K, N] modulator weight or null
};

template <typename T>
inline T clamp_to(T u, T lo, T hi) {  // torch.clamp, NaN included; branch-free for simd
  return u < lo ? lo : (u > hi ? hi : u);
}

template <typename T>
inline T rate_of(const Step<T>& s, const T* m_b, int64_t j) {
  return s.neuromod == SIMPLE ? m_b[s.K == 1 ? 0 : j] : s.eta;
}

inline float tanh_of(float v) { return tanhf(v); }
inline double tanh_of(double v) { return tanh(v); }

template <typename T>
void tanh_inplace(T* __restrict__ v, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) v[j] = tanh_of(v[j]);
}

// ---- forward, first part: y_j = sum_i h_{t-1,i} alpha_ij H_ij (or z_j = sum_i h_i H_ij) ----
// Rows are taken four at a time: short inner loops (N ~ 100) are dominated by their fixed cost.
// With alpha == nullptr: z (the scalar-alpha form), or any plain product sum_i h_i M_ij.
template <typename T>
void row_combination(int64_t N, const T* H, const T* alpha, const T* hp, T* __restrict__ y) {
  std::fill(y, y + N, T(0));
  int64_t i = 0;
  for (; i + 4 <= N; i += 4) {
    const T h0 = hp[i], h1 = hp[i + 1], h2 = hp[i + 2], h3 = hp[i + 3];
    const T* __restrict__ H0 = H + i * N;
    const T* __restrict__ H1 = H0 + N;
    const T* __restrict__ H2 = H1 + N;
    const T* __restrict__ H3 = H2 + N;
    if (alpha) {
      const T* __restrict__ a0 = alpha + i * N;
      const T* __restrict__ a1 = a0 + N;
      const T* __restrict__ a2 = a1 + N;
      const T* __restrict__ a3 = a2 + N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j)
        y[j] += (h0 * (a0[j] * H0[j]) + h1 * (a1[j] * H1[j])) +
                (h2 * (a2[j] * H2[j]) + h3 * (a3[j] * H3[j]));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j)
        y[j] += (h0 * H0[j] + h1 * H1[j]) + (h2 * H2[j] + h3 * H3[j]);
    }
  }
  for (; i < N; ++i) {
    const T hi = hp[i];
    const T* __restrict__ Hi = H + i * N;
    if (alpha) {
      const T* __restrict__ ai = alpha + i * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) y[j] += hi * (ai[j] * Hi[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) y[j] += hi * Hi[j];
    }
  }
}

template <typename T>
void plastic_input_elem(const Step<T>& s, const T* H, const T* hp, T* y) {
  row_combination(s.N, H, s.scalar_alpha ? nullptr : s.alpha, hp, y);
}

// ---- forward, second part (and the replay): the trace update of one element ----
// r, d: scratch of N values each.
template <typename T>
void update_elem(const Step<T>& s, const T* H, const T* E, const T* hp, const T* h,
                 const T* mb, T* out, T* eout, T* r, T* d) {
  const int64_t N = s.N;
  const T lo = -s.clip, hi_c = s.clip, one_eta = T(1) - s.eta;
  if (s.neuromod == RETRO) {
    for (int64_t j = 0; j < N; ++j) r[j] = mb[s.K == 1 ? 0 : j];  // M_j
    for (int64_t j = 0; j < N; ++j) d[j] = s.eta * h[j];          // eta h_j
    for (int64_t i = 0; i < N; ++i) {
      const T* Ei = E + i * N;
      const T* Hi = H + i * N;
      const T hi = hp[i];
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const T u = std::fma(r[j], Ei[j], Hi[j]);
        out[i * N + j] = clamp_to(u, lo, hi_c);
        eout[i * N + j] = one_eta * Ei[j] + hi * d[j];
      }
    }
    return;
  }
  for (int64_t j = 0; j < N; ++j) r[j] = rate_of(s, mb, j) * h[j];
  if (s.rule == OJA)
    for (int64_t j = 0; j < N; ++j) d[j] = T(1) - r[j] * h[j];
  for (int64_t i = 0; i < N; ++i) {
    const T* Hi = H + i * N;
    T* oi = out + i * N;
    const T hi = hp[i];
    if (s.rule == DECAY) {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) oi[j] = one_eta * Hi[j] + hi * r[j];
    } else if (s.rule == OJA) {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) oi[j] = Hi[j] * d[j] + hi * r[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) oi[j] = clamp_to(std::fma(hi, r[j], Hi[j]), lo, hi_c);
    }
  }
}

// Rows are processed four at a time (short rows, N ~ 100, are dominated by the fixed cost of a
// loop and of its horizontal sums); rows past N read a zero row and write to throw-away rows
// (``sink``, 4 N values), so that every contribution of theirs is zero.
template <typename T>
struct Rows {
  const T* __restrict__ c[4];
};

template <typename T>
struct RowsOut {
  T* __restrict__ c[4];
};

template <typename T>
inline Rows<T> rows_of(const T* base, int64_t i, int64_t N, const T* zero) {
  Rows<T> out;
  for (int q = 0; q < 4; ++q) out.c[q] = (i + q < N) ? base + (i + q) * N : zero;
  return out;
}

template <typename T>
inline RowsOut<T> rows_out(T* base, int64_t i, int64_t N, T* sink) {
  RowsOut<T> out;
  for (int q = 0; q < 4; ++q) out.c[q] = (i + q < N) ? base + (i + q) * N : sink + q * N;
  return out;
}

// Prefetch rows [i, i + 4) of the next batch element's slab while this one is processed: the
// slabs of a step come from memory (not cache) in backward, and a batch element's work runs in
// bursts that leave the hardware prefetchers idle in between.
template <typename T>
inline void prefetch_rows(const T* next, int64_t i, int64_t N, bool write) {
  if (!next) return;
  const char* p = reinterpret_cast<const char*>(next + i * N);
  const int64_t bytes = std::min<int64_t>(4, N - i) * N * int64_t(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write)
      __builtin_prefetch(p + off, 1, 3);
    else
      __builtin_prefetch(p + off, 0, 3);
  }
}

template <typename T>
inline void hp_of(const T* hp, int64_t i, int64_t N, T* h4) {
  for (int q = 0; q < 4; ++q) h4[q] = (i + q < N) ? hp[i + q] : T(0);
}

template <typename T>
inline void add_rows(T* ghp, int64_t i, int64_t N, const T* a4) {
  for (int q = 0; q < 4; ++q)
    if (i + q < N) ghp[i + q] += a4[q];
}

// Pass 1 of a non-retroactive rule: G_u = mask(G) (clip) or G, written to G; returns, added
// to gr_j: sum_i G_u,ij h_i; to ghp_i: sum_j G_u,ij r_j; to gd_j (oja): sum_i G_u,ij H_ij;
// to s (decay): sum G_u,ij H_ij.
template <typename T, int RULE>
void pass1(int64_t N, const T* H, const T* gH, T* G, const T* hp, const T* r, T* gr, T* gd,
           T lo, T hi_c, T* ghp, T& s, const T* zero, T* sink, const T* nH, const T* ngH,
           const T* nG) {
  for (int64_t i = 0; i < N; i += 4) {
    prefetch_rows(nH, i, N, false);
    prefetch_rows(ngH, i, N, false);
    prefetch_rows(nG, i, N, true);
    const Rows<T> Hr = rows_of(H, i, N, zero), gr4 = rows_of(gH, i, N, zero);
    const RowsOut<T> Gr = rows_out(G, i, N, sink);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1], *__restrict__ H2 = Hr.c[2],
            *__restrict__ H3 = Hr.c[3];
    const T *__restrict__ g0 = gr4.c[0], *__restrict__ g1 = gr4.c[1], *__restrict__ g2 = gr4.c[2],
            *__restrict__ g3 = gr4.c[3];
    T *__restrict__ G0 = Gr.c[0], *__restrict__ G1 = Gr.c[1], *__restrict__ G2 = Gr.c[2],
      *__restrict__ G3 = Gr.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, sum = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, sum)
    for (int64_t j = 0; j < N; ++j) {
      const T rj = r[j];
      T u0 = g0[j], u1 = g1[j], u2 = g2[j], u3 = g3[j];
      if (RULE == CLIP) {
        // U exactly as in update(): the mask is the forward's clamp, bit for bit
        const T v0 = std::fma(h0, rj, H0[j]), v1 = std::fma(h1, rj, H1[j]);
        const T v2 = std::fma(h2, rj, H2[j]), v3 = std::fma(h3, rj, H3[j]);
        u0 = ((v0 >= lo) & (v0 <= hi_c)) ? u0 : T(0);
        u1 = ((v1 >= lo) & (v1 <= hi_c)) ? u1 : T(0);
        u2 = ((v2 >= lo) & (v2 <= hi_c)) ? u2 : T(0);
        u3 = ((v3 >= lo) & (v3 <= hi_c)) ? u3 : T(0);
      }
      G0[j] = u0;
      G1[j] = u1;
      G2[j] = u2;
      G3[j] = u3;
      gr[j] += (u0 * h0 + u1 * h1) + (u2 * h2 + u3 * h3);
      a0 += u0 * rj;
      a1 += u1 * rj;
      a2 += u2 * rj;
      a3 += u3 * rj;
      if (RULE == OJA) gd[j] += (u0 * H0[j] + u1 * H1[j]) + (u2 * H2[j] + u3 * H3[j]);
      if (RULE == DECAY) sum += (u0 * H0[j] + u1 * H1[j]) + (u2 * H2[j] + u3 * H3[j]);
    }
    const T a4[4] = {a0, a1, a2, a3};
    add_rows(ghp, i, N, a4);
    s += sum;
  }
}

// Pass 1 of retroactive neuromodulation, U = H + M E: G_u = mask(G) to G, gd_j += sum_i G_u E.
template <typename T>
void pass1_retro(int64_t N, const T* H, const T* E, const T* gH, T* G, const T* mj, T* gd,
                 T lo, T hi_c) {
  for (int64_t i = 0; i < N; ++i) {
    const T *__restrict__ Hi = H + i * N, *__restrict__ Ei = E + i * N;
    const T* __restrict__ gi = gH + i * N;
    T* __restrict__ Gi = G + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const T u = std::fma(mj[j], Ei[j], Hi[j]);
      const T gu = ((u >= lo) & (u <= hi_c)) ? gi[j] : T(0);
      Gi[j] = gu;
      gd[j] += gu * Ei[j];
    }
  }
}

// Eligibility trace E_t = (1 - eta) E + eta h_{t-1} (x) h: gr_j += sum_i h_i G_E,ij,
// ghp_i += eta sum_j G_E,ij h_j, s += sum G_E E.
template <typename T>
void pass1_elig(int64_t N, const T* E, const T* gE, const T* hp, const T* h, T eta, T* gr,
                T* ghp, T& s, const T* zero) {
  for (int64_t i = 0; i < N; i += 4) {
    const Rows<T> Er = rows_of(E, i, N, zero), gr4 = rows_of(gE, i, N, zero);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ E0 = Er.c[0], *__restrict__ E1 = Er.c[1], *__restrict__ E2 = Er.c[2],
            *__restrict__ E3 = Er.c[3];
    const T *__restrict__ g0 = gr4.c[0], *__restrict__ g1 = gr4.c[1], *__restrict__ g2 = gr4.c[2],
            *__restrict__ g3 = gr4.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, sum = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, sum)
    for (int64_t j = 0; j < N; ++j) {
      const T hj = h[j];
      gr[j] += (h0 * g0[j] + h1 * g1[j]) + (h2 * g2[j] + h3 * g3[j]);
      a0 += g0[j] * hj;
      a1 += g1[j] * hj;
      a2 += g2[j] * hj;
      a3 += g3[j] * hj;
      sum += (g0[j] * E0[j] + g1[j] * E1[j]) + (g2[j] * E2[j] + g3[j] * E3[j]);
    }
    const T a4[4] = {eta * a0, eta * a1, eta * a2, eta * a3};
    add_rows(ghp, i, N, a4);
    s += sum;
  }
}

// Pass 2, the plastic input y_j = sum_i h_{t-1,i} alpha_ij H_ij (and, with W, the dense input
// h_{t-1} W, whose gradient the sequence drivers take here rather than in a separate pass):
//   ghp_i += sum_j (W_ij + alpha_ij H_ij) ga_j;  dalpha_ij += h_{t-1,i} ga_j H_ij;
//   D_ij = d_j D_ij + alpha_ij h_{t-1,i} ga_j  (MODE 2; MODE 1: no first term; MODE 0: no D)
// W null: no dense term (W rows read as zeros).
template <typename T, int MODE>
void pass2(int64_t N, const T* H, const T* alpha, const T* W, T* A, T* D, const T* hp,
           const T* ga, const T* d, T* ghp, const T* zero, T* sink) {
  // Two rows at a time: with five [N, N] operands, four rows would need more pointers than
  // there are registers.
  for (int64_t i = 0; i < N; i += 2) {
    const Rows<T> Hr = rows_of(H, i, N, zero), ar = rows_of(alpha, i, N, zero);
    const Rows<T> Wr = W ? rows_of(W, i, N, zero) : Rows<T>{{zero, zero, zero, zero}};
    const RowsOut<T> Ar = rows_out(A, i, N, sink);
    const RowsOut<T> Dr = rows_out(D ? D : sink, D ? i : N, N, sink);
    const T h0 = hp[i], h1 = i + 1 < N ? hp[i + 1] : T(0);
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1];
    const T *__restrict__ w0 = ar.c[0], *__restrict__ w1 = ar.c[1];
    const T *__restrict__ W0 = Wr.c[0], *__restrict__ W1 = Wr.c[1];
    T *__restrict__ A0 = Ar.c[0], *__restrict__ A1 = Ar.c[1];
    T *__restrict__ D0 = Dr.c[0], *__restrict__ D1 = Dr.c[1];
    T a0 = 0, a1 = 0;
#pragma omp simd reduction(+ : a0, a1)
    for (int64_t j = 0; j < N; ++j) {
      const T gj = ga[j];
      const T hg0 = h0 * gj, hg1 = h1 * gj;
      a0 += (W0[j] + w0[j] * H0[j]) * gj;
      a1 += (W1[j] + w1[j] * H1[j]) * gj;
      A0[j] += hg0 * H0[j];
      A1[j] += hg1 * H1[j];
      if (MODE == 2) {
        const T dj = d[j];
        D0[j] = dj * D0[j] + w0[j] * hg0;
        D1[j] = dj * D1[j] + w1[j] * hg1;
      } else if (MODE == 3) {  // MODE 2 with d = 1 (clip, retroactive)
        D0[j] += w0[j] * hg0;
        D1[j] += w1[j] * hg1;
      } else if (MODE == 1) {
        D0[j] = w0[j] * hg0;
        D1[j] = w1[j] * hg1;
      }
    }
    ghp[i] += a0;
    if (i + 1 < N) ghp[i + 1] += a1;
  }
}

// Pass 2 with a scalar alpha (y = alpha z, z_j = sum_i h_i H_ij):
//   ghp_i += sum_j (W_ij + alpha H_ij) ga_j;  dalpha += sum_j z_j ga_j;
//   D_ij = d_j D_ij + h_{t-1,i} alpha ga_j  (MODE and W as in pass2).
template <typename T, int MODE>
void pass2_scalar(int64_t N, const T* H, T a_s, const T* W, T* D, const T* hp, const T* ga,
                  const T* d, T* ghp, T& dalpha, const T* zero, T* sink) {
  for (int64_t i = 0; i < N; i += 4) {
    const Rows<T> Hr = rows_of(H, i, N, zero);
    const Rows<T> Wr = W ? rows_of(W, i, N, zero) : Rows<T>{{zero, zero, zero, zero}};
    const T *__restrict__ W0 = Wr.c[0], *__restrict__ W1 = Wr.c[1], *__restrict__ W2 = Wr.c[2],
            *__restrict__ W3 = Wr.c[3];
    const RowsOut<T> Dr = rows_out(D ? D : sink, D ? i : N, N, sink);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1], *__restrict__ H2 = Hr.c[2],
            *__restrict__ H3 = Hr.c[3];
    T *__restrict__ D0 = Dr.c[0], *__restrict__ D1 = Dr.c[1], *__restrict__ D2 = Dr.c[2],
      *__restrict__ D3 = Dr.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, v0 = 0, v1 = 0, v2 = 0, v3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, v0, v1, v2, v3)
    for (int64_t j = 0; j < N; ++j) {
      const T gj = ga[j], ag = a_s * gj;
      a0 += H0[j] * gj;
      a1 += H1[j] * gj;
      a2 += H2[j] * gj;
      a3 += H3[j] * gj;
      v0 += W0[j] * gj;
      v1 += W1[j] * gj;
      v2 += W2[j] * gj;
      v3 += W3[j] * gj;
      if (MODE == 2) {
        const T dj = d[j];
        D0[j] = dj * D0[j] + h0 * ag;
        D1[j] = dj * D1[j] + h1 * ag;
        D2[j] = dj * D2[j] + h2 * ag;
        D3[j] = dj * D3[j] + h3 * ag;
      } else if (MODE == 3) {
        D0[j] += h0 * ag;
        D1[j] += h1 * ag;
        D2[j] += h2 * ag;
        D3[j] += h3 * ag;
      } else if (MODE == 1) {
        D0[j] = h0 * ag;
        D1[j] = h1 * ag;
        D2[j] = h2 * ag;
        D3[j] = h3 * ag;
      }
    }
    const T a4[4] = {a_s * a0 + v0, a_s * a1 + v1, a_s * a2 + v2, a_s * a3 + v3};
    add_rows(ghp, i, N, a4);
    dalpha += (h0 * a0 + h1 * a1) + (h2 * a2 + h3 * a3);
  }
}

// Per-thread scratch and parameter-gradient sums of the backward kernels.
template <typename T>
struct Work {
  std::vector<T> scratch, r, d, gh, gr, gd, gmod, gz, zero, sink;
  T* acc_alpha = nullptr;  // [N * N] (per connection alpha) or null
  T* acc_wm = nullptr;     // [K * N] or null
  T* acc_bm = nullptr;     // [K] or null
  T acc_eta = 0;
  T acc_alpha_scalar = 0;  // sum of z ga for a scalar alpha
  Work(int64_t N, int64_t K)
      : scratch(N * N), r(N), d(N), gh(N), gr(N), gd(N), gmod(K), gz(K), zero(N, T(0)),
        sink(4 * N) {}
};

// The gradients flowing through one step of one batch element. Inputs may be null (no
// gradient); dH/dE null when the gradient of the incoming traces is not needed. nH, ngH, nG:
// the next element's slices, to prefetch (null: none).
template <typename T>
struct ElemGrad {
  const T *H, *E, *hp, *h, *m;  // incoming traces, h_{t-1}, h_t, M_t
  const T *gH, *gE, *gh, *gm;   // gradients w.r.t. Hebb_t, E_t, h_t, M_t
  T *dH, *dE;                   // gradients w.r.t. Hebb_{t-1}, E_{t-1}
  T* ga;                        // [N] gradient w.r.t. the pre-activation a_t
  T* ghp;                       // [N] gradient w.r.t. h_{t-1} (without ga W^T if w is null)
  const T* w;                   // [N, N] W, to add ga W^T to ghp here, or null
  const T *nH, *ngH, *nG;
};

template <typename T>
void backward_elem(const Step<T>& s, const ElemGrad<T>& e, Work<T>& w) {
  const int64_t N = s.N, K = s.K;
  const T lo = -s.clip, hi_c = s.clip, one_eta = T(1) - s.eta;
  const bool retro = s.neuromod == RETRO;
  const T *H = e.H, *E = e.E, *hp = e.hp, *h = e.h, *mb = e.m, *gHb = e.gH, *gEb = e.gE;
  T* GU = e.dH ? e.dH : w.scratch.data();  // masked dHebb_t, then dHebb_{t-1}
  T* ghp = e.ghp;
  T *r = w.r.data(), *d = w.d.data(), *gh = w.gh.data(), *gr = w.gr.data(), *gd = w.gd.data();
  T *gmod = w.gmod.data(), *gz = w.gz.data(), *zero = w.zero.data(), *sink = w.sink.data();
  for (int64_t j = 0; j < N; ++j) gh[j] = e.gh ? e.gh[j] : T(0);
  for (int64_t k = 0; k < K; ++k) gmod[k] = e.gm ? e.gm[k] : T(0);
  std::fill(ghp, ghp + N, T(0));
  // r: the increment's post-synaptic factor (M_j for retroactive); d: the factor of
  // Hebb_{t-1} in U (1 for clip and retroactive)
  if (!retro) {
    for (int64_t j = 0; j < N; ++j) r[j] = rate_of(s, mb, j) * h[j];
    for (int64_t j = 0; j < N; ++j)
      d[j] = s.rule == DECAY ? one_eta : (s.rule == OJA ? T(1) - r[j] * h[j] : T(1));
  } else {
    for (int64_t j = 0; j < N; ++j) r[j] = mb[K == 1 ? 0 : j];
    for (int64_t j = 0; j < N; ++j) d[j] = T(1);
  }
  // ---- pass 1: the trace update ----
  if (gHb) {
    std::fill(gr, gr + N, T(0));
    std::fill(gd, gd + N, T(0));
    if (retro) {
      // U = H + M E: dM_j = sum_i G_u,ij E_ij (summed over j for a scalar M)
      pass1_retro(N, H, E, gHb, GU, r, gd, lo, hi_c);
      if (K == 1) {
        T sum = 0;
        for (int64_t j = 0; j < N; ++j) sum += gd[j];
        gmod[0] += sum;
      } else {
        for (int64_t j = 0; j < N; ++j) gmod[j] += gd[j];
      }
    } else {
      T s_gh_h = 0;
      if (s.rule == DECAY)
        pass1<T, DECAY>(N, H, gHb, GU, hp, r, gr, gd, lo, hi_c, ghp, s_gh_h, zero, sink, e.nH,
                        e.ngH, e.nG);
      else if (s.rule == OJA)
        pass1<T, OJA>(N, H, gHb, GU, hp, r, gr, gd, lo, hi_c, ghp, s_gh_h, zero, sink, e.nH,
                      e.ngH, e.nG);
      else
        pass1<T, CLIP>(N, H, gHb, GU, hp, r, gr, gd, lo, hi_c, ghp, s_gh_h, zero, sink, e.nH,
                       e.ngH, e.nG);
      if (s.rule == DECAY) w.acc_eta -= s_gh_h;
      if (s.rule == OJA) {
        for (int64_t j = 0; j < N; ++j) {
          gr[j] -= gd[j] * h[j];
          gh[j] -= gd[j] * r[j];
        }
      }
      // r_j = rate_j h_j
      for (int64_t j = 0; j < N; ++j) gh[j] += gr[j] * rate_of(s, mb, j);
      if (s.neuromod == SIMPLE) {
        if (K == 1) {
          T sum = 0;
          for (int64_t j = 0; j < N; ++j) sum += gr[j] * h[j];
          gmod[0] += sum;
        } else {
          for (int64_t j = 0; j < N; ++j) gmod[j] += gr[j] * h[j];
        }
      } else {
        for (int64_t j = 0; j < N; ++j) w.acc_eta += gr[j] * h[j];
      }
    }
  }
  if (gEb) {
    // E_t = (1 - eta) E + eta h_{t-1} (x) h
    std::fill(gr, gr + N, T(0));
    T s_ge_e = 0;
    pass1_elig(N, E, gEb, hp, h, s.eta, gr, ghp, s_ge_e, zero);
    T s_th = 0;
    for (int64_t j = 0; j < N; ++j) {
      gh[j] += s.eta * gr[j];
      s_th += gr[j] * h[j];
    }
    w.acc_eta += s_th - s_ge_e;
  }
  // ---- modulator: M = tanh(h W_m^T + b_m) ----
  if (s.neuromod != NONE) {
    for (int64_t k = 0; k < K; ++k) gz[k] = gmod[k] * (T(1) - mb[k] * mb[k]);
    for (int64_t k = 0; k < K; ++k) {
      const T gk = gz[k];
      const T* __restrict__ wk = s.wm + k * N;
      T* __restrict__ ak = w.acc_wm + k * N;
      T* __restrict__ ghj = gh;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        ghj[j] += gk * wk[j];
        ak[j] += gk * h[j];
      }
      w.acc_bm[k] += gk;
    }
  }
  T* gab = e.ga;
  for (int64_t j = 0; j < N; ++j) gab[j] = gh[j] * (T(1) - h[j] * h[j]);
  // dE_{t-1} = G_u M + (1 - eta) G_E (before G_u is overwritten by dHebb_{t-1})
  if (e.dE && retro) {
    for (int64_t i = 0; i < N; ++i) {
      T* __restrict__ Di = e.dE + i * N;
      const T* __restrict__ Gi = GU + i * N;
      const T* __restrict__ gi = gEb ? gEb + i * N : nullptr;
      const T* __restrict__ rj = r;
      if (gHb && gi) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) Di[j] = Gi[j] * rj[j] + one_eta * gi[j];
      } else if (gHb) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) Di[j] = Gi[j] * rj[j];
      } else if (gi) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) Di[j] = one_eta * gi[j];
      } else {
        std::fill(Di, Di + N, T(0));
      }
    }
  }
  // ---- pass 2: the plastic input (and the dense one, with e.w) ----
  T* dH = e.dH;
  const bool unit_d = retro || s.rule == CLIP;
  const int mode = dH == nullptr ? 0 : (gHb ? (unit_d ? 3 : 2) : 1);
  const T* W = e.w;
  if (s.scalar_alpha) {
    const T a_s = s.alpha[0];
    T& acc = w.acc_alpha_scalar;
    if (mode == 3)
      pass2_scalar<T, 3>(N, H, a_s, W, dH, hp, gab, d, ghp, acc, zero, sink);
    else if (mode == 2)
      pass2_scalar<T, 2>(N, H, a_s, W, dH, hp, gab, d, ghp, acc, zero, sink);
    else if (mode == 1)
      pass2_scalar<T, 1>(N, H, a_s, W, dH, hp, gab, d, ghp, acc, zero, sink);
    else
      pass2_scalar<T, 0>(N, H, a_s, W, dH, hp, gab, d, ghp, acc, zero, sink);
  } else {
    T* A = w.acc_alpha;
    if (mode == 3)
      pass2<T, 3>(N, H, s.alpha, W, A, dH, hp, gab, d, ghp, zero, sink);
    else if (mode == 2)
      pass2<T, 2>(N, H, s.alpha, W, A, dH, hp, gab, d, ghp, zero, sink);
    else if (mode == 1)
      pass2<T, 1>(N, H, s.alpha, W, A, dH, hp, gab, d, ghp, zero, sink);
    else
      pass2<T, 0>(N, H, s.alpha, W, A, dH, hp, gab, d, ghp, zero, sink);
  }
}

// Per-thread sums of the parameter gradients: thread tid's slots in the caller's buffers,
// zeroed; reduce_accumulators adds them into slot 0 in a fixed order (the result depends on
// the number of threads, never on timing).
template <typename T>
struct Accumulators {
  T* alpha;  // [threads, A] (A = N * N per connection, 1 for a scalar alpha) or null
  T* wm;     // [threads, K * N] or null
  T* bm;     // [threads, K] or null
  T* eta;    // [threads] or null
};

template <typename T>
void bind_accumulators(const Accumulators<T>& acc, int tid, int64_t A, int64_t K, int64_t N,
                       bool scalar_alpha, Work<T>& w) {
  w.acc_alpha = acc.alpha && !scalar_alpha ? acc.alpha + tid * A : nullptr;
  w.acc_wm = acc.wm ? acc.wm + tid * K * N : nullptr;
  w.acc_bm = acc.bm ? acc.bm + tid * K : nullptr;
  if (w.acc_alpha) std::fill(w.acc_alpha, w.acc_alpha + A, T(0));
  if (w.acc_wm) std::fill(w.acc_wm, w.acc_wm + K * N, T(0));
  if (w.acc_bm) std::fill(w.acc_bm, w.acc_bm + K, T(0));
}

template <typename T>
void store_scalars(const Accumulators<T>& acc, int tid, bool scalar_alpha, const Work<T>& w) {
  if (acc.eta) acc.eta[tid] = w.acc_eta;
  if (acc.alpha && scalar_alpha) acc.alpha[tid] = w.acc_alpha_scalar;
}

template <typename T>
void reduce_accumulators(const Accumulators<T>& acc, int team, int64_t A, int64_t K, int64_t N) {
  for (int t = 1; t < team; ++t) {
    if (acc.alpha)
      for (int64_t k = 0; k < A; ++k) acc.alpha[k] += acc.alpha[t * A + k];
    if (acc.wm)
      for (int64_t k = 0; k < K * N; ++k) acc.wm[k] += acc.wm[t * K * N + k];
    if (acc.bm)
      for (int64_t k = 0; k < K; ++k) acc.bm[k] += acc.bm[t * K + k];
    if (acc.eta) acc.eta[0] += acc.eta[t];
  }
}

// =============================================================================================
// Per-step drivers: one time step of the whole batch
// =============================================================================================

template <typename T>
void update(const Step<T>& s, T* Hn, T* En) {
  const int64_t N = s.N, NN = N * N;
  const bool retro = s.neuromod == RETRO;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && s.B > 1)
  {
    std::vector<T> r(N), d(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      update_elem(s, s.H + b * NN, retro ? s.E + b * NN : nullptr, s.hp + b * N, s.h + b * N,
                  s.m ? s.m + b * s.K : nullptr, Hn + b * NN, retro ? En + b * NN : nullptr,
                  r.data(), d.data());
  }
}

template <typename T>
struct Grad {
  const T* gH;   // [B, N, N] gradient w.r.t. Hebb_t, or null
  const T* gE;   // [B, N, N] gradient w.r.t. E_t, or null
  const T* gh;   // [B, N] or null
  const T* gm;   // [B, K] or null
  T* dH;         // [B, N, N] gradient w.r.t. Hebb_{t-1}, or null (not needed)
  T* dE;         // [B, N, N] gradient w.r.t. E_{t-1}, or null
  T* ga;         // [B, N] gradient w.r.t. the pre-activation a_t
  T* ghp;        // [B, N] gradient w.r.t. h_{t-1}, except the term ga W^T
  Accumulators<T> acc;  // alpha: [threads, N * N] or [threads] for a scalar alpha
};

template <typename T>
void backward(const Step<T>& s, const Grad<T>& g) {
  const int64_t N = s.N, NN = N * N, K = s.K;
  const bool retro = s.neuromod == RETRO;
  int team = 1;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && s.B > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    team = omp_get_num_threads();
    Work<T> w(N, K);
    bind_accumulators(g.acc, tid, NN, K, N, s.scalar_alpha, w);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      const bool more = b + 1 < s.B;
      ElemGrad<T> e;
      e.H = s.H + b * NN;
      e.E = retro ? s.E + b * NN : nullptr;
      e.hp = s.hp + b * N;
      e.h = s.h + b * N;
      e.m = s.m ? s.m + b * K : nullptr;
      e.gH = g.gH ? g.gH + b * NN : nullptr;
      e.gE = g.gE ? g.gE + b * NN : nullptr;
      e.gh = g.gh ? g.gh + b * N : nullptr;
      e.gm = g.gm ? g.gm + b * K : nullptr;
      e.dH = g.dH ? g.dH + b * NN : nullptr;
      e.dE = g.dE ? g.dE + b * NN : nullptr;
      e.ga = g.ga + b * N;
      e.ghp = g.ghp + b * N;
      e.w = nullptr;  // ga W^T: one matrix product for the whole batch, in ATen
      e.nH = more ? e.H + NN : nullptr;
      e.ngH = more && e.gH ? e.gH + NN : nullptr;
      e.nG = more && e.dH ? e.dH + NN : nullptr;
      backward_elem(s, e, w);
    }
    store_scalars(g.acc, tid, s.scalar_alpha, w);
  }
  reduce_accumulators(g.acc, team, s.scalar_alpha ? 1 : NN, K, N);
}

// =============================================================================================
// Sequence drivers: every step of one batch element, element after element
// =============================================================================================

// A whole sequence: the step's shared fields (step.B, step.H, ... unused) plus the sequence.
template <typename T>
struct Sequence {
  Step<T> step;
  int64_t T_, I, interval;  // steps, input size, steps per checkpoint
  const T* x;               // [T, B, I]
  const T* w_in;            // [I, N]
  const T* w;               // [N, N]
  const T* bias;            // [N]
  const T* bm;              // [K] or null
  const T* h0;              // [B, N]
  const T* H0;              // [B, N, N]
  const T* E0;              // [B, N, N] (retroactive) or null
  T* hs;                    // [T, B, N] h_t
  T* ms;                    // [T, B, K] M_t, or null
  T* H_end;                 // [B, N, N] Hebb_T
  T* E_end;                 // [B, N, N] E_T (retroactive) or null
  T* H_ck;                  // [C, B, N, N], C = ceil(T / interval): Hebb before step c interval
  T* E_ck;                  // idem for E (retroactive); both null when not needed
};

// h_t and M_t of one element at step t from its incoming state (h_{t-1}, Hebb_{t-1}):
// a = b + x_t W_in + h_{t-1} W + y, h = tanh(a), M = tanh(h W_m^T + b_m). y: scratch [N].
template <typename T>
void activations_elem(const Sequence<T>& q, int64_t t, int64_t b, const T* H, const T* hp,
                      T* __restrict__ h, T* m, T* __restrict__ y) {
  const Step<T>& s = q.step;
  const int64_t N = s.N, B = s.B, K = s.K;
  plastic_input_elem(s, H, hp, y);
  if (s.scalar_alpha) {
    const T a_s = s.alpha[0];
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) y[j] *= a_s;
  }
  row_combination<T>(N, q.w, nullptr, hp, h);  // h_{t-1} W
  const T* x = q.x + (t * B + b) * q.I;
  for (int64_t k = 0; k < q.I; ++k) {
    const T xk = x[k];
    const T* __restrict__ wk = q.w_in + k * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) y[j] += xk * wk[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) h[j] = (q.bias[j] + y[j]) + h[j];
  tanh_inplace(h, N);
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict__ wk = s.wm + k * N;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) sum += wk[j] * h[j];
    m[k] = tanh_of(q.bm[k] + sum);
  }
}

template <typename T>
inline const T* h_before(const Sequence<T>& q, int64_t t, int64_t b) {
  const int64_t N = q.step.N;
  return t == 0 ? q.h0 + b * N : q.hs + ((t - 1) * q.step.B + b) * N;
}

template <typename T>
void sequence_forward(const Sequence<T>& q) {
  const Step<T>& s = q.step;
  const int64_t N = s.N, NN = N * N, B = s.B, K = s.K;
  const bool retro = s.neuromod == RETRO;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && B > 1)
  {
    std::vector<T> traces(4 * NN), y(N), r(N), d(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const T* H = q.H0 + b * NN;
      const T* E = retro ? q.E0 + b * NN : nullptr;
      for (int64_t t = 0; t < q.T_; ++t) {
        if (q.H_ck && t % q.interval == 0) {
          const int64_t c = t / q.interval;
          std::memcpy(q.H_ck + (c * B + b) * NN, H, NN * sizeof(T));
          if (retro) std::memcpy(q.E_ck + (c * B + b) * NN, E, NN * sizeof(T));
        }
        const T* hp = h_before(q, t, b);
        T* h = q.hs + (t * B + b) * N;
        T* m = K ? q.ms + (t * B + b) * K : nullptr;
        activations_elem(q, t, b, H, hp, h, m, y.data());
        // Ping-pong between two slices; the last step writes straight into the outputs.
        const bool last = t + 1 == q.T_;
        T* Hn = last ? q.H_end + b * NN : traces.data() + (t % 2) * NN;
        T* En = retro ? (last ? q.E_end + b * NN : traces.data() + (2 + t % 2) * NN) : nullptr;
        update_elem(s, H, E, hp, h, m, Hn, En, r.data(), d.data());
        H = Hn;
        E = En;
      }
    }
  }
}

template <typename T>
struct SequenceGrad {
  const T* ghs;  // [T, B, N] gradient w.r.t. h_t, or null
  const T* gms;  // [T, B, K] gradient w.r.t. M_t, or null
  const T* gH;   // [B, N, N] gradient w.r.t. Hebb_T, or null
  const T* gE;   // [B, N, N] gradient w.r.t. E_T, or null
  T* ga;         // [T, B, N] gradient w.r.t. the pre-activations a_t
  T* gh0;        // [B, N] gradient w.r.t. h_0
  T* gH0;        // [B, N, N] gradient w.r.t. Hebb_0, or null (not needed)
  T* gE0;        // [B, N, N] gradient w.r.t. E_0, or null
  Accumulators<T> acc;  // alpha: [threads, N * N] or [threads] for a scalar alpha
};

// Backward through time, element by element: for each segment of `interval` steps (last one
// first), its incoming traces are replayed from the checkpoint into a per-thread buffer, then
// its steps are differentiated in reverse. An element's traces, trace gradients and the
// weights stay in cache for the whole episode.
template <typename T>
void sequence_backward(const Sequence<T>& q, const SequenceGrad<T>& g) {
  const Step<T>& s = q.step;
  const int64_t N = s.N, NN = N * N, B = s.B, K = s.K, L = q.interval;
  const bool retro = s.neuromod == RETRO;
  const int64_t A = s.scalar_alpha ? 1 : NN;
  int team = 1;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && B > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    team = omp_get_num_threads();
    Work<T> w(N, K);
    bind_accumulators(g.acc, tid, A, K, N, s.scalar_alpha, w);
    // Traces of the current segment, then two slices each for the ping-pong of dHebb and dE.
    std::vector<T> seg_H(L * NN), seg_E(retro ? L * NN : 0), grads(4 * NN);
    std::vector<T> gh(N), carry(N), r(N), d(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const T* gH = g.gH ? g.gH + b * NN : nullptr;  // gradient reaching Hebb_t
      const T* gE = g.gE ? g.gE + b * NN : nullptr;
      std::fill(carry.begin(), carry.end(), T(0));  // gradient reaching h_t from step t + 1
      int flip = 0;
      for (int64_t start = ((q.T_ - 1) / L) * L; start >= 0; start -= L) {
        const int64_t stop = std::min(start + L, q.T_), c = start / L;
        std::memcpy(seg_H.data(), q.H_ck + (c * B + b) * NN, NN * sizeof(T));
        if (retro) std::memcpy(seg_E.data(), q.E_ck + (c * B + b) * NN, NN * sizeof(T));
        for (int64_t t = start; t + 1 < stop; ++t) {
          const int64_t k = t - start;
          update_elem(s, seg_H.data() + k * NN, retro ? seg_E.data() + k * NN : nullptr,
                      h_before(q, t, b), q.hs + (t * B + b) * N,
                      K ? q.ms + (t * B + b) * K : nullptr, seg_H.data() + (k + 1) * NN,
                      retro ? seg_E.data() + (k + 1) * NN : nullptr, r.data(), d.data());
        }
        for (int64_t t = stop - 1; t >= start; --t) {
          const int64_t k = t - start;
          const bool need_traces = t > 0 || g.gH0 != nullptr;
          const T* ghs_t = g.ghs ? g.ghs + (t * B + b) * N : nullptr;
          for (int64_t j = 0; j < N; ++j) gh[j] = carry[j] + (ghs_t ? ghs_t[j] : T(0));
          ElemGrad<T> e;
          e.H = seg_H.data() + k * NN;
          e.E = retro ? seg_E.data() + k * NN : nullptr;
          e.hp = h_before(q, t, b);
          e.h = q.hs + (t * B + b) * N;
          e.m = K ? q.ms + (t * B + b) * K : nullptr;
          e.gH = gH;
          e.gE = gE;
          e.gh = gh.data();
          e.gm = g.gms ? g.gms + (t * B + b) * K : nullptr;
          // The first step writes the gradients of the initial traces straight to the output.
          const bool first = t == 0;
          e.dH = !need_traces ? nullptr : first ? g.gH0 + b * NN : grads.data() + flip * NN;
          e.dE = !need_traces || !retro ? nullptr
                 : first                ? g.gE0 + b * NN
                                        : grads.data() + (2 + flip) * NN;
          e.ga = g.ga + (t * B + b) * N;
          e.ghp = carry.data();  // the gradient reaching h_{t-1}, ga W^T included
          e.w = q.w;
          e.nH = e.ngH = e.nG = nullptr;
          backward_elem(s, e, w);
          gH = e.dH;
          gE = e.dE;
          flip ^= 1;
        }
      }
      std::memcpy(g.gh0 + b * N, carry.data(), N * sizeof(T));
    }
    store_scalars(g.acc, tid, s.scalar_alpha, w);
  }
  reduce_accumulators(g.acc, team, A, K, N);
}

}  // namespace

#define HG_EXPORT(T, SUFFIX)                                                                  \
  extern "C" void hg_update_##SUFFIX(const Step<T>* s, T* Hn, T* En) { update(*s, Hn, En); } \
  extern "C" void hg_backward_##SUFFIX(const Step<T>* s, const Grad<T>* g) { backward(*s, *g); } \
  extern "C" void hg_sequence_forward_##SUFFIX(const Sequence<T>* q) { sequence_forward(*q); } \
  extern "C" void hg_sequence_backward_##SUFFIX(const Sequence<T>* q, const SequenceGrad<T>* g) { \
    sequence_backward(*q, *g);                                                                \
  }

HG_EXPORT(float, f32)
HG_EXPORT(double, f64)
