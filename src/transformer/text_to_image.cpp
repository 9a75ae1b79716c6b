// TextToImageModel: reads the model file's config, builds stage 1 and stage 2, checks that they
// pair (codebook size, code shape, vector dim), and runs generation in candidate batches.
#include "transformer/text_to_image.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/threads.h"
#include "nn/stage1_config.h"
#include "rq/rq_transformer.h"
#include "rq/rqvae.h"
#include "transformer/mindalle_gpt.h"
#include "transformer/stage2_model.h"
#include "vqgan/vqgan.h"

namespace hwaga {

TextToImageModel::TextToImageModel() = default;
TextToImageModel::~TextToImageModel() = default;

namespace {

// Builds stage 2 on top of an already built stage 1, checking that the pair matches.
std::unique_ptr<Stage2Model> build_stage2(const Stage2Config& c, ImageTokenizer& stage1, const TensorMap& tensors,
                                          const std::string& source, Backend& be) {
  const Shape cs = stage1.code_shape();
  if (c.is_rq()) {
    const RqTransformerConfig& r = c.rq;
    auto* rq = dynamic_cast<RQVAE*>(&stage1);
    if (!rq) fail(source, ": stage2 is an rq-transformer but stage1 is a ", stage1.kind(), " (expected rq-vae)");
    if (cs != Shape{r.H(), r.W(), r.D()})
      fail(source, ": stage1 code shape ", shape_str(cs), " differs from stage2 block_size ",
           shape_str(Shape{r.H(), r.W(), r.D()}));
    if (stage1.codebook_size() != r.vocab_size)
      fail(source, ": stage1 has ", stage1.codebook_size(), " codes but stage2 vocab_size is ", r.vocab_size);
    if (rq->codebook().dim(1) != r.input_embed_dim)
      fail(source, ": stage1 codebook vectors have ", rq->codebook().dim(1), " values but stage2 input_embed_dim is ",
           r.input_embed_dim);
    return std::make_unique<RqTransformer>(r, tensors, source, be, rq->codebook());
  }
  const MindalleGptConfig& g = c.gpt;
  if (cs.size() != 3 || cs[2] != 1)
    fail(source, ": stage2 is a mindalle-gpt, which needs one code per position, but stage1 codes are ", shape_str(cs));
  if (stage1.codebook_size() != g.vocab_size_img)
    fail(source, ": stage1 has ", stage1.codebook_size(), " codes but stage2 vocab_size_img is ", g.vocab_size_img);
  if (cs[0] * cs[1] != g.ctx_len_img)
    fail(source, ": stage1 makes ", cs[0], "x", cs[1], " codes but stage2 ctx_len_img is ", g.ctx_len_img);
  return std::make_unique<MindalleGpt>(g, int(cs[0]), int(cs[1]), tensors, source, be);
}

// Deterministic pseudo-random tensors for random(): uniform values from the Philox stream
// (seed, index of the tensor), so a tensor does not depend on the thread count.
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, uint64_t stream, float lo, float hi) {
  Tensor f = Tensor::empty(shape);
  float* p = f.f32();
  parallel_for(f.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    Rng rng(seed, stream);
    rng.seek(uint64_t(i0));
    for (int64_t i = i0; i < i1; ++i) p[i] = lo + (hi - lo) * float(double(rng.next_u64() >> 11) * 0x1p-53);
  });
  return dtype == DType::F32 ? f : f.to(dtype);
}

Tensor constant_tensor(const Shape& shape, DType dtype, float v) {
  Tensor f = Tensor::empty(shape);
  std::fill(f.f32(), f.f32() + f.numel(), v);
  return dtype == DType::F32 ? f : f.to(dtype);
}

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// Init rules for random weights: norms weight 1 / bias 0, other biases 0, the rest uniform with a
// PyTorch-like scale (1/sqrt(fan_in) for convs and linears, 0.02 * sqrt(3) for stage-2 embeddings
// and positions, 1 for codebooks), so activations stay O(1) and logits finite.
Tensor random_weight(const std::string& name, const Shape& shape, DType dtype, uint64_t seed, uint64_t stream) {
  const bool norm = name.find("norm") != std::string::npos || name.find(".ln") != std::string::npos ||
                    name.rfind("stage2.ln_f", 0) == 0;
  if (norm) return constant_tensor(shape, dtype, ends_with(name, "weight") ? 1.0f : 0.0f);
  if (ends_with(name, "bias")) return constant_tensor(shape, dtype, 0.0f);
  float a;
  if (name.find("codebook") != std::string::npos || name.find("quantize.embedding") != std::string::npos) {
    a = 1.0f;
  } else if (name.find("emb") != std::string::npos) {
    a = 0.02f * std::sqrt(3.0f);
  } else {
    const int64_t fan_in = shape.empty() || shape[0] == 0 ? 1 : shape_numel(shape) / shape[0];
    a = 1.0f / std::sqrt(float(std::max<int64_t>(fan_in, 1)));
  }
  return random_tensor(shape, dtype, seed, stream, -a, a);
}

}  // namespace

