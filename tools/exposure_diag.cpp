// exposure_diag: how far a text-to-image model's sampling strays from what it learnt teacher-forced.
//
//   build/exposure_diag MODEL.safetensors WORK/codes.safetensors [N]
//
// For N training samples of a stage-2 code cache (hwaga train's WORK/codes.safetensors, encoded
// by MODEL's stage 1; every 997th sample, caption variant 0) it reports:
//   - teacher-forced: the mean negative log-likelihood of the true codes per code (nats), per
//     depth and per picture row, with the caption and with the all-PAD "no text" prompt, and
//     the argmax accuracy;
//   - greedy decoding from the caption: the share of codes and of whole positions equal to the
//     true ones, per depth, and where the first difference falls. At that first difference the
//     context is the true one, so the greedy code must equal the teacher-forced argmax: the
//     tool counts that too (a mismatch there would be a bug in the sampler or the cache).
// A model that fits teacher-forced (low NLL, high argmax accuracy) but whose greedy pictures
// leave the true codes at the first positions relies on exact codes it cannot reproduce: its
// samples follow their own first draws rather than the text (docs/quality/exposure.md).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/code_cache.h"
#include "transformer/text_to_image.h"

using namespace hwaga;

namespace {

// -log softmax(row)[t] in double
double nll(const float* row, int64_t K, int32_t t) {
  const float mx = *std::max_element(row, row + K);
  double se = 0;
  for (int64_t k = 0; k < K; ++k) se += std::exp(double(row[k] - mx));
  return std::log(se) - double(row[t] - mx);
}

int run(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors WORK/codes.safetensors [N]\n", argv[0]);
    return 2;
  }
  const int N = argc == 4 ? std::atoi(argv[3]) : 40;
  if (N < 1) fail("N: expected a positive number of samples, got ", argv[3]);
  auto be = make_cpu_backend();
  const SafetensorsFile f = read_model_file(argv[1]);
  auto m = TextToImageModel::load(f, *be);
  const train::CodeCache cache = train::read_code_cache(argv[2]);
  const Shape cs = m->code_shape();
  if (cache.codes.dim(1) != cs[0] || cache.codes.dim(2) != cs[1] || cache.codes.dim(3) != cs[2])
    fail(argv[2], ": codes ", shape_str(cache.codes.shape()), " do not fit the model's code shape ", shape_str(cs));
  const int64_t H = cs[0], W = cs[1], D = cs[2], per = H * W * D, K = m->stage2_config().image_vocab_size();
  const auto& tok = m->tokenizer();
  std::vector<double> nll_d(size_t(D), 0), nll_row(size_t(H), 0), pad_row(size_t(H), 0), match_d(size_t(D), 0);
  double nll_text = 0, nll_pad = 0, argmax_hits = 0, pos_match = 0, first_pos = 0;
  int firsts = 0, consistent = 0;
  for (int s = 0; s < N; ++s) {
    const int64_t n = (int64_t(s) * 997) % cache.size();
    const Tensor codes = cache.codes.slice0(n, n + 1).clone();
    const int32_t* c = codes.ptr<int32_t>();
    const std::vector<int32_t> ids = tok.encode(cache.captions[size_t(n)][0]);
    const Tensor z = m->logits_teacher_forced(ids, codes);
    const Tensor z0 = m->logits_teacher_forced(std::vector<int32_t>(ids.size(), m->pad_id()), codes);
    for (int64_t j = 0; j < per; ++j) {
      const float* row = z.f32() + j * K;
      const double a = nll(row, K, c[j]), b = nll(z0.f32() + j * K, K, c[j]);
      nll_text += a, nll_pad += b;
      nll_d[size_t(j % D)] += a;
      nll_row[size_t(j / (W * D))] += a, pad_row[size_t(j / (W * D))] += b;
      argmax_hits += std::max_element(row, row + K) - row == c[j];
    }
    GenerateOptions opt;
    opt.greedy = true;
    const Tensor g = m->generate_codes(ids, opt);
    const int32_t* gc = g.ptr<int32_t>();
    for (int64_t p = 0; p < H * W; ++p) {
      bool all = true;
      for (int64_t d = 0; d < D; ++d) {
        const bool e = gc[p * D + d] == c[p * D + d];
        match_d[size_t(d)] += e;
        all = all && e;
      }
      pos_match += all;
    }
    for (int64_t j = 0; j < per; ++j)
      if (gc[j] != c[j]) {
        const float* row = z.f32() + j * K;
        consistent += std::max_element(row, row + K) - row == gc[j];
        first_pos += double(j / D);
        ++firsts;
        break;
      }
  }
  const double codes_n = double(N) * double(per), row_n = double(N) * double(W * D);
  std::printf("%s on %d training samples of %s\n", argv[1], N, argv[2]);
  std::printf("teacher-forced NLL per code: %.3f with the caption, %.3f with the all-PAD prompt; argmax accuracy %.1f%%\n",
              nll_text / codes_n, nll_pad / codes_n, 100 * argmax_hits / codes_n);
  std::printf("  per depth:");
  for (int64_t d = 0; d < D; ++d) std::printf(" %.3f", nll_d[size_t(d)] / (codes_n / double(D)));
  std::printf("\n  per row (caption / all-PAD):");
  for (int64_t y = 0; y < H; ++y) std::printf(" %.2f/%.2f", nll_row[size_t(y)] / row_n, pad_row[size_t(y)] / row_n);
  std::printf("\ngreedy from the caption: %.1f%% of the positions equal the true stack; per depth",
              100 * pos_match / (double(N) * double(H * W)));
  for (int64_t d = 0; d < D; ++d) std::printf(" %.1f%%", 100 * match_d[size_t(d)] / (double(N) * double(H * W)));
  std::printf("\n  first difference at position %.1f on average (%d of %d samples differ); greedy = teacher-forced "
              "argmax there in %d of %d\n",
              firsts ? first_pos / firsts : 0.0, firsts, N, consistent, firsts);
  return consistent == firsts ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "exposure_diag: %s\n", e.what());
    return 1;
  }
}
