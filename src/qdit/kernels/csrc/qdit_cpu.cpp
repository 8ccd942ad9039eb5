// qdit CPU kernels: dynamic int8 activation quantization and the group-wise u8 x s8 linear product on
// Intel AMX tiles, with the per-block scales applied inside the accumulation.
//
//   y[t, o] = bias[o] + sum_b sa[t,b] * sw[o,b] * ( P[t,o,b] + Asum[t,b] * d_w[o,b] - za[t,b] * Wsum'[o,b] )
//
// P is the integer dot product of one K block (AMX TDPBUSD, exact in int32), Asum the block's sum of
// activation codes, Wsum' = sum over the block of (w + d_w) (see qdit/kernels/formats.py for the
// derivation). The bracket is computed exactly in int32: for blocks of at most 128 columns every factor
// fits int16, so one vpdpwssd of the pairs (za, Asum) x (-Wsum', d_w) adds both corrections; larger blocks
// (up to 16383 columns) split Asum and Wsum' in base 128 and use two. The per-block epilogue is then one convert and two float operations per 16 outputs.
// With a single block (per-channel weights and per-token activations) the tiles accumulate the whole K
// and the epilogue runs once.
//
// Weights are stored "panel-major" for the tiles: for each panel of 32 output rows, for each K step of
// `ks` inputs, two 16-column B tiles in the VNNI order [ks/4][16][4] (signed int8, code - 2^(bits-1)).
// 4-bit weights keep the same order two codes per byte: within every 128-element chunk of that stream,
// byte i holds element i in its low nibble and element i + 64 in its high nibble (unsigned codes), so
// unpacking 64 bytes is two masks, a shift and two subtractions. A thread unpacks one panel (K x 32) into L1/L2 and reuses
// it for every row block of an L2 chunk of rows.
//
// The output is written in float32 or bfloat16 directly. The AMX path is used only when the CPU has
// AMX-INT8 (with AVX-512 VNNI and BF16) and the kernel grants the tile state; the Python side falls back
// to pure PyTorch otherwise.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/extension.h>
#include <unistd.h>

#include <cmath>
#include <cpuid.h>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// what the last epilogue does to the product before writing it: nothing, the GELU (see gelu_tanh16), or
// y = residual + gate * product (a DiT block's gated residual; gate per sample, residual per row)
constexpr int kEpiPlain = 0, kEpiGelu = 1, kEpiResidual = 2;
constexpr int64_t kActNone = 0, kActGeluTanh = 1;  // the fused output activation codes of the Python side
constexpr int kPanel = 32;  // output rows (N) per panel: two 16-column B tiles
constexpr int kRows = 32;   // activation rows (M) per block: two 16-row A tiles
constexpr int64_t kMaxBlock = 16383;  // the zero-point corrections' int16 pairs hold blocks up to this

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool cpu_has_amx_int8() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512dq = b & (1u << 17);
  const bool amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25), vnni = c & (1u << 11);
  if (!(avx512f && avx512bw && avx512dq && vnni && amx_tile && amx_int8)) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return a & (1u << 5);  // AVX512_BF16
}

bool request_amx() {
  // Linux hands out the AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA).
  constexpr long kReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool amx_available() {
  static const bool ok = cpu_has_amx_int8() && request_amx();
  return ok;
}

void configure_tiles(int ks) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 4; ++t) {  // C tiles: 16 rows x 16 int32
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  for (int t = 4; t < 6; ++t) {  // A tiles: 16 rows x ks bytes
    cfg.rows[t] = 16;
    cfg.colsb[t] = static_cast<uint16_t>(ks);
  }
  for (int t = 6; t < 8; ++t) {  // B tiles: ks/4 rows x 64 bytes (16 columns x 4)
    cfg.rows[t] = static_cast<uint8_t>(ks / 4);
    cfg.colsb[t] = 64;
  }
  // GCC may treat the fields as dead stores (its ldtilecfg builtin does not say it reads memory)
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// --- activation quantization ------------------------------------------------------------------------

// The same float operations as qdit.quant.primitives.qparams / quantize, so codes, scales and zero
// points are bit-identical with the PyTorch fake quantizer.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load16(const at::BFloat16* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline float load1(const float* p) { return *p; }
inline float load1(const at::BFloat16* p) { return static_cast<float>(*p); }

// round(x / s) exactly as IEEE division then round-half-even would give it, at the cost of a multiply:
// x * (1/s) is within a few ulps of x / s, so the two round alike unless the quotient sits within
// 2^-12 of a half-integer (|quotient| <= 2^15 here); only those lanes are divided for real.
inline __m512 round_div(__m512 x, __m512 s, __m512 inv) {
  const __m512 r = _mm512_mul_ps(x, inv);
  const __m512 q = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 dist = _mm512_abs_ps(_mm512_sub_ps(r, q));  // in [0, 0.5]
  const __mmask16 near = _mm512_cmp_ps_mask(dist, _mm512_set1_ps(0.5f - 1.0f / 4096), _CMP_GT_OQ);
  if (__builtin_expect(near != 0, 0))
    return _mm512_mask_roundscale_ps(q, near, _mm512_div_ps(x, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return q;
}

// Scale and zero point (without the storage offset) of up to 16 ranges at once, as qparams computes them.
inline void qparams16(__m512 mn, __m512 mx, bool symmetric, float lo, float hi, float* s_out, float* z_out) {
  const __m512 vhi = _mm512_set1_ps(hi);
  __m512 s = symmetric ? _mm512_div_ps(_mm512_max_ps(_mm512_abs_ps(mn), _mm512_abs_ps(mx)), vhi)
                       : _mm512_div_ps(_mm512_sub_ps(mx, mn), vhi);
  s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f), s);
  __m512 z = _mm512_setzero_ps();
  if (!symmetric) {
    const __m512 q = _mm512_div_ps(_mm512_xor_ps(mn, _mm512_set1_ps(-0.0f)), s);
    z = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(lo)), vhi);
  }
  _mm512_storeu_ps(s_out, s);
  _mm512_storeu_ps(z_out, z);
}

// min and max of n values, widened to contain 0
template <typename T>
inline void range_of(const T* src, int64_t n, float& mn, float& mx) {
  __m512 vmn = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 v = load16(src + k);
    vmn = _mm512_min_ps(vmn, v);
    vmx = _mm512_max_ps(vmx, v);
  }
  mn = std::fmin(mn, _mm512_reduce_min_ps(vmn));
  mx = std::fmax(mx, _mm512_reduce_max_ps(vmx));
  for (; k < n; ++k) {
    const float v = load1(src + k);
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
}

// Activation codes are stored in the order the A tiles load them: for each block of 32 rows, for each K
// step of `ks` columns, the 32 x ks bytes row-major, so that a tile (16 rows, stride ks) is 1 KB of
// consecutive bytes and a row block's K steps follow each other.
inline int64_t code_index(int64_t m, int64_t k, int64_t K, int64_t ks) {
  return (((m / kRows) * (K / ks) + k / ks) * kRows + m % kRows) * ks + k % ks;
}

// code_index(m, k) for one row m as a base plus a shift and mask (ks is a power of two).
struct RowIndex {
  int64_t base, step_bytes, mask;
  int shift;
  RowIndex(int64_t m, int64_t K, int64_t ks)
      : base(code_index(m, 0, K, ks)), step_bytes(kRows * ks), mask(ks - 1), shift(__builtin_ctzll(ks)) {}
  int64_t operator()(int64_t k) const { return base + (k >> shift) * step_bytes + (k & mask); }
};

struct ActOut {  // per (row, K block): sa, za (with the storage offset), Asum, and za | Asum << 16
  int64_t ks;  // the K step of the tile order of the codes
  float* sa;
  int32_t* za;
  int32_t* asum;
  int32_t* zc;
};

