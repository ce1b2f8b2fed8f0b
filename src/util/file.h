// Whole-file helpers with clear errors.
#pragma once

#include <string>
#include <string_view>

namespace turbokv {

// Reads a whole file; throws Error naming the path if it cannot be read.
std::string read_file(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file beside it is
// written, flushed to disk (fsync) and renamed over `path`, so a crash never
// leaves a half-written file. Throws Error naming the path on failure (the
// temporary file is removed).
void write_file_atomic(const std::string& path, std::string_view contents);

}  // namespace turbokv
