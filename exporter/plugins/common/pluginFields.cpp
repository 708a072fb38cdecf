// SPDX-License-Identifier: Apache-2.0
#include "pluginFields.h"

#include <cstring>
#include <limits>

namespace exporter
{
namespace plugin
{
namespace
{
bool readInteger(nvinfer1::PluginField const& field, int64_t& value) noexcept
{
    if (field.data == nullptr || field.length != 1)
    {
        return false;
    }
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kINT8: value = *static_cast<int8_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT16: value = *static_cast<int16_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT64: value = *static_cast<int64_t const*>(field.data); return true;
    default: return false;
    }
}

bool isLookupKey(char const* name) noexcept
{
    return std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0;
}
} // namespace

std::string readIntFields(nvinfer1::PluginFieldCollection const* fc, std::vector<char const*> const& names,
    Attributes& values) noexcept
{
    try
    {
        values.assign(names.size(), 0);
        std::vector<bool> seen(names.size(), false);
        int32_t const count = fc == nullptr ? 0 : fc->nbFields;
        if (count > 0 && fc->fields == nullptr)
        {
            return "the field collection has no fields array";
        }
        for (int32_t i = 0; i < count; ++i)
        {
            nvinfer1::PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                return "field " + std::to_string(i) + " has no name";
            }
            size_t slot = 0;
            while (slot < names.size() && std::strcmp(names[slot], field.name) != 0)
            {
                ++slot;
            }
            if (slot == names.size())
            {
                if (isLookupKey(field.name))
                {
                    continue;
                }
                return std::string("attribute '") + field.name + "' is not one of this plugin's";
            }
            int64_t value = 0;
            if (!readInteger(field, value))
            {
                return std::string("attribute '") + field.name + "' must be one integer";
            }
            if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max())
            {
                return std::string("attribute '") + field.name + "' = " + std::to_string(value) + " is out of range";
            }
            values[slot] = static_cast<int32_t>(value);
            seen[slot] = true;
        }
        for (size_t slot = 0; slot < names.size(); ++slot)
        {
            if (!seen[slot])
            {
                return std::string("attribute '") + names[slot] + "' is missing";
            }
        }
        return {};
    }
    catch (...)
    {
        return "out of memory while reading the fields";
    }
}

IntFields::IntFields(std::vector<char const*> names, Attributes values)
    : mNames(std::move(names))
    , mValues(std::move(values))
{
    mValues.resize(mNames.size(), 0);
    bind();
}

IntFields::IntFields(IntFields const& other)
    : mNames(other.mNames)
    , mValues(other.mValues)
{
    bind();
}

IntFields& IntFields::operator=(IntFields const& other)
{
    mNames = other.mNames;
    mValues = other.mValues;
    bind();
    return *this;
}

void IntFields::bind() noexcept
{
    mFields.clear();
    for (size_t i = 0; i < mNames.size(); ++i)
    {
        mFields.emplace_back(mNames[i], &mValues[i], nvinfer1::PluginFieldType::kINT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.empty() ? nullptr : mFields.data();
}

} // namespace plugin
} // namespace exporter
