// SPDX-License-Identifier: Apache-2.0
// Logging through the ILoggerFinder that TensorRT hands the library (setLoggerFinder): messages reach the
// application's logger; without a finder (a host test that dlopens the library) they go to stderr.
#ifndef TRT_EXPORTER_PLUGIN_LOGGING_H
#define TRT_EXPORTER_PLUGIN_LOGGING_H

#include "NvInferRuntime.h"

#include <string>

namespace exporter
{
namespace plugin
{

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

//! When the environment variable EXPORTER_PLUGINS_TRACE is set (read once): "<plugin>::<call>" on stderr (and every
//! logged message copied there too), to see
//! which of a plugin's methods TensorRT calls (e.g. during an engine build on a machine without a GPU).
void trace(char const* plugin, char const* call) noexcept;

inline void logError(std::string const& message) noexcept
{
    log(nvinfer1::ILogger::Severity::kERROR, message);
}

inline void logWarning(std::string const& message) noexcept
{
    log(nvinfer1::ILogger::Severity::kWARNING, message);
}

} // namespace plugin
} // namespace exporter

#endif // TRT_EXPORTER_PLUGIN_LOGGING_H
