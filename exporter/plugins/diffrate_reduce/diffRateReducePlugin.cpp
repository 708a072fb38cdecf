// SPDX-License-Identifier: Apache-2.0
// DiffRateReduce: DiffRate's prune to keep tokens by score, then the merge of every kept token beyond the first
// merge into its most similar head token. See README.md and contract.json.
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
    kSIZE = 1,
    kSCORE = 2
};

enum : size_t
{
    kKEEP = 0,
    kMERGE = 1
};

std::string checkAttributes(Attributes const& a)
{
    if (a[kKEEP] < 2)
    {
        return "attribute 'keep' = " + std::to_string(a[kKEEP]) + " must be at least 2";
    }
    if (a[kMERGE] < 2 || a[kMERGE] >= a[kKEEP])
    {
        return "attribute 'merge' = " + std::to_string(a[kMERGE]) + " must satisfy 2 <= merge < keep = "
            + std::to_string(a[kKEEP]);
    }
    return {};
}

std::string checkShapes(Attributes const& a, InputDims const& in)
{
    TokenOpSpec const& spec = diffRateReduceSpec();
    int64_t const n = in[kX][1];
    if (n != kUNKNOWN_DIM && a[kKEEP] > n)
    {
        return "attribute 'keep' = " + std::to_string(a[kKEEP]) + " must be at most N = " + std::to_string(n);
    }
    std::string problem = expectDim(in, spec, kSIZE, 1, n, "N");
    return problem.empty() ? expectDim(in, spec, kSCORE, 1, n == kUNKNOWN_DIM ? -1 : n - 1, "N-1") : problem;
}

void outputShapes(
    Attributes const& a, nvinfer1::DimsExprs const* in, nvinfer1::DimsExprs* out, nvinfer1::IExprBuilder& b)
{
    nvinfer1::IDimensionExpr const* batch = in[kX].d[0];
    out[0].d[0] = batch;
    out[0].d[1] = b.constant(a[kMERGE]);
    out[0].d[2] = in[kX].d[2];
    out[1].d[0] = batch;
    out[1].d[1] = b.constant(a[kMERGE]);
    out[2].d[0] = batch;
    out[2].d[1] = b.constant(a[kKEEP] - 1);
    out[3].d[0] = batch;
    out[3].d[1] = b.constant(a[kKEEP] - a[kMERGE]);
}

size_t workspace(int32_t dtype, Attributes const& a, InputDims const& d)
{
    return exporter_diffrate_reduce_workspace(dtype, static_cast<int>(d[kX][0]), static_cast<int>(d[kX][1]),
        static_cast<int>(d[kX][2]), a[kKEEP], a[kMERGE]);
}

int32_t enqueue(Launch const& l, void const* const* in, void* const* out, void* ws, cudaStream_t stream)
{
    nvinfer1::Dims const& x = l.inputs[kX].dims;
    return exporter_diffrate_reduce(stream, l.dtype, static_cast<int>(x.d[0]), static_cast<int>(x.d[1]),
        static_cast<int>(x.d[2]), l.attributes[kKEEP], l.attributes[kMERGE], in[kX],
        static_cast<float const*>(in[kSIZE]), static_cast<float const*>(in[kSCORE]), out[0],
        static_cast<float*>(out[1]), static_cast<int64_t*>(out[2]), static_cast<int64_t*>(out[3]), ws);
}
} // namespace

TokenOpSpec const& diffRateReduceSpec() noexcept
{
    static TokenOpSpec const spec{"DiffRateReduce", {"keep", "merge"},
        {{"x", IoType::kTOKEN, 3}, {"size", IoType::kFLOAT32, 2}, {"score", IoType::kFLOAT32, 2}},
        {{"tokens", IoType::kTOKEN, 3}, {"size_out", IoType::kFLOAT32, 2}, {"idx", IoType::kINT64, 2},
            {"dst", IoType::kINT64, 2}},
        checkAttributes, checkShapes, outputShapes, workspace, enqueue};
    return spec;
}

} // namespace plugin
} // namespace exporter
