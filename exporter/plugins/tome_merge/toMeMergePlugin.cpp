// SPDX-License-Identifier: Apache-2.0
// ToMeMerge: bipartite soft matching on the metric and the size-weighted merge of r tokens (ToMe). See README.md
// and contract.json.
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
    kMETRIC = 2
};

enum : size_t
{
    kR = 0
};

std::string checkAttributes(Attributes const& a)
{
    if (a[kR] < 1)
    {
        return "attribute 'r' = " + std::to_string(a[kR]) + " must be at least 1";
    }
    return {};
}

std::string checkShapes(Attributes const& a, InputDims const& in)
{
    TokenOpSpec const& spec = toMeMergeSpec();
    int64_t const n = in[kX][1];
    if (n != kUNKNOWN_DIM && a[kR] > (n - 1) / 2)
    {
        return "attribute 'r' = " + std::to_string(a[kR]) + " must be at most (N-1)//2 = "
            + std::to_string((n - 1) / 2);
    }
    std::string problem = expectDim(in, spec, kSIZE, 1, n, "N");
    return problem.empty() ? expectDim(in, spec, kMETRIC, 1, n, "N") : problem;
}

void outputShapes(
    Attributes const& a, nvinfer1::DimsExprs const* in, nvinfer1::DimsExprs* out, nvinfer1::IExprBuilder& b)
{
    nvinfer1::IDimensionExpr const* kept = plus(b, *in[kX].d[1], -a[kR]);
    out[0].d[0] = in[kX].d[0];
    out[0].d[1] = kept;
    out[0].d[2] = in[kX].d[2];
    out[1].d[0] = in[kX].d[0];
    out[1].d[1] = kept;
    for (int32_t i = 2; i < 4; ++i)
    {
        out[i].d[0] = in[kX].d[0];
        out[i].d[1] = b.constant(a[kR]);
    }
}

size_t workspace(int32_t dtype, Attributes const& a, InputDims const& d)
{
    return exporter_tome_merge_workspace(dtype, static_cast<int>(d[kX][0]), static_cast<int>(d[kX][1]),
        static_cast<int>(d[kX][2]), static_cast<int>(d[kMETRIC][2]), a[kR]);
}

int32_t enqueue(Launch const& l, void const* const* in, void* const* out, void* ws, cudaStream_t stream)
{
    nvinfer1::Dims const& x = l.inputs[kX].dims;
    return exporter_tome_merge(stream, l.dtype, static_cast<int>(x.d[0]), static_cast<int>(x.d[1]),
        static_cast<int>(x.d[2]), static_cast<int>(l.inputs[kMETRIC].dims.d[2]), l.attributes[kR], in[kX],
        static_cast<float const*>(in[kSIZE]), in[kMETRIC], out[0], static_cast<float*>(out[1]),
        static_cast<int64_t*>(out[2]), static_cast<int64_t*>(out[3]), ws);
}
} // namespace

TokenOpSpec const& toMeMergeSpec() noexcept
{
    static TokenOpSpec const spec{"ToMeMerge", {"r"},
        {{"x", IoType::kTOKEN, 3}, {"size", IoType::kFLOAT32, 2}, {"metric", IoType::kTOKEN, 3}},
        {{"tokens", IoType::kTOKEN, 3}, {"size_out", IoType::kFLOAT32, 2}, {"src", IoType::kINT64, 2},
            {"dst", IoType::kINT64, 2}},
        checkAttributes, checkShapes, outputShapes, workspace, enqueue};
    return spec;
}

} // namespace plugin
} // namespace exporter
