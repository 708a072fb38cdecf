// SPDX-License-Identifier: Apache-2.0
// Host-side test of libexporter_plugins.so: no GPU and no TensorRT library (TensorRT's headers only). It dlopens
// the library as IPluginRegistry::loadLibrary does and checks every creator it is told about:
//
//   exporter_plugins_host_test <libexporter_plugins.so> <case>...
//   case = Name;attr=value,...;input types;output types;bad attribute
//   types: T (token: float32 or float16), f (float32), i (int64), comma-separated; e.g.
//   "ToMeMerge;r=16;T,f,T;T,f,i,i;r=0"   (the bad attribute may be empty for an op without attributes)
//
// Per case: creator name/version/namespace/kind, field names, createPlugin from fields, clone, getFieldsToSerialize
// -> createPlugin(kRUNTIME) round trip, getNbOutputs, supportsFormatCombination (valid fp32 and fp16 combinations,
// and invalid dtypes, formats and mixed token dtypes), getOutputDataTypes, and refusals (missing, unknown,
// non-integer and invalid attributes). Prints "ok <Name>" per passing case; exit status = number of failures.
#include "NvInferRuntime.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

#define CHECK(cond, what)                                                                                              \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::printf("FAIL %s: %s (%s:%d)\n", gCase.c_str(), std::string(what).c_str(), __FILE__, __LINE__);      \
            ++gFailures;                                                                                               \
            return false;                                                                                              \
        }                                                                                                              \
    } while (0)

std::string gCase;

std::vector<std::string> split(std::string const& text, char sep)
{
    std::vector<std::string> parts;
    std::stringstream stream(text);
    std::string part;
    while (std::getline(stream, part, sep))
    {
        parts.push_back(part);
    }
    if (!text.empty() && text.back() == sep)
    {
        parts.emplace_back();
    }
    return parts;
}

struct Case
{
    std::string name;
    std::vector<std::pair<std::string, int32_t>> attributes;
    std::vector<char> inputs;
    std::vector<char> outputs;
    std::pair<std::string, int32_t> bad;
    bool hasBad{false};
};

std::vector<char> types(std::string const& text)
{
    std::vector<char> out;
    for (auto const& t : split(text, ','))
    {
        out.push_back(t.empty() ? '?' : t[0]);
    }
    return out;
}

std::pair<std::string, int32_t> attribute(std::string const& text)
{
    auto const eq = text.find('=');
    return {text.substr(0, eq), static_cast<int32_t>(std::stol(text.substr(eq + 1)))};
}

Case parseCase(std::string const& text)
{
    auto const parts = split(text, ';');
    Case c;
    c.name = parts.at(0);
    for (auto const& a : split(parts.at(1), ','))
    {
        if (!a.empty())
        {
            c.attributes.push_back(attribute(a));
        }
    }
    c.inputs = types(parts.at(2));
    c.outputs = types(parts.at(3));
    if (parts.size() > 4 && !parts[4].empty())
    {
        c.bad = attribute(parts[4]);
        c.hasBad = true;
    }
    return c;
}

//! Fields with the given values (int32, as the ONNX parser passes integer attributes).
struct Fields
{
    explicit Fields(std::vector<std::pair<std::string, int32_t>> values)
        : mValues(std::move(values))
    {
        for (auto const& v : mValues)
        {
            mNumbers.push_back(v.second);
        }
        for (size_t i = 0; i < mValues.size(); ++i)
        {
            mFields.emplace_back(mValues[i].first.c_str(), &mNumbers[i], PluginFieldType::kINT32, 1);
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }
    PluginFieldCollection const* get() const
    {
        return &mCollection;
    }
    std::vector<std::pair<std::string, int32_t>> mValues;
    std::vector<int32_t> mNumbers;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

//! name=value pairs of a serialized collection (int32 fields only; anything else is reported as such).
std::vector<std::pair<std::string, int32_t>> values(PluginFieldCollection const* fc, std::string& problem)
{
    std::vector<std::pair<std::string, int32_t>> out;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.type != PluginFieldType::kINT32 || f.length != 1 || f.data == nullptr)
        {
            problem = std::string("field ") + (f.name ? f.name : "?") + " is not one int32";
            continue;
        }
        out.emplace_back(f.name, *static_cast<int32_t const*>(f.data));
    }
    return out;
}

