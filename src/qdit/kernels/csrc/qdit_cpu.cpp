// qdit CPU kernels: dynamic int8 activation quantization and the group-wise u8 x s8 linear product on
// Intel AMX tiles, with the per-block scales applied inside the accumulation.
//
//   y[t, o] = bias[o] + sum_b sa[t,b] * ( sw[o,b] * P[t,o,b] + Asum[t,b] * vd[o,b] - za[t,b] * vw[o,b] )
//
// P is the integer dot product of one K block (AMX TDPBUSD, exact in int32); vd = sw * d_w and
// vw = sw * (Wsum + B * d_w) are per-layer vectors prepared once (see qdit/kernels/formats.py for the
// derivation). The activation side hands the kernel three floats per (row, block): sa, sa * Asum and
// sa * za, so the epilogue is four or five vector operations per 16 outputs and block.
//
// Weights are stored "panel-major" for the tiles: for each panel of 32 output rows, for each K step of
// `ks` inputs, two 16-column B tiles in the VNNI order [ks/4][16][4] (signed int8, code - 2^(bits-1)).
// 4-bit weights keep the same order two codes per byte: within every 64-byte chunk of that stream,
// byte i holds element i in its low nibble and element i + 32 in its high nibble (unsigned codes), so
// unpacking a chunk is two masks and a shift. A thread unpacks one panel (K x 32) into L1/L2 and reuses
// it for every row block.
//
// The AMX path is used only when the CPU has AMX-INT8 and the kernel grants the tile state; the Python
// side falls back to pure PyTorch otherwise.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/extension.h>
#include <unistd.h>

#include <cmath>
#include <cpuid.h>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kPanel = 32;  // output rows (N) per panel: two 16-column B tiles
constexpr int kRows = 32;   // activation rows (M) per block: two 16-row A tiles

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
  const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30);
  const bool amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
  return avx512f && avx512bw && amx_tile && amx_int8;
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
  _tile_loadconfig(&cfg);
}

// --- activation quantization (token granularity) ----------------------------------------------------

// One group of `g` floats: the same float operations as qdit.quant.primitives.qparams / quantize, so
// codes, scales and zero points are bit-identical with the PyTorch fake quantizer.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline float load1(const float* p) { return *p; }
inline float load1(const at::BFloat16* p) { return static_cast<float>(*p); }

