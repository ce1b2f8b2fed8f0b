// Helpers shared by the io tests: unique temporary paths and "this file must
// fail to open with these words in the message".
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "support/gguf_writer.h"
#include "util/error.h"

namespace turbokv::testing {

// A path in the temp dir unique to this process and test.
inline std::string temp_path(const std::string& stem) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info ? info->test_suite_name() : "t") + "_" + (info ? info->name() : "x");
  for (char& c : name) if (c == '/') c = '_';
  return (std::filesystem::temp_directory_path() /
          ("turbokv_io_" + std::to_string(::getpid()) + "_" + name + "_" + stem))
      .string();
}

// Writes bytes, opens them, and returns the error message ("" if it opened).
inline std::string open_error(const std::vector<uint8_t>& bytes, const std::string& path) {
  write_file(path, bytes);
  std::string msg;
  try {
    (void)io::GgufFile::open(path);
  } catch (const Error& e) {
    msg = e.what();
    if (msg.empty()) msg = "<empty message>";
  }
  std::filesystem::remove(path);
  return msg;
}

inline void expect_open_error(const std::vector<uint8_t>& bytes, const std::string& stem,
                              std::initializer_list<const char*> substrings) {
  const std::string path = temp_path(stem);
  const std::string msg = open_error(bytes, path);
  ASSERT_FALSE(msg.empty()) << stem << ": opened without an error";
  EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
  for (const char* s : substrings) EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in: " << msg;
}

}  // namespace turbokv::testing
