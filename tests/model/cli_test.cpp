// The turbokv executable's generate/perplexity commands: exact stdout, and
// clear errors naming the bad flag or file.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/run_cli.h"
#include <string>

namespace {

using RunResult = turbokv::testing::CliResult;

RunResult run(const std::string& args) {
  return turbokv::testing::run_cli(TURBOKV_BINARY, args, ::testing::TempDir());
}

TEST(Cli, GenerateGreedyPrintsOnlyPromptAndContinuation) {
  // Default model (models/tq-tiny-hd128.gguf); golden/greedy.json's first case, cut to 16 tokens.
  const auto r = run("generate -p 'It was a dark and stormy night' -n 16 --temp 0 -t 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "<s> It was a dark and stormy night, and the light of the firelight was\nsurrounded by a\n");
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
}

TEST(Cli, GenerateWithF32CacheAndSampling) {
  const auto r = run("generate -p 'The old man' -n 8 --temp 0.8 --top-k 20 --top-p 0.9 --min-p 0.05 "
                     "--repeat-penalty 1.1 --seed 42 --kv f32 --ctx 64");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("<s> The old man", 0), 0u) << r.out;
  const auto again = run("generate -p 'The old man' -n 8 --temp 0.8 --top-k 20 --top-p 0.9 --min-p 0.05 "
                         "--repeat-penalty 1.1 --seed 42 --kv f32 --ctx 64");
  EXPECT_EQ(again.out, r.out);
}

TEST(Cli, MissingModelFileIsNamed) {
  const auto r = run("generate -m /nonexistent/model.gguf -p hi -n 4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("/nonexistent/model.gguf"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST(Cli, NegativeTokenCountIsRejected) {
  const auto r = run("generate -p hi -n -1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("-n"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST(Cli, UnknownKvSchemeListsValidOnes) {
  const auto r = run("generate -p hi -n 4 --kv nope");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--kv"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'nope'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("fp16"), std::string::npos) << r.err;
}

TEST(Cli, ContextSmallerThanPromptIsRejected) {
  const auto r = run("generate -p 'It was a dark and stormy night' -n 4 --ctx 3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--ctx"), std::string::npos) << r.err;
}

TEST(Cli, PerplexityReportsFinalEstimate) {
  const std::string text = std::string(TURBOKV_SHARED_DATA) + "/text/tinystories_validation_head.txt";
  const std::string model = std::string(TURBOKV_SHARED_DATA) + "/models/stories260K.gguf";
  const auto r = run("perplexity -m '" + model + "' -f '" + text + "' --ctx 128 --chunks 3 -t 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("[1]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[3]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Final estimate: PPL = "), std::string::npos) << r.out;
}

TEST(Cli, PerplexityMissingTextFileIsNamed) {
  const auto r = run("perplexity -f /nonexistent/text.txt --ctx 64");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("/nonexistent/text.txt"), std::string::npos) << r.err;
}

}  // namespace
