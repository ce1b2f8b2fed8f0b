#include "tokenizer/vocab.h"

#include "io/gguf.h"
#include "tokenizer/pretokenize.h"
#include "util/error.h"

namespace turbokv::tokenizer {

Vocab Vocab::with_defaults(const std::string& model, const std::string& pre) {
  Vocab v;
  v.model = model;
  v.pre = pre;
  if (model == "llama") {
    // SentencePiece: llama.cpp ignores tokenizer.ggml.pre here.
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
  } else if (model == "gpt2") {
    // llama.cpp's defaults for byte-level BPE (real files set both keys).
    v.bos_id = 11;
    v.eos_id = 11;
    if (pre_tokenizer_from_name(pre) == PreTokenizer::Llama3) {
      v.ignore_merges = true;
      v.add_bos = true;
    }
  } else {
    throw Error("tokenizer.ggml.model: unsupported tokenizer model '" + model +
                "' (expected 'llama' or 'gpt2')");
  }
  return v;
}

namespace {

// A special-token id key: absent keeps the default; negative or 0xFFFFFFFF
// (how converters write "none") means no such token. An id past the
// vocabulary is an error for the tokens encoding depends on (`required`);
// for the others it means none, as llama.cpp ignores such ids.
void read_token_id(const io::GgufFile& g, const char* key, int32_t n_tokens, bool required, int32_t& id) {
  if (!g.has(key)) {
    if (id >= n_tokens) id = kNoToken;  // a default the vocabulary is too small for
    return;
  }
  const int64_t v = g.get_i64(key);
  if (v < 0 || v == int64_t{UINT32_MAX}) {
    id = kNoToken;
  } else if (v < n_tokens) {
    id = static_cast<int32_t>(v);
  } else if (required) {
    throw Error(g.path() + ": metadata key '" + key + "' is " + std::to_string(v) +
                ", expected a token id below the vocabulary size " + std::to_string(n_tokens));
  } else {
    id = kNoToken;
  }
}

}  // namespace

Vocab load_vocab(const io::GgufFile& g) {
  const std::string model = g.get_string("tokenizer.ggml.model");
  const std::string pre = g.get_string_or("tokenizer.ggml.pre", "default");
  Vocab v;
  try {
    v = Vocab::with_defaults(model, pre);
  } catch (const Error& e) {
    throw Error(g.path() + ": " + e.what());
  }

  v.tokens = g.get_string_array("tokenizer.ggml.tokens");
  if (v.tokens.empty()) throw Error(g.path() + ": metadata key 'tokenizer.ggml.tokens' is an empty array");
  if (v.tokens.size() > static_cast<size_t>(INT32_MAX)) {
    throw Error(g.path() + ": metadata key 'tokenizer.ggml.tokens' has too many entries");
  }
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    // As llama.cpp: an empty token could never be matched; give it a name.
    if (v.tokens[i].empty()) v.tokens[i] = "[EMPTY_" + std::to_string(i) + "]";
  }
  const size_t n = v.tokens.size();
  const auto check_size = [&](const char* key, size_t size) {
    if (size != n) {
      throw Error(g.path() + ": metadata key '" + key + "' has " + std::to_string(size) +
                  " entries, expected one per token (" + std::to_string(n) + ")");
    }
  };

  if (g.has("tokenizer.ggml.scores")) {
    v.scores = g.get_f32_array("tokenizer.ggml.scores");
    check_size("tokenizer.ggml.scores", v.scores.size());
  }
  if (g.has("tokenizer.ggml.token_type")) {
    const std::vector<int32_t> types = g.get_i32_array("tokenizer.ggml.token_type");
    check_size("tokenizer.ggml.token_type", types.size());
    v.token_types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > static_cast<int32_t>(TokenType::Byte)) {
        throw Error(g.path() + ": metadata key 'tokenizer.ggml.token_type' entry " + std::to_string(i) +
                    " is " + std::to_string(types[i]) + ", expected 0..6");
      }
      v.token_types.push_back(static_cast<TokenType>(types[i]));
    }
  }
  if (model == "gpt2") v.merges = g.get_string_array("tokenizer.ggml.merges");

  const auto n_tokens = static_cast<int32_t>(n);
  read_token_id(g, "tokenizer.ggml.bos_token_id", n_tokens, true, v.bos_id);
  read_token_id(g, "tokenizer.ggml.eos_token_id", n_tokens, true, v.eos_id);
  read_token_id(g, "tokenizer.ggml.unknown_token_id", n_tokens, true, v.unk_id);
  read_token_id(g, "tokenizer.ggml.padding_token_id", n_tokens, false, v.pad_id);
  read_token_id(g, "tokenizer.ggml.eot_token_id", n_tokens, false, v.eot_id);
  read_token_id(g, "tokenizer.ggml.eom_token_id", n_tokens, false, v.eom_id);

  v.add_space_prefix = g.get_bool_or("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  v.add_bos = g.get_bool_or("tokenizer.ggml.add_bos_token", v.add_bos);
  v.add_eos = g.get_bool_or("tokenizer.ggml.add_eos_token", v.add_eos);
  return v;
}

}  // namespace turbokv::tokenizer
