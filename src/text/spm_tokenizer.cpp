// SentencePiece tokenizer (see spm_tokenizer.h).
#include "text/spm_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <sstream>

#include "core/error.h"
#include "text/normalizer.h"

namespace hwaga {

// ---- base64 (RFC 4648, with padding) ----

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0, n = bytes.size();
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t(p[i]) << 16) | (uint32_t(p[i + 1]) << 8) | p[i + 2];
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], kB64[(v >> 6) & 63], kB64[v & 63]};
  }
  if (n - i == 1) {
    uint32_t v = uint32_t(p[i]) << 16;
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], '=', '='};
  } else if (n - i == 2) {
    uint32_t v = (uint32_t(p[i]) << 16) | (uint32_t(p[i + 1]) << 8);
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], kB64[(v >> 6) & 63], '='};
  }
  return out;
}

std::string base64_decode(std::string_view text, const std::string& what) {
  if (text.size() % 4 != 0) fail(what, ": base64 length ", text.size(), " is not a multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text[i + k];
      bool last_group = i + 4 == text.size();
      if (c == '=' && last_group && k >= 2 && (k == 3 || text[i + 3] == '=')) {
        v[k] = 0, ++pad;
        continue;
      }
      v[k] = b64_value(c);
      if (v[k] < 0 || pad > 0) fail(what, ": bad base64 character at offset ", i + k);
    }
    uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(char(w >> 16));
    if (pad < 2) out.push_back(char((w >> 8) & 0xFF));
    if (pad < 1) out.push_back(char(w & 0xFF));
  }
  return out;
}

// ---- tokenizer ----

SpmTokenizer::SpmTokenizer(std::string model_proto, int context_length_, const std::string& what)
    : proto_(std::move(model_proto)), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (context_length_ < 1) fail(what, ": context_length must be >= 1, got ", context_length_);
  auto st = sp_->LoadFromSerializedProto(proto_);
  if (!st.ok()) fail(what, ": not a loadable SentencePiece model (", st.ToString(), ")");
  if (sp_->pad_id() < 0)
    fail(what, ": the SentencePiece model has no pad piece; train it with pad_id set (hwaga uses pad_id=0)");
  context_length = context_length_;
  vocab_size = sp_->GetPieceSize();
  pad_id = sp_->pad_id();
}

SpmTokenizer::~SpmTokenizer() = default;

std::vector<int32_t> SpmTokenizer::encode_unpadded(std::string_view prompt) const {
  text::utf8_decode(prompt, "prompt");  // the same check and message as CharBPE
  std::vector<int> ids;
  auto st = sp_->Encode(absl::string_view(prompt.data(), prompt.size()), &ids);
  if (!st.ok()) fail("SentencePiece encode failed: ", st.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SpmTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size)
    fail("SentencePiece: id ", id, " is outside the vocabulary (0..", vocab_size - 1, ")");
  return sp_->IdToPiece(id);
}

bool SpmTokenizer::is_unknown(int32_t id) const { return id >= 0 && id < vocab_size && sp_->IsUnknown(id); }

std::string SpmTokenizer::decode(std::span<const int32_t> ids, bool skip_pad) const {
  std::vector<int> keep;
  for (int32_t id : ids) {
    id_to_token(id);  // range check
    if (!(skip_pad && id == pad_id)) keep.push_back(id);
  }
  std::string out;
  auto st = sp_->Decode(keep, &out);
  if (!st.ok()) fail("SentencePiece decode failed: ", st.ToString());
  return out;
}

std::string SpmTokenizer::to_json() const {
  nlohmann::json j = {{"type", "spm"}, {"context_length", context_length}, {"model", base64_encode(proto_)}};
  return j.dump();
}

std::unique_ptr<SpmTokenizer> SpmTokenizer::from_json(const nlohmann::json& j, const std::string& what) {
  if (!j.contains("context_length") || !j.at("context_length").is_number_integer())
    fail(what, ": spm tokenizer needs an integer \"context_length\"");
  int64_t ctx = j.at("context_length").get<int64_t>();
  if (ctx < 1 || ctx > (1 << 20)) fail(what, ": \"context_length\" must be in 1..1048576, found ", ctx);
  if (!j.contains("model") || !j.at("model").is_string())
    fail(what, ": spm tokenizer needs the base64 string \"model\"");
  std::string proto = base64_decode(j.at("model").get_ref<const std::string&>(), what + " \"model\"");
  return std::make_unique<SpmTokenizer>(std::move(proto), int(ctx), what);
}

namespace {

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

}  // namespace

std::unique_ptr<SpmTokenizer> SpmTokenizer::train(const std::vector<std::string>& sentences,
                                                   const SpmTrainOptions& opt) {
  if (sentences.empty()) fail("SentencePiece training: no sentences");
  for (size_t i = 0; i < sentences.size(); ++i)
    text::utf8_decode(sentences[i], "training sentence " + std::to_string(i));
  if (opt.vocab_size < 3) fail("SentencePiece training: vocab_size must be >= 3, got ", opt.vocab_size);
  std::ostringstream args;
  args << "--vocab_size=" << opt.vocab_size << " --model_type=" << opt.model_type
       << " --character_coverage=" << opt.character_coverage << " --num_threads=" << opt.num_threads
       << " --pad_id=0 --unk_id=1 --bos_id=-1 --eos_id=-1 --minloglevel=2";
  VectorIterator it(sentences);
  std::string proto;
  auto st = sentencepiece::SentencePieceTrainer::Train(args.str(), &it, &proto);
  if (!st.ok()) fail("SentencePiece training failed (", args.str(), "): ", st.ToString());
  return std::make_unique<SpmTokenizer>(std::move(proto), opt.context_length, "trained SentencePiece model");
}

}  // namespace hwaga
