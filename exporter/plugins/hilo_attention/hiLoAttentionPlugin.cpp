// SPDX-License-Identifier: Apache-2.0
// HiLoAttention: LITv2 HiLo's Hi-Fi branch, multi-head attention inside every window x window patch of the
// height x width token map, from the tokens' q/k/v projection; maps the window does not tile are padded
// bottom/right with tokens whose projection is `pad`. See README.md and contract.json.
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
    kQKV = 0,
    kPAD = 1
};

enum : size_t
{
    kHEIGHT = 0,
    kWIDTH = 1,
    kWINDOW = 2,
    kHEADS = 3
};

constexpr int32_t kMAX_WINDOW{5};    // the kernels' tiles hold 32 window tokens (kernels.h)

std::string checkAttributes(Attributes const& a)
{
    char const* names[]{"height", "width", "heads"};
    size_t const which[]{kHEIGHT, kWIDTH, kHEADS};
    for (size_t i = 0; i < 3; ++i)
    {
        if (a[which[i]] < 1)
        {
            return std::string("attribute '") + names[i] + "' = " + std::to_string(a[which[i]]) + " must be at least 1";
        }
    }
    if (a[kWINDOW] < 1 || a[kWINDOW] > kMAX_WINDOW)
    {
        return "attribute 'window' = " + std::to_string(a[kWINDOW]) + " must be in 1.." + std::to_string(kMAX_WINDOW);
    }
    return {};
}

std::string checkShapes(Attributes const& a, InputDims const& in)
{
    TokenOpSpec const& spec = hiLoAttentionSpec();
    std::string problem = expectDim(in, spec, kQKV, 1, static_cast<int64_t>(a[kHEIGHT]) * a[kWIDTH], "height*width");
    int64_t const e = in[kQKV][2];
    if (problem.empty() && e != kUNKNOWN_DIM)
    {
        if (e % (3 * static_cast<int64_t>(a[kHEADS])) != 0)
        {
            return "input 'qkv' has " + std::to_string(e) + " channels, not 3 * heads * head_dim with heads = "
                + std::to_string(a[kHEADS]);
        }
    }
    return problem.empty() ? expectDim(in, spec, kPAD, 0, e, "E") : problem;
}

void outputShapes(Attributes const&, nvinfer1::DimsExprs const* in, nvinfer1::DimsExprs* out, nvinfer1::IExprBuilder& b)
{
    out[0].d[0] = in[kQKV].d[0];
    out[0].d[1] = in[kQKV].d[1];
    out[0].d[2] = b.operation(nvinfer1::DimensionOperation::kFLOOR_DIV, *in[kQKV].d[2], *b.constant(3));
}

size_t workspace(int32_t dtype, Attributes const& a, InputDims const& d)
{
    return exporter_hilo_attention_workspace(dtype, static_cast<int>(d[kQKV][0]), a[kHEIGHT], a[kWIDTH],
        static_cast<int>(d[kQKV][2] / 3), a[kWINDOW], a[kHEADS]);
}

int32_t enqueue(Launch const& l, void const* const* in, void* const* out, void* ws, cudaStream_t stream)
{
    nvinfer1::Dims const& qkv = l.inputs[kQKV].dims;
    Attributes const& a = l.attributes;
    return exporter_hilo_attention(stream, l.dtype, static_cast<int>(qkv.d[0]), a[kHEIGHT], a[kWIDTH],
        static_cast<int>(qkv.d[2] / 3), a[kWINDOW], a[kHEADS], in[kQKV], in[kPAD], out[0], ws);
}
} // namespace

TokenOpSpec const& hiLoAttentionSpec() noexcept
{
    // pad is one vector for every image: the only input without the batch axis
    static TokenOpSpec const spec{"HiLoAttention", {"height", "width", "window", "heads"},
        {{"qkv", IoType::kTOKEN, 3}, {"pad", IoType::kTOKEN, 1, false}}, {{"out", IoType::kTOKEN, 3}},
        checkAttributes, checkShapes, outputShapes, workspace, enqueue};
    return spec;
}

} // namespace plugin
} // namespace exporter
