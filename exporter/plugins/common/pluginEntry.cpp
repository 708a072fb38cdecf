// SPDX-License-Identifier: Apache-2.0
// The library's entry points, as IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and Polygraphy --plugins
// expect them: getCreators (every creator, no static self-registration) and setLoggerFinder.
#include "pluginLogging.h"
#include "tokenPlugin.h"

#define EXPORTER_PLUGINS_API extern "C" __attribute__((visibility("default")))

EXPORTER_PLUGINS_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    exporter::plugin::setLoggerFinder(finder);
}

EXPORTER_PLUGINS_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    using namespace exporter::plugin;
    static TokenPluginCreator topKPrune{topKPruneSpec()};
    static TokenPluginCreator evoViTSelect{evoViTSelectSpec()};
    static TokenPluginCreator evoViTRestore{evoViTRestoreSpec()};
    static TokenPluginCreator toMeMerge{toMeMergeSpec()};
    static TokenPluginCreator diffRateReduce{diffRateReduceSpec()};
    static TokenPluginCreator hiLoAttention{hiLoAttentionSpec()};
    static nvinfer1::IPluginCreatorInterface* const creators[]{
        &topKPrune, &evoViTSelect, &evoViTRestore, &toMeMerge, &diffRateReduce, &hiLoAttention};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