// round(x / s) exactly as IEEE division then round-half-even would give it, at the cost of a multiply:
// x * (1/s) is within a few ulps of x / s, so the two round alike unless the quotient sits within
// 2^-12 of a half-integer (|quotient| <= 2^15 here); only those lanes are divided for real.
inline __m512 round_div(__m512 x, __m512 s, __m512 inv) {
  const __m512 r = _mm512_mul_ps(x, inv);
  const __m512 frac = _mm512_sub_ps(r, _mm512_roundscale_ps(r, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
  const __m512 dist = _mm512_abs_ps(_mm512_sub_ps(frac, _mm512_set1_ps(0.5f)));
  const __mmask16 near = _mm512_cmp_ps_mask(dist, _mm512_set1_ps(1.0f / 4096), _CMP_LT_OQ);
  const __m512 q = near ? _mm512_mask_div_ps(r, near, x, s) : r;
  return _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Rows [begin, end) of x: per group either its own range (given == nullptr) or the given scale and
// zero point; writes the codes and, per K block of `block` columns (block divides group), the three
// epilogue inputs sa, sa * sum(codes) and sa * za.
template <typename T>
void quantize_rows(const T* x, int64_t M, int64_t K, int64_t group, int64_t block, int bits, bool symmetric,
                   const float* given_scale, const int32_t* given_zero, uint8_t* codes, float* scale, int32_t* zero,
                   float* e_sa, float* e_sum, float* e_sz) {
  const int64_t G = K / group, nb = K / block;
  const float hi = symmetric ? static_cast<float>((1 << (bits - 1)) - 1) : static_cast<float>((1 << bits) - 1);
  const float lo = symmetric ? -static_cast<float>(1 << (bits - 1)) : 0.0f;
  const float offset = symmetric ? 128.0f : 0.0f;
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t gi = 0; gi < G; ++gi) {
        const T* src = x + m * K + gi * group;
        __m512 vmn = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();  // the range always contains 0
        int64_t k = 0;
        for (; k + 16 <= group; k += 16) {
          const __m512 v = load16(src + k);
          vmn = _mm512_min_ps(vmn, v);
          vmx = _mm512_max_ps(vmx, v);
        }
        float mn = _mm512_reduce_min_ps(vmn), mx = _mm512_reduce_max_ps(vmx);
        for (; k < group; ++k) {
          const float v = load1(src + k);
          mn = v < mn ? v : mn;
          mx = v > mx ? v : mx;
        }
        float s, z;  // z: the zero point without the storage offset
        if (given_scale) {
          s = given_scale[m * G + gi];
          z = static_cast<float>(given_zero[m * G + gi]) - offset;
        } else {
          s = symmetric ? std::fmax(std::fabs(mn), std::fabs(mx)) / hi : (mx - mn) / hi;
          if (!(s > 0.0f)) s = 1.0f;
          z = symmetric ? 0.0f : std::fmin(std::fmax(std::nearbyint(-mn / s), lo), hi);
        }
        uint8_t* out = codes + m * K + gi * group;
        const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(1.0f / s), vz = _mm512_set1_ps(z + offset);
        const __m512 vlo = _mm512_set1_ps(lo + offset), vhi = _mm512_set1_ps(hi + offset);
        k = 0;
        for (; k + 16 <= group; k += 16) {
          __m512 q = round_div(load16(src + k), vs, vinv);
          q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, vz), vlo), vhi);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
        }
        for (; k < group; ++k) {
          const float q = std::fmin(std::fmax(std::nearbyint(load1(src + k) / s) + z + offset, lo + offset), hi + offset);
          out[k] = static_cast<uint8_t>(q);
        }
        if (scale) {
          scale[m * G + gi] = s;
          zero[m * G + gi] = static_cast<int32_t>(z + offset);
        }
        for (int64_t b0 = 0; b0 < group; b0 += block) {
          int32_t sum = 0;
          int64_t j = 0;
          __m512i vsum = _mm512_setzero_si512();
          for (; j + 64 <= block; j += 64)
            vsum = _mm512_add_epi64(vsum, _mm512_sad_epu8(_mm512_loadu_si512(out + b0 + j), _mm512_setzero_si512()));
          sum = static_cast<int32_t>(_mm512_reduce_add_epi64(vsum));
          for (; j < block; ++j) sum += out[b0 + j];
          const int64_t e = m * nb + (gi * group + b0) / block;
          e_sa[e] = s;
          e_sum[e] = s * static_cast<float>(sum);
          e_sz[e] = s * (z + offset);
        }
      }
    }
  });
}

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
  TORCH_CHECK(!pack4 || stream % 64 == 0, "4-bit panels need K * 32 to be a multiple of 64");
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
        for (int64_t c = 0; c < kPanel * K; c += 64)
          for (int b = 0; b < 32; ++b)
            o[c / 2 + b] = static_cast<uint8_t>((tmp[c + b] & 0xF) | ((tmp[c + b + 32] & 0xF) << 4));
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
          const int64_t flat = p * kPanel * K + i, chunk = flat / 64, b = flat % 64;
          const uint8_t byte = src[chunk * 32 + (b % 32)];
          code = b < 32 ? (byte & 0xF) : (byte >> 4);
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

inline void unpack_panel4(const uint8_t* src, int64_t bytes, int8_t* dst,
                                                                      int offset) {
  const __m512i mask = _mm512_set1_epi8(0x0F), off = _mm512_set1_epi8(static_cast<char>(offset));
  for (int64_t c = 0; c < bytes; c += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c));
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1);
    const __m512i lohi = _mm512_mask_blend_epi64(0xF0, w, _mm512_srli_epi16(w, 4));
    _mm512_storeu_si512(dst + 2 * c, _mm512_sub_epi8(_mm512_and_si512(lohi, mask), off));
  }
}

