/* Grid shim of the simulated AMD GPU: the work-item state and operations behind shim.h.
 * A dispatch runs its work-groups one after another; in a work-group every work-item is a fiber with
 * its own stack, run in lane order until it reaches a barrier (the work-group's, or its wave's inside
 * a matrix-core operation) or finishes. A barrier releases when every live work-item of its scope has
 * reached it. Cross-lane operations exchange through a per-wave table, lane by lane, as the ISA
 * documents them. LDS arrays are static (one work-group runs at a time). Built once into a shared library
 * that the kernels' host builds (shim.h before their source) link against. */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "shim.h"
#define K_STACK_BYTES (64 << 10)
#define K_MAX_LANES 1024

int k_tid;
long long k_group[3];
static int k_nlanes, k_cur, k_wave;
enum { K_RUN, K_WAVE_WAIT, K_GROUP_WAIT, K_DONE };
static int k_state[K_MAX_LANES];
static void *k_sp[K_MAX_LANES], *k_main_sp;
static char *k_stacks;
static void (*k_body)(const char *);
static const char *k_args;

#if defined(__x86_64__)
/* switch stacks: save the callee-saved registers on this stack, store its pointer in *from, load to */
void k_switch(void **from, void *to);
__asm__(".text\n.hidden k_switch\n.globl k_switch\n.type k_switch,@function\nk_switch:\n"
        "pushq %rbp\npushq %rbx\npushq %r12\npushq %r13\npushq %r14\npushq %r15\n"
        "movq %rsp, (%rdi)\nmovq %rsi, %rsp\n"
        "popq %r15\npopq %r14\npopq %r13\npopq %r12\npopq %rbx\npopq %rbp\nret\n");
#else
#error "the simulated GPU's grid shim switches stacks with x86-64 code"
#endif

static void k_yield(int state) { k_state[k_cur] = state; k_switch(&k_sp[k_cur], k_main_sp); }
static void k_start(void) { k_body(k_args); k_yield(K_DONE); }
void k_barrier(void) { k_yield(K_GROUP_WAIT); }

/* a fresh stack whose first switch "returns" into k_start */
static void *k_fresh(int lane) {
  void **top = (void **)(k_stacks + (size_t)(lane + 1) * K_STACK_BYTES);
  *--top = 0; *--top = (void *)k_start;
  for (int i = 0; i < 6; i++) *--top = 0;
  return top;
}

/* 0 when every work-group ran to the end; 1 on a barrier not reached by all (divergence) */
static int k_run_group(void) {
  for (int l = 0; l < k_nlanes; l++) { k_state[l] = K_RUN; k_sp[l] = k_fresh(l); }
  for (;;) {
    for (int l = 0; l < k_nlanes; l++)
      if (k_state[l] == K_RUN) { k_cur = k_tid = l; k_switch(&k_main_sp, k_sp[l]); }
    int done = 0, group = 0;
    for (int l = 0; l < k_nlanes; l++) { done += k_state[l] == K_DONE; group += k_state[l] == K_GROUP_WAIT; }
    if (done == k_nlanes) return 0;
    int released = 0;
    for (int w = 0; w < k_nlanes; w += k_wave) {   /* a wave whose live lanes all wait at a wave barrier goes on */
      int live = 0, waiting = 0, end = w + k_wave < k_nlanes ? w + k_wave : k_nlanes;
      for (int l = w; l < end; l++) { live += k_state[l] != K_DONE; waiting += k_state[l] == K_WAVE_WAIT; }
      if (live && waiting == live) { for (int l = w; l < end; l++) if (k_state[l] == K_WAVE_WAIT) k_state[l] = K_RUN; released = 1; }
    }
    if (released) continue;
    if (group + done == k_nlanes) { for (int l = 0; l < k_nlanes; l++) if (k_state[l] == K_GROUP_WAIT) k_state[l] = K_RUN; continue; }
    return 1;
  }
}

