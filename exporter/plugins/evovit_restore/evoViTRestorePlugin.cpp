// SPDX-License-Identifier: Apache-2.0
// EvoViTRestore: Evo-ViT stage end, the informative tokens back in their places and every placeholder moved by
// the representative token's summed increments. No attributes: K comes from idx. See README.md and contract.json.
#include "kernels.h"
#include "tokenPlugin.h"

namespace exporter
{
namespace plugin
{
namespace
{
enum : int32_t
{
    kX = 0,
    kTOKENS = 1,
    kMOVED = 2,
    kIDX = 3
};

std::string checkAttributes(Attributes const& /*a*/)
{
    return {};
}

std::string checkShapes(Attributes const& /*a*/, InputDims const& in)
{
    TokenOpSpec const& spec = evoViTRestoreSpec();
    int64_t const n = in[kX][1];
    int64_t const c = in[kX][2];
    int64_t const k = in[kIDX][1];
    if (k != kUNKNOWN_DIM && n != kUNKNOWN_DIM && (k < 1 || k >= n - 1))
    {
        return "input 'idx' holds K = " + std::to_string(k) + " positions, not 1 <= K < N-1 = " + std::to_string(n - 1);
    }
    for (std::string problem : {expectDim(in, spec, kTOKENS, 1, k == kUNKNOWN_DIM ? -1 : k + 2, "K+2"),
             expectDim(in, spec, kTOKENS, 2, c, "C"), expectDim(in, spec, kMOVED, 1, 1, "1"),
             expectDim(in, spec, kMOVED, 2, c, "C")})
    {
        if (!problem.empty())
        {
            return problem;
        }
    }
    return {};
}

void outputShapes(Attributes const& /*a*/, nvinfer1::DimsExprs const* in, nvinfer1::DimsExprs* out,
    nvinfer1::IExprBuilder& /*b*/)
{
    out[0] = in[kX];
}

size_t workspace(int32_t dtype, Attributes const& /*a*/, InputDims const& d)
{
    return exporter_evovit_restore_workspace(dtype, static_cast<int>(d[kX][0]), static_cast<int>(d[kX][1]),
        static_cast<int>(d[kX][2]), static_cast<int>(d[kIDX][1]));
}

int32_t enqueue(Launch const& l, void const* const* in, void* const* out, void* ws, cudaStream_t stream)
{
    nvinfer1::Dims const& x = l.inputs[kX].dims;
    return exporter_evovit_restore(stream, l.dtype, static_cast<int>(x.d[0]), static_cast<int>(x.d[1]),
        static_cast<int>(x.d[2]), static_cast<int>(l.inputs[kIDX].dims.d[1]), in[kX], in[kTOKENS], in[kMOVED],
        static_cast<int64_t const*>(in[kIDX]), out[0], ws);
}
} // namespace

TokenOpSpec const& evoViTRestoreSpec() noexcept
{
    static TokenOpSpec const spec{"EvoViTRestore", {},
        {{"x", IoType::kTOKEN, 3}, {"tokens", IoType::kTOKEN, 3}, {"moved", IoType::kTOKEN, 3},
            {"idx", IoType::kINT64, 2}},
        {{"out", IoType::kTOKEN, 3}}, checkAttributes, checkShapes, outputShapes, workspace, enqueue};
    return spec;
}

} // namespace plugin
} // namespace exporter
