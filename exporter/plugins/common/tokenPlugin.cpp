// SPDX-License-Identifier: Apache-2.0
#include "tokenPlugin.h"
#include "kernels.h"
#include "pluginLogging.h"

#include <exception>
#include <new>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace exporter
{
namespace plugin
{
namespace
{
constexpr int kNoKernelForGpu = 209; // CUDA_ERROR_NO_BINARY_FOR_GPU: a kernel this library lacks (kernels.h)

bool isTokenType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

bool matches(IoType want, DataType got, DataType token) noexcept
{
    switch (want)
    {
    case IoType::kTOKEN: return isTokenType(got) && got == token;
    case IoType::kFLOAT32: return got == DataType::kFLOAT;
    case IoType::kINT64: return got == DataType::kINT64;
    }
    return false;
}

DataType fixedType(IoType type, DataType token) noexcept
{
    switch (type)
    {
    case IoType::kTOKEN: return token;
    case IoType::kFLOAT32: return DataType::kFLOAT;
    case IoType::kINT64: return DataType::kINT64;
    }
    return token;
}

template <typename Desc, typename GetDims>
InputDims dimsOf(Desc const* descs, int32_t count, GetDims get)
{
    InputDims dims(count);
    for (int32_t i = 0; i < count; ++i)
    {
        nvinfer1::Dims const& d = get(descs[i]);
        for (int32_t axis = 0; axis < d.nbDims; ++axis)
        {
            dims[i].push_back(d.d[axis] < 0 ? kUNKNOWN_DIM : static_cast<int64_t>(d.d[axis]));
        }
    }
    return dims;
}
} // namespace

nvinfer1::IDimensionExpr const* plus(
    nvinfer1::IExprBuilder& builder, nvinfer1::IDimensionExpr const& a, int64_t b) noexcept
{
    if (b < 0)
    {
        return builder.operation(nvinfer1::DimensionOperation::kSUB, a, *builder.constant(-b));
    }
    return builder.operation(nvinfer1::DimensionOperation::kSUM, a, *builder.constant(b));
}

std::string expectDim(InputDims const& dims, TokenOpSpec const& spec, int32_t input, int32_t axis, int64_t want,
    char const* rule)
{
    int64_t const got = dims[input][axis];
    if (got == kUNKNOWN_DIM || want < 0 || got == want)
    {
        return {};
    }
    return std::string("input '") + spec.inputs[input].name + "' has dimension " + std::to_string(axis) + " = "
        + std::to_string(got) + " where the contract says " + rule + " = " + std::to_string(want);
}

// ---- TokenPlugin -------------------------------------------------------------------------------------------

TokenPlugin::TokenPlugin(TokenOpSpec const& spec, Attributes attributes)
    : mSpec(&spec)
    , mFields(spec.attributes, std::move(attributes))
{
    for (size_t i = 0; i < spec.attributes.size(); ++i)
    {
        mMetadata += (i == 0 ? "" : " ") + std::string(spec.attributes[i]) + "="
            + std::to_string(mFields.values()[i]);
    }
}

nvinfer1::IPluginCapability* TokenPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* TokenPlugin::clone() noexcept
{
    trace(mSpec->name, "clone");
    try
    {
        return new TokenPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": clone failed: " + e.what());
        return nullptr;
    }
}

char const* TokenPlugin::getPluginName() const noexcept
{
    return mSpec->name;
}

char const* TokenPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* TokenPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t TokenPlugin::getNbOutputs() const noexcept
{
    return static_cast<int32_t>(mSpec->outputs.size());
}

bool TokenPlugin::checkCounts(int32_t nbInputs, int32_t nbOutputs, char const* when) const noexcept
{
    if (nbInputs == static_cast<int32_t>(mSpec->inputs.size())
        && nbOutputs == static_cast<int32_t>(mSpec->outputs.size()))
    {
        return true;
    }
    logError(std::string(mSpec->name) + " (" + when + "): " + std::to_string(nbInputs) + " inputs and "
        + std::to_string(nbOutputs) + " outputs, the contract says " + std::to_string(mSpec->inputs.size()) + " and "
        + std::to_string(mSpec->outputs.size()));
    return false;
}

bool TokenPlugin::checkDims(InputDims const& dims, char const* when) const noexcept
{
    try
    {
        std::string problem;
        for (size_t i = 0; i < dims.size() && problem.empty(); ++i)
        {
            IoSpec const& io = mSpec->inputs[i];
            if (static_cast<int32_t>(dims[i].size()) != io.rank)
            {
                problem = std::string("input '") + io.name + "' has rank " + std::to_string(dims[i].size())
                    + ", the contract says " + std::to_string(io.rank);
            }
            else if (i > 0 && io.batched)
            {
                problem = expectDim(dims, *mSpec, static_cast<int32_t>(i), 0, dims[0][0], "the batch B");
            }
        }
        if (problem.empty())
        {
            problem = mSpec->checkShapes(mFields.values(), dims);
        }
        if (problem.empty())
        {
            return true;
        }
        logError(std::string(mSpec->name) + " (" + when + ", " + mMetadata + "): " + problem);
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": " + e.what());
    }
    return false;
}

int32_t TokenPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    trace(mSpec->name, "getOutputDataTypes");
    if (!checkCounts(nbInputs, nbOutputs, "getOutputDataTypes"))
    {
        return -1;
    }
    DataType const token = inputTypes[0];
    if (!isTokenType(token))
    {
        logError(std::string(mSpec->name) + ": tokens must be float32 or float16");
        return -1;
    }
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        outputTypes[i] = fixedType(mSpec->outputs[i].type, token);
    }
    return 0;
}

