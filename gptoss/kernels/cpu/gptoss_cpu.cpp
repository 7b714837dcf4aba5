// Native CPU kernels for gpt-oss: MXFP4 expert products with the E2M1/E8M0 decode done in registers,
// fused bias + clamped SwiGLU + routing-weighted combine, and bf16 dense products (GEMV / small GEMM).
//
// One source, compiled once per instruction set (the Python loader picks the variant at run time):
//   -DGPTOSS_ISA_AVX512 -DGPTOSS_BF16DOT (also -mavx512bf16): bf16 models multiply with VDPBF16PS
//   -DGPTOSS_ISA_AVX512 (with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c)
//   -DGPTOSS_ISA_AVX2   (with -mavx2 -mfma -mf16c)
//   -DGPTOSS_ISA_NEON   (AArch64)
//   none                portable C++ (the compiler auto-vectorizes what it can)
// Arithmetic is float32 throughout. Threads come from OpenMP; on Linux this binds to the libgomp that
// torch already loaded (same soname), so torch's pool and ours are one pool.
//
// The plain-torch references these must match: gptoss.model.mxfp4.dequantize, gptoss.model.moe.
// experts_reference (with swiglu), torch.nn.functional.linear.

#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>
#include <type_traits>
#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(GPTOSS_ISA_AVX512) || defined(GPTOSS_ISA_AVX2)
#include <immintrin.h>
#endif
#if defined(GPTOSS_ISA_NEON)
#include <arm_neon.h>
#endif

#if defined(GPTOSS_ISA_AVX512)
#define VBYTES 64
#ifdef GPTOSS_BF16DOT
#define ISA_NAME "avx512bf16"
#else
#define ISA_NAME "avx512"
#endif
#define RT 4   // rows decoded per tile
#define TB 6   // tokens per register block
#elif defined(GPTOSS_ISA_AVX2)
#define VBYTES 32
#define ISA_NAME "avx2"
#define RT 3
#define TB 4
#elif defined(GPTOSS_ISA_NEON)
#define VBYTES 16
#define ISA_NAME "neon"
#define RT 4
#define TB 6
#else
#define VBYTES 16
#define ISA_NAME "portable"
#define RT 2
#define TB 4
#endif

#define VW (VBYTES / 4)  // floats a vector
#ifndef PF_BYTES
#define PF_BYTES 32768  // default: how far ahead of the decode the weights are prefetched
#endif
// Tuning the loader may set (gptoss_set_tuning) from what it measured on this CPU; neither changes a result.
static int64_t g_pf = PF_BYTES;   // prefetch distance in bytes
static int64_t g_chunks = 16;     // row chunks a thread, on average, that the few-token products hand out

typedef float vf __attribute__((vector_size(VBYTES)));                          // in registers
typedef float vf_u __attribute__((vector_size(VBYTES), aligned(4), may_alias));  // unaligned memory

static inline vf vload(const float* p) { return *(const vf_u*)p; }
static inline vf vzero() { vf v; for (int i = 0; i < VW; i++) v[i] = 0.f; return v; }
static inline vf vbroadcast(const float* p) {  // *p in every lane (one load)
#if defined(GPTOSS_ISA_AVX512)
  return _mm512_set1_ps(*p);
#elif defined(GPTOSS_ISA_AVX2)
  return _mm256_broadcast_ss(p);
#elif defined(GPTOSS_ISA_NEON)
  return (vf)vld1q_dup_f32(p);
#else
  vf v;
  for (int i = 0; i < VW; i++) v[i] = *p;
  return v;
#endif
}
typedef int32_t vi __attribute__((vector_size(VBYTES)));

// exp(x) for x <= 0, as softmax needs it after the max is subtracted: 2**n * p(r) with r = x - n ln 2,
// |r| <= ln(2)/2, p the degree-6 Taylor polynomial (relative error ~1e-7); 0 below -87.
static inline vf vexp(vf x) {
  const vf lo = vzero() - 87.0f;
  const vi under = x < lo;  // all ones where x < -87 (bitwise selects: portable across GCC and clang)
  x = (vf)(((vi)x & ~under) | ((vi)lo & under));
  const vf t = x * 1.44269504088896341f;
  const vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2**23)
  const vf r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  vf p = vzero() + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf out = p * (vf)bits;
  return (vf)((vi)out & ~under);
}

static inline float vsum(vf v) {  // horizontal sum, with the ISA's own reduction where there is one
#if defined(GPTOSS_ISA_AVX512)
  return _mm512_reduce_add_ps(v);
#else
  float s = 0.f;
  for (int i = 0; i < VW; i++) s += v[i];
  return s;
#endif
}

static const float FP4[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// E8M0 biased exponent -> 2**(s - 127) as float32, exactly as torch.exp2 gives it (255 -> inf).
static inline float e8m0(uint8_t s) {
  uint32_t bits;
  if (s == 0) bits = 0x00400000u;          // 2**-127, subnormal
  else if (s == 255) bits = 0x7f800000u;   // 2**128 overflows to inf
  else bits = (uint32_t)s << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ------------------------------------------------------------------ decoders (one MXFP4 block, 32 values)
// Value i of a block is the nibble at bit 4*i of its 16 bytes read little-endian; value = FP4[code] * scale
// (the same product the reference computes, so bit-identical). Decoded into NV registers of VW floats.
#define NV (32 / VW)

static inline void decode_block_v(const uint8_t* blk, uint8_t s, vf* out) {
  const float scale = e8m0(s);
#if defined(GPTOSS_ISA_AVX512)
  const __m512 lut = _mm512_mul_ps(_mm512_loadu_ps(FP4), _mm512_set1_ps(scale));
  const __m512i q = _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i*)blk));
  const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
  const __m512i i01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i i23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  __m512i a = _mm512_srlv_epi32(_mm512_permutexvar_epi32(i01, q), sh);
  __m512i b = _mm512_srlv_epi32(_mm512_permutexvar_epi32(i23, q), sh);
  out[0] = _mm512_permutexvar_ps(a, lut);  // uses the low 4 bits of each index
  out[1] = _mm512_permutexvar_ps(b, lut);
#elif defined(GPTOSS_ISA_AVX2)
  const __m256 lut = _mm256_mul_ps(_mm256_loadu_ps(FP4), _mm256_set1_ps(scale));  // magnitudes
  const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i signbit = _mm256_set1_epi32((int)0x80000000u);
  uint32_t w[4];
  std::memcpy(w, blk, 16);
  for (int j = 0; j < 4; j++) {
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)w[j]), sh);
    __m256 mag = _mm256_permutevar8x32_ps(lut, v);  // low 3 bits: the magnitude code
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(v, 28), signbit);  // bit 3: the sign
    out[j] = _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
  }
#elif defined(GPTOSS_ISA_NEON)
  // Table lookup of 2*value as int8 (all E2M1 values are halves of small integers), then widen and scale
  // by scale/2: exact, since every product is a small integer times a power of two.
  static const int8_t twice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  const int8x16_t lut = vld1q_s8(twice);
  const uint8x16_t b = vld1q_u8(blk);
  const int8x16_t lo = vqtbl1q_s8(lut, vandq_u8(b, vdupq_n_u8(0x0F)));
  const int8x16_t hi = vqtbl1q_s8(lut, vshrq_n_u8(b, 4));
  const int8x16_t vs[2] = {vzip1q_s8(lo, hi), vzip2q_s8(lo, hi)};
  const float32x4_t half = vdupq_n_f32(scale * 0.5f);
  for (int j = 0; j < 2; j++) {
    int16x8_t w0 = vmovl_s8(vget_low_s8(vs[j])), w1 = vmovl_s8(vget_high_s8(vs[j]));
    out[4 * j + 0] = (vf)vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0))), half);
    out[4 * j + 1] = (vf)vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w0))), half);
    out[4 * j + 2] = (vf)vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1))), half);
    out[4 * j + 3] = (vf)vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w1))), half);
  }
#else
  float tmp[32];
  for (int j = 0; j < 16; j++) {
    tmp[2 * j] = FP4[blk[j] & 0x0F] * scale;
    tmp[2 * j + 1] = FP4[blk[j] >> 4] * scale;
  }
  for (int v = 0; v < NV; v++) out[v] = vload(tmp + v * VW);
#endif
}

