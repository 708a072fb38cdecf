// SPDX-License-Identifier: Apache-2.0
#include "pluginLogging.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace exporter
{
namespace plugin
{
namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

bool tracing() noexcept
{
    static bool const enabled = std::getenv("EXPORTER_PLUGINS_TRACE") != nullptr;
    return enabled;
}

char const* severityName(nvinfer1::ILogger::Severity severity) noexcept
{
    switch (severity)
    {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "F";
    case nvinfer1::ILogger::Severity::kERROR: return "E";
    case nvinfer1::ILogger::Severity::kWARNING: return "W";
    case nvinfer1::ILogger::Severity::kINFO: return "I";
    case nvinfer1::ILogger::Severity::kVERBOSE: return "V";
    }
    return "?";
}
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = "[exporter plugins] " + message;
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        if (logger == nullptr || tracing())
        {
            std::fprintf(stderr, "[%s] %s%s\n", severityName(severity), text.c_str(),
                finder == nullptr ? "" : logger == nullptr ? " (the logger finder found no logger)" : " (also logged)");
        }
    }
    catch (...)
    {
        // Logging must never throw into TensorRT.
    }
}

void trace(char const* plugin, char const* call) noexcept
{
    if (tracing())
    {
        std::fprintf(stderr, "[exporter plugins] trace %s::%s\n", plugin, call);
    }
}

} // namespace plugin
} // namespace exporter