// One row: groups of `group` columns with scales s[G] and zero points z[G] (without the offset); the
// codes go to row m_local of `codes` (tile order), the per-block values to row m of `o`.
template <typename T>
inline void quantize_row(const T* src, int64_t K, int64_t group, int64_t block, const float* s, const float* z,
                         float offset, float lo, float hi, int64_t m, int64_t m_local, uint8_t* codes,
                         const ActOut& o) {
  const int64_t G = K / group, nb = K / block, ks = o.ks;
  const RowIndex at(m_local, K, ks);
  for (int64_t gi = 0; gi < G; ++gi) {
    const float sg = s[gi], zg = z[gi] + offset;
    const __m512 vs = _mm512_set1_ps(sg), vinv = _mm512_set1_ps(1.0f / sg), vz = _mm512_set1_ps(zg);
    const __m512 vlo = _mm512_set1_ps(lo + offset), vhi = _mm512_set1_ps(hi + offset);
    // 8-bit codes spanning [0, 255], 64 at a time: the saturating packs clamp, vpsadbw sums (K steps of
    // at least 16 columns keep every 16 consecutive codes together in the tile order)
    const bool full8 = lo + offset == 0.0f && hi + offset == 255.0f && block % 64 == 0 && ks >= 16;
    const __m512i vzi = _mm512_set1_epi32(static_cast<int32_t>(zg));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int64_t b0 = gi * group; b0 < (gi + 1) * group; b0 += block) {
      __m512 vsum = _mm512_setzero_ps();
      int64_t k = b0;
      int32_t sum = 0;
      if (full8) {
        __m512i vsad = _mm512_setzero_si512();
        for (; k < b0 + block; k += 64) {
          __m512i c[4];
          for (int i = 0; i < 4; ++i)
            c[i] = _mm512_add_epi32(_mm512_cvtps_epi32(round_div(load16(src + k + 16 * i), vs, vinv)), vzi);
          const __m512i w01 = _mm512_packus_epi32(c[0], c[1]), w23 = _mm512_packus_epi32(c[2], c[3]);
          const __m512i bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(w01, w23));
          vsad = _mm512_add_epi64(vsad, _mm512_sad_epu8(bytes, _mm512_setzero_si512()));
          if (ks >= 64) {
            _mm512_storeu_si512(codes + at(k), bytes);
          } else {
            alignas(64) uint8_t tmp[64];
            _mm512_store_si512(tmp, bytes);
            for (int i = 0; i < 64; i += 16)
              _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + at(k + i)), _mm_load_si128(reinterpret_cast<const __m128i*>(tmp + i)));
          }
        }
        sum = static_cast<int32_t>(_mm512_reduce_add_epi64(vsad));
      }
      for (; k + 16 <= b0 + block; k += 16) {
        __m512 q = round_div(load16(src + k), vs, vinv);
        q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, vz), vlo), vhi);
        vsum = _mm512_add_ps(vsum, q);  // integers below 2^24: exact
        const __m128i c = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
        if (ks % 16 == 0) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + at(k)), c);
        } else {
          alignas(16) uint8_t tmp[16];
          _mm_store_si128(reinterpret_cast<__m128i*>(tmp), c);
          for (int i = 0; i < 16; ++i) codes[at(k + i)] = tmp[i];
        }
      }
      sum += static_cast<int32_t>(_mm512_reduce_add_ps(vsum));
      for (; k < b0 + block; ++k) {
        const float q = std::fmin(std::fmax(std::nearbyint(load1(src + k) / sg) + zg, lo + offset), hi + offset);
        codes[at(k)] = static_cast<uint8_t>(q);
        sum += static_cast<int32_t>(q);
      }
      const int64_t e = m * nb + b0 / block;
      o.sa[e] = sg;
      o.za[e] = static_cast<int32_t>(zg);
      o.asum[e] = sum;
      o.zc[e] = static_cast<int32_t>((static_cast<uint32_t>(zg) & 0xFFFFu) | (static_cast<uint32_t>(sum) << 16));
    }
  }
}

// Ranges -> (s, z) for G groups, 16 at a time.
inline void qparams_groups(const float* mn, const float* mx, int64_t G, bool symmetric, float lo, float hi, float* s,
                           float* z) {
  for (int64_t g0 = 0; g0 < G; g0 += 16) {
    alignas(64) float a[16], b[16], so[16], zo[16];
    const int64_t n = std::min<int64_t>(16, G - g0);
    for (int i = 0; i < 16; ++i) {
      a[i] = i < n ? mn[g0 + i] : 0.0f;
      b[i] = i < n ? mx[g0 + i] : 0.0f;
    }
    qparams16(_mm512_load_ps(a), _mm512_load_ps(b), symmetric, lo, hi, so, zo);
    std::memcpy(s + g0, so, n * sizeof(float));
    std::memcpy(z + g0, zo, n * sizeof(float));
  }
}

// adaLN's input transform, applied to each row before its ranges and codes: LayerNorm over the row (no
// affine; biased variance, as torch), then * (1 + scale) + shift with the row's sample's rows of shift and
// 1 + scale. Rounded to bfloat16 after the norm (round_norm), the product (round_prod) and the sum
// (round_sum) where torch's bfloat16 operations would round, so that the values are the ones the unfused
// model quantizes (up to the last bits of the mean and variance).
struct AdaNorm {
  const float* shift = nullptr;   // [S, K]
  const float* scale1 = nullptr;  // 1 + scale, [S, K]
  int64_t tokens = 1;             // rows per sample
  float eps = 0.0f;
  bool round_norm = false, round_prod = false, round_sum = false;
  bool on() const { return shift != nullptr; }
};

inline __m512 round_bf16(__m512 v) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Row m of x (K values) through the transform into out (K floats).
template <typename T>
inline void ada_row(const T* src, int64_t K, const AdaNorm& a, int64_t m, float* out) {
  // the row as float32 into out (converted once), its sum; then the variance about the mean (no
  // cancellation), then the transform in place
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 km = K - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 v = load16(src + k, km);
    _mm512_mask_storeu_ps(out + k, km, v);
    acc = _mm512_add_ps(acc, v);
  }
  const float mean = _mm512_reduce_add_ps(acc) / static_cast<float>(K);
  const __m512 vmean = _mm512_set1_ps(mean);
  acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 km = K - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 d = _mm512_maskz_sub_ps(km, _mm512_maskz_loadu_ps(km, out + k), vmean);
    acc = _mm512_fmadd_ps(d, d, acc);
  }
  const float var = std::fmax(_mm512_reduce_add_ps(acc) / static_cast<float>(K), 0.0f);
  const float rstd = 1.0f / std::sqrt(var + a.eps);
  const __m512 vr = _mm512_set1_ps(rstd), vb = _mm512_set1_ps(-mean * rstd);
  const float* sh = a.shift + (m / a.tokens) * K;
  const float* sc = a.scale1 + (m / a.tokens) * K;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 km = K - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, out + k), vr, vb);
    if (a.round_norm) v = round_bf16(v);
    v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(km, sc + k));
    if (a.round_prod) v = round_bf16(v);
    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(km, sh + k));
    if (a.round_sum) v = round_bf16(v);
    _mm512_mask_storeu_ps(out + k, km, v);
  }
}

// Quantizes rows of x [M, K]. Ranges: per row and group (sample_rows == 0 and no given ranges), per
// group over each sample of `sample_rows` consecutive rows, or the given scale and zero point per row and
// group. A sample's ranges are computed by the thread that first needs them, right before its rows are
// quantized (so the second pass over the sample's rows reads them from L2).
template <typename T>
struct RowQuantizer {
  const T* x;
  int64_t M, K, group, block, sample_rows, G;
  int bits;
  bool symmetric;
  const float* given_scale;
  const int32_t* given_zero;
  float lo, hi, offset;
  AdaNorm ada;  // the input transform, when on

  struct Scratch {  // one per thread
    std::vector<float> work;  // mn, mx, s, z: 4 * G
    std::vector<float> sample_s, sample_z;
    std::vector<char> sample_done;
    std::vector<float> values;  // one transformed row (AdaNorm)
  };

  RowQuantizer(const T* x_, int64_t M_, int64_t K_, int64_t group_, int64_t block_, int bits_, bool symmetric_,
               int64_t sample_rows_, const float* given_scale_, const int32_t* given_zero_)
      : x(x_), M(M_), K(K_), group(group_), block(block_), sample_rows(sample_rows_), G(K_ / group_), bits(bits_),
        symmetric(symmetric_), given_scale(given_scale_), given_zero(given_zero_) {
    hi = symmetric ? static_cast<float>((1 << (bits - 1)) - 1) : static_cast<float>((1 << bits) - 1);
    lo = symmetric ? -static_cast<float>(1 << (bits - 1)) : 0.0f;
    offset = symmetric ? 128.0f : 0.0f;
  }

  Scratch scratch() const {
    Scratch sc;
    sc.work.resize(4 * G);
    if (ada.on()) sc.values.resize(K);
    if (sample_rows > 0) {
      const int64_t S = M / sample_rows;
      sc.sample_s.resize(S * G);
      sc.sample_z.resize(S * G);
      sc.sample_done.assign(S, 0);
    }
    return sc;
  }