static inline void decode_block(const uint8_t* blk, uint8_t s, float* out) {
  vf v[NV];
  decode_block_v(blk, s, v);
  for (int i = 0; i < NV; i++) *(vf_u*)(out + i * VW) = v[i];
}

// 32 bfloat16 values -> NV registers of float32.
static inline void decode_bf16_v(const uint16_t* src, vf* out) {
#if defined(GPTOSS_ISA_AVX512)
  for (int i = 0; i < 2; i++)
    out[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + 16 * i))), 16));
#elif defined(GPTOSS_ISA_AVX2)
  for (int i = 0; i < 4; i++)
    out[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(src + 8 * i))), 16));
#elif defined(GPTOSS_ISA_NEON)
  for (int i = 0; i < 8; i++) out[i] = (vf)vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(src + 4 * i), 16));
#else
  float tmp[32];
  for (int j = 0; j < 32; j++) {
    uint32_t bits = (uint32_t)src[j] << 16;
    std::memcpy(tmp + j, &bits, 4);
  }
  for (int v = 0; v < NV; v++) out[v] = vload(tmp + v * VW);
#endif
}

static inline void decode_bf16(const uint16_t* src, int64_t n, float* out) {
  int64_t i = 0;
#if defined(GPTOSS_ISA_AVX512)
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i)));
    _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
#elif defined(GPTOSS_ISA_AVX2)
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(src + i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
  }
#elif defined(GPTOSS_ISA_NEON)
  for (; i + 4 <= n; i += 4) {
    uint32x4_t v = vshll_n_u16(vld1_u16(src + i), 16);
    vst1q_f32(out + i, vreinterpretq_f32_u32(v));
  }
#endif
  for (; i < n; i++) {
    uint32_t bits = (uint32_t)src[i] << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ------------------------------------------------------------------ weight sources (rows decoded to float32)
struct MXFP4Rows {
  const uint8_t* blocks;  // [rows, K/32, 16]
  const uint8_t* scales;  // [rows, K/32]
  int64_t K;
  void row(int64_t r, float* out) const {
    const int64_t g = K / 32;
    const uint8_t* b = blocks + r * g * 16;
    const uint8_t* s = scales + r * g;
    for (int64_t j = 0; j < g; j++) decode_block(b + 16 * j, s[j], out + 32 * j);
  }
  // columns [32j, 32j+32) of row r, into registers
  void chunk(int64_t r, int64_t j, vf* out) const {
    const int64_t g = K / 32;
    decode_block_v(blocks + (r * g + j) * 16, scales[r * g + j], out);
  }
  // Ask for the bytes a few rows ahead of column block j of row r (weights streamed from memory: the
  // decode consumes them too slowly for the hardware prefetcher to run far enough ahead).
  void prefetch(int64_t r, int64_t j) const {
    const int64_t g = K / 32;
    if ((j & 3) == 0) __builtin_prefetch(blocks + (r * g + j) * 16 + g_pf, 0, 1);
    if ((j & 63) == 0) __builtin_prefetch(scales + r * g + j + g_pf / 16, 0, 1);
  }
};

struct BF16Rows {
  const uint16_t* w;  // [rows, K]
  int64_t K;
  void row(int64_t r, float* out) const { decode_bf16(w + r * K, K, out); }
  void chunk(int64_t r, int64_t j, vf* out) const { decode_bf16_v(w + r * K + 32 * j, out); }
  void prefetch(int64_t r, int64_t j) const {
    if ((j & 1) == 0) __builtin_prefetch(w + r * K + 32 * j + g_pf / 2, 0, 1);
  }
};

struct F32Rows {
  const float* w;
  int64_t K;
  void row(int64_t r, float* out) const { std::memcpy(out, w + r * K, K * sizeof(float)); }
  void chunk(int64_t r, int64_t j, vf* out) const {
    for (int v = 0; v < NV; v++) out[v] = vload(w + r * K + 32 * j + v * VW);
  }
  void prefetch(int64_t, int64_t) const {}
};

// ------------------------------------------------------------------ the product kernel
// acc[r][t] = dot(wbuf row r, x row t) over K, for a block of R rows and T tokens held in registers.
template <int R, int T>
static inline void dot_block(const float* wbuf, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                             float* res /* [T][R] */) {
  vf acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[r][t] = vzero();
  int64_t k = 0;
  for (; k + VW <= K; k += VW) {
    vf w[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) w[r] = vload(wbuf + r * ldw + k);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
      vf xv = vload(x + t * ldx + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][t] += w[r] * xv;
    }
  }
  for (int t = 0; t < T; t++)
    for (int r = 0; r < R; r++) {
      float s = vsum(acc[r][t]);
      for (int64_t kk = k; kk < K; kk++) s += wbuf[r * ldw + kk] * x[t * ldx + kk];
      res[t * R + r] = s;
    }
}

template <int R>
static inline void dot_rows(const float* wbuf, int64_t ldw, const float* x, int64_t ldx, int64_t K, int64_t n,
                            float* y, int64_t ldy, const float* bias) {
  float res[TB * R];
  int64_t t = 0;
  for (; t + TB <= n; t += TB) {
    dot_block<R, TB>(wbuf, ldw, x + t * ldx, ldx, K, res);
    for (int i = 0; i < TB; i++)
      for (int r = 0; r < R; r++) y[(t + i) * ldy + r] = res[i * R + r] + (bias ? bias[r] : 0.f);
  }
  for (; t < n; t++) {
    dot_block<R, 1>(wbuf, ldw, x + t * ldx, ldx, K, res);
    for (int r = 0; r < R; r++) y[t * ldy + r] = res[r] + (bias ? bias[r] : 0.f);
  }
}

// Few tokens (decode): weights decoded 32 at a time straight into registers and used at once, R rows and
// T tokens at a time; nothing is written back. K must be a multiple of 32.
template <class Src, int R, int T>
static inline void fused_block(const Src& src, int64_t r, const float* x, int64_t ldx, int64_t K, float* res) {
  vf acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[i][t] = vzero();
  for (int64_t j = 0; j < K / 32; j++) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      vf w[NV];
      src.prefetch(r + i, j);
      src.chunk(r + i, j, w);
#pragma GCC unroll 8
      for (int t = 0; t < T; t++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[i][t] += w[v] * vload(x + t * ldx + 32 * j + v * VW);
    }
  }
  for (int t = 0; t < T; t++)
    for (int i = 0; i < R; i++) res[t * R + i] = vsum(acc[i][t]);
}

#define FR 2  // rows a fused block
#if VBYTES == 64 || defined(GPTOSS_ISA_NEON)
#define FT 8  // tokens up to which the fused path is taken (32 vector registers: 16 accumulators fit)
#else
#define FT 4  // (16 vector registers)
#endif

template <class Src, int T>
static void fused_rows(const Src& src, int64_t r0, int64_t r1, int64_t K, const float* x, int64_t ldx,
                       float* y, int64_t ldy, const float* bias) {
  float res[FR * T];
  int64_t r = r0;
  for (; r + FR <= r1; r += FR) {
    fused_block<Src, FR, T>(src, r, x, ldx, K, res);
    for (int t = 0; t < T; t++)
      for (int i = 0; i < FR; i++) y[t * ldy + (r - r0) + i] = res[t * FR + i] + (bias ? bias[r - r0 + i] : 0.f);
  }
  for (; r < r1; r++) {
    fused_block<Src, 1, T>(src, r, x, ldx, K, res);
    for (int t = 0; t < T; t++) y[t * ldy + (r - r0)] = res[t] + (bias ? bias[r - r0] : 0.f);
  }
}

