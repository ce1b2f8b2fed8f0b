// turbokv schemes: every KV cache scheme with its exact storage cost.
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "codec/codec.h"
#include "kv/scheme.h"
#include "util/error.h"

namespace turbokv::cli {
namespace {

std::string describe(const kv::StreamSpec& s, int head_dim) {
  if (s.kind != kv::StreamKind::Codec) return s.name;
  const codec::CodecSpec c = kv::SchemeSpec::resolve_codec(s, head_dim);
  std::string d = std::string(codec::codec_name(c.kind)) + " " + std::to_string(c.bits) + "-bit";
  if (c.kind == codec::CodecKind::Group || c.kind == codec::CodecKind::Affine) {
    d += " g" + std::to_string(c.effective_group());
  }
  if (c.split > 0) d += " +" + std::to_string(c.split) + "@" + std::to_string(c.split_bits());  // outlier channels
  return d;
}

int run_schemes(int head_dim, int tokens, bool json, const std::vector<std::string>& names) {
  if (head_dim < 1 || head_dim > codec::kMaxDim) {
    throw Error("--head-dim must be in 1.." + std::to_string(codec::kMaxDim) + ", got " + std::to_string(head_dim));
  }
  if (tokens < 1) throw Error("--tokens must be at least 1, got " + std::to_string(tokens));
  nlohmann::json rows = nlohmann::json::array();
  if (!json) {
    std::printf("KV cache schemes at head_dim %d. K, V bits and avg: the records, every norm and scale\n"
                "included. At %d tokens: everything a cache of that many tokens holds, with the FP16\n"
                "window, the near tier (tokens@bits) and the calibration state (key mean and scales,\n"
                "per layer and kv head).\n\n",
                head_dim, tokens);
    std::printf("%-10s  %-16s  %-16s  %7s  %7s  %7s  %6s  %5s  %9s  %6s\n", "scheme", "keys", "values", "K bits",
                "V bits", "avg", "window", "near", "at tokens", "vs f16");
  }
  for (const auto& name : names) {
    const kv::SchemeSpec spec = kv::parse_scheme(name);
    auto serves_stream = [&](const kv::StreamSpec& st) {
      auto serves_codec = [&](const kv::StreamSpec& s) {
        return !codec::spec_problem(kv::SchemeSpec::resolve_codec(s, head_dim), head_dim);
      };
      return st.kind != kv::StreamKind::Codec || (serves_codec(st) && (spec.near == 0 || serves_codec(spec.near_stream(st))));
    };
    const bool serves = serves_stream(spec.key), serves_v = serves_stream(spec.value);
    const double kb = kv::SchemeSpec::stream_bits(spec.key, head_dim);
    const double vb = kv::SchemeSpec::stream_bits(spec.value, head_dim);
    const double avg = 0.5 * (kb + vb);
    const double at = spec.bits_at(head_dim, tokens);
    if (json) {
      nlohmann::json r = {{"scheme", name}, {"keys", describe(spec.key, head_dim)}, {"values", describe(spec.value, head_dim)},
                          {"head_dim", head_dim}, {"supported", serves && serves_v}};
      if (serves && serves_v) {
        r["key_bits"] = kb;
        r["value_bits"] = vb;
        r["bits_per_element"] = avg;
        r["window"] = spec.window;
        r["near"] = spec.near;
        r["near_bits"] = spec.near_bits;
        r["tokens"] = tokens;
        r["bits_per_element_at_tokens"] = at;
        r["compression_vs_fp16"] = 16.0 / at;
      }
      rows.push_back(r);
    } else if (!(serves && serves_v)) {
      std::printf("%-10s  %-16s  %-16s  cannot serve head_dim %d\n", name.c_str(), describe(spec.key, head_dim).c_str(),
                  describe(spec.value, head_dim).c_str(), head_dim);
    } else {
      const std::string near = spec.near == 0    ? "0"
                              : spec.near_bits ? std::to_string(spec.near) + "@" + std::to_string(spec.near_bits)
                                               : std::to_string(spec.near) + "@+1";
      std::printf("%-10s  %-16s  %-16s  %7.3f  %7.3f  %7.3f  %6d  %5s  %9.3f  %5.2fx\n", name.c_str(),
                  describe(spec.key, head_dim).c_str(), describe(spec.value, head_dim).c_str(), kb, vb, avg, spec.window,
                  near.c_str(), at, 16.0 / at);
    }
  }
  if (json) {
    std::printf("%s\n", rows.dump(1).c_str());
  } else {
    std::printf("\nForms:\n%s\n", kv::scheme_forms().c_str());
  }
  return 0;
}

const RegisterCommand kRegister{Command{
    "schemes", "List the KV cache schemes with their exact bits per element",
    [](CLI::App& app) -> std::function<int()> {
      auto head_dim = std::make_shared<int>(128);
      auto tokens = std::make_shared<int>(4096);
      auto json = std::make_shared<bool>(false);
      auto names = std::make_shared<std::vector<std::string>>();
      app.add_option("--head-dim", *head_dim, "Head size to compute the costs for")->capture_default_str();
      app.add_option("--tokens", *tokens, "Cache length for the all-inclusive bits column")->capture_default_str();
      app.add_flag("--json", *json, "Print JSON");
      app.add_option("--kv", *names, "Schemes to list (default: the named ones)")->delimiter(',');
      return [=] {
        return run_schemes(*head_dim, *tokens, *json, names->empty() ? kv::listed_schemes() : *names);
      };
    }}};

}  // namespace
}  // namespace turbokv::cli