template <bool kHasOffset>
void amx_linear_impl(
    const uint8_t* A, int64_t Mp, int64_t K, const float* act_sa, const float* act_sum, const float* act_sz,
    const int8_t* W8, const uint8_t* W4, int bits, int64_t Np, int64_t B, int64_t ks, const float* sw,
    const float* vd, const float* vw, const float* bias, float* Y, int64_t ldy, int64_t N) {
  const int64_t nb = K / B, panels = Np / kPanel, steps = B / ks;
  // Cache blocking: a job is a chunk of rows x a chunk of panels whose A and B bytes fit in about 1 MB
  // of L2 together; jobs of one row chunk are consecutive, so its A chunk stays in L2 while the B
  // chunks pass. Inside a job every panel is reused for all of the chunk's row blocks.
  const int64_t chunk = std::max<int64_t>(kRows, ((1 << 20) / (2 * K)) / kRows * kRows);
  const int64_t row_chunks = (Mp + chunk - 1) / chunk;
  const int64_t panel_chunk = std::max<int64_t>(1, chunk / kPanel);
  const int64_t panel_chunks = (panels + panel_chunk - 1) / panel_chunk;
  at::parallel_for(0, row_chunks * panel_chunks, 1, [&](int64_t job_begin, int64_t job_end) {
    configure_tiles(static_cast<int>(ks));
    alignas(64) int32_t cbuf[2][4][16][16];  // double-buffered: block b's sums, while b + 1 runs
    alignas(64) float acc[kRows][kPanel];
    std::vector<int8_t> panel4(W4 ? kPanel * K : 0);
    for (int64_t job = job_begin; job < job_end; ++job) {
    const int64_t rc = job / panel_chunks, pc = job % panel_chunks;
    const int64_t m_begin = rc * chunk, m_end = std::min(Mp, m_begin + chunk);
    for (int64_t p = pc * panel_chunk; p < std::min(panels, (pc + 1) * panel_chunk); ++p) {
      const int8_t* panel = W8 ? W8 + p * kPanel * K : panel4.data();
      if (W4) unpack_panel4(W4 + p * kPanel * K / 2, kPanel * K / 2, panel4.data(), 1 << (bits - 1));
      const int64_t n0 = p * kPanel;
      for (int64_t m0 = m_begin; m0 < m_end; m0 += kRows) {
        for (int r = 0; r < kRows; ++r) {
          _mm512_store_ps(acc[r], _mm512_setzero_ps());
          _mm512_store_ps(acc[r] + 16, _mm512_setzero_ps());
        }
        // Scale rows [r0, r1) of block b's integer sums into the float accumulators.
        auto epilogue = [&](int64_t b, int r0, int r1) {
          const int32_t(*cb)[16][16] = cbuf[b & 1];
          const float* swb = sw + b * Np + n0;  // per-block vectors are [nb, Np]
          const __m512 sw0 = _mm512_loadu_ps(swb), sw1 = _mm512_loadu_ps(swb + 16);
          const __m512 vw0 = _mm512_loadu_ps(vw + b * Np + n0), vw1 = _mm512_loadu_ps(vw + b * Np + n0 + 16);
          __m512 vd0 = _mm512_setzero_ps(), vd1 = _mm512_setzero_ps();
          if constexpr (kHasOffset) {
            vd0 = _mm512_loadu_ps(vd + b * Np + n0);
            vd1 = _mm512_loadu_ps(vd + b * Np + n0 + 16);
          }
          for (int r = r0; r < r1; ++r) {
            const int64_t row = (m0 + r) * nb + b;
            const __m512 sa = _mm512_set1_ps(act_sa[row]);
            const __m512 sz = _mm512_set1_ps(act_sz[row]);
            const int ti = (r / 16) * 2, tr = r % 16;
            __m512 a0 = _mm512_load_ps(acc[r]), a1 = _mm512_load_ps(acc[r] + 16);
            const __m512 p0 = _mm512_cvtepi32_ps(_mm512_load_si512(cb[ti][tr]));
            const __m512 p1 = _mm512_cvtepi32_ps(_mm512_load_si512(cb[ti + 1][tr]));
            a0 = _mm512_fmadd_ps(p0, _mm512_mul_ps(sa, sw0), a0);
            a1 = _mm512_fmadd_ps(p1, _mm512_mul_ps(sa, sw1), a1);
            a0 = _mm512_fnmadd_ps(sz, vw0, a0);
            a1 = _mm512_fnmadd_ps(sz, vw1, a1);
            if constexpr (kHasOffset) {
              const __m512 su = _mm512_set1_ps(act_sum[row]);
              a0 = _mm512_fmadd_ps(su, vd0, a0);
              a1 = _mm512_fmadd_ps(su, vd1, a1);
            }
            _mm512_store_ps(acc[r], a0);
            _mm512_store_ps(acc[r] + 16, a1);
          }
        };
        // Software pipeline: while the tiles compute block b, the vector units scale block b - 1, a
        // slice of rows after each K step, so that neither unit waits for the other.
        for (int64_t b = 0; b < nb; ++b) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t s = 0; s < steps; ++s) {
            const int64_t k0 = b * B + s * ks;
            const int8_t* bt = panel + (k0 / ks) * 2 * ks * 16;
            _tile_loadd(4, A + m0 * K + k0, K);
            _tile_loadd(5, A + (m0 + 16) * K + k0, K);
            _tile_loadd(6, bt, 64);
            _tile_loadd(7, bt + ks * 16, 64);
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
            if (b > 0) {
              epilogue(b - 1, static_cast<int>(s * kRows / steps), static_cast<int>((s + 1) * kRows / steps));
            }
          }
          int32_t(*cb)[16][16] = cbuf[b & 1];
          _tile_stored(0, cb[0], 64);
          _tile_stored(1, cb[1], 64);
          _tile_stored(2, cb[2], 64);
          _tile_stored(3, cb[3], 64);
        }
        epilogue(nb - 1, 0, kRows);
        const __m512 b0 = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
        const __m512 b1 = bias ? _mm512_loadu_ps(bias + n0 + 16) : _mm512_setzero_ps();
        const int64_t cols = std::min<int64_t>(kPanel, N - n0);
        const __mmask16 k0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
        const __mmask16 k1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
        for (int r = 0; r < kRows; ++r) {
          float* y = Y + (m0 + r) * ldy + n0;
          _mm512_mask_storeu_ps(y, k0, _mm512_add_ps(_mm512_load_ps(acc[r]), b0));
          _mm512_mask_storeu_ps(y + 16, k1, _mm512_add_ps(_mm512_load_ps(acc[r] + 16), b1));
        }
      }
    }
    }
    _tile_release();
  });
}

