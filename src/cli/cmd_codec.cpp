// `turbokv codec`: measures one vector codec on random vectors, beside theory.
//
//   turbokv codec --dim 128 --bits 3 --codec mse|group|prod|affine
//                 [--samples N] [--seed S] [--group G] [--codebook sphere|gaussian]
//                 [--rotation auto|hadamard|block|dense] [--json]
//
// Two input distributions: x ~ N(0, I_d) ("gaussian", the top-level numbers)
// and x uniform on the unit sphere ("unit_vectors", nested). Queries are
// q ~ N(0, I_d), independent of x. Definitions (one sample per x):
//   mse      E[||x - x̂||^2 / ||x||^2]   (x̂ = decode(encode(x)), rotation included)
//   ip_bias  slope - 1 of the regression through the origin of the estimate
//            est = codec.dot(q, record) on the truth t = <q, x>:
//            sum (est - t) t / sum t^2. Zero for an unbiased estimator; mse
//            shows its multiplicative shrinkage, about -D_mse.
//            ip_bias_se is its standard error.
//   ip_var   E[(est - t)^2] / E[||q||^2 ||x||^2 / d]: the inner-product error
//            relative to the variance of <q, x> for random directions (for an
//            isotropic error this equals the relative MSE).
//   mse_theory  mse: d * (per-coordinate MSE of the codebook used), the exact
//            expectation for unit vectors; prod: (pi/2 - 1/d) * that at b-1
//            bits (1 at b = 1), the QJL dequantizer's error; null for group
//            and affine. mse_gaussian_lloyd_max: the N(0,1) Lloyd–Max MSE at b
//            bits (TurboQuant's 0.3634, 0.1175, 0.0345, 0.0095 for b = 1..4);
//            mse_lower_bound: 4^-b (Zandieh et al. 2025, Thm. 3).
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "codec/codec.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::cli {
namespace {

using codec::Codec;
using codec::CodecKind;
using codec::CodecSpec;

struct CodecOptions {
  int dim = 128;
  int bits = 4;
  std::string codec = "mse";
  int samples = 10000;
  uint64_t seed = 0;
  int group = 0;
  std::string codebook = "sphere";
  std::string rotation = "auto";
  bool json = false;
};

struct Stats {
  double mse = 0, mse_se = 0, ip_bias = 0, ip_bias_se = 0, ip_var = 0;
};

CodecSpec parse_spec(const CodecOptions& o) {
  CodecSpec s;
  if (o.codec == "mse") s.kind = CodecKind::Mse;
  else if (o.codec == "group") s.kind = CodecKind::Group;
  else if (o.codec == "prod") s.kind = CodecKind::Prod;
  else if (o.codec == "affine") s.kind = CodecKind::Affine;
  else throw Error("--codec: unknown codec '" + o.codec + "' (expected mse, group, prod or affine)");
  if (o.dim < 1 || o.dim > codec::kMaxDim)
    throw Error("--dim: must be in 1.." + std::to_string(codec::kMaxDim) + ", got " + std::to_string(o.dim));
  if (o.bits < 1 || o.bits > 8) throw Error("--bits: must be in 1..8, got " + std::to_string(o.bits));
  if (s.kind == CodecKind::Affine && o.bits != 4 && o.bits != 8)
    throw Error("--bits: the affine codec supports 4 or 8 bits, got " + std::to_string(o.bits));
  if (o.group < 0) throw Error("--group: must be positive, got " + std::to_string(o.group));
  if (o.codebook == "sphere") s.codebook = codec::MseCodebook::Sphere;
  else if (o.codebook == "gaussian") s.codebook = codec::MseCodebook::Gaussian;
  else throw Error("--codebook: expected sphere or gaussian, got '" + o.codebook + "'");
  s.bits = o.bits;
  s.group_size = o.group;
  if (s.kind == CodecKind::Group || s.kind == CodecKind::Affine) {
    const int g = s.effective_group();
    const bool allowed = s.kind == CodecKind::Group ? (g == 16 || g == 32 || g == 64 || g == 128)
                                                    : (g == 32 || g == 64);
    if (!allowed)
      throw Error("--group: " + std::to_string(g) + " is not supported by " + o.codec +
                  (s.kind == CodecKind::Group ? " (16, 32, 64 or 128)" : " (32 or 64)"));
    if (o.dim % g != 0)
      throw Error("--group: " + std::to_string(g) + " does not divide --dim " + std::to_string(o.dim));
  } else if (o.group != 0) {
    throw Error("--group: only the group and affine codecs take a group size");
  }
  if (o.samples < 1) throw Error("--samples: must be at least 1, got " + std::to_string(o.samples));
  return s;
}

codec::RotationKind parse_rotation(const std::string& r) {
  if (r == "auto") return codec::RotationKind::Auto;
  if (r == "hadamard") return codec::RotationKind::Hadamard;
  if (r == "block") return codec::RotationKind::BlockHadamard;
  if (r == "dense") return codec::RotationKind::Dense;
  throw Error("--rotation: expected auto, hadamard, block or dense, got '" + r + "'");
}

// One input distribution: unit = false draws x ~ N(0, I), true normalizes it.
Stats measure(const Codec& c, const codec::Rotation& rot, int samples, uint64_t seed, bool unit) {
  const int d = c.dim();
  Rng rng(mix_seed(seed, unit ? 2 : 1));
  std::vector<float> x(static_cast<size_t>(d)), xh(static_cast<size_t>(d)), q(static_cast<size_t>(d));
  std::vector<uint8_t> rec(c.record_bytes());
  double s_err = 0, s_err2 = 0, s_z = 0, s_z2 = 0, s_tt = 0, s_e2 = 0, s_qx = 0;
  for (int n = 0; n < samples; ++n) {
    double xx = 0, qq = 0, t = 0;
    for (float& v : x) { v = float(rng.normal()); xx += double(v) * v; }
    if (unit) {
      const float inv = float(1.0 / std::sqrt(xx));
      for (float& v : x) v *= inv;
      xx = 0;
      for (float v : x) xx += double(v) * v;
    }
    for (int i = 0; i < d; ++i) { q[i] = float(rng.normal()); qq += double(q[i]) * q[i]; t += double(q[i]) * x[i]; }
    c.encode(rot, x.data(), rec.data());
    c.decode(rot, rec.data(), xh.data());
    double e = 0;
    for (int i = 0; i < d; ++i) e += double(x[i] - xh[i]) * (x[i] - xh[i]);
    e /= xx;
    s_err += e;
    s_err2 += e * e;
    const double est = c.dot(rot, q.data(), rec.data());
    const double z = (est - t) * t;
    s_z += z;
    s_z2 += z * z;
    s_tt += t * t;
    s_e2 += (est - t) * (est - t);
    s_qx += qq * xx / d;
  }
  const double N = samples;
  Stats st;
  st.mse = s_err / N;
  st.mse_se = std::sqrt(std::max(0.0, s_err2 / N - st.mse * st.mse) / N);
  const double mean_tt = s_tt / N, mean_z = s_z / N;
  st.ip_bias = mean_z / mean_tt;
  st.ip_bias_se = std::sqrt(std::max(0.0, s_z2 / N - mean_z * mean_z) / N) / mean_tt;
  st.ip_var = s_e2 / s_qx;
  return st;
}

nlohmann::json to_json(const Stats& s) {
  return {{"mse", s.mse}, {"mse_se", s.mse_se}, {"ip_bias", s.ip_bias},
          {"ip_bias_se", s.ip_bias_se}, {"ip_var", s.ip_var}};
}

int run_codec(const CodecOptions& o) {
  const CodecSpec spec = parse_spec(o);
  const codec::RotationKind rk = parse_rotation(o.rotation);
  if (rk == codec::RotationKind::Hadamard && (o.dim & (o.dim - 1)) != 0)
    throw Error("--rotation: hadamard needs a power-of-two --dim, got " + std::to_string(o.dim));
  const Codec c(spec, o.dim, o.seed);
  const codec::Rotation rot = codec::Rotation::make(o.dim, o.seed, 0, 0, rk);
  const Stats gauss = measure(c, rot, o.samples, o.seed, false);
  const Stats unit = measure(c, rot, o.samples, o.seed, true);

  nlohmann::json theory = nullptr;
  const double d = o.dim;
  if (spec.kind == CodecKind::Mse) {
    theory = d * c.codebook()->mse();
  } else if (spec.kind == CodecKind::Prod) {
    theory = (M_PI / 2 - 1.0 / d) * (c.codebook() ? d * c.codebook()->mse() : 1.0);
  }
  const double gaussian_lm = codec::Codebook::gaussian(o.bits).mse();
  const double lower = std::pow(4.0, -o.bits);
  const bool grouped = spec.kind == CodecKind::Group || spec.kind == CodecKind::Affine;

  if (o.json) {
    nlohmann::json j = {
        {"codec", o.codec},
        {"dim", o.dim},
        {"bits", o.bits},
        {"group", grouped ? nlohmann::json(spec.effective_group()) : nlohmann::json(nullptr)},
        {"codebook", spec.kind == CodecKind::Mse || spec.kind == CodecKind::Prod ? nlohmann::json(o.codebook)
                                                                                 : nlohmann::json(nullptr)},
        {"rotation", c.uses_rotation() ? codec::rotation_name(rot.kind()) : "none"},
        {"seed", o.seed},
        {"samples", o.samples},
        {"format_version", codec::kFormatVersion},
        {"record_bytes", c.record_bytes()},
        {"bits_per_element", c.bits_per_element()},
        {"mse", gauss.mse},
        {"mse_se", gauss.mse_se},
        {"mse_theory", theory},
        {"mse_gaussian_lloyd_max", gaussian_lm},
        {"mse_lower_bound", lower},
        {"ip_bias", gauss.ip_bias},
        {"ip_bias_se", gauss.ip_bias_se},
        {"ip_var", gauss.ip_var},
        {"unit_vectors", to_json(unit)},
    };
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("codec %s  dim %d  bits %d", o.codec.c_str(), o.dim, o.bits);
  if (grouped) std::printf("  group %d", spec.effective_group());
  std::printf("  rotation %s  samples %d  seed %llu\n", c.uses_rotation() ? codec::rotation_name(rot.kind()) : "none",
              o.samples, static_cast<unsigned long long>(o.seed));
  std::printf("record %zu bytes, %.4f bits/element (format v%u)\n", c.record_bytes(), c.bits_per_element(),
              codec::kFormatVersion);
  std::printf("%-14s %12s %12s %12s %12s\n", "input", "mse", "ip_bias", "(se)", "ip_var");
  auto row = [](const char* name, const Stats& s) {
    std::printf("%-14s %12.6f %+12.6f %12.6f %12.6f\n", name, s.mse, s.ip_bias, s.ip_bias_se, s.ip_var);
  };
  row("gaussian", gauss);
  row("unit vectors", unit);
  if (theory.is_number()) std::printf("mse theory (this codec, dim %d): %.6f\n", o.dim, theory.get<double>());
  std::printf("N(0,1) Lloyd-Max mse at %d bits: %.6f   lower bound 4^-b: %.6f\n", o.bits, gaussian_lm, lower);
  return 0;
}

const RegisterCommand kRegisterCodec{Command{
    "codec", "Measure a KV vector codec (mse, group, prod, affine) on random vectors",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<CodecOptions>();
      app.add_option("--dim", o->dim, "Vector dimension (head_dim)")->capture_default_str();
      app.add_option("--bits", o->bits, "Bits per element (1..8; affine: 4 or 8)")->capture_default_str();
      app.add_option("--codec", o->codec, "mse | group | prod | affine")->capture_default_str();
      app.add_option("--samples", o->samples, "Random vectors per input distribution")->capture_default_str();
      app.add_option("--seed", o->seed, "Seed of the rotation, QJL matrix and samples")->capture_default_str();
      app.add_option("--group", o->group, "Group size (group: 16/32/64/128, default 16; affine: 32/64, default 64)");
      app.add_option("--codebook", o->codebook, "mse/prod codebook: sphere | gaussian")->capture_default_str();
      app.add_option("--rotation", o->rotation, "auto | hadamard | block | dense")->capture_default_str();
      app.add_flag("--json", o->json, "Print one JSON object");
      return [o] { return run_codec(*o); };
    }}};

}  // namespace
}  // namespace turbokv::cli
