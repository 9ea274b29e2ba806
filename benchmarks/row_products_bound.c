// The most a hand-written kernel gets from the decode's weight products on this CPU.
//
//   gcc -O3 -march=native -fopenmp benchmarks/row_products_bound.c -o /tmp/row_bound -lm
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close /tmp/row_bound [rounds]
//
// SmolLM2-135M's 121 products of one decode step, in the Sampler's packed forms (30 x [q|k|v
// 960x576, o 576x576, gate|up 3072x576, down 576x1536] + the 49,152x576 head), weights laid out
// one after another as a model's are, a barrier after each product as in a decode.
// AVX-512 kernels. Batch 1 (one row x), four weight rows at a time: bf16 weights by vdpbf16ps
// (AVX512_BF16: x rounded to bf16) and by widening to f32 + FMA (exact f32 accumulation); f32
// weights by FMA. Batch 8 (eight rows x), bf16 weights by vdpbf16ps, two weight rows at a time
// against all eight. Then a plain f32 sum over the same bytes: the read bandwidth the roofline
// of benchmarks/real_model.py uses. Time per decode step (one token per row of x): products
// alone, nothing else a decode does. Best and mean of rounds; each kernel's head outputs are
// checked against a double-precision sum (exit 1 if one is off).
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { LAYERS = 30, PRODUCTS = 4 * LAYERS + 1 };
static const int SHAPES[4][2] = {{960, 576}, {576, 576}, {3072, 576}, {576, 1536}};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint16_t to_bf16(float v) {  // truncation is enough for timing
  uint32_t u;
  memcpy(&u, &v, 4);
  return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

// The head's outputs (the last product, left in y, `stride` apart) against a double-precision
// sum of the same operands (x in f32, or xb in bf16 when xb is given), relative to the sum of
// |w x|: a bound from a wrong kernel would be worthless.
static double head_error(const float *y, int stride, const float *wf, const uint16_t *wb,
                         const float *x, const uint16_t *xb, int out, int in) {
  double worst = 0;
  for (int o = 0; o < out; o++) {
    double ref = 0, scale = 0;
    for (int i = 0; i < in; i++) {
      size_t j = (size_t)o * in + i;
      double w = wf ? wf[j] : from_bf16(wb[j]), v = xb ? from_bf16(xb[i]) : x[i];
      ref += w * v, scale += fabs(w * v);
    }
    double err = fabs(y[(size_t)o * stride] - ref) / (scale + 1e-30);
    worst = err > worst ? err : worst;
  }
  return worst;
}

#ifdef __AVX512BF16__
static void dot_dpbf16(const uint16_t *w, const uint16_t *x, float *y, int out, int in) {
#pragma omp for schedule(static)
  for (int o = 0; o < out; o += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < in; i += 32) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i);
      for (int r = 0; r < 4; r++)
        a[r] = _mm512_dpbf16_ps(a[r], (__m512bh)_mm512_loadu_si512(w + (size_t)(o + r) * in + i), xv);
    }
    for (int r = 0; r < 4; r++) y[o + r] = _mm512_reduce_add_ps(a[r]);
  }
}

// Eight rows of x (x[b * in + i]) -> y[o * 8 + b]: each weight vector loaded once for all eight.
static void dot8_dpbf16(const uint16_t *w, const uint16_t *x, float *y, int out, int in) {
#pragma omp for schedule(static)
  for (int o = 0; o < out; o += 2) {
    __m512 a[2][8];
    for (int b = 0; b < 8; b++) a[0][b] = a[1][b] = _mm512_setzero_ps();
    for (int i = 0; i < in; i += 32) {
      __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + (size_t)o * in + i);
      __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + (size_t)(o + 1) * in + i);
      for (int b = 0; b < 8; b++) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (size_t)b * in + i);
        a[0][b] = _mm512_dpbf16_ps(a[0][b], w0, xv);
        a[1][b] = _mm512_dpbf16_ps(a[1][b], w1, xv);
      }
    }
    for (int r = 0; r < 2; r++)
      for (int b = 0; b < 8; b++) y[(size_t)(o + r) * 8 + b] = _mm512_reduce_add_ps(a[r][b]);
  }
}
#endif

static void dot_widen(const uint16_t *w, const float *x, float *y, int out, int in) {
#pragma omp for schedule(static)
  for (int o = 0; o < out; o += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < in; i += 16) {
      __m512 xv = _mm512_loadu_ps(x + i);
      for (int r = 0; r < 4; r++) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(w + (size_t)(o + r) * in + i));
        __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        a[r] = _mm512_fmadd_ps(wv, xv, a[r]);
      }
    }
    for (int r = 0; r < 4; r++) y[o + r] = _mm512_reduce_add_ps(a[r]);
  }
}

