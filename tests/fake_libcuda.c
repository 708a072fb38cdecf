// SPDX-License-Identifier: Apache-2.0
/* A stand-in libcuda.so.1 for tests/test_kernels_aot.py: reports a device of compute capability
 * $FAKE_CC, accepts ELF images as modules and records what each launch was given (kernel name, the
 * size of its cubin, grid, block, shared memory, parameters), so the launchers' variant choice and
 * their launches (a decision, then a movement) are checked without a GPU. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_MAX_LAUNCHES 8

typedef struct {
  char name[64];
  unsigned long long image_bytes;
} FakeFunction;

int fake_loads = 0;                     /* cuModuleLoadData calls */
int fake_launches = 0;                  /* cuLaunchKernel calls */
int fake_logged = 0;                    /* launches logged since the test last set it to 0 */
char fake_function[FAKE_MAX_LAUNCHES][64];         /* logged launch i: the kernel's name */
unsigned long long fake_image[FAKE_MAX_LAUNCHES];  /* its cubin's size in bytes */
unsigned fake_launch[FAKE_MAX_LAUNCHES][7];        /* grid x, y, z, block x, y, z, shared bytes */
int fake_sizes[FAKE_MAX_LAUNCHES][32];             /* set by the test: bytes of launch i's parameter j (0 ends) */
unsigned char fake_params[FAKE_MAX_LAUNCHES][32][8];  /* launch i's parameter values */
int fake_shared_attr = -1;              /* last cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) value */

static unsigned long long get(const unsigned char* p, int bytes) {
  unsigned long long v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/* An ELF64 image's size: the furthest end of its header tables and its sections' contents. */
static unsigned long long elf_bytes(const unsigned char* e) {
  unsigned long long shoff = get(e + 0x28, 8), phoff = get(e + 0x20, 8);
  unsigned long long end = shoff + get(e + 0x3a, 2) * get(e + 0x3c, 2);
  unsigned long long ph = phoff + get(e + 0x36, 2) * get(e + 0x38, 2);
  if (ph > end) end = ph;
  for (unsigned long long i = 0; i < get(e + 0x3c, 2); ++i) {
    const unsigned char* s = e + shoff + i * get(e + 0x3a, 2);
    if (get(s + 4, 4) != 8 /* SHT_NOBITS */ && get(s + 0x18, 8) + get(s + 0x20, 8) > end)
      end = get(s + 0x18, 8) + get(s + 0x20, 8);
  }
  return end;
}

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
  FakeFunction* f = calloc(1, sizeof *f);
  strncpy(f->name, name, sizeof f->name - 1);
  f->image_bytes = elf_bytes(module);
  *fn = f;
  return 0;
}
int cuFuncSetAttribute(void* fn, int attr, int value) {
  (void)fn;
  if (attr == 8) fake_shared_attr = value;
  return 0;
}
int cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
  (void)stream; (void)extra;
  ++fake_launches;
  if (fake_logged >= FAKE_MAX_LAUNCHES) return 0;
  int i = fake_logged++;
  const FakeFunction* f = fn;
  unsigned values[7] = {gx, gy, gz, bx, by, bz, shared};
  memcpy(fake_launch[i], values, sizeof values);
  memcpy(fake_function[i], f->name, sizeof f->name);
  fake_image[i] = f->image_bytes;
  for (int j = 0; j < 32 && fake_sizes[i][j] > 0; ++j) memcpy(fake_params[i][j], params[j], (size_t)fake_sizes[i][j]);
  return 0;
}