// y[t, r - r0] (row stride ldy) = W[r] . x[t] + bias[r] for rows [r0, r1) and tokens [0, n).
// Tokens are taken in blocks that stay in L2; each row tile is decoded once per token block.
template <class Src>
static void rows_product(const Src& src, int64_t r0, int64_t r1, int64_t K, const float* x, int64_t ldx, int64_t n,
                         float* y, int64_t ldy, const float* bias, float* wbuf) {
  if (K % 32 == 0 && n <= FT) {
    switch (n) {
      case 1: fused_rows<Src, 1>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 2: fused_rows<Src, 2>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 3: fused_rows<Src, 3>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 4: fused_rows<Src, 4>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
#if FT >= 8
      case 5: fused_rows<Src, 5>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 6: fused_rows<Src, 6>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 7: fused_rows<Src, 7>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
      case 8: fused_rows<Src, 8>(src, r0, r1, K, x, ldx, y, ldy, bias); return;
#endif
      default: return;  // n == 0
    }
  }
  const int64_t token_block = std::max<int64_t>(TB, (int64_t)(768 * 1024 / (4 * K)) / TB * TB);
  for (int64_t t0 = 0; t0 < n; t0 += token_block) {
    const int64_t nt = std::min(token_block, n - t0);
    for (int64_t r = r0; r < r1; r += RT) {
      const int rt = (int)std::min<int64_t>(RT, r1 - r);
      for (int i = 0; i < rt; i++) src.row(r + i, wbuf + i * K);
      const float* b = bias ? bias + (r - r0) : nullptr;  // bias holds rows [r0, r1)
      float* yy = y + t0 * ldy + (r - r0);
      const float* xx = x + t0 * ldx;
      switch (rt) {
        case 1: dot_rows<1>(wbuf, K, xx, ldx, K, nt, yy, ldy, b); break;
        case 2: dot_rows<2>(wbuf, K, xx, ldx, K, nt, yy, ldy, b); break;
#if RT >= 3
        case 3: dot_rows<3>(wbuf, K, xx, ldx, K, nt, yy, ldy, b); break;
#endif
#if RT >= 4
        case 4: dot_rows<4>(wbuf, K, xx, ldx, K, nt, yy, ldy, b); break;
#endif
      }
    }
  }
}

// ------------------------------------------------------------------ bf16 dot products (AVX512-BF16)
// For a bf16 model, whose activations are bf16 already (rounding them to bf16 loses nothing its reference
// keeps): VDPBF16PS multiplies two bf16 pairs a lane into float32 sums, half the instructions of float32 FMAs.
// MXFP4 weights are decoded to bf16 by one table lookup (E2M1 values are exact in bf16), two blocks a register,
// and each block's E8M0 scale multiplies its partial sums in float32. Few tokens: the input is laid out in the
// order the decode produces ("pair order"), so no shuffle is spent on the weights; many tokens: weights are
// decoded a few rows at a time into a bf16 buffer and multiplied against the tokens held in L2.
#if defined(GPTOSS_BF16DOT)
#define HAVE_BF16DOT 1

static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch's .bfloat16() does
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);  // NaN stays NaN
  b += 0x7fffu + ((b >> 16) & 1u);
  return (uint16_t)(b >> 16);
}

static void to_bf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

// Length of one input row in pair order: K/32 blocks taken two at a time, 64 values a pair (zero past K).
static inline int64_t pair_len(int64_t K) { return ((K / 32 + 1) / 2) * 64; }

// x [K] (K % 32 == 0) -> pair order: for pair p, 32 words of even values then 32 of odd values; word m of a
// half is block 2p + m/16, value 2*(m%16) (+1 for the odd half) — the order fused_mx decodes weights in.
static void to_bf16_pairs(const float* x, int64_t K, uint16_t* out) {
  const int64_t g = K / 32, pairs = (g + 1) / 2;
  for (int64_t p = 0; p < pairs; p++) {
    uint16_t* o = out + 64 * p;
    for (int m = 0; m < 32; m++) {
      const int64_t blk = 2 * p + m / 16, idx = 32 * blk + 2 * (m % 16);
      o[m] = blk < g ? f32_to_bf16(x[idx]) : 0;
      o[32 + m] = blk < g ? f32_to_bf16(x[idx + 1]) : 0;
    }
  }
}

static const uint16_t FP4_BF16[32] = {
    0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0, 0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0,
    0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0, 0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};

static inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// R MXFP4 rows from row r against T tokens (row stride ldx): res[t * R + i]. X = uint16_t: the tokens in bf16
// pair order, multiplied with VDPBF16PS (the one-token path). X = float: the tokens in the float32 order of
// pairs_to_f32; the decoded bf16 weights are widened to float32 (even and odd words of each half) for FMAs,
// two a cycle against one VDPBF16PS every two on the Xeons measured (the 2-4 token path).
template <int R, int T, class X>
static inline void fused_mx(const uint8_t* blocks, const uint8_t* scales, int64_t g, int64_t r,
                            const X* xp, int64_t ldx, float* res) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
  const __m512i lut = _mm512_loadu_si512(FP4_BF16);
  const __m512i first = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), two = _mm512_set1_epi32(2);
  const __m512i tiny = _mm512_set1_epi32(0x00400000);  // E8M0 0 = 2**-127
  const __m512i top = _mm512_set1_epi32((int)0xFFFF0000u);
  const int64_t full = g / 2, pairs = (g + 1) / 2;
  __m512 sf[R];  // the scales of 16 blocks (8 pairs) of each row, as float32
  __m512i sidx = first;  // lanes 0-7 pick the pair's first block, 8-15 its second
  for (int64_t p = 0; p < pairs; p++) {
    if ((p & 7) == 0) {
      const int64_t left = g - 2 * p;
      const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) {
        const __m512i sv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, scales + (r + i) * g + 2 * p));
        sf[i] = _mm512_castsi512_ps(_mm512_mask_mov_epi32(_mm512_slli_epi32(sv, 23),
                                                          _mm512_cmpeq_epi32_mask(sv, _mm512_setzero_si512()), tiny));
      }
      sidx = first;
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const uint8_t* b = blocks + ((r + i) * g + 2 * p) * 16;
      if ((p & 1) == 0) __builtin_prefetch(b + g_pf, 0, 1);
      if ((p & 31) == 0) __builtin_prefetch(scales + (r + i) * g + 2 * p + g_pf / 16, 0, 1);
      __m512i wb;
      if (p < full) wb = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)b));
      else  // an odd last block: the upper half decodes zeros against zero inputs
        wb = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i*)b)));
      // VPERMW reads the low 5 bits of each index and the table repeats after 16 entries: bit 4 (the high
      // nibble's lowest bit) is ignored, so the low nibble needs no mask.
      const __m512i wlo = _mm512_permutexvar_epi16(wb, lut);
      const __m512i whi = _mm512_permutexvar_epi16(_mm512_srli_epi16(wb, 4), lut);
      const __m512 scale = _mm512_permutexvar_ps(sidx, sf[i]);
      if constexpr (std::is_same_v<X, uint16_t>) {
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
          const uint16_t* xt = xp + t * ldx + 64 * p;
          __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), as_bh(wlo), as_bh(_mm512_loadu_si512(xt)));
          d = _mm512_dpbf16_ps(d, as_bh(whi), as_bh(_mm512_loadu_si512(xt + 32)));
          acc[i][t] = _mm512_fmadd_ps(d, scale, acc[i][t]);
        }
      } else {
        const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(wlo, 16));
        const __m512 w1 = _mm512_castsi512_ps(_mm512_and_si512(wlo, top));
        const __m512 w2 = _mm512_castsi512_ps(_mm512_slli_epi32(whi, 16));
        const __m512 w3 = _mm512_castsi512_ps(_mm512_and_si512(whi, top));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
          const float* xt = xp + t * ldx + 64 * p;
          __m512 d = _mm512_mul_ps(w0, _mm512_loadu_ps(xt));
          d = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 16), d);
          d = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xt + 32), d);
          d = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xt + 48), d);
          acc[i][t] = _mm512_fmadd_ps(d, scale, acc[i][t]);
        }
      }
    }
    sidx = _mm512_add_epi32(sidx, two);
  }
  for (int t = 0; t < T; t++)
    for (int i = 0; i < R; i++) res[t * R + i] = _mm512_reduce_add_ps(acc[i][t]);
}

// R bf16 rows of w (row stride ldw) from row r against T bf16 tokens (row stride ldx), any K: res[t * R + i].
template <int R, int T>
static inline void dot_bh(const uint16_t* w, int64_t ldw, int64_t r, const uint16_t* x, int64_t ldx, int64_t K,
                          float* res) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const uint16_t* wr = w + (r + i) * ldw + k;
      if ((k & 63) == 0) __builtin_prefetch(wr + g_pf / 2, 0, 1);
      const __m512bh wv = as_bh(_mm512_loadu_si512(wr));