struct PluginDeleter
{
    void operator()(IPluginV3* p) const
    {
        delete p;
    }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

IPluginV3OneCore* core(IPluginV3* p)
{
    return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}
IPluginV3OneBuild* build(IPluginV3* p)
{
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime(IPluginV3* p)
{
    return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

DataType typeOf(char kind, DataType token)
{
    return kind == 'T' ? token : kind == 'f' ? DataType::kFLOAT : DataType::kINT64;
}

//! A type that `kind` must refuse.
DataType wrongType(char kind)
{
    return kind == 'f' ? DataType::kHALF : DataType::kINT32; // fp16 scores, int32 tokens or indices
}

std::vector<DynamicPluginTensorDesc> descs(Case const& c, DataType token)
{
    std::vector<DynamicPluginTensorDesc> all;
    for (char kind : c.inputs)
    {
        all.emplace_back();
        all.back().desc.type = typeOf(kind, token);
        all.back().desc.format = TensorFormat::kLINEAR;
    }
    for (char kind : c.outputs)
    {
        all.emplace_back();
        all.back().desc.type = typeOf(kind, token);
        all.back().desc.format = TensorFormat::kLINEAR;
    }
    return all;
}

//! supportsFormatCombination asks position by position, each with the positions before it settled.
bool supportsAll(IPluginV3OneBuild* b, std::vector<DynamicPluginTensorDesc> const& d, int32_t nbIn, int32_t nbOut)
{
    for (int32_t pos = 0; pos < nbIn + nbOut; ++pos)
    {
        if (!b->supportsFormatCombination(pos, d.data(), nbIn, nbOut))
        {
            return false;
        }
    }
    return true;
}

bool runCase(IPluginCreatorV3One* creator, Case const& c)
{
    auto const nbIn = static_cast<int32_t>(c.inputs.size());
    auto const nbOut = static_cast<int32_t>(c.outputs.size());
    CHECK(std::string(creator->getPluginVersion()) == "1", "creator version");
    CHECK(std::string(creator->getPluginNamespace()) == "exporter", "creator namespace");

    // Field names: the contract's attributes, in order.
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names != nullptr && names->nbFields == static_cast<int32_t>(c.attributes.size()),
        "getFieldNames has " + std::to_string(names ? names->nbFields : -1) + " fields");
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        CHECK(c.attributes[i].first == names->fields[i].name,
            std::string("field ") + std::to_string(i) + " is " + names->fields[i].name);
    }

    // createPlugin from fields, then what it says about itself.
    Fields fields(c.attributes);
    PluginPtr plugin(creator->createPlugin("node", fields.get(), TensorRTPhase::kBUILD));
    CHECK(plugin != nullptr, "createPlugin(kBUILD) returned nullptr");
    CHECK(core(plugin.get()) && build(plugin.get()) && runtime(plugin.get()), "a capability interface is missing");
    CHECK(std::string(core(plugin.get())->getPluginName()) == c.name, "plugin name");
    CHECK(std::string(core(plugin.get())->getPluginVersion()) == "1", "plugin version");
    CHECK(std::string(core(plugin.get())->getPluginNamespace()) == "exporter", "plugin namespace");
    CHECK(build(plugin.get())->getNbOutputs() == nbOut, "getNbOutputs");

    std::string problem;
    auto const serialized = values(runtime(plugin.get())->getFieldsToSerialize(), problem);
    CHECK(problem.empty(), problem);
    CHECK(serialized == c.attributes, "getFieldsToSerialize differs from the fields it was created from");

    // clone: same fields, independent object.
    PluginPtr copy(plugin->clone());
    CHECK(copy != nullptr && copy.get() != plugin.get(), "clone");
    CHECK(values(runtime(copy.get())->getFieldsToSerialize(), problem) == c.attributes, "clone's fields differ");

    // Serialization round trip: the serialized fields create the plugin again, as deserialization does.
    PluginFieldCollection const* serializedFields = runtime(plugin.get())->getFieldsToSerialize();
    PluginPtr restored(creator->createPlugin("node", serializedFields, TensorRTPhase::kRUNTIME));
    CHECK(restored != nullptr, "createPlugin(kRUNTIME) from getFieldsToSerialize returned nullptr");
    CHECK(values(runtime(restored.get())->getFieldsToSerialize(), problem) == c.attributes,
        "round trip changed the fields");
    PluginPtr attached(runtime(restored.get())->attachToContext(nullptr));
    CHECK(attached != nullptr && values(runtime(attached.get())->getFieldsToSerialize(), problem) == c.attributes,
        "attachToContext");

    // Formats and dtypes.
    IPluginV3OneBuild* b = build(plugin.get());
    for (DataType token : {DataType::kFLOAT, DataType::kHALF})
    {
        std::string const dt = token == DataType::kFLOAT ? "fp32" : "fp16";
        auto valid = descs(c, token);
        CHECK(supportsAll(b, valid, nbIn, nbOut), dt + ": the contract's combination is refused");
        for (int32_t pos = 0; pos < nbIn + nbOut; ++pos)
        {
            char const kind = pos < nbIn ? c.inputs[pos] : c.outputs[pos - nbIn];
            auto wrong = valid;
            wrong[pos].desc.type = wrongType(kind);
            CHECK(!b->supportsFormatCombination(pos, wrong.data(), nbIn, nbOut),
                dt + ": position " + std::to_string(pos) + " accepts a wrong dtype");
            auto strided = valid;
            strided[pos].desc.format = TensorFormat::kCHW32;
            CHECK(!b->supportsFormatCombination(pos, strided.data(), nbIn, nbOut),
                dt + ": position " + std::to_string(pos) + " accepts a non-linear format");
            if (pos > 0 && kind == 'T')
            {
                auto mixed = valid;
                mixed[pos].desc.type = token == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
                CHECK(!b->supportsFormatCombination(pos, mixed.data(), nbIn, nbOut),
                    dt + ": position " + std::to_string(pos) + " accepts a token dtype other than input 0's");
            }
        }
        CHECK(!b->supportsFormatCombination(nbIn + nbOut, valid.data(), nbIn, nbOut), "a position past the end");

        std::vector<DataType> in;
        for (char kind : c.inputs)
        {
            in.push_back(typeOf(kind, token));
        }
        std::vector<DataType> out(nbOut, DataType::kBOOL);
        CHECK(b->getOutputDataTypes(out.data(), nbOut, in.data(), nbIn) == 0, dt + ": getOutputDataTypes failed");
        for (int32_t i = 0; i < nbOut; ++i)
        {
            CHECK(out[i] == typeOf(c.outputs[i], token), dt + ": output " + std::to_string(i) + " dtype");
        }
        in[0] = DataType::kINT32;
        CHECK(b->getOutputDataTypes(out.data(), nbOut, in.data(), nbIn) != 0, "int32 tokens are accepted");
    }

    // Refusals: nullptr (with a logged message), never a crash.
    if (!c.attributes.empty())
    {
        auto missing = c.attributes;
        missing.pop_back();
        Fields without(missing);
        CHECK(PluginPtr(creator->createPlugin("node", without.get(), TensorRTPhase::kBUILD)) == nullptr,
            "a missing attribute '" + c.attributes.back().first + "' is accepted");
        float const real = 1.5F;
        Fields asFloat(c.attributes);
        asFloat.mFields[0] = PluginField(c.attributes[0].first.c_str(), &real, PluginFieldType::kFLOAT32, 1);
        CHECK(PluginPtr(creator->createPlugin("node", asFloat.get(), TensorRTPhase::kBUILD)) == nullptr,
            "a float attribute is accepted");
    }
    auto extra = c.attributes;
    extra.emplace_back("no_such_attribute", 1);
    Fields unknown(extra);
    CHECK(PluginPtr(creator->createPlugin("node", unknown.get(), TensorRTPhase::kBUILD)) == nullptr,
        "an unknown attribute is accepted");
    if (c.hasBad)
    {
        auto bad = c.attributes;
        for (auto& a : bad)
        {
            if (a.first == c.bad.first)
            {
                a.second = c.bad.second;
            }
        }
        Fields invalid(bad);
        CHECK(PluginPtr(creator->createPlugin("node", invalid.get(), TensorRTPhase::kBUILD)) == nullptr,
            "invalid " + c.bad.first + "=" + std::to_string(c.bad.second) + " is accepted");
    }
    return true;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc < 3)
    {
        std::fprintf(stderr, "usage: %s <libexporter_plugins.so> <case>...\n", argv[0]);
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        std::printf("FAIL dlopen: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    void* setLoggerFinder = dlsym(library, "setLoggerFinder");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        std::printf("FAIL the library does not export getCreators and setLoggerFinder\n");
        return 2;
    }
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    std::printf("creators %d\n", count);
    for (int i = 2; i < argc; ++i)
    {
        Case const c = parseCase(argv[i]);
        gCase = c.name;
        IPluginCreatorV3One* creator = nullptr;
        for (int32_t j = 0; j < count; ++j)
        {
            auto* candidate = creators[j];
            if (std::strcmp(candidate->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0
                && c.name == static_cast<IPluginCreatorV3One*>(candidate)->getPluginName())
            {
                creator = static_cast<IPluginCreatorV3One*>(candidate);
            }
        }
        if (creator == nullptr)
        {
            std::printf("FAIL %s: no IPluginCreatorV3One of that name\n", c.name.c_str());
            ++gFailures;
            continue;
        }
        if (runCase(creator, c))
        {
            std::printf("ok %s\n", c.name.c_str());
        }
    }
    return gFailures;
}
