/* A stand-in libcuda.so.1 for tests/test_kernels_aot.py: reports a device of compute capability
 * $FAKE_CC, accepts ELF images as modules and records what each launch was given, so the launchers'
 * architecture choice, grid, block, shared memory and parameter list are checked without a GPU. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int fake_loads = 0;              /* cuModuleLoadData calls */
int fake_launches = 0;           /* cuLaunchKernel calls */
char fake_function[128];         /* name asked of cuModuleGetFunction last */
unsigned fake_launch[7];         /* grid x, y, z, block x, y, z, shared bytes of the last launch */
int fake_sizes[32];              /* set by the test: bytes of parameter i (0 ends the list) */
unsigned char fake_params[32][8];  /* the last launch's parameter values */
int fake_shared_attr = -1;       /* last cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) value */

int cuInit(unsigned flags) { (void)flags; return 0; }
int cuCtxGetCurrent(void** ctx) { *ctx = (void*)0x1; return 0; }
int cuCtxGetDevice(int* dev) { *dev = 0; return 0; }
int cuDeviceGetAttribute(int* value, int attr, int dev) {
  (void)dev;
  int cc = atoi(getenv("FAKE_CC") ? getenv("FAKE_CC") : "0");
  if (attr == 75) { *value = cc / 10; return 0; }
  if (attr == 76) { *value = cc % 10; return 0; }
  return 1;
}
int cuModuleLoadData(void** module, const void* image) {
  if (memcmp(image, "\x7f" "ELF", 4) != 0) return 200; /* CUDA_ERROR_INVALID_IMAGE */
  ++fake_loads;
  *module = (void*)image;
  return 0;
}
int cuModuleGetFunction(void** fn, void* module, const char* name) {
  strncpy(fake_function, name, sizeof fake_function - 1);
  *fn = module;
  return 0;
}
int cuFuncSetAttribute(void* fn, int attr, int value) {
  (void)fn;
  if (attr == 8) fake_shared_attr = value;
  return 0;
}
int cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
  (void)fn; (void)stream; (void)extra;
  unsigned values[7] = {gx, gy, gz, bx, by, bz, shared};
  memcpy(fake_launch, values, sizeof values);
  for (int i = 0; i < 32 && fake_sizes[i] > 0; ++i) memcpy(fake_params[i], params[i], (size_t)fake_sizes[i]);
  ++fake_launches;
  return 0;
}
