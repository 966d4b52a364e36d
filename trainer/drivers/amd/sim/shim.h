/* What the AMD codegen's target macros mean on the simulated GPU's host: prepended to a kernel's own
 * source for its host build. The work-item state and the operations live in shim.c, built once. */
#include <math.h>
#define K_KERNEL static
#define K_LDS static
#define K_TID_X k_tid
#define K_GROUP_X k_group[0]
#define K_GROUP_Y k_group[1]
#define K_GROUP_Z k_group[2]
typedef float k_f32x4 __attribute__((vector_size(16)));
typedef float k_f32x8 __attribute__((vector_size(32)));
typedef _Float16 k_f16x16 __attribute__((vector_size(32)));
typedef short k_i16x16 __attribute__((vector_size(32)));
extern int k_tid;
extern long long k_group[3];
void k_barrier(void);
#define K_BARRIER() k_barrier()
k_f32x4 K_MFMA_F32_16X16X4F32(float a, float b, k_f32x4 c);
k_f32x8 K_WMMA_F32_16X16X16_F16(k_f16x16 a, k_f16x16 b, k_f32x8 c);
k_f32x8 K_WMMA_F32_16X16X16_BF16(k_i16x16 a, k_i16x16 b, k_f32x8 c);
int k_sim_dispatch(void (*body)(const char *), const char *args, const long long *groups, int lanes, int wave);
