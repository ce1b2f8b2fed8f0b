// The turbokv executable's generate/perplexity/bench commands: exact stdout, and
// clear errors naming the bad flag or file.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "support/run_cli.h"

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

// turbokv bench --json: one row per scheme and depth with issue 7's fields,
// every speed measured (positive), the cache's own bits per element.
TEST(Cli, BenchJsonHasARowPerSchemeAndDepth) {
  const auto r = run("bench --kv fp16,turbo4,turbo3:outliers=32 --depth 0,40 -p 16 -n 4 --reps 2 -t 1 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["threads"], 1);
  EXPECT_NE(j["model"].get<std::string>().find("tq-tiny-hd128.gguf"), std::string::npos);
  const auto& rows = j["results"];
  ASSERT_EQ(rows.size(), 6u) << r.out;
  const char* schemes[] = {"fp16", "turbo4", "turbo3:outliers=32"};
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    EXPECT_EQ(row["scheme"], schemes[i / 2]);
    EXPECT_EQ(row["depth"], i % 2 ? 40 : 0);
    for (const char* key : {"pp_tps", "tg_tps", "attn_us_per_token", "kv_bytes", "bits_per_element"}) {
      ASSERT_TRUE(row.contains(key)) << key;
      EXPECT_GT(row[key].get<double>(), 0.0) << key << " " << row.dump();
    }
  }
  EXPECT_EQ(rows[0]["bits_per_element"], 16.0);
  EXPECT_LT(rows[3]["bits_per_element"].get<double>(), 16.0);
  EXPECT_LT(rows[3]["kv_bytes"].get<double>(), rows[1]["kv_bytes"].get<double>());  // turbo4 vs fp16 at depth 40
}

TEST(Cli, BenchBadFlagsAreNamed) {
  for (const auto& [args, flag] : {std::pair{"bench --kv turbo5 -n 1 -p 0", "--kv"}, std::pair{"bench --depth -3", "--depth"},
                                   std::pair{"bench --reps 0", "--reps"}, std::pair{"bench -p 0 -n 0", "-p"}}) {
    const auto r = run(args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.err.find(flag), std::string::npos) << args << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

}  // namespace