// --- Python-facing functions ------------------------------------------------------------------------

// x [M, K] float32 or bfloat16 -> codes uint8 [Mp, K] (Mp: M rounded up to `row_multiple`, padding
// rows zero), scale / zero [M, G] (only when computed here), and the epilogue inputs [Mp, K / block].
// With `given_scale` / `given_zero` ([M, G]) the ranges are not computed (sample and static granularity).
std::vector<torch::Tensor> quantize_act(torch::Tensor x, int64_t group, int64_t bits, bool symmetric, int64_t block,
                                        int64_t row_multiple, c10::optional<torch::Tensor> given_scale,
                                        c10::optional<torch::Tensor> given_zero) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: contiguous [M, K]");
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits in 2..8");
  const int64_t M = x.size(0), K = x.size(1);
  if (group == 0) group = K;
  TORCH_CHECK(K % group == 0 && block > 0 && group % block == 0, "block must divide group, group must divide K");
  const int64_t Mp = (M + row_multiple - 1) / row_multiple * row_multiple, G = K / group, nb = K / block;
  auto codes = torch::empty({Mp, K}, torch::kUInt8);
  auto e_sa = torch::empty({Mp, nb}, torch::kFloat32);
  auto e_sum = torch::empty({Mp, nb}, torch::kFloat32);
  auto e_sz = torch::empty({Mp, nb}, torch::kFloat32);
  if (Mp > M) {
    codes.narrow(0, M, Mp - M).zero_();
    e_sa.narrow(0, M, Mp - M).zero_();
    e_sum.narrow(0, M, Mp - M).zero_();
    e_sz.narrow(0, M, Mp - M).zero_();
  }
  const bool given = given_scale.has_value() && given_scale->defined();
  torch::Tensor scale, zero, gs, gz;
  if (given) {
    gs = given_scale->to(torch::kFloat32).contiguous();
    gz = given_zero->to(torch::kInt32).contiguous();
    TORCH_CHECK(gs.size(0) == M && gs.size(1) == G && gz.sizes() == gs.sizes(), "given scale / zero: [M, G]");
  } else {
    scale = torch::empty({M, G}, torch::kFloat32);
    zero = torch::empty({M, G}, torch::kInt32);
  }
  auto go = [&](auto* ptr) {
    quantize_rows(ptr, M, K, group, block, static_cast<int>(bits), symmetric, given ? gs.data_ptr<float>() : nullptr,
                  given ? gz.data_ptr<int32_t>() : nullptr, codes.data_ptr<uint8_t>(),
                  given ? nullptr : scale.data_ptr<float>(), given ? nullptr : zero.data_ptr<int32_t>(),
                  e_sa.data_ptr<float>(), e_sum.data_ptr<float>(), e_sz.data_ptr<float>());
  };
  if (x.scalar_type() == torch::kBFloat16) {
    go(x.data_ptr<at::BFloat16>());
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32 or bfloat16");
    go(x.data_ptr<float>());
  }
  if (given) return {codes, e_sa, e_sum, e_sz};
  return {codes, e_sa, e_sum, e_sz, scale, zero};
}