  // Row m: codes to row m_local of `codes` (tile order).
  void row(int64_t m, int64_t m_local, uint8_t* codes, const ActOut& o, Scratch& sc) const {
    if (ada.on()) {
      float* buf = sc.values.data();
      row_of(m, m_local, codes, o, sc, [&](int64_t r) -> const float* {
        ada_row(x + r * K, K, ada, r, buf);
        return buf;
      });
    } else {
      row_of(m, m_local, codes, o, sc, [&](int64_t r) { return x + r * K; });
    }
  }

  // values(r): row r's values to quantize (each call may overwrite the previous one's)
  template <typename F>
  void row_of(int64_t m, int64_t m_local, uint8_t* codes, const ActOut& o, Scratch& sc, F&& values) const {
    float *mn = sc.work.data(), *mx = mn + G, *s = mn + 2 * G, *z = mn + 3 * G;
    if (sample_rows > 0) {
      const int64_t smp = m / sample_rows;
      float* ss = &sc.sample_s[smp * G];
      float* sz = &sc.sample_z[smp * G];
      if (!sc.sample_done[smp]) {  // one range per group over all of the sample's rows
        for (int64_t gi = 0; gi < G; ++gi) mn[gi] = mx[gi] = 0.0f;
        for (int64_t r = smp * sample_rows; r < (smp + 1) * sample_rows; ++r) {
          const auto* v = values(r);
          for (int64_t gi = 0; gi < G; ++gi) range_of(v + gi * group, group, mn[gi], mx[gi]);
        }
        qparams_groups(mn, mx, G, symmetric, lo, hi, ss, sz);
        sc.sample_done[smp] = 1;
      }
      std::memcpy(s, ss, G * sizeof(float));
      std::memcpy(z, sz, G * sizeof(float));
    }
    const auto* src = values(m);
    if (sample_rows == 0 && given_scale) {
      for (int64_t gi = 0; gi < G; ++gi) {
        s[gi] = given_scale[m * G + gi];
        z[gi] = static_cast<float>(given_zero[m * G + gi]) - offset;
      }
    } else if (sample_rows == 0) {
      for (int64_t gi = 0; gi < G; ++gi) {
        mn[gi] = mx[gi] = 0.0f;
        range_of(src + gi * group, group, mn[gi], mx[gi]);
      }
      qparams_groups(mn, mx, G, symmetric, lo, hi, s, z);
    }
    quantize_row(src, K, group, block, s, z, offset, lo, hi, m, m_local, codes, o);
  }
};

// A 64-byte aligned scratch buffer (tile loads want aligned rows).
struct AlignedBuffer {
  std::vector<uint8_t> raw;
  uint8_t* get(size_t bytes) {
    if (raw.size() < bytes + 64) raw.resize(bytes + 64);
    const uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    return reinterpret_cast<uint8_t*>((p + 63) & ~static_cast<uintptr_t>(63));
  }
};

// --- weight layout -------------------------------------------------------------------------------------

// Calls f(i, n, k) for every element of panel p in stream order: i counts within the panel, n is the
// output row and k the input column it holds (the one definition of the layout, for both directions).
template <typename F>
inline void for_each_in_panel(int64_t p, int64_t K, int64_t ks, F&& f) {
  int64_t i = 0;
  for (int64_t s = 0; s < K / ks; ++s)
    for (int j = 0; j < 2; ++j)
      for (int64_t r = 0; r < ks / 4; ++r)
        for (int c = 0; c < 16; ++c)
          for (int e = 0; e < 4; ++e, ++i) f(i, p * kPanel + j * 16 + c, s * ks + 4 * r + e);
}

// Unsigned codes [N, K] (or nibble-packed [N, K/2], even column low) -> the panel-major stream.
// 8 bits: signed bytes (code - 2^(bits-1)). 4 bits: unsigned nibbles, chunk-split as described above.
// With `inplace` (only when the stream has the input's size: whole panels, and nibble-packed input for 4-bit
// panels or one code per byte for 8-bit ones) the stream overwrites `codes`: each panel's bytes are the
// same rows' bytes of the input, read whole before they are written.
torch::Tensor prepack_weight(torch::Tensor codes, int64_t K, int64_t bits, int64_t ks, bool pack4, bool inplace) {
  TORCH_CHECK(codes.dtype() == torch::kUInt8 && codes.dim() == 2 && codes.is_contiguous(), "codes: uint8 [N, *]");
  TORCH_CHECK(ks > 0 && ks % 4 == 0 && K % ks == 0, "K step must divide K and be a multiple of 4");
  const int64_t N = codes.size(0);
  const bool packed_in = codes.size(1) != K;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t stream = panels * kPanel * K;  // bytes of signed int8, before nibble packing
  TORCH_CHECK(!pack4 || stream % 128 == 0, "4-bit panels need K * 32 to be a multiple of 128");
  const int64_t out_bytes = pack4 ? stream / 2 : stream;
  TORCH_CHECK(!inplace || (N % kPanel == 0 && codes.numel() == out_bytes), "in-place prepacking needs whole panels");
  auto out = inplace ? codes.view({-1}) : torch::zeros({out_bytes}, torch::kUInt8);
  const uint8_t* src = codes.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int offset = 1 << (bits - 1);
  const int64_t row_bytes = codes.size(1);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> tmp(kPanel * K);
    for (int64_t p = begin; p < end; ++p) {
      for_each_in_panel(p, K, ks, [&](int64_t i, int64_t n, int64_t k) {
        int code = offset;  // padding rows dequantize to 0
        if (n < N) code = packed_in ? (src[n * row_bytes + k / 2] >> ((k & 1) * 4)) & 0xF : src[n * row_bytes + k];
        tmp[i] = static_cast<int8_t>(code - (pack4 ? 0 : offset));
      });
      if (pack4) {
        uint8_t* o = dst + p * kPanel * K / 2;
        for (int64_t c = 0; c < kPanel * K; c += 128)
          for (int b = 0; b < 64; ++b)
            o[c / 2 + b] = static_cast<uint8_t>((tmp[c + b] & 0xF) | ((tmp[c + b + 64] & 0xF) << 4));
      } else {
        std::memcpy(dst + p * kPanel * K, tmp.data(), kPanel * K);
      }
    }
  });
  return out;
}

// The inverse: the panel-major stream back to unsigned codes [N, K] (for saving and fake quantization).
torch::Tensor unpack_weight(torch::Tensor stream, int64_t N, int64_t K, int64_t bits, int64_t ks, bool pack4) {
  auto out = torch::empty({N, K}, torch::kUInt8);
  const uint8_t* src = stream.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int offset = 1 << (bits - 1);
  const int64_t panels = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for_each_in_panel(p, K, ks, [&](int64_t i, int64_t n, int64_t k) {
        if (n >= N) return;
        int code;
        if (pack4) {
          const int64_t flat = p * kPanel * K + i, chunk = flat / 128, b = flat % 128;
          const uint8_t byte = src[chunk * 64 + (b % 64)];
          code = b < 64 ? (byte & 0xF) : (byte >> 4);
        } else {
          code = static_cast<int8_t>(src[p * kPanel * K + i]) + offset;
        }
        dst[n * K + k] = static_cast<uint8_t>(code);
      });
    }
  });
  return out;
}

// --- the AMX product ----------------------------------------------------------------------------------

inline void unpack_panel4(const uint8_t* src, int64_t bytes, int8_t* dst, int offset) {
  const __m512i mask = _mm512_set1_epi8(0x0F), off = _mm512_set1_epi8(static_cast<char>(offset));
  for (int64_t c = 0; c < bytes; c += 64) {  // 64 bytes -> 128 codes: low nibbles, then high nibbles
    const __m512i v = _mm512_loadu_si512(src + c);
    _mm512_store_si512(dst + 2 * c, _mm512_sub_epi8(_mm512_and_si512(v, mask), off));
    _mm512_store_si512(dst + 2 * c + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), mask), off));
  }
}