#pragma GCC unroll 8
      for (int t = 0; t < T; t++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, as_bh(_mm512_loadu_si512(x + t * ldx + k)));
    }
  }
  if (k < K) {
    const __mmask32 m = (__mmask32)((1ull << (K - k)) - 1);
    for (int i = 0; i < R; i++) {
      const __m512bh wv = as_bh(_mm512_maskz_loadu_epi16(m, w + (r + i) * ldw + k));
      for (int t = 0; t < T; t++)
        acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, as_bh(_mm512_maskz_loadu_epi16(m, x + t * ldx + k)));
    }
  }
  for (int t = 0; t < T; t++)
    for (int i = 0; i < R; i++) res[t * R + i] = _mm512_reduce_add_ps(acc[i][t]);
}

static inline void put(float* y, int64_t ldy, int64_t col, const float* res, int R, int T, const float* bias) {
  for (int t = 0; t < T; t++)
    for (int i = 0; i < R; i++) y[t * ldy + col + i] = res[t * R + i] + (bias ? bias[col + i] : 0.f);
}

// Few tokens, MXFP4: rows [r0, r1) -> y[t, r - r0] (X: see fused_mx).
template <int T, class X>
static void fused_mx_rows(const MXFP4Rows& src, int64_t r0, int64_t r1, const X* xp, int64_t ldx,
                          float* y, int64_t ldy, const float* bias) {
  const int64_t g = src.K / 32;
  float res[FR * T];
  int64_t r = r0;
  for (; r + FR <= r1; r += FR) {
    fused_mx<FR, T, X>(src.blocks, src.scales, g, r, xp, ldx, res);
    put(y, ldy, r - r0, res, FR, T, bias);
  }
  for (; r < r1; r++) {
    fused_mx<1, T, X>(src.blocks, src.scales, g, r, xp, ldx, res);
    put(y, ldy, r - r0, res, 1, T, bias);
  }
}

// bf16 rows [r0, r1) of w (stride ldw) against T tokens -> y[t, r - r0]; R rows a block.
template <int R, int T>
static void dot_bh_rows(const uint16_t* w, int64_t ldw, int64_t r0, int64_t r1, const uint16_t* x, int64_t ldx,
                        int64_t K, float* y, int64_t ldy, const float* bias) {
  float res[R * T];
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    dot_bh<R, T>(w, ldw, r, x, ldx, K, res);
    put(y, ldy, r - r0, res, R, T, bias);
  }
  for (; r < r1; r++) {
    dot_bh<1, T>(w, ldw, r, x, ldx, K, res);
    put(y, ldy, r - r0, res, 1, T, bias);
  }
}


// Pair-order bf16 tokens -> the float32 order fused_mx<..., float> reads (exact).
static void pairs_to_f32(const uint16_t* xp, int64_t n, int64_t lp, float* out) {
  for (int64_t t = 0; t < n; t++)
    for (int64_t q = 0; q < lp; q += 64) {
      const uint16_t* src = xp + t * lp + q;
      float* dst = out + t * lp + q;
      for (int half = 0; half < 2; half++)
        for (int l = 0; l < 16; l++) {
          dst[32 * half + l] = bf16_to_f32(src[32 * half + 2 * l]);
          dst[32 * half + 16 + l] = bf16_to_f32(src[32 * half + 2 * l + 1]);
        }
    }
}

#define TBH 6  // tokens a register block on the many-token path (4 rows x 6 tokens = 24 accumulators)

// bf16 rows [r0, r1) against n tokens; the fused (n <= FT) or blocked (more) schedule.
static void bf16_rows_product(const uint16_t* w, int64_t ldw, int64_t r0, int64_t r1, int64_t K, const uint16_t* x,
                              int64_t ldx, int64_t n, float* y, int64_t ldy, const float* bias) {
  switch (n) {
    case 0: return;
    case 1: dot_bh_rows<FR, 1>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 2: dot_bh_rows<FR, 2>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 3: dot_bh_rows<FR, 3>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 4: dot_bh_rows<FR, 4>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 5: dot_bh_rows<FR, 5>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 6: dot_bh_rows<FR, 6>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 7: dot_bh_rows<FR, 7>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    case 8: dot_bh_rows<FR, 8>(w, ldw, r0, r1, x, ldx, K, y, ldy, bias); return;
    default: break;
  }
  const int64_t token_block = std::max<int64_t>(TBH, (int64_t)(1024 * 1024 / (2 * K)) / TBH * TBH);
  const int64_t row_block = 16;  // rows of w kept in L1/L2 while a token block passes over them
  for (int64_t t0 = 0; t0 < n; t0 += token_block) {
    const int64_t nt = std::min(token_block, n - t0);
    for (int64_t rb = r0; rb < r1; rb += row_block) {
      const int64_t re = std::min(r1, rb + row_block);
      int64_t t = 0;
      float res[4 * TBH];
      for (; t + TBH <= nt; t += TBH) {
        const uint16_t* xx = x + (t0 + t) * ldx;
        float* yy = y + (t0 + t) * ldy;
        int64_t r = rb;
        for (; r + 4 <= re; r += 4) {
          dot_bh<4, TBH>(w, ldw, r, xx, ldx, K, res);
          put(yy, ldy, r - r0, res, 4, TBH, bias);
        }
        for (; r < re; r++) {
          dot_bh<1, TBH>(w, ldw, r, xx, ldx, K, res);
          put(yy, ldy, r - r0, res, 1, TBH, bias);
        }
      }
      for (; t < nt; t++) {
        const uint16_t* xx = x + (t0 + t) * ldx;
        float* yy = y + (t0 + t) * ldy;
        for (int64_t r = rb; r < re; r++) {
          dot_bh<1, 1>(w, ldw, r, xx, ldx, K, res);
          put(yy, ldy, r - r0, res, 1, 1, bias);
        }
      }
    }
  }
}

// MXFP4 rows [r0, r1) against n tokens: xp (pair order, stride pair_len(K)) when n <= FT, else xn (natural
// order, stride K) with rows decoded 16 at a time into wbuf (16 * K bf16).
static void mx_rows_product_bh(const MXFP4Rows& src, int64_t r0, int64_t r1, const uint16_t* xn, const uint16_t* xp,
                               int64_t n, float* y, int64_t ldy, const float* bias, uint16_t* wbuf) {
  const int64_t K = src.K, lp = pair_len(K);
  if (n == 0) return;
  if (n == 1) {  // one token: the bf16 dot product (fewer instructions a pair than widening the weights)
    fused_mx_rows<1>(src, r0, r1, xp, lp, y, ldy, bias);
    return;
  }
  if (n <= 4) {  // 2-4: widen the weights once, then float32 FMAs per token (more would spill registers)
    static thread_local std::vector<float> xf_buf;
    if ((int64_t)xf_buf.size() < n * lp) xf_buf.resize(n * lp);
    float* xf = xf_buf.data();
    pairs_to_f32(xp, n, lp, xf);
    switch (n) {
      case 2: fused_mx_rows<2>(src, r0, r1, xf, lp, y, ldy, bias); return;
      case 3: fused_mx_rows<3>(src, r0, r1, xf, lp, y, ldy, bias); return;
      default: fused_mx_rows<4>(src, r0, r1, xf, lp, y, ldy, bias); return;
    }
  }
  switch (n) {
    case 5: fused_mx_rows<5>(src, r0, r1, xp, lp, y, ldy, bias); return;
    case 6: fused_mx_rows<6>(src, r0, r1, xp, lp, y, ldy, bias); return;
    case 7: fused_mx_rows<7>(src, r0, r1, xp, lp, y, ldy, bias); return;
    case 8: fused_mx_rows<8>(src, r0, r1, xp, lp, y, ldy, bias); return;
    default: break;
  }
  const int64_t row_block = 16;
  for (int64_t rb = r0; rb < r1; rb += row_block) {
    const int64_t re = std::min(r1, rb + row_block);
    for (int64_t r = rb; r < re; r++) {  // decode (exact in bf16: a small integer times a power of two)
      const int64_t g = K / 32;
      for (int64_t j = 0; j < g; j++) {
        vf v[NV];
        src.chunk(r, j, v);
        uint16_t* o = wbuf + (r - rb) * K + 32 * j;
        _mm256_storeu_si256((__m256i*)o, (__m256i)_mm512_cvtneps_pbh(v[0]));
        _mm256_storeu_si256((__m256i*)(o + 16), (__m256i)_mm512_cvtneps_pbh(v[1]));
      }
    }
    bf16_rows_product(wbuf, K, 0, re - rb, K, xn, K, n, y + (rb - r0), ldy, bias ? bias + (rb - r0) : nullptr);
  }
}
#endif  // GPTOSS_BF16DOT

