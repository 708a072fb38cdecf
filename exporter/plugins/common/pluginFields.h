// SPDX-License-Identifier: Apache-2.0
// Plugin fields: the integer attributes of a token op, read from a PluginFieldCollection against the names
// the op expects, and written back for serialization.
#ifndef TRT_EXPORTER_PLUGIN_FIELDS_H
#define TRT_EXPORTER_PLUGIN_FIELDS_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace exporter
{
namespace plugin
{

//! The attribute values of one plugin, in the order of its contract's attributes.
using Attributes = std::vector<int32_t>;

//! Reads every name of `names` from `fc` (an integer field of length 1; INT8/16/32/64 accepted, as parsers
//! differ in what they pass). Fields `plugin_version` and `plugin_namespace` are ignored (the ONNX parser's
//! lookup keys); any other unknown field, a missing one, a non-integer one or a value outside int32 is an error.
//! Returns an empty string and fills `values`, or the message naming the field.
std::string readIntFields(nvinfer1::PluginFieldCollection const* fc, std::vector<char const*> const& names,
    Attributes& values) noexcept;

//! A PluginFieldCollection over named int32 values that it owns (for getFieldNames and getFieldsToSerialize).
class IntFields
{
public:
    IntFields(std::vector<char const*> names, Attributes values);
    IntFields(IntFields const& other);
    IntFields& operator=(IntFields const& other);

    nvinfer1::PluginFieldCollection const* collection() const noexcept
    {
        return &mCollection;
    }

    Attributes const& values() const noexcept
    {
        return mValues;
    }

private:
    void bind() noexcept;

    std::vector<char const*> mNames;
    Attributes mValues;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace exporter

#endif // TRT_EXPORTER_PLUGIN_FIELDS_H