// 32 outputs of one row, 64-byte aligned, with non-temporal stores: the output is not read again here, so
// it skips the cache (and the read for ownership of every line).
inline void stream32(float* y, __m512 a0, __m512 a1) {
  _mm512_stream_ps(y, a0);
  _mm512_stream_ps(y + 16, a1);
}
inline void stream32(at::BFloat16* y, __m512 a0, __m512 a1) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(y), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(a1, a0)));
}
inline void store16(float* y, __mmask16 k, __m512 v) { _mm512_mask_storeu_ps(y, k, v); }
inline void store16(at::BFloat16* y, __mmask16 k, __m512 v) {
  _mm256_mask_storeu_epi16(y, k, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// GELU with the tanh approximation, as torch.nn.GELU(approximate="tanh") (DiT's MLP activation), fused
// into the last epilogue: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2 / pi) (x + 0.044715 x^3).
// exp by 2^n * e^r (|r| <= ln 2 / 2, degree-7 Taylor polynomial, relative error about 1e-7), the division
// by a 14-bit reciprocal and one Newton step; the exponent is clamped to +-80 so that every value stays
// a finite normal float (the GELU there is x, or 0: see gelu_tanh16).
inline __m512 exp16(__m512 v) {
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-80.0f)), _mm512_set1_ps(80.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), v);  // ln 2, split in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
inline __m512 gelu_tanh16(__m512 x) {
  const __m512 x2 = _mm512_mul_ps(x, x);
  // -2u = x * (-2 sqrt(2 / pi)) * (1 + 0.044715 x^2)
  const __m512 inner = _mm512_fmadd_ps(x2, _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.0f));
  const __m512 v = _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.5957691216057308f)), inner);
  const __m512 d = _mm512_add_ps(exp16(v), _mm512_set1_ps(1.0f));
  const __m512 r0 = _mm512_rcp14_ps(d);
  const __m512 r1 = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0f)));
  // beyond the clamp (-2u > 80, so x < about -5) the GELU is x * e^(2u): 0 in float unless |x| is huge,
  // where x * e^-80 would not be; x * 0 there (-0, or NaN for x = -inf, as torch). NaN compares false
  // and stays NaN through the product.
  const __mmask16 beyond = _mm512_cmp_ps_mask(v, _mm512_set1_ps(80.0f), _CMP_GT_OQ);
  return _mm512_mask_mul_ps(_mm512_mul_ps(x, r1), beyond, x, _mm512_setzero_ps());
}

struct ActSide {  // per (row, block), [Mp, nb]
  const float* sa;
  const int32_t* za;
  const int32_t* asum;
  const int32_t* zc;  // za | asum << 16 (blocks of at most 128 columns)
};
struct WeightSide {  // per (block, output), [nb, Np]
  const float* sw;
  // with nws = -(Wsum + B d_w), int16 pairs: wc = (nws, d_w) for blocks of at most 128 columns; for
  // larger ones wc1 = (d_w, 128 d_w) and wc2 = (nws mod 128, floor(nws / 128)), which the activation pairs
  // (Asum mod 128, floor(Asum / 128)) and (za, 128 za) turn into Asum d_w and za nws
  const int32_t* wc1;
  const int32_t* wc2;
  const int32_t* wc;
};

// The same GELU for bfloat16 outputs, whose rounding (relative 2^-9) hides errors far below it: e^v as
// 2^t (t = v log2 e, split into its nearest integer n and f in [-1/2, 1/2]) with a degree-4 Taylor
// polynomial for 2^f (relative error below 5e-5), the reciprocal without its Newton step (2^-14): 18
// vector operations instead of 27; the same clamp, tails, -0 and NaN as gelu_tanh16.
inline __m512 gelu_tanh16_bf16(__m512 x) {
  const __m512 x2 = _mm512_mul_ps(x, x);
  // -2u log2(e) = x * (c1 + c3 x^2)
  const __m512 inner = _mm512_fmadd_ps(x2, _mm512_set1_ps(-1.5957691216057308f * 0.044715f * 1.4426950408889634f),
                                       _mm512_set1_ps(-1.5957691216057308f * 1.4426950408889634f));
  const float clamp = 80.0f * 1.4426950408889634f;  // -2u = +-80, as gelu_tanh16
  const __m512 t0 = _mm512_mul_ps(x, inner);
  const __m512 t = _mm512_min_ps(_mm512_max_ps(t0, _mm512_set1_ps(-clamp)), _mm512_set1_ps(clamp));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(0.009618129107628477f);  // ln(2)^k / k!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550410866482158f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2402265069591007f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471805599453f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0f));
  const __mmask16 beyond = _mm512_cmp_ps_mask(t0, _mm512_set1_ps(clamp), _CMP_GT_OQ);
  return _mm512_mask_mul_ps(_mm512_mul_ps(x, _mm512_rcp14_ps(d)), beyond, x, _mm512_setzero_ps());
}
template <typename OutT>
inline __m512 gelu_for(__m512 x) {
  if constexpr (std::is_same_v<OutT, at::BFloat16>) {
    return gelu_tanh16_bf16(x);
  } else {
    return gelu_tanh16(x);
  }
}

// One block's epilogue for rows [r0, r1) of a 32 x 32 output tile: the block's exact integer sums
// P + Asum * d_w - za * Wsum' (cb: [32 rows][32 outputs] int32) times sa * sw, added to the accumulators
// (kFirst: to the bias instead); kLast writes the output rows instead of the accumulators.
struct EpiRows {
  const int32_t* cb;   // [32][32]
  const float* sa;     // act side at (m0, b), row stride nb
  const int32_t* zc;
  const int32_t* za;
  const int32_t* asum;
  int64_t nb;
  float* acc;  // [32][32]
};

// The gated residual of the last epilogue: row m (of M) adds residual[m] and is scaled by gate[m / tokens].
template <typename OutT>
struct Residual {
  const OutT* residual;  // [M, N], the output's dtype
  const OutT* gate;      // [M / tokens, N]
  int64_t tokens;
};

template <bool kPacked, bool kFirst, bool kLast, int kEpi, typename OutT>
inline void epilogue_rows(const EpiRows& e, int r0, int r1, const float* sw, const int32_t* wc, const int32_t* wc1,
                          const int32_t* wc2, __m512 bias0, __m512 bias1, OutT* y, int64_t ldy, int rows_valid,
                          __mmask16 km0, __mmask16 km1, const Residual<OutT>& res, int64_t m0, int64_t n0) {
  const __m512 sw0 = _mm512_loadu_ps(sw), sw1 = _mm512_loadu_ps(sw + 16);
  __m512i c0, c1, c2, c3;
  if constexpr (kPacked) {
    c0 = _mm512_loadu_si512(wc);
    c1 = _mm512_loadu_si512(wc + 16);
    c2 = c3 = c0;
  } else {
    c0 = _mm512_loadu_si512(wc1);
    c1 = _mm512_loadu_si512(wc1 + 16);
    c2 = _mm512_loadu_si512(wc2);
    c3 = _mm512_loadu_si512(wc2 + 16);
  }
  const int32_t* __restrict cb = e.cb;
  const float* __restrict sa = e.sa;
  float* __restrict acc = e.acc;
  const int64_t nb = e.nb;
  const bool stream = km0 == 0xFFFF && km1 == 0xFFFF && (reinterpret_cast<uintptr_t>(y) & 63) == 0 &&
                      ((ldy * static_cast<int64_t>(sizeof(OutT))) & 63) == 0;
  r1 = std::min(r1, rows_valid);  // padding rows are never written: no need to scale them
  for (int r = r0; r < r1; ++r) {
    __m512i p0 = _mm512_load_si512(cb + r * 32), p1 = _mm512_load_si512(cb + r * 32 + 16);
    if constexpr (kPacked) {
      const __m512i z = _mm512_set1_epi32(e.zc[r * nb]);
      p0 = _mm512_dpwssd_epi32(p0, z, c0);
      p1 = _mm512_dpwssd_epi32(p1, z, c1);
    } else {
      const uint32_t as = static_cast<uint32_t>(e.asum[r * nb]), za = static_cast<uint32_t>(e.za[r * nb]);
      const __m512i z1 = _mm512_set1_epi32(static_cast<int32_t>((as & 127u) | ((as >> 7) << 16)));
      const __m512i z2 = _mm512_set1_epi32(static_cast<int32_t>(za | (za << 23)));
      p0 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(p0, z1, c0), z2, c2);
      p1 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(p1, z1, c1), z2, c3);
    }
    const __m512 s = _mm512_set1_ps(sa[r * nb]);
    const __m512 base0 = kFirst ? bias0 : _mm512_load_ps(acc + r * 32);
    const __m512 base1 = kFirst ? bias1 : _mm512_load_ps(acc + r * 32 + 16);
    __m512 a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_mul_ps(s, sw0), base0);
    __m512 a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_mul_ps(s, sw1), base1);
    if constexpr (kLast) {
      if constexpr (kEpi == kEpiGelu) {
        a0 = gelu_for<OutT>(a0);
        a1 = gelu_for<OutT>(a1);
      } else if constexpr (kEpi == kEpiResidual) {
        const int64_t m = m0 + r;
        const OutT* g = res.gate + (m / res.tokens) * ldy + n0;
        const OutT* x = res.residual + m * ldy + n0;
        a0 = _mm512_fmadd_ps(a0, load16(g, km0), load16(x, km0));
        a1 = _mm512_fmadd_ps(a1, load16(g + 16, km1), load16(x + 16, km1));
      }
      if (stream) {
        stream32(y + r * ldy, a0, a1);
      } else {
        store16(y + r * ldy, km0, a0);
        store16(y + r * ldy + 16, km1, a1);
      }
    } else {
      _mm512_store_ps(acc + r * 32, a0);
      _mm512_store_ps(acc + r * 32 + 16, a1);
    }
  }
}