// ------------------------------------------------------------------ threads
static inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
static inline int thread_count() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Split [0, n) into `parts` ranges whose bounds are multiples of `align`; range `i`.
static inline void split(int64_t n, int parts, int i, int64_t align, int64_t* lo, int64_t* hi) {
  const int64_t units = (n + align - 1) / align;
  const int64_t a = units * i / parts, b = units * (i + 1) / parts;
  *lo = std::min(n, a * align);
  *hi = std::min(n, b * align);
}

// Rows [0, n) handed out `chunk` at a time (bounds multiples of `align`) to whichever thread asks next, so a
// thread the OS has descheduled (a shared machine, a busy core) holds back only the chunk it has, not a fixed
// share of the product. Which thread computes a row never changes the row's result.
struct Chunks {
  std::atomic<int64_t> next{0};
  int64_t n = 0, chunk = 1;
  Chunks(int64_t n_, int64_t chunk_) : n(n_), chunk(std::max<int64_t>(1, chunk_)) {}
  int64_t count() const { return (n + chunk - 1) / chunk; }
  bool take(int64_t* lo, int64_t* hi) {
    const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
    if (c * chunk >= n) return false;
    *lo = c * chunk;
    *hi = std::min(n, *lo + chunk);
    return true;
  }
};

// Chunk size for n rows over `threads` threads: about `per_thread` chunks each, a multiple of `align`.
static inline int64_t chunk_rows(int64_t n, int threads, int64_t per_thread, int64_t align) {
  const int64_t parts = std::max<int64_t>(1, threads * std::max<int64_t>(1, per_thread));
  const int64_t c = (n + parts - 1) / parts;
  return std::max<int64_t>(align, (c + align - 1) / align * align);
}

static void load_bias(const void* bias, int bias_dtype, int64_t off, int64_t n, float* out) {
  if (bias_dtype == 1) std::memcpy(out, (const float*)bias + off, n * sizeof(float));
  else decode_bf16((const uint16_t*)bias + off, n, out);
}

static inline float* aligned_floats(std::vector<float>& v, int64_t n) {
  if ((int64_t)v.size() < n + 16) v.resize(n + 16);
  return v.data();
}


// One row of D keys or values as float32 (a bf16 cache is widened).
template <class CT>
static inline void load_row(const CT* src, int64_t D, float* out);
template <>
inline void load_row<float>(const float* src, int64_t D, float* out) { std::memcpy(out, src, D * sizeof(float)); }
template <>
inline void load_row<uint16_t>(const uint16_t* src, int64_t D, float* out) { decode_bf16(src, D, out); }

// Attention with learned sinks for N new tokens over a paged cache that already holds their keys
// (gptoss.model.attention.paged_attention_reference); sinks [HQ]: one more logit a head whose probability mass is
// dropped. Pages kp/vp [blocks, bs, HK, D] (float32 or bf16); token i of
// sequence seq[i] at position pos[i] reads position p at page row table[seq[i] * width + p / bs] * bs + p % bs, for p in
// [lo, pos], lo = max(0, pos - window + 1) on a banded layer (window > 0) else 0. q [N, HQ, D], out [N, HQ, D] float32.
template <class CT>
static inline const float* paged_row(const CT* pages, int64_t row, int64_t HK, int64_t D, int64_t h0, int64_t n,
                                     float* buf) {
  load_row<CT>(pages + (row * HK + h0) * D, n, buf);
  return buf;
}
template <>
inline const float* paged_row<float>(const float* pages, int64_t row, int64_t HK, int64_t D, int64_t h0, int64_t,
                                     float*) {
  return pages + (row * HK + h0) * D;
}

// The per-query kernel: each of the N tokens idx[0..N) reads its keys on its own (what a decode step needs).
template <class CT>
static void paged_attention_impl(const float* q, const CT* kp, const CT* vp, int64_t bs, const int64_t* table,
                                 int64_t width, const int64_t* seq, const int64_t* pos, const int64_t* idx, int64_t N,
                                 int64_t HQ, int64_t HK, int64_t D, const float* sinks, float sm_scale, int64_t window,
                                 float* out, int nthreads) {
  const int64_t G = HQ / HK, DV = D / VW * VW;
  // A work item is one token and a block of HB kv heads, whose keys lie side by side in each page row: the
  // rows are read in order, a contiguous HB * D run each. Few tokens: the heads are split so every thread works.
  const int64_t parts = std::min<int64_t>(HK, std::max<int64_t>(1, (nthreads + N - 1) / N));
  int64_t HB = (HK + parts - 1) / parts;
  while (HK % HB) HB++;
  const int64_t blocks = HK / HB;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> sc, kb(HB * D + 16), acc(HB * G * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < N * blocks; item++) {
      const int64_t i = idx[item / blocks], h0 = (item % blocks) * HB;
      const int64_t p1 = pos[i], lo = window ? std::max<int64_t>(0, p1 - window + 1) : 0, S = p1 - lo + 1;
      const int64_t* tab = table + seq[i] * width;
      if ((int64_t)sc.size() < HB * G * S) sc.resize(HB * G * S);
      for (int64_t p = lo; p <= p1; p++) {
        const float* k = paged_row<CT>(kp, tab[p / bs] * bs + p % bs, HK, D, h0, HB * D, kb.data());
        for (int64_t hb = 0; hb < HB; hb++) {
          const float* kh = k + hb * D;
          for (int64_t g = 0; g < G; g++) {
            const float* qg = q + (i * HQ + (h0 + hb) * G + g) * D;
            vf a = vzero();
            for (int64_t d = 0; d < DV; d += VW) a += vload(qg + d) * vload(kh + d);
            float sum = vsum(a);
            for (int64_t d = DV; d < D; d++) sum += qg[d] * kh[d];
            sc[(hb * G + g) * S + (p - lo)] = sum * sm_scale;
          }
        }
      }
      for (int64_t hb = 0; hb < HB; hb++)
        for (int64_t g = 0; g < G; g++) {
          float* sg = sc.data() + (hb * G + g) * S;
          const float sink = sinks[(h0 + hb) * G + g];
          float m = sink;
          for (int64_t j = 0; j < S; j++) m = std::max(m, sg[j]);
          float denom = std::exp(sink - m);
          vf dv = vzero();
          int64_t j = 0;
          for (; j + VW <= S; j += VW) {
            const vf e = vexp(vload(sg + j) - m);
            *(vf_u*)(sg + j) = e;
            dv += e;
          }
          denom += vsum(dv);
          for (; j < S; j++) {
            sg[j] = std::exp(sg[j] - m);
            denom += sg[j];
          }
          const float inv = 1.f / denom;
          for (j = 0; j < S; j++) sg[j] *= inv;
        }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t p = lo; p <= p1; p++) {
        const float* v = paged_row<CT>(vp, tab[p / bs] * bs + p % bs, HK, D, h0, HB * D, kb.data());
        for (int64_t hb = 0; hb < HB; hb++) {
          const float* vh = v + hb * D;
          for (int64_t g = 0; g < G; g++) {
            const float w = sc[(hb * G + g) * S + (p - lo)];
            float* a = acc.data() + (hb * G + g) * D;
            const vf wv = vzero() + w;
            int64_t d = 0;
            for (; d < DV; d += VW) *(vf_u*)(a + d) = vload(a + d) + wv * vload(vh + d);
            for (; d < D; d++) a[d] += w * vh[d];
          }
        }
      }
      std::memcpy(out + (i * HQ + h0 * G) * D, acc.data(), HB * G * D * sizeof(float));
    }
  }
}

// ------------------------------------------------------------------ attention over query tiles
// Register block of the tiled attention: AMR rows by ANR vectors of C = A B (A scalars broadcast, B rows of vectors).
#if defined(GPTOSS_ISA_AVX512)
#define AMR 8
#define ANR 2
#elif defined(GPTOSS_ISA_AVX2)
#define AMR 6
#define ANR 2
#elif defined(GPTOSS_ISA_NEON)
#define AMR 6
#define ANR 4
#else
#define AMR 4
#define ANR 2
#endif
#define AKB 64  // keys a block of the tiled attention (a multiple of ANR * VW on every ISA)