int k_sim_dispatch(void (*body)(const char *), const char *args, const long long *groups, int lanes, int wave) {
  if (lanes < 1 || lanes > K_MAX_LANES) return 2;
  k_body = body; k_args = args; k_nlanes = lanes; k_wave = wave;
  k_stacks = (char *)malloc((size_t)lanes * K_STACK_BYTES);
  if (!k_stacks) return 3;
  int r = 0;
  for (k_group[2] = 0; k_group[2] < groups[2] && !r; k_group[2]++)
    for (k_group[1] = 0; k_group[1] < groups[1] && !r; k_group[1]++)
      for (k_group[0] = 0; k_group[0] < groups[0] && !r; k_group[0]++) r = k_run_group();
  free(k_stacks);
  return r;
}

/* cross-lane exchange: every lane of the wave writes, all wait, every lane reads, all wait again */
static float k_xa[K_MAX_LANES], k_xb[K_MAX_LANES];
static _Float16 k_xh[2][K_MAX_LANES][16];
static short k_xs[2][K_MAX_LANES][16];
#define K_WAVE_BASE (k_tid / k_wave * k_wave)

/* v_mfma_f32_16x16x4f32 (wave 64): A[i][k] in lane i + 16 k, B[k][j] in lane j + 16 k,
 * D[4 (l / 16) + r][l % 16] in lane l, register r */
k_f32x4 K_MFMA_F32_16X16X4F32(float a, float b, k_f32x4 c) {
  int l = k_tid, w = K_WAVE_BASE;
  k_xa[l] = a; k_xb[l] = b;
  k_yield(K_WAVE_WAIT);
  k_f32x4 d;
  for (int r = 0; r < 4; r++) {
    int i = 4 * ((l - w) / 16) + r, j = (l - w) % 16;
    float s = c[r];
    for (int k = 0; k < 4; k++) s += k_xa[w + i + 16 * k] * k_xb[w + j + 16 * k];
    d[r] = s;
  }
  k_yield(K_WAVE_WAIT);
  return d;
}

static float k_bf16(short h) { unsigned int u = ((unsigned int)(unsigned short)h) << 16; float f; memcpy(&f, &u, 4); return f; }

/* v_wmma_f32_16x16x16_{f16,bf16} (wave 32): lane l holds row l % 16 of A and column l % 16 of B (16 deep;
 * lanes 16-31 repeat lanes 0-15), D[2 r + l / 16][l % 16] in lane l, register r */
k_f32x8 K_WMMA_F32_16X16X16_F16(k_f16x16 a, k_f16x16 b, k_f32x8 c) {
  int l = k_tid, w = K_WAVE_BASE;
  for (int v = 0; v < 16; v++) { k_xh[0][l][v] = a[v]; k_xh[1][l][v] = b[v]; }
  k_yield(K_WAVE_WAIT);
  k_f32x8 d;
  for (int r = 0; r < 8; r++) {
    int i = 2 * r + (l - w) / 16, j = (l - w) % 16;
    float s = c[r];
    for (int k = 0; k < 16; k++) s += (float)k_xh[0][w + i][k] * (float)k_xh[1][w + j][k];
    d[r] = s;
  }
  k_yield(K_WAVE_WAIT);
  return d;
}

k_f32x8 K_WMMA_F32_16X16X16_BF16(k_i16x16 a, k_i16x16 b, k_f32x8 c) {
  int l = k_tid, w = K_WAVE_BASE;
  for (int v = 0; v < 16; v++) { k_xs[0][l][v] = a[v]; k_xs[1][l][v] = b[v]; }
  k_yield(K_WAVE_WAIT);
  k_f32x8 d;
  for (int r = 0; r < 8; r++) {
    int i = 2 * r + (l - w) / 16, j = (l - w) % 16;
    float s = c[r];
    for (int k = 0; k < 16; k++) s += k_bf16(k_xs[0][w + i][k]) * k_bf16(k_xs[1][w + j][k]);
    d[r] = s;
  }
  k_yield(K_WAVE_WAIT);
  return d;
}