// kPacked: the zero-point corrections of a block in one VNNI instruction per 16 outputs (vpdpwssd of the
// int16 pairs (za, Asum) x (-(Wsum + B d_w), d_w), exact while B <= 128); otherwise two (see WeightSide).
//
// `rows(rb_begin, rb_end, buffer)` gives the codes of row blocks [rb_begin, rb_end) (tile order, one row
// block after the other): already quantized, or quantized then and there into the thread's buffer.
struct Split {  // contiguous row blocks per thread when there are enough of them, else contiguous panels
  int64_t T;
  bool by_rows;
  Split(int64_t row_blocks, int64_t panels) {
    T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), row_blocks * panels));
    by_rows = row_blocks >= 2 * T || row_blocks >= panels;
  }
};
// L2 blocking: a chunk of row blocks whose A bytes (about 512 KB) stay in L2 while the panels pass;
// each panel (in L1 / L2) serves every row block of the chunk.
inline int64_t row_chunk(int64_t K) { return std::max<int64_t>(1, (5 << 18) / (kRows * K)); }

// Where the time goes at group size 128 (1 thread, thread CPU clock, proj 2048 x 1152 x 1152 W8A8, measured
// by building variants and timing them in alternating processes): about 4.9 ms in all, of which 0.84 ms
// quantizes the activations; with the per-block epilogues skipped (all but the last) 3.7 ms, as much as
// per-channel weights. The epilogue's cost is its vector arithmetic (vpdpwssd, vcvtdq2ps, vmulps, vfmadd
// per 16 outputs and block; dropping two of the four saves about 0.65 ms), not the tile stores nor its
// placement. Tried and slower or no better: 16-row halves (1 x 2 tiles) with the accumulator tiles
// double-buffered across blocks (20-40% slower: 50% more tile loads); storing each accumulator tile right
// before its next block's first TDPBUSD instead of all four at the block boundary; running block b - 2's
// epilogue during block b (the stores long retired); one epilogue pass per two blocks (half the float
// accumulator traffic). Any gain at this group size has to cut the vector operations per output and block.
template <bool kPacked, int kEpi, typename OutT, typename Rows>
void amx_linear_impl(const Rows& rows, int64_t M, int64_t Mp, int64_t K, ActSide act, const int8_t* W8,
                     const uint8_t* W4, int bits, int64_t Np, int64_t N, int64_t B, int64_t ks, WeightSide wt,
                     const float* bias, OutT* Y, const Residual<OutT>& res) {
  const int64_t nb = K / B, panels = Np / kPanel, steps = B / ks, row_blocks = Mp / kRows;
  const Split split(row_blocks, panels);
  const int64_t T = split.T;
  const bool by_rows = split.by_rows;
  const int64_t chunk = row_chunk(K);
  // The epilogue of block b - 1 runs in 4 chunks of 8 rows, spread evenly over the 4 * steps slice points
  // (one after each TDPBUSD of block b; the others empty): finer slices (4 rows after every TDPBUSD when
  // steps = 2) measured 3-5% slower at group size 128 (1 thread), the call and set-up per slice not hidden.
  const int64_t slices = 4 * steps, chunks = 4;
  // blocks per K chunk: all of them while a panel fits L1 comfortably, else chunks of about 32 KB
  int64_t kcb = nb;
  if (nb > 1 && K * kPanel > (40 << 10)) {
    const int64_t per = std::max<int64_t>(1, (32 << 10) / (B * kPanel)), n_chunks = (nb + per - 1) / per;
    kcb = (nb + n_chunks - 1) / n_chunks;
  }
  std::vector<int> bound(slices + 1);
  for (int64_t i = 0; i <= slices; ++i)  // rows done after slice i - 1: whole chunks, ceil(i * chunks / slices)
    bound[i] = static_cast<int>(kRows * std::min(chunks, (i * chunks + slices - 1) / slices) / chunks);
  at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
    configure_tiles(static_cast<int>(ks));
    alignas(64) int32_t cbuf[2][kRows * kPanel];  // double-buffered: block b's sums, while b + 1 runs
    AlignedBuffer panel_buf, rows_buf, acc_buf;
    // float accumulators of every row block of a chunk: [chunk][32 rows][32 outputs]
    float* acc_all = reinterpret_cast<float*>(acc_buf.get(chunk * kRows * kPanel * sizeof(float)));
    int8_t* panel4 = W4 ? reinterpret_cast<int8_t*>(panel_buf.get(kPanel * K)) : nullptr;
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t units = by_rows ? row_blocks : panels;
      const int64_t u0 = units * t / T, u1 = units * (t + 1) / T;
      const int64_t rb_begin = by_rows ? u0 : 0, rb_end = by_rows ? u1 : row_blocks;
      const int64_t p_begin = by_rows ? 0 : u0, p_end = by_rows ? panels : u1;
      for (int64_t rc = rb_begin; rc < rb_end; rc += chunk) {
        const uint8_t* A = rows(rc, std::min(rb_end, rc + chunk), rows_buf);  // row block rc
        for (int64_t p = p_begin; p < p_end; ++p) {
          const int8_t* panel = W8 ? W8 + p * kPanel * K : panel4;
          if (W4) unpack_panel4(W4 + p * kPanel * K / 2, kPanel * K / 2, panel4, 1 << (bits - 1));
          const int64_t n0 = p * kPanel;
          const int64_t cols = std::min<int64_t>(kPanel, N - n0);
          const __mmask16 km0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
          const __mmask16 km1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
          const __m512 bias0 = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
          const __m512 bias1 = bias ? _mm512_loadu_ps(bias + n0 + 16) : _mm512_setzero_ps();
          // K chunks of kcb blocks: each panel slice (kcb * B x 32 bytes) stays in L1 while the chunk's row
          // blocks pass; the float accumulators carry the sums from one K chunk to the next
          for (int64_t kc0 = 0; kc0 < nb; kc0 += kcb) {
          const int64_t kc1 = std::min(nb, kc0 + kcb);
          for (int64_t rb = rc; rb < std::min(rb_end, rc + chunk); ++rb) {
            const int64_t m0 = rb * kRows;
            float* acc = acc_all + (kcb < nb ? rb - rc : 0) * kRows * kPanel;  // one tile's unless K chunks
            const int rows_valid = static_cast<int>(std::min<int64_t>(kRows, M - m0));
            OutT* y = Y + m0 * N + n0;
            auto epilogue = [&](int64_t b, int r0, int r1) {
              const EpiRows e{cbuf[b & 1], act.sa + m0 * nb + b, act.zc + m0 * nb + b, act.za + m0 * nb + b,
                              act.asum + m0 * nb + b, nb, acc};
              const int64_t wi = b * Np + n0;
              const float* sw = wt.sw + wi;
              const int32_t *wc = wt.wc + wi, *dw = wt.wc1 + wi, *nws = wt.wc2 + wi;
              if (nb == 1) {
                epilogue_rows<kPacked, true, true, kEpi>(e, r0, r1, sw, wc, dw, nws, bias0, bias1, y, N, rows_valid, km0, km1, res, m0, n0);
              } else if (b == 0) {
                epilogue_rows<kPacked, true, false, kEpiPlain>(e, r0, r1, sw, wc, dw, nws, bias0, bias1, y, N, rows_valid, km0, km1, res, m0, n0);
              } else if (b == nb - 1) {
                epilogue_rows<kPacked, false, true, kEpi>(e, r0, r1, sw, wc, dw, nws, bias0, bias1, y, N, rows_valid, km0, km1, res, m0, n0);
              } else {
                epilogue_rows<kPacked, false, false, kEpiPlain>(e, r0, r1, sw, wc, dw, nws, bias0, bias1, y, N, rows_valid, km0, km1, res, m0, n0);
              }
            };
            auto slice = [&](int64_t b, int64_t i) {  // slice i of block b - 1's epilogue
              if (b > kc0 && bound[i] < bound[i + 1]) epilogue(b - 1, bound[i], bound[i + 1]);
            };
            // Software pipeline over the K steps: each A / B tile is reloaded for step g + 1 right after
            // its last use in step g, so the loads overlap the remaining TDPBUSDs of step g.
            const uint8_t* a_rows = A + (rb - rc) * kRows * K;  // this row block's codes, step after step
            const int64_t g_begin = kc0 * steps, g_end = kc1 * steps;
            auto a_tile = [&](int64_t g) { return a_rows + g * ks * kRows; };
            auto b_tile = [&](int64_t g) { return panel + g * ks * 2 * 16; };
            _tile_loadd(4, a_tile(g_begin), ks);
            _tile_loadd(6, b_tile(g_begin), 64);
            _tile_loadd(7, b_tile(g_begin) + ks * 16, 64);
            // a row block with at most 16 real rows (tiny M) skips its second A tile and its products
            const bool two = rows_valid > 16;
            if (two) _tile_loadd(5, a_tile(g_begin) + 16 * ks, ks);
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            int64_t b = kc0, s = 0;
            for (int64_t g = g_begin; g < g_end; ++g) {
              const bool more = g + 1 < g_end;
              _tile_dpbusd(0, 4, 6);
              slice(b, 4 * s);
              _tile_dpbusd(1, 4, 7);
              if (more) _tile_loadd(4, a_tile(g + 1), ks);
              slice(b, 4 * s + 1);
              if (two) _tile_dpbusd(2, 5, 6);
              if (more) _tile_loadd(6, b_tile(g + 1), 64);
              slice(b, 4 * s + 2);
              if (two) _tile_dpbusd(3, 5, 7);
              if (more) {
                _tile_loadd(7, b_tile(g + 1) + ks * 16, 64);
                if (two) _tile_loadd(5, a_tile(g + 1) + 16 * ks, ks);
              }
              slice(b, 4 * s + 3);
              if (++s == steps) {
                // [32 rows][32 outputs]: row r of tiles 0 | 1 (r < 16) or 2 | 3
                int32_t* cb = cbuf[b & 1];
                _tile_stored(0, cb, 128);
                _tile_stored(1, cb + 16, 128);
                _tile_stored(2, cb + 16 * 32, 128);
                _tile_stored(3, cb + 16 * 32 + 16, 128);
                if (more) {
                  _tile_zero(0);
                  _tile_zero(1);
                  _tile_zero(2);
                  _tile_zero(3);
                }
                s = 0;
                ++b;
              }
            }
            epilogue(kc1 - 1, 0, kRows);
          }
          }
        }
      }
    }
    _mm_sfence();  // the non-temporal output stores are visible before the threads join
    _tile_release();
  });
}

