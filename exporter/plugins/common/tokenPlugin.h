// SPDX-License-Identifier: Apache-2.0
// One IPluginV3 implementation for every token op, driven by a per-op description (TokenOpSpec): the ops'
// folders hold only what differs (attribute checks, shape rules, output shapes, the kernels.h launcher).
//
// Every plugin: namespace "exporter", version "1"; integer attributes; tokens fp32 or fp16 (all token tensors of
// one dtype), scores/sizes fp32, indices int64, every tensor in linear format; B, the batch, may be dynamic.
#ifndef TRT_EXPORTER_TOKEN_PLUGIN_H
#define TRT_EXPORTER_TOKEN_PLUGIN_H

#include "NvInferRuntime.h"
#include "NvInferVersion.h"
#include "pluginFields.h"

#include <cstdint>
#include <string>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "the exporter plugins are IPluginV3 plugins: they need the headers of TensorRT 10.0 or newer"
#endif

namespace exporter
{
namespace plugin
{

constexpr char const* kPLUGIN_NAMESPACE{"exporter"};
constexpr char const* kPLUGIN_VERSION{"1"};
constexpr int64_t kUNKNOWN_DIM{-1};

//! The dtype class of a plugin input or output (contract.json: "T", "float32", "int64").
enum class IoType : int32_t
{
    kTOKEN = 0, //!< float32 or float16, the same for every token tensor of the node
    kFLOAT32 = 1,
    kINT64 = 2,
};

struct IoSpec
{
    char const* name;
    IoType type;
    int32_t rank;
    bool batched{true}; //!< dimension 0 is the batch B (false: one tensor for every image, e.g. HiLo's pad)
};

//! The inputs' dimensions as far as they are known: kUNKNOWN_DIM for a dynamic one.
using InputDims = std::vector<std::vector<int64_t>>;

//! What the launcher needs besides pointers: the kernels.h `dtype` (0 = float32, 1 = float16), the attributes
//! and the inputs' actual dimensions.
struct Launch
{
    int32_t dtype;
    Attributes const& attributes;
    nvinfer1::PluginTensorDesc const* inputs;
};

//! Everything that makes one token op's plugin.
struct TokenOpSpec
{
    char const* name;                   //!< plugin name = ONNX op_type
    std::vector<char const*> attributes; //!< integer attributes, in the contract's order
    std::vector<IoSpec> inputs;
    std::vector<IoSpec> outputs;
    //! The attributes alone: an empty string, or a message naming the attribute that is wrong.
    std::string (*checkAttributes)(Attributes const& attributes);
    //! Known input dimensions against each other and the attributes (ranks and the batch are checked already).
    std::string (*checkShapes)(Attributes const& attributes, InputDims const& inputs);
    //! Every output's dimensions from the inputs' (ranks and checks passed).
    void (*outputShapes)(Attributes const& attributes, nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs,
        nvinfer1::IExprBuilder& builder);
    //! Bytes of workspace for inputs of `dims` (the launcher's `_workspace` function).
    size_t (*workspace)(int32_t dtype, Attributes const& attributes, InputDims const& dims);
    //! The kernels.h launcher; returns its status (0 = success).
    int32_t (*enqueue)(Launch const& launch, void const* const* inputs, void* const* outputs, void* workspace,
        cudaStream_t stream);
};

//! `a - b` (or `a + b`) with a constant: shorthands for output shapes.
nvinfer1::IDimensionExpr const* plus(
    nvinfer1::IExprBuilder& builder, nvinfer1::IDimensionExpr const& a, int64_t b) noexcept;

//! A message when dimension `axis` of input `input` is known and is not `want`; else empty.
std::string expectDim(InputDims const& dims, TokenOpSpec const& spec, int32_t input, int32_t axis, int64_t want,
    char const* rule);

class TokenPlugin final : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    TokenPlugin(TokenOpSpec const& spec, Attributes attributes);
    TokenPlugin(TokenPlugin const& other) = default;
    ~TokenPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Ranks, batch agreement and the op's own rules; logs and returns false when the dims break them.
    bool checkDims(InputDims const& dims, char const* when) const noexcept;
    bool checkCounts(int32_t nbInputs, int32_t nbOutputs, char const* when) const noexcept;

    TokenOpSpec const* mSpec;
    IntFields mFields;
    std::string mMetadata;
};

class TokenPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit TokenPluginCreator(TokenOpSpec const& spec);
    ~TokenPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    TokenOpSpec const* mSpec;
    IntFields mFieldNames;
};

// The ops (one per folder).
TokenOpSpec const& topKPruneSpec() noexcept;
TokenOpSpec const& evoViTSelectSpec() noexcept;
TokenOpSpec const& evoViTRestoreSpec() noexcept;
TokenOpSpec const& toMeMergeSpec() noexcept;
TokenOpSpec const& diffRateReduceSpec() noexcept;
TokenOpSpec const& hiLoAttentionSpec() noexcept;

} // namespace plugin
} // namespace exporter

#endif // TRT_EXPORTER_TOKEN_PLUGIN_H