int32_t TokenPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    trace(mSpec->name, "getOutputShapes");
    if (!checkCounts(nbInputs, nbOutputs, "getOutputShapes"))
    {
        return -1;
    }
    try
    {
        InputDims dims(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            for (int32_t axis = 0; axis < inputs[i].nbDims; ++axis)
            {
                nvinfer1::IDimensionExpr const* d = inputs[i].d[axis];
                dims[i].push_back(d->isConstant() ? d->getConstantValue() : kUNKNOWN_DIM);
            }
        }
        if (!checkDims(dims, "getOutputShapes"))
        {
            return -1;
        }
        for (int32_t i = 0; i < nbOutputs; ++i)
        {
            outputs[i].nbDims = mSpec->outputs[i].rank;
        }
        mSpec->outputShapes(mFields.values(), inputs, outputs, exprBuilder);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": " + e.what());
        return -1;
    }
}

bool TokenPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    trace(mSpec->name, "supportsFormatCombination");
    if (nbInputs != static_cast<int32_t>(mSpec->inputs.size())
        || nbOutputs != static_cast<int32_t>(mSpec->outputs.size())
        || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    IoSpec const& io = pos < nbInputs ? mSpec->inputs[pos] : mSpec->outputs[pos - nbInputs];
    // Input 0 is the token tensor of every op: it fixes the token dtype of the rest.
    DataType const token = pos == 0 ? desc.type : inOut[0].desc.type;
    return desc.format == TensorFormat::kLINEAR && matches(io.type, desc.type, token);
}

int32_t TokenPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    trace(mSpec->name, "configurePlugin");
    if (!checkCounts(nbInputs, nbOutputs, "configurePlugin"))
    {
        return -1;
    }
    try
    {
        InputDims const dims = dimsOf(in, nbInputs, [](DynamicPluginTensorDesc const& d) { return d.desc.dims; });
        return checkDims(dims, "configurePlugin") ? 0 : -1;
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": " + e.what());
        return -1;
    }
}

size_t TokenPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    trace(mSpec->name, "getWorkspaceSize");
    try
    {
        // The largest shapes of the profile: the workspace serves every shape it allows.
        InputDims const dims = dimsOf(inputs, nbInputs, [](DynamicPluginTensorDesc const& d) { return d.max; });
        int32_t const dtype = inputs[0].desc.type == DataType::kHALF ? 1 : 0;
        return mSpec->workspace(dtype, mFields.values(), dims);
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": " + e.what());
        return 0;
    }
}

char const* TokenPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t TokenPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    trace(mSpec->name, "onShapeChange");
    if (!checkCounts(nbInputs, nbOutputs, "onShapeChange"))
    {
        return -1;
    }
    try
    {
        InputDims const dims = dimsOf(in, nbInputs, [](PluginTensorDesc const& d) { return d.dims; });
        return checkDims(dims, "onShapeChange") ? 0 : -1;
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": " + e.what());
        return -1;
    }
}

int32_t TokenPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    trace(mSpec->name, "enqueue");
    Launch const launch{inputDesc[0].type == DataType::kHALF ? 1 : 0, mFields.values(), inputDesc};
    int32_t const status = mSpec->enqueue(launch, inputs, outputs, workspace, stream);
    if (status == kNoKernelForGpu)
    {
        logError(std::string(mSpec->name) + ": " + exporter_kernels_error());
    }
    else if (status != 0)
    {
        logError(std::string(mSpec->name) + ": the kernel launcher failed with CUDA driver status "
            + std::to_string(status));
    }
    return status;
}

nvinfer1::IPluginV3* TokenPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    trace(mSpec->name, "attachToContext");
    // Load the kernels now: a first launch would load them inside enqueue, which must not happen while
    // the engine is captured into a CUDA graph.
    int const status = exporter_kernels_preload();
    if (status == kNoKernelForGpu)
    {
        logError(std::string(mSpec->name) + ": " + exporter_kernels_error());
        return nullptr;
    }
    if (status != 0)
    {
        logWarning(std::string(mSpec->name) + ": preloading the kernels failed with CUDA driver status "
            + std::to_string(status) + "; they load at their first launch instead");
    }
    return clone();
}

nvinfer1::PluginFieldCollection const* TokenPlugin::getFieldsToSerialize() noexcept
{
    trace(mSpec->name, "getFieldsToSerialize");
    return mFields.collection();
}

// ---- TokenPluginCreator ------------------------------------------------------------------------------------

TokenPluginCreator::TokenPluginCreator(TokenOpSpec const& spec)
    : mSpec(&spec)
    , mFieldNames(spec.attributes, Attributes(spec.attributes.size(), 0))
{
}

char const* TokenPluginCreator::getPluginName() const noexcept
{
    return mSpec->name;
}

char const* TokenPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* TokenPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

nvinfer1::PluginFieldCollection const* TokenPluginCreator::getFieldNames() noexcept
{
    trace(mSpec->name, "creator.getFieldNames");
    return mFieldNames.collection();
}

nvinfer1::IPluginV3* TokenPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    trace(mSpec->name,
        phase == nvinfer1::TensorRTPhase::kRUNTIME ? "creator.createPlugin(kRUNTIME)" : "creator.createPlugin(kBUILD)");
    try
    {
        Attributes values;
        std::string problem = readIntFields(fc, mSpec->attributes, values);
        if (problem.empty())
        {
            problem = mSpec->checkAttributes(values);
        }
        if (!problem.empty())
        {
            logError(std::string(mSpec->name) + " '" + (name == nullptr ? "" : name) + "': " + problem);
            return nullptr;
        }
        return new TokenPlugin(*mSpec, std::move(values));
    }
    catch (std::exception const& e)
    {
        logError(std::string(mSpec->name) + ": createPlugin failed: " + e.what());
        return nullptr;
    }
}

} // namespace plugin
} // namespace exporter