// --- Python-facing functions ------------------------------------------------------------------------

struct QuantArgs {  // the activation quantizer's settings, checked
  int64_t M, K, group, block, ks, sample_rows, Mp, G, nb;
  int bits;
  bool symmetric;
  torch::Tensor gs, gz;  // given ranges [M, G] (static granularity), else undefined
  torch::Tensor ada_shift, ada_scale1;  // the AdaNorm transform's rows [S, K], else undefined
  AdaNorm ada;

  QuantArgs(const torch::Tensor& x, int64_t group_, int64_t bits_, bool symmetric_, int64_t block_, int64_t ks_,
            int64_t sample_rows_, const c10::optional<torch::Tensor>& given_scale,
            const c10::optional<torch::Tensor>& given_zero, const c10::optional<torch::Tensor>& shift = {},
            const c10::optional<torch::Tensor>& scale1 = {}, double eps = 0.0, bool round_norm = false,
            bool round_prod = false, bool round_sum = false) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: contiguous [M, K]");
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16,
                "x must be float32 or bfloat16");
    TORCH_CHECK(bits_ >= 2 && bits_ <= 8, "bits in 2..8");
    M = x.size(0);
    K = x.size(1);
    group = group_ == 0 ? K : group_;
    block = block_;
    ks = ks_;
    bits = static_cast<int>(bits_);
    symmetric = symmetric_;
    TORCH_CHECK(K % group == 0 && block > 0 && group % block == 0, "block must divide group, group must divide K");
    TORCH_CHECK(ks > 0 && (ks & (ks - 1)) == 0 && block % ks == 0 && ks <= 64,
                "the K step must be a power of two dividing the block, at most 64");
    Mp = (M + kRows - 1) / kRows * kRows;
    G = K / group;
    nb = K / block;
    const bool given = given_scale.has_value() && given_scale->defined();
    sample_rows = given ? 0 : sample_rows_;
    TORCH_CHECK(sample_rows >= 0 && (sample_rows == 0 || M % sample_rows == 0), "sample_rows must divide the rows");
    if (given) {
      gs = given_scale->to(torch::kFloat32).contiguous();
      gz = given_zero->to(torch::kInt32).contiguous();
      TORCH_CHECK(gs.size(0) == M && gs.size(1) == G && gz.sizes() == gs.sizes(), "given scale / zero: [M, G]");
    }
    const bool with_ada = shift.has_value() && shift->defined();
    TORCH_CHECK(with_ada == (scale1.has_value() && scale1->defined()), "ada_shift and ada_scale1 come together");
    if (with_ada) {
      ada_shift = shift->to(torch::kFloat32).contiguous();
      ada_scale1 = scale1->to(torch::kFloat32).contiguous();
      TORCH_CHECK(ada_shift.dim() == 2 && ada_shift.size(1) == K && ada_shift.size(0) > 0 &&
                  M % ada_shift.size(0) == 0 && ada_scale1.sizes() == ada_shift.sizes(),
                  "ada_shift / ada_scale1: [S, K] with S dividing the rows");
      TORCH_CHECK(eps >= 0.0, "ada_eps must be >= 0");
      ada = AdaNorm{ada_shift.data_ptr<float>(), ada_scale1.data_ptr<float>(), M / ada_shift.size(0),
                    static_cast<float>(eps), round_norm, round_prod, round_sum};
    }
  }
  // the per (row, block) tensors sa, za, asum, zc [Mp, nb], padding rows zero
  std::vector<torch::Tensor> per_block() const {
    auto sa = torch::empty({Mp, nb}, torch::kFloat32);
    auto za = torch::empty({Mp, nb}, torch::kInt32);
    auto asum = torch::empty({Mp, nb}, torch::kInt32);
    auto zc = torch::empty({Mp, nb}, torch::kInt32);
    if (Mp > M) {
      for (auto* t : {&sa, &za, &asum, &zc}) t->narrow(0, M, Mp - M).zero_();
    }
    return {sa, za, asum, zc};
  }
  ActOut out(const std::vector<torch::Tensor>& e) const {
    return ActOut{ks, e[0].data_ptr<float>(), e[1].data_ptr<int32_t>(), e[2].data_ptr<int32_t>(),
                  e[3].data_ptr<int32_t>()};
  }
  template <typename T>
  RowQuantizer<T> quantizer(const T* x) const {
    RowQuantizer<T> rq(x, M, K, group, block, bits, symmetric, sample_rows,
                       gs.defined() ? gs.data_ptr<float>() : nullptr, gz.defined() ? gz.data_ptr<int32_t>() : nullptr);
    rq.ada = ada;
    return rq;
  }
};

// Every row of x into `codes` (tile order, [Mp * K], the padding rows' codes zeroed here).
template <typename T>
void quantize_all(const RowQuantizer<T>& rq, const QuantArgs& a, const ActOut& o, uint8_t* codes) {
  if (a.Mp > a.M) std::memset(codes + (a.Mp - kRows) * a.K, 0, kRows * a.K);  // the last row block
  at::parallel_for(0, a.M, 8, [&](int64_t begin, int64_t end) {
    auto sc = rq.scratch();
    for (int64_t m = begin; m < end; ++m) rq.row(m, m, codes, o, sc);
  });
}

