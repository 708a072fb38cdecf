// SPDX-License-Identifier: Apache-2.0
// EvoViTSelect: Evo-ViT stage start, [class, the keep patch tokens of highest global class attention g (best
// first), the representative token]. See README.md and contract.json.
#include "kernels.h"
#include "tokenPlugin.h"

namespace exporter
{
namespace plugin
{
namespace
{
enum : size_t
{
    kKEEP = 0
};

std::string checkAttributes(Attributes const& a)
{
    if (a[kKEEP] < 1)
    {
        return "attribute 'keep' = " + std::to_string(a[kKEEP]) + " must be at least 1";
    }
    return {};
}

std::string checkShapes(Attributes const& a, InputDims const& in)
{
    int64_t const n = in[0][1];
    if (n != kUNKNOWN_DIM && a[kKEEP] >= n - 1)
    {
        return "attribute 'keep' = " + std::to_string(a[kKEEP]) + " must be below N-1 = " + std::to_string(n - 1);
    }
    return expectDim(in, evoViTSelectSpec(), 1, 1, n == kUNKNOWN_DIM ? -1 : n - 1, "N-1");
}

void outputShapes(
    Attributes const& a, nvinfer1::DimsExprs const* in, nvinfer1::DimsExprs* out, nvinfer1::IExprBuilder& b)
{
    out[0].d[0] = in[0].d[0];
    out[0].d[1] = b.constant(a[kKEEP] + 2);
    out[0].d[2] = in[0].d[2];
    out[1].d[0] = in[0].d[0];
    out[1].d[1] = b.constant(a[kKEEP]);
}

size_t workspace(int32_t dtype, Attributes const& a, InputDims const& d)
{
    return exporter_evovit_select_workspace(
        dtype, static_cast<int>(d[0][0]), static_cast<int>(d[0][1]), static_cast<int>(d[0][2]), a[kKEEP]);
}

int32_t enqueue(Launch const& l, void const* const* in, void* const* out, void* ws, cudaStream_t stream)
{
    nvinfer1::Dims const& x = l.inputs[0].dims;
    return exporter_evovit_select(stream, l.dtype, static_cast<int>(x.d[0]), static_cast<int>(x.d[1]),
        static_cast<int>(x.d[2]), l.attributes[kKEEP], in[0], static_cast<float const*>(in[1]), out[0],
        static_cast<int64_t*>(out[1]), ws);
}
} // namespace

TokenOpSpec const& evoViTSelectSpec() noexcept
{
    static TokenOpSpec const spec{"EvoViTSelect", {"keep"}, {{"x", IoType::kTOKEN, 3}, {"g", IoType::kFLOAT32, 2}},
        {{"tokens", IoType::kTOKEN, 3}, {"idx", IoType::kINT64, 2}}, checkAttributes, checkShapes, outputShapes,
        workspace, enqueue};
    return spec;
}

} // namespace plugin
} // namespace exporter
