// SPDX-License-Identifier: Apache-2.0
// The fused token-op kernels' C launchers: the one ABI the plugins' enqueue() and the ctypes GPU
// tests call. Each launcher is generated from the Triton kernel of the same name in
// exporter/ops/kernels (cubins per architecture, launched through the CUDA driver API).
//
// Conventions, for every launcher:
// - `stream` is a cudaStream_t / CUstream; every pointer is a device pointer to a contiguous,
//   row-major tensor. `dtype` is the token dtype: 0 = float32, 1 = float16. Scores, similarities
//   and sizes are float32, indices int64, whatever `dtype` is.
// - B images, N tokens in (class token first), C channels; the other sizes are the plugins'
//   attributes (see plugins/<op>/contract.json, which also gives every output's shape).
// - `workspace` holds at least `<name>_workspace(...)` bytes (may be null when that is 0): a token op is a
//   decision kernel, which writes the op's indices and a plan there, then a movement kernel that reads it,
//   both on `stream`. Any token count N is served (the kernels tile the tokens).
// - Variants specialised for C % 16 == 0 and 16-byte aligned pointers (128-bit fp16 rows) are launched when
//   the actual sizes and pointers allow, else generic ones.
// - Returns 0 on success, otherwise a CUresult. A library holds the kernels of some ops, token dtypes and GPU
//   architectures (exporter_kernels_served): a launch of anything else launches nothing and returns 209
//   (CUDA_ERROR_NO_BINARY_FOR_GPU), with exporter_kernels_error() saying what is missing.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// What this library's kernels serve, as JSON: {"ops": {"tome_merge": ["fp16"], ...}, "archs": [87, 90, ...]}
// (an op for a dtype: every kernel it launches for it; archs: the compute capabilities x10 of its cubins).
char const* exporter_kernels_served(void);

// Why the calling thread's last launcher or preload call returned 209: a sentence naming the op, the token dtype
// and the GPU architecture this library has no kernel for, and what it serves. Empty before any such failure.
char const* exporter_kernels_error(void);

// Load every kernel for the current context's GPU now. Launchers otherwise load a kernel's module on
// its first launch, which must not happen inside a CUDA-graph capture: plugins call this when they
// are attached to an execution context. Returns 0, or the CUresult of the failed load.
int exporter_kernels_preload(void);

// Keep the class token and the k patch tokens of highest score (best first); with fuse, append
// the dropped patches' score-weighted sum. tokens [B, 1+k+fuse, C], idx [B, k] patch positions.
size_t exporter_topk_prune_workspace(int dtype, int B, int N, int C, int k, int fuse);
int exporter_topk_prune(void* stream, int dtype, int B, int N, int C, int k, int fuse,
                        const void* x, const float* score, void* tokens, int64_t* idx, void* workspace);

// Evo-ViT stage start: tokens [B, keep+2, C] = [class, top-keep patches by g, rep], idx [B, keep].
size_t exporter_evovit_select_workspace(int dtype, int B, int N, int C, int keep);
int exporter_evovit_select(void* stream, int dtype, int B, int N, int C, int keep,
                           const void* x, const float* g, void* tokens, int64_t* idx, void* workspace);

// Evo-ViT stage end: out [B, N, C], informative tokens back in place, placeholders + moved.
// tokens [B, K+2, C], moved [B, 1, C], idx [B, K].
size_t exporter_evovit_restore_workspace(int dtype, int B, int N, int C, int K);
int exporter_evovit_restore(void* stream, int dtype, int B, int N, int C, int K,
                            const void* x, const void* tokens, const void* moved, const int64_t* idx,
                            void* out, void* workspace);

// ToMe bipartite soft matching + size-weighted merge of r tokens. metric [B, N, Cm] (dtype).
// tokens [B, N-r, C], size_out [B, N-r], src [B, r], dst [B, r].
size_t exporter_tome_merge_workspace(int dtype, int B, int N, int C, int Cm, int r);
int exporter_tome_merge(void* stream, int dtype, int B, int N, int C, int Cm, int r,
                        const void* x, const float* size, const void* metric,
                        void* tokens, float* size_out, int64_t* src, int64_t* dst, void* workspace);

// DiffRate prune to keep tokens by score, then merge the tail beyond `merge` (merge < keep).
// score [B, N-1]; tokens [B, merge, C], size_out [B, merge], idx [B, keep-1], dst [B, keep-merge].
size_t exporter_diffrate_reduce_workspace(int dtype, int B, int N, int C, int keep, int merge);
int exporter_diffrate_reduce(void* stream, int dtype, int B, int N, int C, int keep, int merge,
                             const void* x, const float* size, const float* score,
                             void* tokens, float* size_out, int64_t* idx, int64_t* dst, void* workspace);

// LITv2 HiLo's Hi-Fi window attention (scale head_dim^-0.5, head_dim = C / heads): qkv [B, H*W, 3*C] (channels
// q/k/v, head, head_dim), pad [3*C] (the q/k/v of a padding token), out [B, H*W, C]. Windows window x window,
// maps they do not tile padded bottom/right with `pad` tokens. window <= 5 (any head dim), B * heads <= 65535.
size_t exporter_hilo_attention_workspace(int dtype, int B, int H, int W, int C, int window, int heads);
int exporter_hilo_attention(void* stream, int dtype, int B, int H, int W, int C, int window, int heads,
                            const void* qkv, const void* pad, void* out, void* workspace);

#ifdef __cplusplus
}
#endif
