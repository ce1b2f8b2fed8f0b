// Subcommands of the `turbokv` executable register themselves here, each
// from its own cmd_<name>.cpp, so adding a command touches one file.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace turbokv::cli {

struct Command {
  std::string name;
  std::string summary;
  // Declares the subcommand's options on `app` and returns the function that
  // runs it once parsed (its return value is the process exit status).
  std::function<std::function<int()>(CLI::App& app)> setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(Command c) { command_registry().push_back(std::move(c)); }
};

// Path of the default model: models/tq-tiny-hd128.gguf in the source tree
// (baked in at build time), overridable with TURBOKV_MODEL for installs.
std::string default_model_path();

}  // namespace turbokv::cli
