// turbokv: compressed KV caches for LLM inference. Entry point; every
// subcommand lives in its own cmd_*.cpp and registers itself.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>

#include "cli/command.h"
#include "util/error.h"

namespace turbokv::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}

std::string default_model_path() {
  if (const char* env = std::getenv("TURBOKV_MODEL"); env && *env) return env;
  return TURBOKV_DEFAULT_MODEL;
}

}  // namespace turbokv::cli

int main(int argc, char** argv) {
  using namespace turbokv::cli;
  CLI::App app{"turbokv: LLM inference with compressed (TurboQuant) KV caches"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "turbokv 0.1.0");

  auto& commands = command_registry();
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::function<int()> to_run;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    auto run = std::make_shared<std::function<int()>>(c.setup(*sub));
    sub->callback([run, &to_run] { to_run = *run; });
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return to_run ? to_run() : 1;
  } catch (const turbokv::Error& e) {
    std::fprintf(stderr, "turbokv: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "turbokv: error: %s\n", e.what());
    return 1;
  }
}