std::unique_ptr<TextToImageModel> TextToImageModel::load(const SafetensorsFile& file, Backend& backend) {
  check_model_metadata(file);
  const nlohmann::json config = model_config(file);
  if (!config.contains("stage2"))
    fail(file.path, " has no text-to-image stage (stage2); it is an image tokenizer only");
  std::unique_ptr<TextToImageModel> m(new TextToImageModel());
  m->stage2_cfg_ = stage2_config_from_json(config["stage2"], file.path + ": config.stage2");
  if (config.contains("text")) {
    const nlohmann::json& t = config["text"];
    if (!t.is_object()) fail(file.path, ": config.text must be an object, found ", t.dump());
    try {
      m->text_.tokenizer = t.value("tokenizer", std::string());
      m->text_.context_length = t.value("context_length", 0);
    } catch (const nlohmann::json::exception& e) {
      fail(file.path, ": config.text: ", e.what());
    }
    if (m->text_.context_length != m->stage2_cfg_.text_length())
      fail(file.path, ": config.text.context_length ", m->text_.context_length,
           " differs from the text length of stage2, ", m->stage2_cfg_.text_length());
  }
  auto tok = file.metadata.find("tokenizer");
  if (tok != file.metadata.end()) {
    m->tokenizer_ = text_tokenizer_from_json_text(tok->second, file.path + " metadata \"tokenizer\"");
    if (m->tokenizer_->context_length != m->text_length())
      fail(file.path, ": the tokenizer pads to ", m->tokenizer_->context_length, " ids but stage2 takes ",
           m->text_length());
    if (m->tokenizer_->vocab_size > m->cond_vocab_size())
      fail(file.path, ": the tokenizer has ", m->tokenizer_->vocab_size, " ids but stage2's text vocabulary has ",
           m->cond_vocab_size());
  }
  auto sampling = file.metadata.find("sampling");
  if (sampling != file.metadata.end()) {
    const std::string where = file.path + " metadata \"sampling\"";
    m->sampling_ = sampling_defaults_from_json_text(sampling->second, where);
    const bool rq = m->stage2_cfg_.is_rq();
    validate_sampling_defaults(m->sampling_, rq ? SamplerSemantics::RqTransformer : SamplerSemantics::MinDalle,
                               rq ? m->stage2_cfg_.rq.D() : 1, m->stage2_cfg_.image_vocab_size(), where);
  }
  std::vector<TensorSpec> specs = stage2_tensor_specs(m->stage2_cfg_);
  for (TensorSpec& s : specs) s.name = "stage2." + s.name;
  check_tensors(file.tensors, specs, "stage2.", file.path);
  m->stage1_ = load_image_tokenizer(file, backend);
  m->stage2_ = build_stage2(m->stage2_cfg_, *m->stage1_, file.tensors, file.path, backend);
  return m;
}

std::unique_ptr<TextToImageModel> TextToImageModel::random(const ModelPreset& preset, Backend& backend, DType dtype,
                                                           uint64_t seed) {
  HWAGA_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
              "random weights: dtype must be f32, bf16 or f16, found ", dtype_name(dtype));
  const std::string source = "random weights for preset " + preset.name;
  std::unique_ptr<TextToImageModel> m(new TextToImageModel());
  m->stage2_cfg_ = preset.stage2;
  m->text_ = preset.text;
  const Stage1Config s1 = stage1_config_from_json(preset.stage1, source + ": stage1");
  TensorMap tensors;
  uint64_t stream = 0;
  // Stage 1 stays f32 (the conv nets run in f32 on the CPU); stage 2 is stored as `dtype`.
  for (const TensorSpec& s : stage1_tensor_specs(s1)) {
    const std::string name = "stage1." + s.name;
    tensors[name] = random_weight(name, s.shape, DType::F32, seed, stream++);
  }
  if (s1.is_rq()) {  // the padding row of the RQ codebook is zero, as released
    Tensor& cb = tensors.at("stage1." + stage1_codebook_name(s1));
    const int64_t E = cb.dim(1);
    std::fill(cb.f32() + (cb.dim(0) - 1) * E, cb.f32() + cb.dim(0) * E, 0.0f);
  }
  for (const TensorSpec& s : stage2_tensor_specs(m->stage2_cfg_)) {
    const std::string name = "stage2." + s.name;
    tensors[name] = random_weight(name, s.shape, dtype, seed, stream++);
  }
  if (s1.is_rq()) m->stage1_ = std::make_unique<RQVAE>(s1, tensors, source, backend);
  else m->stage1_ = std::make_unique<VQGAN>(s1, tensors, source, backend);
  m->stage2_ = build_stage2(m->stage2_cfg_, *m->stage1_, tensors, source, backend);
  return m;
}