// C [MR, ANR * VW] (+)= A [MR, K] B [K, ANR * VW]: lda, ldb, ldc in floats. The accumulators are named
// registers, the loops over them unrolled (an array of them GCC keeps in memory, stored every step).
template <int MR>
static inline void mk_block(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                            int64_t K, bool accumulate) {
  vf c[MR][ANR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < ANR; j++) c[i][j] = accumulate ? vload(C + i * ldc + j * VW) : vzero();
  for (int64_t k = 0; k < K; k++) {
    vf b[ANR];
#pragma GCC unroll 4
    for (int j = 0; j < ANR; j++) b[j] = vload(B + k * ldb + j * VW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const vf a = vbroadcast(A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < ANR; j++) c[i][j] += a * b[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < ANR; j++) *(vf_u*)(C + i * ldc + j * VW) = c[i][j];
}

// C [M, N] (+)= A [M, K] B [K, N], N a multiple of ANR * VW: a strip of B's columns stays in L1 across all rows.
static void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                       float* C, int64_t ldc, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += ANR * VW) {
    int64_t m = 0;
    for (; m + AMR <= M; m += AMR) mk_block<AMR>(A + m * lda, lda, B + n0, ldb, C + m * ldc + n0, ldc, K, accumulate);
    const float *a = A + m * lda, *b = B + n0;
    float* c = C + m * ldc + n0;
    switch (M - m) {
      case 1: mk_block<1>(a, lda, b, ldb, c, ldc, K, accumulate); break;
      case 2: mk_block<2>(a, lda, b, ldb, c, ldc, K, accumulate); break;
      case 3: mk_block<3>(a, lda, b, ldb, c, ldc, K, accumulate); break;
#if AMR > 4
      case 4: mk_block<4>(a, lda, b, ldb, c, ldc, K, accumulate); break;
      case 5: mk_block<5>(a, lda, b, ldb, c, ldc, K, accumulate); break;
#endif
#if AMR > 6
      case 6: mk_block<6>(a, lda, b, ldb, c, ldc, K, accumulate); break;
      case 7: mk_block<7>(a, lda, b, ldb, c, ldc, K, accumulate); break;
#endif
      default: break;
    }
  }
}

// A tile is up to `tile` consecutive tokens of one sequence (its queries read each key once); a token alone in
// its sequence (decode) goes to the per-query kernel. Same arguments and result as paged_attention_impl.
//
// Work item (tile, kv head): rows r = (token of the tile, query head of the group), R of them. Keys in blocks of
// AKB from the tile's lowest visible position: S = Q K^T as a blocked product (K transposed into a buffer), the
// positions a row does not see set to -inf, then an online softmax per row (running max m, sum l, output O
// rescaled when m grows) that starts from the sink: m = sink, l = 1, O = 0; O += P V. Out: O / l.
template <class CT>
static void paged_attention_tiled(const float* q, const CT* kp, const CT* vp, int64_t bs, const int64_t* table,
                                  int64_t width, const int64_t* seq, const int64_t* pos, int64_t N, int64_t HQ,
                                  int64_t HK, int64_t D, const float* sinks, float sm_scale, int64_t window,
                                  float* out, int64_t tile, int nthreads) {
  const int64_t G = HQ / HK;
  std::vector<int64_t> t0, t1, single;  // tiles [t0, t1); tokens alone in their sequence
  for (int64_t i = 0; i < N;) {
    int64_t j = i + 1;
    while (j < N && seq[j] == seq[i]) j++;
    if (j - i == 1) {
      single.push_back(i);
    } else {
      const int64_t parts = (j - i + tile - 1) / tile;  // near-equal tiles of at most `tile` tokens
      for (int64_t t = 0; t < parts; t++) {
        t0.push_back(i + (j - i) * t / parts);
        t1.push_back(i + (j - i) * (t + 1) / parts);
      }
    }
    i = j;
  }
  if (!single.empty())
    paged_attention_impl<CT>(q, kp, vp, bs, table, width, seq, pos, single.data(), (int64_t)single.size(), HQ, HK, D,
                             sinks, sm_scale, window, out, nthreads);
  const int64_t tiles = (int64_t)t0.size();
  if (!tiles) return;
  const int64_t strip = ANR * VW, DP = (D + strip - 1) / strip * strip, RM = tile * G;
#pragma omp parallel num_threads(nthreads)
  {
    // per thread: queries [R, D], keys transposed [D, AKB], values [AKB, DP], scores [R, AKB], output [R, DP]
    std::vector<float> qs(RM * D), kt(D * AKB), vb(AKB * DP, 0.f), sc(RM * AKB), o(RM * DP), m(RM), l(RM), kb(D);
    std::vector<int64_t> rlo(RM), rhi(RM);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < tiles * HK; item++) {
      const int64_t t = item / HK, h = item % HK, a = t0[t], nt = t1[t] - a, R = nt * G;
      const int64_t* tab = table + seq[a] * width;
      int64_t lo = pos[a], hi = 0;
      for (int64_t j = 0; j < nt; j++) {
        const int64_t p1 = pos[a + j], p0 = window ? std::max<int64_t>(0, p1 - window + 1) : 0;
        lo = std::min(lo, p0);
        hi = std::max(hi, p1);
        for (int64_t g = 0; g < G; g++) {
          const int64_t r = j * G + g;
          rlo[r] = p0;
          rhi[r] = p1;
          std::memcpy(qs.data() + r * D, q + ((a + j) * HQ + h * G + g) * D, D * sizeof(float));
          m[r] = sinks[h * G + g];
          l[r] = 1.f;
        }
      }
      std::fill(o.begin(), o.begin() + R * DP, 0.f);
      for (int64_t base = lo; base <= hi; base += AKB) {
        const int64_t nk = std::min<int64_t>(AKB, hi - base + 1);
        for (int64_t k = 0; k < nk; k++) {
          const int64_t p = base + k, row = tab[p / bs] * bs + p % bs;
          const float* kr = paged_row<CT>(kp, row, HK, D, h, D, kb.data());
          for (int64_t d = 0; d < D; d++) kt[d * AKB + k] = kr[d];
          const float* vr = paged_row<CT>(vp, row, HK, D, h, D, kb.data());
          std::memcpy(vb.data() + k * DP, vr, D * sizeof(float));
        }
        for (int64_t k = nk; k < AKB; k++)
          for (int64_t d = 0; d < D; d++) kt[d * AKB + k] = 0.f;
        small_gemm(R, AKB, D, qs.data(), D, kt.data(), AKB, sc.data(), AKB, false);
        for (int64_t r = 0; r < R; r++) {
          float* s = sc.data() + r * AKB;
          const int64_t k0 = std::max<int64_t>(0, rlo[r] - base), k1 = std::min<int64_t>(AKB, rhi[r] - base + 1);
          if (k1 <= k0) {  // no visible key in this block
            std::fill(s, s + AKB, 0.f);
            continue;
          }
          for (int64_t k = 0; k < k0; k++) s[k] = -INFINITY;
          for (int64_t k = k1; k < AKB; k++) s[k] = -INFINITY;
          vf mv = vzero() - INFINITY;
          const vf scale = vzero() + sm_scale;
          for (int64_t k = 0; k < AKB; k += VW) {
            const vf x = vload(s + k) * scale;
            *(vf_u*)(s + k) = x;
            mv = (vf)(((vi)mv & (vi)(mv >= x)) | ((vi)x & ~(vi)(mv >= x)));  // max, lane by lane
          }
          float bm = m[r];
          for (int i = 0; i < VW; i++) bm = std::max(bm, mv[i]);
          if (bm > m[r]) {
            const float alpha = std::exp(m[r] - bm);
            l[r] *= alpha;
            const vf av = vzero() + alpha;
            float* orow = o.data() + r * DP;
            for (int64_t d = 0; d < DP; d += VW) *(vf_u*)(orow + d) = vload(orow + d) * av;
            m[r] = bm;
          }
          const vf mm = vzero() + m[r];
          vf lv = vzero();
          for (int64_t k = 0; k < AKB; k += VW) {
            const vf e = vexp(vload(s + k) - mm);
            *(vf_u*)(s + k) = e;
            lv += e;
          }
          l[r] += vsum(lv);
        }
        small_gemm(R, DP, nk, sc.data(), AKB, vb.data(), DP, o.data(), DP, true);
      }
      for (int64_t r = 0; r < R; r++) {
        const int64_t j = r / G, g = r % G;
        float* dst = out + ((a + j) * HQ + h * G + g) * D;
        const float inv = 1.f / l[r];
        for (int64_t d = 0; d < D; d++) dst[d] = o[r * DP + d] * inv;
      }
    }
  }
}