static void dot_f32(const float *w, const float *x, float *y, int out, int in) {
#pragma omp for schedule(static)
  for (int o = 0; o < out; o += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < in; i += 16) {
      __m512 xv = _mm512_loadu_ps(x + i);
      for (int r = 0; r < 4; r++)
        a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w + (size_t)(o + r) * in + i), xv, a[r]);
    }
    for (int r = 0; r < 4; r++) y[o + r] = _mm512_reduce_add_ps(a[r]);
  }
}

static float sum_f32(const float *p, size_t n) {
  __m512 total = _mm512_setzero_ps();
  float out = 0;
#pragma omp parallel
  {
    __m512 a = _mm512_setzero_ps();
#pragma omp for schedule(static)
    for (size_t j = 0; j < n / 16; j++) a = _mm512_add_ps(a, _mm512_loadu_ps(p + 16 * j));
#pragma omp critical
    total = _mm512_add_ps(total, a);
  }
  out = _mm512_reduce_add_ps(total);
  return out;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 30;
  int out[PRODUCTS], in[PRODUCTS];
  size_t elems = 0;
  for (int k = 0; k < PRODUCTS; k++) {
    int last = k == PRODUCTS - 1;
    out[k] = last ? 49152 : SHAPES[k % 4][0];
    in[k] = last ? 576 : SHAPES[k % 4][1];
    elems += (size_t)out[k] * in[k];
  }
  uint16_t *wb = aligned_alloc(64, elems * 2);
  float *wf = aligned_alloc(64, elems * 4);
  for (size_t j = 0; j < elems; j++) {
    wf[j] = (float)((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
    wb[j] = to_bf16(wf[j]);
  }
  static float x[3072], y[49152 * 8];
  static uint16_t xb[3072], xb8[8 * 3072];  // x8's rows packed at each product's `in`
  for (int i = 0; i < 3072; i++) xb[i] = to_bf16(x[i] = 0.01f * (i % 7));
  for (int i = 0; i < 8 * 3072; i++) xb8[i] = to_bf16(0.01f * (i % 11) - 0.03f);
  printf("%d products, %.1f M weights (bf16 %.0f MB, f32 %.0f MB), %d threads, %d rounds\n",
         PRODUCTS, elems / 1e6, elems * 2 / 1e6, elems * 4 / 1e6, omp_get_max_threads(), rounds);
  const char *names[] = {"batch 1, bf16 vdpbf16ps", "batch 1, bf16 widen + FMA",
                         "batch 1, f32 FMA", "batch 8, bf16 vdpbf16ps", "f32 sum (read only)"};
  printf("| kernel | best ms | GB/s | mean ms | GB/s | head's max relative error |\n");
  printf("|---|---:|---:|---:|---:|---:|\n");
  int failed = 0;
  for (int v = 0; v < 5; v++) {
#ifndef __AVX512BF16__
    if (v == 0 || v == 3) continue;
#endif
    double best = 1e30, total = 0, bytes = (v == 2 || v == 4 ? 4.0 : 2.0) * elems;
    float sink = 0;
    for (int r = 0; r <= rounds; r++) {  // round 0 warms up
      double t = now();
      if (v == 4) {
        sink += sum_f32(wf, elems);
      } else {
#pragma omp parallel
        {
          size_t off = 0;
          for (int k = 0; k < PRODUCTS; k++) {
#ifdef __AVX512BF16__
            if (v == 0) dot_dpbf16(wb + off, xb, y, out[k], in[k]);
            if (v == 3) dot8_dpbf16(wb + off, xb8, y, out[k], in[k]);
#endif
            if (v == 1) dot_widen(wb + off, x, y, out[k], in[k]);
            if (v == 2) dot_f32(wf + off, x, y, out[k], in[k]);
            off += (size_t)out[k] * in[k];
          }
        }
        sink += y[0];
      }
      t = now() - t;
      if (r) best = t < best ? t : best, total += t;
    }
    double mean = total / rounds;
    size_t head = elems - (size_t)49152 * 576;
    const float *hf = v == 2 ? wf + head : NULL;
    double err = 0;
    if (v < 3) err = head_error(y, 1, hf, wb + head, x, v == 0 ? xb : NULL, 49152, 576);
    for (int b = 0; v == 3 && b < 8; b++) {
      double e = head_error(y + b, 8, NULL, wb + head, NULL, xb8 + b * 576, 49152, 576);
      err = e > err ? e : err;
    }
    failed |= err > 1e-5;
    printf("| %s | %.2f | %.1f | %.2f | %.1f | %.1e |\n", names[v], 1e3 * best, bytes / 1e9 / best,
           1e3 * mean, bytes / 1e9 / mean, err);
    if (sink == 12345.0f) printf("\n");  // keeps the results live
  }
  if (failed) fprintf(stderr, "a kernel's products differ from the reference\n");
  return failed;
}