const TextTokenizer& TextToImageModel::tokenizer() const {
  if (!tokenizer_)
    fail("this ", kind(), " model has no text tokenizer (",
         stage2_cfg_.text_length() == 0 ? "it takes no text"
                                        : "random weights or a file without \"tokenizer\" metadata: pass text ids",
         ")");
  return *tokenizer_;
}

std::string TextToImageModel::kind() const { return stage2_cfg_.type; }

Shape TextToImageModel::code_shape() const { return stage1_->code_shape(); }

int TextToImageModel::text_length() const {
  return stage2_cfg_.is_rq() ? stage2_cfg_.rq.block_size_cond : stage2_cfg_.gpt.ctx_len_txt;
}

int TextToImageModel::cond_vocab_size() const {
  return stage2_cfg_.is_rq() ? stage2_cfg_.rq.vocab_size_cond : stage2_cfg_.gpt.vocab_size_txt;
}

int32_t TextToImageModel::pad_id() const { return tokenizer_ ? tokenizer_->pad_id : 0; }

Tensor TextToImageModel::generate_codes(const std::vector<int32_t>& text_ids, const GenerateOptions& opt) {
  const int L = text_length();
  if (int(text_ids.size()) != L)
    fail("generate: ", text_ids.size(), " text ids, the model takes exactly ", L, " (pad or truncate first)");
  for (size_t i = 0; i < text_ids.size(); ++i)
    if (text_ids[i] < 0 || text_ids[i] >= cond_vocab_size())
      fail("generate: text id ", text_ids[i], " at position ", i, " is outside [0, ", cond_vocab_size(), ")");
  if (opt.n_candidates < 1) fail("generate: --n must be at least 1, got ", opt.n_candidates);
  if (opt.batch < 0) fail("generate: --batch must be at least 1 (or 0 for all), got ", opt.batch);
  if (!std::isfinite(opt.cfg_scale)) fail("generate: the guidance scale must be finite, got ", opt.cfg_scale);
  const bool cfg = opt.cfg_scale != 0.0f;
  if (cfg && stage2_cfg_.text_length() == 0)
    fail("generate: classifier-free guidance needs a text model; this ", kind(), " takes ",
         cond_vocab_size() > 1 ? "a class id" : "no condition");
  {  // validate the sampler options once, before any work
    SamplerOptions so = opt.sampler;
    if (opt.greedy) so.greedy = true;
    const Shape cs = code_shape();
    validate_sampler_options(so, stage2_cfg_.is_rq() ? SamplerSemantics::RqTransformer : SamplerSemantics::MinDalle,
                             int(cs[2]), stage2_cfg_.image_vocab_size());
  }
  const int R = cfg ? 2 : 1;
  Tensor cond = Tensor::empty({R, L}, DType::I32);
  for (int i = 0; i < L; ++i) {
    cond.ptr<int32_t>()[i] = text_ids[size_t(i)];
    if (cfg) cond.ptr<int32_t>()[L + i] = pad_id();  // the unconditional prompt: all [PAD]
  }
  const Shape cs = code_shape();
  const int64_t N = opt.n_candidates, per = opt.batch > 0 ? std::min<int64_t>(opt.batch, N) : N;
  const int64_t n_batches = (N + per - 1) / per;
  const int steps = stage2_->sampling_steps();
  Tensor out = Tensor::empty({N, cs[0], cs[1], cs[2]}, DType::I32);
  const int64_t per_code_map = cs[0] * cs[1] * cs[2];
  for (int64_t bi = 0; bi < n_batches; ++bi) {
    const int64_t first = bi * per, n = std::min(per, N - first);
    auto step_done = [&](int s) {
      if (opt.progress) opt.progress(int(bi * steps + s + 1), int(n_batches * steps));
    };
    Tensor codes = stage2_->sample(cond, first, n, opt, step_done);  // [n,h,w,D]
    std::copy(codes.ptr<int32_t>(), codes.ptr<int32_t>() + n * per_code_map, out.ptr<int32_t>() + first * per_code_map);
  }
  return out;
}