extern "C" {

const char* gptoss_isa() { return ISA_NAME; }

int gptoss_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Set the prefetch distance (bytes; 0 keeps it) and the chunks a thread of the few-token products (0 keeps it);
// returns the prefetch distance now in force. Tuning only: no result depends on either.
int64_t gptoss_set_tuning(int64_t pf_bytes, int64_t chunks_per_thread) {
  if (pf_bytes > 0) g_pf = pf_bytes;
  if (chunks_per_thread > 0) g_chunks = chunks_per_thread;
  return g_pf;
}

// out [rows, K] float32 = the MXFP4 rows decoded (for tests: must equal mxfp4.dequantize bit for bit).
// out [rows, K] float32 = the MXFP4 rows decoded, rows split across threads (also the slices torch's float32
// GEMM multiplies for experts with many tokens on CPUs without bf16 units).
void gptoss_mxfp4_dequantize(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t K, float* out,
                             int nthreads) {
  MXFP4Rows src{blocks, scales, K};
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; r++) src.row(r, out + r * K);
}

// y [n, M] = x [n, K] (float32) @ W^T + bias, W [M, K] given by weight_kind: 0 float32, 1 bfloat16,
// 2 MXFP4 (w = blocks [M, K/32, 16], w2 = scales [M, K/32]). bias_dtype: 0 none, 1 float32, 2 bfloat16.
void gptoss_linear(const float* x, int64_t n, int64_t K, const void* w, const void* w2, int weight_kind, int64_t M,
                   const void* bias, int bias_dtype, float* y, int nthreads, int bf16) {
  std::vector<float> bias_f;
  if (bias_dtype) {
    bias_f.resize(M);
    load_bias(bias, bias_dtype, 0, M, bias_f.data());
  }
  const float* b = bias_dtype ? bias_f.data() : nullptr;
  if (M * K * n < (int64_t)1 << 20) nthreads = 1;  // a small product (the router): waking threads costs more
#ifdef HAVE_BF16DOT
  if (bf16 && weight_kind != 0 && (weight_kind == 1 || K % 32 == 0)) {
    static thread_local std::vector<uint16_t> xn_buf, xp_buf;
    const bool mx = weight_kind == 2, pairs = mx && n <= FT;
    uint16_t *xn = nullptr, *xp = nullptr;
    if (pairs) {
      const int64_t lp = pair_len(K);
      if ((int64_t)xp_buf.size() < n * lp) xp_buf.resize(n * lp);
      xp = xp_buf.data();
      for (int64_t t = 0; t < n; t++) to_bf16_pairs(x + t * K, K, xp + t * lp);
    } else {
      if ((int64_t)xn_buf.size() < n * K) xn_buf.resize(n * K);
      xn = xn_buf.data();
      to_bf16(x, n * K, xn);
    }
    Chunks rows(M, chunk_rows(M, nthreads, n <= FT ? g_chunks : 4, 16));
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<uint16_t> wbuf(mx && !pairs ? 16 * K + 32 : 0);
      int64_t r0, r1;
      while (rows.take(&r0, &r1)) {
        if (mx)
          mx_rows_product_bh(MXFP4Rows{(const uint8_t*)w, (const uint8_t*)w2, K}, r0, r1, xn, xp, n, y + r0, M,
                             b ? b + r0 : nullptr, wbuf.data());
        else
          bf16_rows_product((const uint16_t*)w, K, r0, r1, K, xn, K, n, y + r0, M, b ? b + r0 : nullptr);
      }
    }
    return;
  }
#endif
  // Rows handed out in chunks (see Chunks); few tokens: many chunks, each streamed once from memory.
  Chunks rows(M, chunk_rows(M, nthreads, n <= FT ? g_chunks : 4, RT * 4));
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> wbuf(RT * K + 16);
    int64_t r0, r1;
    while (rows.take(&r0, &r1)) {
      if (weight_kind == 0) rows_product(F32Rows{(const float*)w, K}, r0, r1, K, x, K, n, y + r0, M, b ? b + r0 : nullptr, wbuf.data());
      else if (weight_kind == 1) rows_product(BF16Rows{(const uint16_t*)w, K}, r0, r1, K, x, K, n, y + r0, M, b ? b + r0 : nullptr, wbuf.data());
      else rows_product(MXFP4Rows{(const uint8_t*)w, (const uint8_t*)w2, K}, r0, r1, K, x, K, n, y + r0, M, b ? b + r0 : nullptr, wbuf.data());
    }
  }
}

// The experts of each token, weighted and summed (gptoss.model.moe.experts_reference):
//   t [n, H] float32; indices [n, k] int64; weights [n, k] float32;
//   mlp1: blocks [E, 2I, H/32, 16], scales [E, 2I, H/32], bias [E, 2I]; mlp2: [E, H, I/32, 16], [E, H, I/32], [E, H].
//   out [n, H] float32 (overwritten).
// Tokens are grouped by expert, so each selected expert's weights are read once a call; within an expert the
// rows are split across threads. Phase 1: h = t W1^T + b1, SwiGLU (clamped, +1 on the linear half,
// interleaved), phase 2: y = a W2^T + b2, out[token] += weight * y (experts in ascending order).
void gptoss_moe_experts(const float* t, int64_t n, int64_t H, int64_t I, const int64_t* indices,
                        const float* weights, int64_t k, int64_t E, const uint8_t* blocks1, const uint8_t* scales1,
                        const void* bias1, const uint8_t* blocks2, const uint8_t* scales2, const void* bias2,
                        int bias_dtype, float alpha, float limit, float* out, int nthreads, int bf16) {
  // Group (token, rank) pairs by expert: counting sort, tokens ascending within an expert.
  std::vector<int64_t> count(E + 1, 0), start(E + 1, 0);
  for (int64_t i = 0; i < n * k; i++) {
    int64_t e = indices[i];
    if (e >= 0 && e < E) count[e]++;
  }
  for (int64_t e = 0; e < E; e++) start[e + 1] = start[e] + count[e];
  const int64_t pairs = start[E];
  std::vector<int64_t> pair_token(pairs), pair_expert(pairs), fill(start.begin(), start.end() - 1);
  std::vector<float> pair_weight(pairs);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < k; j++) {
      int64_t e = indices[i * k + j];
      if (e < 0 || e >= E) continue;
      int64_t p = fill[e]++;
      pair_token[p] = i;
      pair_expert[p] = e;
      pair_weight[p] = weights[i * k + j];
    }
  std::vector<int64_t> active;
  for (int64_t e = 0; e < E; e++)
    if (count[e]) active.push_back(e);

  // Scratch (kept per calling thread, grown as needed): gathered inputs, h, activations.
  static thread_local std::vector<float> xs_buf, h_buf, a_buf;
  float* xs = aligned_floats(xs_buf, pairs * H);  // t rows gathered in pair order
  float* h = aligned_floats(h_buf, pairs * 2 * I);
  float* act = aligned_floats(a_buf, pairs * I);
  std::memset(out, 0, sizeof(float) * n * H);
  const int64_t G1 = H / 32, G2 = I / 32;
#ifdef HAVE_BF16DOT
  // bf16 inputs (a bf16 model): each pair's input row and activation row in bf16, in pair order for an expert
  // with few tokens (the fused decode) and in natural order for one with many.
  const bool bh = bf16 != 0;
  const int64_t lpH = pair_len(H), lpI = pair_len(I);
  static thread_local std::vector<uint16_t> xsn_buf, xsp_buf, acn_buf, acp_buf;
  uint16_t *xsn = nullptr, *xsp = nullptr, *acn = nullptr, *acp = nullptr;
  if (bh) {
    auto grow = [](std::vector<uint16_t>& v, int64_t len) { if ((int64_t)v.size() < len) v.resize(len); return v.data(); };
    xsn = grow(xsn_buf, pairs * H);
    xsp = grow(xsp_buf, pairs * lpH);
    acn = grow(acn_buf, pairs * I);
    acp = grow(acp_buf, pairs * lpI);
  }
#else
  const bool bh = false;
  (void)bf16;