// x [M, K] float32 or bfloat16 -> codes uint8 [Mp * K] in tile order for K steps of `ks` (Mp: M rounded
// up to 32, padding rows zero) and the per (row, K block) epilogue inputs [Mp, K / block]: sa float32, za,
// Asum and za | Asum << 16 int32. Ranges: dynamic per row and group; with `sample_rows` > 0 per group over
// each sample of that many consecutive rows; or the given scale / zero point ([M, G], static granularity).
std::vector<torch::Tensor> quantize_act(torch::Tensor x, int64_t group, int64_t bits, bool symmetric, int64_t block,
                                        int64_t ks, int64_t sample_rows,
                                        c10::optional<torch::Tensor> given_scale,
                                        c10::optional<torch::Tensor> given_zero,
                                        c10::optional<torch::Tensor> ada_shift, c10::optional<torch::Tensor> ada_scale1,
                                        double ada_eps, bool ada_round_norm, bool ada_round_prod,
                                        bool ada_round_sum) {
  const QuantArgs a(x, group, bits, symmetric, block, ks, sample_rows, given_scale, given_zero, ada_shift, ada_scale1,
                    ada_eps, ada_round_norm, ada_round_prod, ada_round_sum);
  auto codes = torch::empty({a.Mp * a.K}, torch::kUInt8);
  auto e = a.per_block();
  const ActOut o = a.out(e);
  if (x.scalar_type() == torch::kBFloat16) {
    quantize_all(a.quantizer(x.data_ptr<at::BFloat16>()), a, o, codes.data_ptr<uint8_t>());
  } else {
    quantize_all(a.quantizer(x.data_ptr<float>()), a, o, codes.data_ptr<uint8_t>());
  }
  return {codes, e[0], e[1], e[2], e[3]};
}

struct WeightArgs {
  const int8_t* w8;
  const uint8_t* w4;
  int bits;
  int64_t N, Np, B, ks;
  WeightSide ws;
  torch::Tensor bpad;
  const float* bias = nullptr;
  WeightArgs(const torch::Tensor& weight, int64_t bits_, bool pack4, int64_t N_, int64_t K, int64_t B_, int64_t ks_,
             const torch::Tensor& sw, const torch::Tensor& wc1, const torch::Tensor& wc2, const torch::Tensor& wc,
             const c10::optional<torch::Tensor>& b) {
    TORCH_CHECK(amx_available(), "AMX-INT8 is not available on this CPU");
    N = N_;
    B = B_;
    ks = ks_;
    bits = static_cast<int>(bits_);
    TORCH_CHECK(K % B == 0 && B % ks == 0 && ks % 4 == 0 && ks <= 64, "bad block / K step");
    TORCH_CHECK(B <= kMaxBlock, "blocks of at most 16383 columns (the int16 pairs of the corrections)");
    Np = sw.size(1);
    TORCH_CHECK(Np % kPanel == 0 && Np >= N && sw.size(0) == K / B, "weights must be padded to panels of 32 rows");
    TORCH_CHECK(weight.numel() == (pack4 ? Np * K / 2 : Np * K), "the weight stream does not match K and N");
    w8 = pack4 ? nullptr : reinterpret_cast<const int8_t*>(weight.data_ptr<uint8_t>());
    w4 = pack4 ? weight.data_ptr<uint8_t>() : nullptr;
    ws = WeightSide{sw.data_ptr<float>(), wc1.data_ptr<int32_t>(), wc2.data_ptr<int32_t>(), wc.data_ptr<int32_t>()};
    if (b.has_value() && b->defined()) {
      bpad = torch::zeros({Np}, torch::kFloat32);
      bpad.narrow(0, 0, N).copy_(*b);
      bias = bpad.data_ptr<float>();
    }
  }
};

template <typename Rows>
torch::Tensor run_product(const Rows& rows, int64_t M, int64_t Mp, int64_t K, const ActSide& as, const WeightArgs& w,
                          at::ScalarType out_dtype, int64_t activation, const c10::optional<torch::Tensor>& residual,
                          const c10::optional<torch::Tensor>& gate) {
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "out_dtype: float32 or bfloat16");
  TORCH_CHECK(activation == kActNone || activation == kActGeluTanh, "activation: 0 (none) or 1 (gelu_tanh)");
  const bool with_res = residual.has_value() && residual->defined();
  TORCH_CHECK(with_res == (gate.has_value() && gate->defined()), "residual and gate come together");
  int64_t tokens = 1;
  if (with_res) {
    TORCH_CHECK(activation == kActNone, "a fused activation and a gated residual exclude each other");
    TORCH_CHECK(residual->scalar_type() == out_dtype && gate->scalar_type() == out_dtype,
                "residual and gate must have the output's dtype");
    TORCH_CHECK(residual->is_contiguous() && residual->dim() == 2 && residual->size(0) == M &&
                residual->size(1) == w.N, "residual: contiguous [M, N]");
    TORCH_CHECK(gate->is_contiguous() && gate->dim() == 2 && gate->size(1) == w.N && gate->size(0) > 0 &&
                M % gate->size(0) == 0, "gate: contiguous [S, N] with S dividing the rows");
    tokens = M / gate->size(0);
  }
  auto y = torch::empty({M, w.N}, torch::TensorOptions().dtype(out_dtype));
  // 4-bit weights: a thread unpacks a panel for each chunk of its rows; with several chunks, unpacking
  // the whole weight once (in parallel) costs less vector work than that
  const int8_t* w8 = w.w8;
  const uint8_t* w4 = w.w4;
  AlignedBuffer unpacked;
  const Split split(Mp / kRows, w.Np / kPanel);
  if (w4 && split.by_rows && Mp / kRows > split.T * row_chunk(K)) {
    int8_t* dst = reinterpret_cast<int8_t*>(unpacked.get(w.Np * K));
    at::parallel_for(0, w.Np / kPanel, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        unpack_panel4(w4 + p * kPanel * K / 2, kPanel * K / 2, dst + p * kPanel * K, 1 << (w.bits - 1));
    });
    w8 = dst;
    w4 = nullptr;
  }
  auto call = [&](auto* yp) {
    using OutT = std::remove_pointer_t<decltype(yp)>;
    const Residual<OutT> res{with_res ? residual->data_ptr<OutT>() : nullptr, with_res ? gate->data_ptr<OutT>() : nullptr,
                             tokens};
    const int epi = with_res ? kEpiResidual : activation == kActGeluTanh ? kEpiGelu : kEpiPlain;
    auto pick = [&](auto packed) {
      constexpr bool kP = decltype(packed)::value;
      return epi == kEpiResidual ? amx_linear_impl<kP, kEpiResidual, OutT, Rows>
             : epi == kEpiGelu   ? amx_linear_impl<kP, kEpiGelu, OutT, Rows>
                                 : amx_linear_impl<kP, kEpiPlain, OutT, Rows>;
    };
    auto run = w.B <= 128 ? pick(std::true_type{}) : pick(std::false_type{});
    run(rows, M, Mp, K, as, w8, w4, w.bits, w.Np, w.N, w.B, w.ks, w.ws, w.bias, yp, res);
  };
  if (out_dtype == at::kBFloat16) {
    call(y.data_ptr<at::BFloat16>());
  } else {
    call(y.data_ptr<float>());
  }
  return y;
}

inline ActSide act_side(const std::vector<torch::Tensor>& e) {
  return ActSide{e[0].data_ptr<float>(), e[1].data_ptr<int32_t>(), e[2].data_ptr<int32_t>(), e[3].data_ptr<int32_t>()};
}

// codes: uint8 [Mp * K] in tile order and act: the outputs of quantize_act (codes, sa, za, asum, zc), of
// which the first M rows are real; weight: the panel-major stream; sw float32 and wc1 / wc2 / wc int32
// [K / B, Np]; bias: [N] or None. Returns [M, N] in `out_dtype` (float32 or bfloat16).
torch::Tensor amx_linear(int64_t M, std::vector<torch::Tensor> act, torch::Tensor weight, int64_t bits, bool pack4,
                         int64_t N, int64_t B, int64_t ks, torch::Tensor sw, torch::Tensor wc1, torch::Tensor wc2,
                         torch::Tensor wc, c10::optional<torch::Tensor> bias, at::ScalarType out_dtype,
                         int64_t activation, c10::optional<torch::Tensor> residual, c10::optional<torch::Tensor> gate) {
  TORCH_CHECK(act.size() == 5, "act: codes, sa, za, asum, zc");
  const int64_t Mp = act[1].size(0), K = act[1].size(1) * B;
  TORCH_CHECK(Mp % kRows == 0 && M <= Mp && act[0].numel() == Mp * K, "rows must be padded to a multiple of 32");
  const WeightArgs w(weight, bits, pack4, N, K, B, ks, sw, wc1, wc2, wc, bias);
  const uint8_t* codes = act[0].data_ptr<uint8_t>();
  auto rows = [codes, K](int64_t rb_begin, int64_t, AlignedBuffer&) { return codes + rb_begin * kRows * K; };
  return run_product(rows, M, Mp, K, act_side({act.begin() + 1, act.end()}), w, out_dtype, activation, residual, gate);
}