Tensor TextToImageModel::logits_teacher_forced(const std::vector<int32_t>& text_ids, const Tensor& codes) {
  const int L = text_length();
  if (int(text_ids.size()) != L) fail("logits: ", text_ids.size(), " text ids, the model takes exactly ", L);
  HWAGA_CHECK(codes.ndim() == 4, "logits: codes must be [B,h,w,D], found ", shape_str(codes.shape()));
  const int64_t B = codes.dim(0);
  Tensor cond = Tensor::empty({B, L}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int i = 0; i < L; ++i) cond.ptr<int32_t>()[b * L + i] = text_ids[size_t(i)];
  return stage2_->logits_teacher_forced(cond, codes);
}

std::vector<double> TextToImageModel::prompt_scores(const std::vector<int32_t>& text_ids, const Tensor& codes) {
  if (stage2_cfg_.text_length() == 0)
    fail("prompt scores need a text model; this ", kind(), " takes ", cond_vocab_size() > 1 ? "a class id" : "no condition");
  const Shape cs = code_shape();
  HWAGA_CHECK(codes.dtype() == DType::I32 && codes.ndim() == 4 && codes.dim(1) == cs[0] && codes.dim(2) == cs[1] &&
                  codes.dim(3) == cs[2],
              "prompt scores: codes must be int32 [N,", cs[0], ",", cs[1], ",", cs[2], "], found ",
              shape_str(codes.shape()));
  const int64_t N = codes.dim(0), per_map = cs[0] * cs[1] * cs[2], K = stage2_cfg_.image_vocab_size();
  const std::vector<int32_t> none(size_t(text_length()), pad_id());
  std::vector<double> score(size_t(N), 0.0);
  constexpr int64_t kChunk = 8;  // candidates per teacher-forced pass: [8,h,w,D,K] logits at a time
  for (int64_t b0 = 0; b0 < N; b0 += kChunk) {
    const Tensor part = codes.slice0(b0, std::min(N, b0 + kChunk));
    const int64_t n = part.dim(0);
    for (int pass = 0; pass < 2; ++pass) {
      const Tensor z = logits_teacher_forced(pass == 0 ? text_ids : none, part);  // [n,h,w,D,K]
      const double sign = pass == 0 ? 1.0 : -1.0;
      std::vector<double> ll(size_t(n), 0.0);
      parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          double acc = 0;
          for (int64_t j = 0; j < per_map; ++j) {
            const float* row = z.f32() + (i * per_map + j) * K;
            const int32_t t = part.ptr<int32_t>()[i * per_map + j];
            HWAGA_CHECK(t >= 0 && t < K, "prompt scores: code ", t, " outside [0, ", K, ")");
            float mx = row[0];
            for (int64_t k = 1; k < K; ++k) mx = std::max(mx, row[k]);
            double se = 0;
            for (int64_t k = 0; k < K; ++k) se += std::exp(double(row[k] - mx));
            acc += double(row[t] - mx) - std::log(se);
          }
          ll[size_t(i)] = acc;
        }
      });
      for (int64_t i = 0; i < n; ++i) score[size_t(b0 + i)] += sign * ll[size_t(i)];
    }
  }
  return score;
}

std::string TextToImageModel::describe() const {
  std::ostringstream os;
  os << "stage 2: " << describe_stage2_config(stage2_cfg_) << "\n";
  os << "stage 1: " << stage1_->describe() << "\n";
  os << "text: ";
  if (stage2_cfg_.text_length() == 0) {
    os << (cond_vocab_size() > 1 ? "none (class-conditional, " + std::to_string(cond_vocab_size()) + " classes)"
                                 : std::string("none (unconditional)"));
  } else {
    os << text_length() << " ids";
    if (tokenizer_) os << ", tokenizer " << tokenizer_->type() << " (" << tokenizer_->vocab_size << " ids)";
    else os << ", no tokenizer in the file";
  }
  if (!sampling_.empty()) os << "\nsampling defaults (from the file): " << describe_sampling_defaults(sampling_);
  return os.str();
}

int64_t TextToImageModel::num_parameters() const { return stage2_num_parameters(stage2_cfg_) + stage1_->num_parameters(); }

}  // namespace hwaga
