// Runs the built `turbokv` binary (TURBOKV_BINARY) with arguments through the
// shell and captures its exit status, stdout and stderr, for CLI tests.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace turbokv::testing {

struct CliResult {
  int status;  // exit status, -1 if the process did not exit normally
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Output files are named by process id, so tests running in parallel
// processes (ctest -j) never share them.
inline CliResult run_cli(const std::string& binary, const std::string& args, const std::string& dir) {
  const std::string stem = (std::filesystem::path(dir) / ("turbokv_cli_" + std::to_string(::getpid()))).string();
  const std::string out = stem + ".out", err = stem + ".err";
  const std::string cmd = "'" + binary + "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(out), slurp(err)};
}

}  // namespace turbokv::testing
