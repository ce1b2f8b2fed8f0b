#include "kv/scheme.h"

#include <algorithm>

#include <charconv>

#include "util/error.h"

namespace turbokv::kv {

namespace {

bool parse_int(std::string_view s, int& out) {
  if (s.empty()) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

[[noreturn]] void bad(std::string_view whole, const std::string& why) {
  throw Error("bad KV cache scheme '" + std::string(whole) + "': " + why + "\nvalid forms:\n" + scheme_forms());
}

// The codec that `turbo<B>` stands for, before the group is resolved for a
// head size: rotated, B-bit Lloyd–Max indices with group scales, the encoder
// searching the grid placement (see StreamSpec::turbo_group).
codec::CodecSpec turbo_codec(int bits) {
  codec::CodecSpec c{codec::CodecKind::Group, bits, 0, codec::MseCodebook::Sphere};
  c.scale_search = true;
  return c;
}

// Roles of the turbo streams in a scheme (see scheme.h).
void set_turbo_roles(SchemeSpec& spec) {
  if (spec.key.kind == StreamKind::Codec && spec.key.turbo_group > 0) {
    spec.key.turbo_group = 128;
    spec.key.codec.scale_rule = codec::ScaleRule::LeastSquares;
  }
  if (spec.value.kind == StreamKind::Codec && spec.value.turbo_group > 0) {
    spec.value.turbo_group = spec.key.kind == StreamKind::Codec ? 128 : 16;
  }
}

// Parses one element spec ("fp16", "turbo4", "group3g32", ...).
StreamSpec parse_element(std::string_view whole, std::string_view s) {
  StreamSpec out;
  out.name = std::string(s);
  if (s == "fp16" || s == "f16") { out.kind = StreamKind::Fp16; out.name = "fp16"; return out; }
  if (s == "f32") { out.kind = StreamKind::F32; return out; }
  out.kind = StreamKind::Codec;
  auto with_bits = [&](std::string_view prefix, codec::CodecKind kind) -> bool {
    if (s.substr(0, prefix.size()) != prefix) return false;
    std::string_view rest = s.substr(prefix.size());
    int group = 0;
    if (const size_t g = rest.find('g'); g != std::string_view::npos) {
      if (kind != codec::CodecKind::Group && kind != codec::CodecKind::Affine) {
        bad(whole, "'" + std::string(s) + "': a group size applies to group and affine only");
      }
      if (!parse_int(rest.substr(g + 1), group)) bad(whole, "'" + std::string(s) + "': bad group size");
      rest = rest.substr(0, g);
    }
    int bits = 0;
    if (!parse_int(rest, bits)) bad(whole, "'" + std::string(s) + "': expected a bit width after '" + std::string(prefix) + "'");
    out.codec = codec::CodecSpec{kind, bits, group, codec::MseCodebook::Sphere};
    return true;
  };
  if (s.substr(0, 5) == "turbo") {
    int bits = 0;
    if (!parse_int(s.substr(5), bits) || (bits != 2 && bits != 3 && bits != 4 && bits != 8)) {
      bad(whole, "'" + std::string(s) + "': turbo bit widths are 2, 3, 4 and 8");
    }
    out.codec = turbo_codec(bits);
    out.turbo_group = 64;  // set per role by set_turbo_roles
    return out;
  }
  if (!(with_bits("affine", codec::CodecKind::Affine) || with_bits("mse", codec::CodecKind::Mse) ||
        with_bits("group", codec::CodecKind::Group) || with_bits("prod", codec::CodecKind::Prod))) {
    bad(whole, "unknown element spec '" + std::string(s) + "'");
  }
  // Bits and group are checked against the head size when the cache is built
  // (validate_spec); catch the head-size-independent errors now.
  if (out.codec.bits < 1 || out.codec.bits > 8) bad(whole, "'" + std::string(s) + "': bits must be in 1..8");
  if (out.codec.kind == codec::CodecKind::Affine && out.codec.bits != 4 && out.codec.bits != 8) {
    bad(whole, "'" + std::string(s) + "': affine bits must be 4 or 8");
  }
  return out;
}

void apply_option(std::string_view whole, SchemeSpec& spec, std::string_view opt) {
  const size_t eq = opt.find('=');
  const std::string_view key = opt.substr(0, eq);
  const std::string_view val = eq == std::string_view::npos ? std::string_view() : opt.substr(eq + 1);
  auto flag = [&](bool& out) {
    if (val == "1" || val == "on" || val.empty()) out = true;
    else if (val == "0" || val == "off") out = false;
    else bad(whole, "option '" + std::string(key) + "' takes 0 or 1");
  };
  if (key == "center") flag(spec.center_keys);
  else if (key == "vcenter") flag(spec.center_values);
  else if (key == "strict") flag(spec.strict);
  else if (key == "calib") {
    if (val == "none") spec.calibration = Calibration::None;
    else if (val == "key") spec.calibration = Calibration::Key;
    else if (val == "query") spec.calibration = Calibration::Query;
    else bad(whole, "calib takes none, key or query");
  } else if (key == "rot") {
    if (val == "auto") spec.rotation = codec::RotationKind::Auto;
    else if (val == "hadamard") spec.rotation = codec::RotationKind::Hadamard;
    else if (val == "block") spec.rotation = codec::RotationKind::BlockHadamard;
    else if (val == "dense") spec.rotation = codec::RotationKind::Dense;
    else bad(whole, "rot takes auto, hadamard, block or dense");
  } else if (key == "kscale" || key == "vscale") {
    codec::ScaleRule rule;
    if (val == "auto") rule = codec::ScaleRule::Auto;
    else if (val == "norm") rule = codec::ScaleRule::Norm;
    else if (val == "matched") rule = codec::ScaleRule::MatchedNorm;
    else if (val == "ls") rule = codec::ScaleRule::LeastSquares;
    else if (val == "unbiased") rule = codec::ScaleRule::Unbiased;
    else bad(whole, std::string(key) + " takes auto, norm, matched, ls or unbiased");
    (key == "kscale" ? spec.key : spec.value).codec.scale_rule = rule;
  } else if (key == "ksearch" || key == "vsearch") {
    flag((key == "ksearch" ? spec.key : spec.value).codec.scale_search);
  } else if (key == "math") {
    if (val == "half") spec.f32_math = false;
    else if (val == "f32") spec.f32_math = true;
    else bad(whole, "math takes half or f32");
  } else if (key == "window") {
    if (!parse_int(val, spec.window) || spec.window < 0) bad(whole, "window takes a non-negative token count");
  } else if (key == "codebook") {
    codec::MseCodebook cb;
    if (val == "beta") cb = codec::MseCodebook::Sphere;
    else if (val == "gaussian") cb = codec::MseCodebook::Gaussian;
    else bad(whole, "codebook takes beta (the exact coordinate density of a rotated unit vector) or gaussian");
    bool applies = false;
    for (StreamSpec* st : {&spec.key, &spec.value}) {
      if (st->kind != StreamKind::Codec) continue;
      const codec::CodecKind k = st->codec.kind;
      if (k == codec::CodecKind::Mse || k == codec::CodecKind::Prod) {
        st->codec.codebook = cb;
        applies = true;
      }
    }
    if (!applies) bad(whole, "codebook applies to mse and prod streams (group and turbo<B> use the N(0,1) Lloyd-Max codebook)");
  } else if (key == "near") {
    if (!parse_int(val, spec.near) || spec.near < 0) bad(whole, "near takes a non-negative token count");
  } else if (key == "nearbits") {
    if (!parse_int(val, spec.near_bits) || spec.near_bits < 1 || spec.near_bits > 8) {
      bad(whole, "nearbits takes a bit width in 2..8");
    }
  } else if (key == "outliers" || key == "voutliers") {
    StreamSpec& st = key == "outliers" ? spec.key : spec.value;
    const char* what = key == "outliers" ? "keys" : "values";
    if (!parse_int(val, st.outliers) || st.outliers < 0) bad(whole, std::string(key) + " takes a non-negative channel count");
    if (st.outliers > 0 && (st.kind != StreamKind::Codec ||
                            (st.codec.kind != codec::CodecKind::Mse && st.codec.kind != codec::CodecKind::Group))) {
      bad(whole, std::string(key) + " applies to " + what + " stored by turbo<B>, mse<B> or group<B>, not " + st.name);
    }
  } else if (key == "fp16layers") {
    // Layer indices and ranges joined by '+': "0+4", "0-1+7".
    spec.fp16_layers.clear();
    std::string_view rest = val;
    for (;;) {
      const size_t plus = rest.find('+');
      const std::string_view item = rest.substr(0, plus);
      const size_t dash = item.find('-');
      int lo = 0, hi = 0;
      if (!parse_int(item.substr(0, dash), lo) ||
          (dash != std::string_view::npos && !parse_int(item.substr(dash + 1), hi)) || lo < 0) {
        bad(whole, "fp16layers takes layer indices and ranges joined by '+', e.g. 0+4 or 0-1+7");
      }
      if (dash == std::string_view::npos) hi = lo;
      if (hi < lo) bad(whole, "fp16layers range " + std::string(item) + " runs backwards");
      for (int l = lo; l <= hi; ++l) spec.fp16_layers.push_back(l);
      if (plus == std::string_view::npos) break;
      rest = rest.substr(plus + 1);
    }
    std::sort(spec.fp16_layers.begin(), spec.fp16_layers.end());
    spec.fp16_layers.erase(std::unique(spec.fp16_layers.begin(), spec.fp16_layers.end()), spec.fp16_layers.end());
  } else if (key == "seed") {
    if (!parse_u64(val, spec.seed)) bad(whole, "seed takes a non-negative integer");
  } else {
    bad(whole, "unknown option '" + std::string(key) + "'");
  }
}

}  // namespace

const char* calibration_name(Calibration c) {
  switch (c) {
    case Calibration::None: return "none";
    case Calibration::Key: return "key";
    case Calibration::Query: return "query";
  }
  return "?";
}

codec::CodecSpec SchemeSpec::resolve_codec(const StreamSpec& s, int head_dim) {
  codec::CodecSpec c = s.codec;
  c.split = s.outliers;
  if (s.turbo_group > 0) {
    // With outlier channels, each part needs whole groups.
    const int g = s.turbo_group;
    const bool parts_ok = s.outliers == 0 || (s.outliers % g == 0 && (head_dim - s.outliers) % g == 0);
    if (head_dim % g == 0 && parts_ok) {
      c.group_size = s.turbo_group;
    } else {
      // One scale per vector (per part of a split record): mse's layout
      // with the same encoder rules (matched norm unless the role asks for
      // least squares).
      c.kind = codec::CodecKind::Mse;
      c.group_size = 0;
      if (c.scale_rule == codec::ScaleRule::Auto) c.scale_rule = codec::ScaleRule::MatchedNorm;
    }
  }
  return c;
}

double SchemeSpec::stream_bits(const StreamSpec& s, int head_dim) {
  switch (s.kind) {
    case StreamKind::F32: return 32.0;
    case StreamKind::Fp16: return 16.0;
    case StreamKind::Codec: return codec::bits_per_element(resolve_codec(s, head_dim), head_dim);
  }
  return 0.0;
}

StreamSpec SchemeSpec::near_stream(const StreamSpec& s) const {
  StreamSpec out = s;
  out.codec.bits = near_bits > 0 ? near_bits : std::min(8, s.codec.bits + 1);
  out.name = s.name + "@" + std::to_string(out.codec.bits);
  return out;
}

double SchemeSpec::bits_at(int head_dim, int n_tokens) const {
  const bool k_codec = key.kind == StreamKind::Codec, v_codec = value.kind == StreamKind::Codec;
  const double n = n_tokens, raw = std::min(n, double(window)), nearer = std::min(n - raw, double(near));
  auto stream = [&](const StreamSpec& s) {
    const double b = stream_bits(s, head_dim);
    if (s.kind != StreamKind::Codec) return b;
    const double nb = nearer > 0 ? stream_bits(near_stream(s), head_dim) : 0.0;
    return ((n - raw - nearer) * b + nearer * nb + raw * 16.0) / n;
  };
  double state = 0;  // bits per channel of one (layer, kv head)
  if (k_codec && center_keys) state += 16;
  if (k_codec && calibration != Calibration::None) state += 8;
  if (v_codec && center_values) state += 16;
  if (k_codec && key.outliers > 0) state += 1;
  if (v_codec && value.outliers > 0) state += 1;
  return 0.5 * (stream(key) + stream(value)) + state / (2.0 * n);
}

std::string scheme_forms() {
  return "  fp16 | f32 | affine4 | affine8\n"
         "  turbo<K>v<V>  (K, V in 0,2,3,4,8; 0 = fp16), turbo<B> = turbo<B>v<B>\n"
         "  <k>/<v>       element specs: fp16, f32, affine4, affine8, turbo<B>, mse<B>,\n"
         "                group<B>[g<G>], prod<B>\n"
         "  options:      <scheme>:<opt>:<opt>... with center=0|1, vcenter=0|1,\n"
         "                calib=none|key|query, rot=auto|hadamard|block|dense, seed=N, strict,\n"
         "                kscale|vscale=auto|norm|matched|ls|unbiased, ksearch|vsearch=0|1, window=N,\n"
         "                near=N, nearbits=B, codebook=beta|gaussian, outliers=N, voutliers=N,\n"
         "                fp16layers=L[+L|-L...], math=half|f32";
}

std::vector<std::string> listed_schemes() {
  return {"fp16", "f32", "affine8", "affine4", "turbo0v4", "turbo0v2",
          "turbo8", "turbo4", "turbo4v2", "turbo3", "turbo3v2", "turbo2"};
}

SchemeSpec parse_scheme(std::string_view name) {
  SchemeSpec spec;
  spec.name = std::string(name);
  const size_t colon = name.find(':');
  const std::string_view base = name.substr(0, colon);
  if (base.empty()) bad(name, "empty scheme name");

  if (const size_t slash = base.find('/'); slash != std::string_view::npos) {
    spec.key = parse_element(name, base.substr(0, slash));
    spec.value = parse_element(name, base.substr(slash + 1));
  } else if (base == "fp16" || base == "f16" || base == "f32") {
    spec.key = spec.value = parse_element(name, base);
  } else if (base.substr(0, 6) == "affine") {
    // The MLX-style baseline as MLX runs it: no centering, no calibration
    // (options may still turn them on).
    spec.key = spec.value = parse_element(name, base);
    spec.center_keys = false;
    spec.calibration = Calibration::None;
  } else if (base.substr(0, 5) == "turbo") {
    const std::string_view rest = base.substr(5);
    const size_t v = rest.find('v');
    int kb = 0, vb = 0;
    if (!parse_int(rest.substr(0, v), kb) ||
        (v != std::string_view::npos && !parse_int(rest.substr(v + 1), vb))) {
      bad(name, "expected turbo<K>v<V> or turbo<B>");
    }
    if (v == std::string_view::npos) vb = kb;
    auto bits_ok = [](int b) { return b == 0 || b == 2 || b == 3 || b == 4 || b == 8; };
    if (!bits_ok(kb) || !bits_ok(vb)) bad(name, "turbo bit widths are 0 (fp16), 2, 3, 4 and 8");
    if (kb == 0 && vb == 0) bad(name, "turbo0v0 is fp16; say fp16");
    spec.key = kb == 0 ? parse_element(name, "fp16") : parse_element(name, "turbo" + std::to_string(kb));
    spec.value = vb == 0 ? parse_element(name, "fp16") : parse_element(name, "turbo" + std::to_string(vb));
    // A stream at 8 bits has no more bits for a near tier: where no stream
    // has, the same budget goes to a wider FP16 window.
    const bool near_room = (kb != 0 && kb < 8) || (vb != 0 && vb < 8);
    spec.window = near_room ? kTurboWindow : kTurboWindowAlone;
    spec.near = near_room ? kTurboNear : 0;
  } else {
    spec.key = spec.value = parse_element(name, base);
  }

  set_turbo_roles(spec);

  if (colon != std::string_view::npos) {
    std::string_view opts = name.substr(colon + 1);
    bool only_strict = true;
    for (;;) {
      const size_t sep = opts.find(':');
      const std::string_view opt = opts.substr(0, sep);
      if (opt.empty()) bad(name, "empty option");
      apply_option(name, spec, opt);
      if (opt != "strict") only_strict = false;
      if (sep == std::string_view::npos) break;
      opts = opts.substr(sep + 1);
    }
    // Dense caches store exact rows from the first token, which is what
    // `strict` asks; every other option would be silently ignored.
    if (spec.is_dense() && !only_strict) {
      bad(name, "options apply to compressed caches; a dense cache (fp16, f32) takes only 'strict'");
    }
  }
  if (spec.near > 0) {
    for (const StreamSpec* s : {&spec.key, &spec.value}) {
      if (s->kind == StreamKind::Codec && spec.near_bits > 0 && spec.near_bits < s->codec.bits) {
        bad(name, "nearbits (" + std::to_string(spec.near_bits) + ") is below the bits of the " +
                      (s == &spec.key ? "keys" : "values") + " (" + std::to_string(s->codec.bits) + ")");
      }
    }
  }
  return spec;
}

std::string scheme_name(std::string_view key_spec, std::string_view value_spec) {
  return std::string(key_spec.empty() ? "fp16" : key_spec) + "/" + std::string(value_spec.empty() ? "fp16" : value_spec);
}

SchemeSpec parse_scheme(std::string_view key_spec, std::string_view value_spec) {
  return parse_scheme(scheme_name(key_spec, value_spec));
}

}  // namespace turbokv::kv
