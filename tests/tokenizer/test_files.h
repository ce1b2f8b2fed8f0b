// Reading the test inputs. A missing file throws, which fails the test:
// goldens must never be skipped silently.
#pragma once

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace turbokv::tokenizer::testing {

inline std::string shared_data(const std::string& relative) { return std::string(TURBOKV_SHARED_DATA) + "/" + relative; }
inline std::string test_data(const std::string& relative) {
  return std::string(TURBOKV_SOURCE_DIR) + "/tests/tokenizer/data/" + relative;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open test input " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace turbokv::tokenizer::testing