// codes: uint8 [Mp, K] with Mp % 32 == 0; act_*: float32 [Mp, K/B]; weight: the panel-major stream;
// sw/vd/vw: float32 [K/B, Np]; returns float32 [Mp, N].
torch::Tensor amx_linear(torch::Tensor codes, torch::Tensor act_sa, torch::Tensor act_sum, torch::Tensor act_sz,
                         torch::Tensor weight, int64_t bits, bool pack4, int64_t N, int64_t B, int64_t ks,
                         torch::Tensor sw, torch::Tensor vd, torch::Tensor vw, c10::optional<torch::Tensor> bias,
                         bool has_offset) {
  TORCH_CHECK(amx_available(), "AMX-INT8 is not available on this CPU");
  const int64_t Mp = codes.size(0), K = codes.size(1);
  TORCH_CHECK(Mp % kRows == 0, "rows must be padded to a multiple of 32");
  TORCH_CHECK(K % B == 0 && B % ks == 0 && ks % 4 == 0 && ks <= 64, "bad block / K step");
  const int64_t Np = sw.size(1);
  TORCH_CHECK(Np % kPanel == 0 && Np >= N, "weights must be padded to panels of 32 rows");
  auto y = torch::empty({Mp, N}, torch::kFloat32);
  const float* bptr = nullptr;
  torch::Tensor bpad;
  if (bias.has_value() && bias->defined()) {
    bpad = torch::zeros({Np}, torch::kFloat32);
    bpad.narrow(0, 0, N).copy_(*bias);
    bptr = bpad.data_ptr<float>();
  }
  const int8_t* w8 = pack4 ? nullptr : reinterpret_cast<const int8_t*>(weight.data_ptr<uint8_t>());
  const uint8_t* w4 = pack4 ? weight.data_ptr<uint8_t>() : nullptr;
  auto run = has_offset ? amx_linear_impl<true> : amx_linear_impl<false>;
  run(codes.data_ptr<uint8_t>(), Mp, K, act_sa.data_ptr<float>(), act_sum.data_ptr<float>(), act_sz.data_ptr<float>(),
      w8, w4, static_cast<int>(bits), Np, B, ks, sw.data_ptr<float>(), has_offset ? vd.data_ptr<float>() : nullptr,
      vw.data_ptr<float>(), bptr, y.data_ptr<float>(), N, N);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("amx_available", &amx_available, "AMX-INT8 present and granted by the kernel");
  m.def("quantize_act", &quantize_act, "int8 activation codes and the epilogue inputs (dynamic per token group, or given ranges)");
  m.def("prepack_weight", &prepack_weight, "unsigned codes -> the AMX panel-major weight stream");
  m.def("unpack_weight", &unpack_weight, "the AMX panel-major weight stream -> unsigned codes");
  m.def("amx_linear", &amx_linear, "group-wise u8 x s8 linear product on AMX tiles");
}