#endif

  int64_t most = 0;  // tokens of the busiest expert: few means the one-token products, chunked finely
  for (int64_t e : active) most = std::max(most, count[e]);
  const int64_t per_thread = most <= FT ? g_chunks : 4;
  const int64_t chunk1 = chunk_rows(2 * I, nthreads, std::max<int64_t>(1, per_thread / (int64_t)std::max<size_t>(1, active.size())), 128);
  const int64_t chunks1 = (2 * I + chunk1 - 1) / chunk1, items1 = chunks1 * (int64_t)active.size();
  std::atomic<int64_t> next1{0};
  // phase 2 runs every active expert over a chunk of columns: with many experts, fewer and wider chunks (each
  // expert's call on a chunk has a fixed cost: its tokens' inputs laid out again)
  const int64_t per_thread2 = most <= FT ? std::max<int64_t>(1, g_chunks / (int64_t)std::max<size_t>(1, active.size())) : 4;
  Chunks cols(H, chunk_rows(H, nthreads, per_thread2, RT * 4));
  auto gather = [&](int64_t p) {
#ifdef HAVE_BF16DOT
    if (bh) {
      const float* row = t + pair_token[p] * H;
      if (count[pair_expert[p]] <= FT) to_bf16_pairs(row, H, xsp + p * lpH);
      else to_bf16(row, H, xsn + p * H);
      return;
    }
#endif
    std::memcpy(xs + p * H, t + pair_token[p] * H, H * sizeof(float));
  };
  // Few pairs (decode): gathered here, one barrier fewer for the threads
  const bool small = pairs * H <= ((int64_t)1 << 16);
  if (small)
    for (int64_t p = 0; p < pairs; p++) gather(p);
#pragma omp parallel num_threads(nthreads)
  {
    const int nt = thread_count(), id = thread_id();
    std::vector<float> wbuf(bh ? 16 : RT * std::max(H, I) + 16), b1(2 * I), b2(H), y;
#ifdef HAVE_BF16DOT
    std::vector<uint16_t> wbh(bh ? 16 * std::max(H, I) + 32 : 0);
#endif
    // gather (few pairs: done above, before the threads start)
    int64_t p0, p1;
    split(pairs, nt, id, 1, &p0, &p1);
    if (!small) {
      for (int64_t p = p0; p < p1; p++) gather(p);
#pragma omp barrier
    }
    // phase 1: (expert, chunk of W1 rows: pairs of gate/up rows) items, handed out to whichever thread asks
    int64_t r0, r1;
    int64_t item;
    while ((item = next1.fetch_add(1, std::memory_order_relaxed)) < items1) {
      const int64_t e = active[item / chunks1];
      r0 = (item % chunks1) * chunk1;
      r1 = std::min(2 * I, r0 + chunk1);
      const int64_t np = count[e], ps = start[e];
      load_bias(bias1, bias_dtype, e * 2 * I + r0, r1 - r0, b1.data());
      MXFP4Rows src{blocks1 + e * 2 * I * G1 * 16, scales1 + e * 2 * I * G1, H};
      float* hh = h + ps * 2 * I;
#ifdef HAVE_BF16DOT
      if (bh) mx_rows_product_bh(src, r0, r1, xsn + ps * H, xsp + ps * lpH, np, hh + r0, 2 * I, b1.data(), wbh.data());
      else
#endif
      rows_product(src, r0, r1, H, xs + ps * H, H, np, hh + r0, 2 * I, b1.data(), wbuf.data());
      for (int64_t p = 0; p < np; p++) {
        const float* hp = hh + p * 2 * I;
        float* ap = act + (ps + p) * I;
        for (int64_t j = r0 / 2; j < r1 / 2; j++) {
          float g = std::min(hp[2 * j], limit);
          float l = std::max(std::min(hp[2 * j + 1], limit), -limit);
          ap[j] = g / (1.0f + std::exp(-alpha * g)) * (l + 1.0f);
        }
#ifdef HAVE_BF16DOT
        if (bh) {  // this chunk's activations to bf16 (its columns start on a 64-value group of the pair order)
          const int64_t c0 = r0 / 2, c1 = r1 / 2, q = ps + p;
          if (np <= FT) to_bf16_pairs(act + q * I + c0, c1 - c0, acp + q * lpI + c0);
          else to_bf16(act + q * I + c0, c1 - c0, acn + q * I + c0);
        }
#endif
      }
    }
#pragma omp barrier
    // phase 2: chunks of W2 rows (output features) handed out; a chunk's columns of `out` take every expert's
    // contribution in ascending expert order, whichever thread has the chunk
    while (cols.take(&r0, &r1)) {
      for (int64_t e : active) {
        const int64_t np = count[e], ps = start[e];
        load_bias(bias2, bias_dtype, e * H + r0, r1 - r0, b2.data());
        MXFP4Rows src{blocks2 + e * H * G2 * 16, scales2 + e * H * G2, I};
        const int64_t w = r1 - r0;
        if ((int64_t)y.size() < np * w) y.resize(np * w);
#ifdef HAVE_BF16DOT
        if (bh) mx_rows_product_bh(src, r0, r1, acn + ps * I, acp + ps * lpI, np, y.data(), w, b2.data(), wbh.data());
        else
#endif
        rows_product(src, r0, r1, I, act + ps * I, I, np, y.data(), w, b2.data(), wbuf.data());
        for (int64_t p = 0; p < np; p++) {
          float* o = out + pair_token[ps + p] * H + r0;
          const float* yp = y.data() + p * w;
          const float wt = pair_weight[ps + p];
          for (int64_t c = 0; c < w; c++) o[c] += yp[c] * wt;
        }
      }
    }
  }
}


// out [rows, K] bf16 = the MXFP4 rows decoded (exact: every value is a small integer times a power of two),
// rows split across threads: the slices a GEMM library multiplies for experts with many tokens.
void gptoss_mxfp4_to_bf16(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t K, uint16_t* out,
                          int nthreads) {
  MXFP4Rows src{blocks, scales, K};
  const int64_t g = K / 32;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t j = 0; j < g; j++) {
      vf v[NV];
      src.chunk(r, j, v);
      uint16_t* o = out + r * K + 32 * j;
#if defined(HAVE_BF16DOT)
      _mm256_storeu_si256((__m256i*)o, (__m256i)_mm512_cvtneps_pbh(v[0]));
      _mm256_storeu_si256((__m256i*)(o + 16), (__m256i)_mm512_cvtneps_pbh(v[1]));
#else
      float tmp[32];
      for (int i = 0; i < NV; i++) *(vf_u*)(tmp + i * VW) = v[i];
      for (int i = 0; i < 32; i++) {  // exact values: the top half of the float32 bits, NaN kept a NaN
        uint32_t b;
        std::memcpy(&b, tmp + i, 4);
        o[i] = (uint16_t)(b >> 16) | (((b & 0x7fffffffu) > 0x7f800000u) ? 0x40 : 0);
      }
#endif
    }
  }
}

}  // extern "C"


// See paged_attention_impl. cache_kind: 1 float32 pages, 2 bf16 pages. tile > 0: the tokens of a sequence with
// several of them attend in tiles of up to `tile` queries (paged_attention_tiled); 0: every token on its own.
extern "C" void gptoss_paged_attention(const float* q, const void* kp, const void* vp, int cache_kind, int64_t bs,
                                       const int64_t* table, int64_t width, const int64_t* seq, const int64_t* pos,
                                       int64_t N, int64_t HQ, int64_t HK, int64_t D, const float* sinks, float sm_scale,
                                       int64_t window, float* out, int64_t tile, int nthreads) {
  if (tile > 0) {
    if (cache_kind == 2)
      paged_attention_tiled<uint16_t>(q, (const uint16_t*)kp, (const uint16_t*)vp, bs, table, width, seq, pos, N, HQ,
                                      HK, D, sinks, sm_scale, window, out, tile, nthreads);
    else
      paged_attention_tiled<float>(q, (const float*)kp, (const float*)vp, bs, table, width, seq, pos, N, HQ, HK, D,
                                   sinks, sm_scale, window, out, tile, nthreads);
    return;
  }
  std::vector<int64_t> all(N);
  for (int64_t i = 0; i < N; i++) all[i] = i;
  if (cache_kind == 2)
    paged_attention_impl<uint16_t>(q, (const uint16_t*)kp, (const uint16_t*)vp, bs, table, width, seq, pos,
                                   all.data(), N, HQ, HK, D, sinks, sm_scale, window, out, nthreads);
  else
    paged_attention_impl<float>(q, (const float*)kp, (const float*)vp, bs, table, width, seq, pos, all.data(), N, HQ,
                                HK, D, sinks, sm_scale, window, out, nthreads);
}