// quantize_act and amx_linear in one: when the threads split the rows, each quantizes its own chunks of
// rows into an L2-sized buffer right before their products, so the codes never travel through memory.
torch::Tensor amx_linear_x(torch::Tensor x, int64_t group, int64_t abits, bool symmetric, int64_t sample_rows,
                           c10::optional<torch::Tensor> given_scale, c10::optional<torch::Tensor> given_zero,
                           torch::Tensor weight, int64_t bits, bool pack4, int64_t N, int64_t B, int64_t ks,
                           torch::Tensor sw, torch::Tensor wc1, torch::Tensor wc2, torch::Tensor wc,
                           c10::optional<torch::Tensor> bias, at::ScalarType out_dtype, int64_t activation,
                           c10::optional<torch::Tensor> residual, c10::optional<torch::Tensor> gate,
                           c10::optional<torch::Tensor> ada_shift, c10::optional<torch::Tensor> ada_scale1,
                           double ada_eps, bool ada_round_norm, bool ada_round_prod,
                           bool ada_round_sum) {
  const QuantArgs a(x, group, abits, symmetric, B, ks, sample_rows, given_scale, given_zero, ada_shift, ada_scale1,
                    ada_eps, ada_round_norm, ada_round_prod, ada_round_sum);
  const WeightArgs w(weight, bits, pack4, N, a.K, B, ks, sw, wc1, wc2, wc, bias);
  auto e = a.per_block();
  const ActOut o = a.out(e);
  const int64_t K = a.K, M = a.M;
  auto go = [&](auto* xp) {
    const auto rq = a.quantizer(xp);
    if (Split(a.Mp / kRows, w.Np / kPanel).by_rows) {
      std::vector<typename std::remove_const_t<decltype(rq)>::Scratch> scratch(at::get_num_threads());
      for (auto& sc : scratch) sc = rq.scratch();
      auto rows = [&](int64_t rb_begin, int64_t rb_end, AlignedBuffer& buf) {
        uint8_t* codes = buf.get((rb_end - rb_begin) * kRows * K);
        const int64_t m0 = rb_begin * kRows, m1 = std::min(M, rb_end * kRows);
        if (rb_end * kRows > M) std::memset(codes + (rb_end - 1 - rb_begin) * kRows * K, 0, kRows * K);
        auto& sc = scratch[at::get_thread_num()];
        for (int64_t m = m0; m < m1; ++m) rq.row(m, m - m0, codes, o, sc);
        return const_cast<const uint8_t*>(codes);
      };
      return run_product(rows, M, a.Mp, K, act_side(e), w, out_dtype, activation, residual, gate);
    }
    auto all = torch::empty({a.Mp * K}, torch::kUInt8);
    quantize_all(rq, a, o, all.data_ptr<uint8_t>());
    const uint8_t* codes = all.data_ptr<uint8_t>();
    auto rows = [codes, K](int64_t rb_begin, int64_t, AlignedBuffer&) { return codes + rb_begin * kRows * K; };
    return run_product(rows, M, a.Mp, K, act_side(e), w, out_dtype, activation, residual, gate);
  };
  if (x.scalar_type() == torch::kBFloat16) return go(x.data_ptr<at::BFloat16>());
  return go(x.data_ptr<float>());
}

}  // namespace

// --- 3x3 stride-2 max pool (no padding) on channels-last float32 --------------------------------------
// The Inception stem's two max pools (147 and 71 px, 64 and 192 channels): torch's channels-last kernel
// runs far below memory speed there. Per output row: the max of its three input rows, column by column,
// then of three neighbouring columns; 16 channels per vector. NaN propagates as in torch.

inline __m512 max_nan(__m512 a, __m512 b) {  // max, NaN if either is (vmaxps alone returns b if a is NaN)
  return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}

torch::Tensor max_pool3s2(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu() &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "max_pool3s2 takes a channels-last float32 CPU tensor [B, C, H, W]");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 3 && W >= 3, "max_pool3s2 needs H, W >= 3, got ", H, "x", W);
  const int64_t Ho = (H - 3) / 2 + 1, Wo = (W - 3) / 2 + 1, Wu = 2 * Wo + 1;  // input columns used
  auto y = torch::empty({B, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  const int64_t full = C / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (C - full)) - 1);
  at::parallel_for(0, B * Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cols(static_cast<size_t>(Wu * C));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / Ho, oy = r % Ho;
      const float* r0 = src + (b * H + 2 * oy) * W * C;
      const float* r1 = r0 + W * C;
      const float* r2 = r1 + W * C;
      for (int64_t i = 0; i < Wu * C; i += C) {
        for (int64_t c = 0; c < full; c += 16) {
          const __m512 m = max_nan(max_nan(load16(r0 + i + c), load16(r1 + i + c)), load16(r2 + i + c));
          _mm512_storeu_ps(cols.data() + i + c, m);
        }
        if (tail) {
          const int64_t c = full;
          const __m512 m = max_nan(max_nan(load16(r0 + i + c, tail), load16(r1 + i + c, tail)), load16(r2 + i + c, tail));
          _mm512_mask_storeu_ps(cols.data() + i + c, tail, m);
        }
      }
      float* out = dst + (b * Ho + oy) * Wo * C;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const float* c0 = cols.data() + 2 * ox * C;
        for (int64_t c = 0; c < full; c += 16) {
          const __m512 m = max_nan(max_nan(load16(c0 + c), load16(c0 + C + c)), load16(c0 + 2 * C + c));
          _mm512_storeu_ps(out + ox * C + c, m);
        }
        if (tail) {
          const int64_t c = full;
          const __m512 m =
              max_nan(max_nan(load16(c0 + c, tail), load16(c0 + C + c, tail)), load16(c0 + 2 * C + c, tail));
          _mm512_mask_storeu_ps(out + ox * C + c, tail, m);
        }
      }
    }
  });
  return y;
}


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("amx_available", &amx_available, "AMX-INT8 (with AVX-512 VNNI and BF16) present and granted by the kernel");
  namespace py = pybind11;
  m.def("quantize_act", &quantize_act,
        "int8 activation codes and the epilogue inputs (per token group, per sample group, or given ranges)",
        py::arg("x"), py::arg("group"), py::arg("bits"), py::arg("symmetric"), py::arg("block"), py::arg("ks"),
        py::arg("sample_rows"), py::arg("given_scale"), py::arg("given_zero"), py::arg("ada_shift") = py::none(),
        py::arg("ada_scale1") = py::none(), py::arg("ada_eps") = 0.0, py::arg("ada_round_norm") = false,
        py::arg("ada_round_prod") = false,
        py::arg("ada_round_sum") = false);
  m.def("max_pool3s2", &max_pool3s2, "3x3 stride-2 max pool of a channels-last float32 tensor (AVX-512)");
  m.def("prepack_weight", &prepack_weight, "unsigned codes -> the AMX panel-major weight stream");
  m.def("unpack_weight", &unpack_weight, "the AMX panel-major weight stream -> unsigned codes");
  m.def("amx_linear", &amx_linear, "group-wise u8 x s8 linear product on AMX tiles, from quantize_act's outputs",
        py::arg("M"), py::arg("act"), py::arg("weight"), py::arg("bits"), py::arg("pack4"), py::arg("N"), py::arg("B"),
        py::arg("ks"), py::arg("sw"), py::arg("wc1"), py::arg("wc2"), py::arg("wc"), py::arg("bias"),
        py::arg("out_dtype"), py::arg("activation") = kActNone, py::arg("residual") = py::none(),
        py::arg("gate") = py::none());
  m.def("amx_linear_x", &amx_linear_x, "activation quantization fused with the AMX product (x float32 / bfloat16)",
        py::arg("x"), py::arg("group"), py::arg("abits"), py::arg("symmetric"), py::arg("sample_rows"),
        py::arg("given_scale"), py::arg("given_zero"), py::arg("weight"), py::arg("bits"), py::arg("pack4"),
        py::arg("N"), py::arg("B"), py::arg("ks"), py::arg("sw"), py::arg("wc1"), py::arg("wc2"), py::arg("wc"),
        py::arg("bias"), py::arg("out_dtype"), py::arg("activation") = kActNone, py::arg("residual") = py::none(),
        py::arg("gate") = py::none(), py::arg("ada_shift") = py::none(), py::arg("ada_scale1") = py::none(),
        py::arg("ada_eps") = 0.0, py::arg("ada_round_norm") = false, py::arg("ada_round_prod") = false,
        py::arg("ada_round_sum") = false);
}
