// TokenizerTrainer: the RQ-VAE and VQGAN trainers (train/rqvae_trainer.h, train/vqgan_trainer.h)
// behind one interface, so that `hwaga train-tokenizer`'s loop, checkpoints, resume, export and
// eval are written once for both.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "train/rqvae_trainer.h"
#include "train/train_ops.h"
#include "train/vqgan_trainer.h"

namespace hwaga::train {

struct TokStepStats {
  double loss = 0, recon = 0, commitment = 0, perplexity = 0;
  int64_t codes_used = 0, restarted = 0;
};

class TokenizerTrainer {
 public:
  virtual ~TokenizerTrainer() = default;
  virtual ParamSet& params() = 0;
  // gradients added to params() (zero_grad first); step_seed seeds what the step draws
  virtual TokStepStats train_step(const Tensor& x, uint64_t step_seed, const Stage1Terms& terms,
                                  Stage1TermStats& ts) = 0;
  virtual const Tensor& last_recon() const = 0;  // of the last train_step
  virtual Tensor reconstruct(const Tensor& x) = 0;
  virtual TensorMap model_tensors() const = 0;  // the "stage1.*" tensors of a model file
  virtual void load_model_tensors(const TensorMap& m, const std::string& source) = 0;
  virtual void dump_step(TensorMap& dump) const = 0;  // --dump-step: codes (and restart draws)
  virtual nlohmann::json loss_options() = 0;          // recorded in the checkpoint's options
  // data parallel: what the trainer shares beyond the gradients (the RQ-VAE's EMA codebook)
  virtual void set_data_parallel(DataParallel*) {}
  // Trains on the device of `ops` from now on (RqvaeTrainer::to_device); the VQGAN trains on the CPU only.
  virtual void to_device(TrainOps& ops) = 0;
};

class RqvaeTokTrainer final : public TokenizerTrainer {
 public:
  RqvaeTokTrainer(const Stage1Config& c, uint64_t seed) : t_(c, seed) {}
  ParamSet& params() override { return t_.params(); }
  TokStepStats train_step(const Tensor& x, uint64_t step_seed, const Stage1Terms& terms,
                          Stage1TermStats& ts) override {
    const RqvaeStepStats s = t_.train_step(x, step_seed, &terms);
    ts = s.terms;
    return {s.loss, s.recon, s.commitment, s.perplexity, s.codes_used, s.restarted};
  }
  const Tensor& last_recon() const override { return t_.last_recon(); }
  Tensor reconstruct(const Tensor& x) override { return t_.reconstruct(x); }
  TensorMap model_tensors() const override { return t_.model_tensors(); }
  void load_model_tensors(const TensorMap& m, const std::string& src) override { t_.load_model_tensors(m, src); }
  void dump_step(TensorMap& dump) const override {
    dump["codes"] = t_.last_codes().clone();
    for (size_t d = 0; d < t_.last_restart_vectors().size(); ++d)
      dump["restart." + std::to_string(d)] = t_.last_restart_vectors()[d];
  }
  nlohmann::json loss_options() override {
    return {{"commitment_weight", t_.options().commitment_weight}, {"decay", t_.options().decay}};
  }
  void set_data_parallel(DataParallel* dp) override { t_.set_data_parallel(dp); }
  void to_device(TrainOps& ops) override { t_.to_device(ops); }

 private:
  RqvaeTrainer t_;
};

class VqganTokTrainer final : public TokenizerTrainer {
 public:
  VqganTokTrainer(const Stage1Config& c, uint64_t seed) : t_(c, seed) {}
  ParamSet& params() override { return t_.params(); }
  // a VQGAN step draws nothing
  TokStepStats train_step(const Tensor& x, uint64_t, const Stage1Terms& terms, Stage1TermStats& ts) override {
    const VqganStepStats s = t_.train_step(x, &terms);
    ts = s.terms;
    return {s.loss, s.recon, s.commitment, s.perplexity, s.codes_used, 0};
  }
  const Tensor& last_recon() const override { return t_.last_recon(); }
  Tensor reconstruct(const Tensor& x) override { return t_.reconstruct(x); }
  TensorMap model_tensors() const override { return t_.model_tensors(); }
  void load_model_tensors(const TensorMap& m, const std::string& src) override { t_.load_model_tensors(m, src); }
  void dump_step(TensorMap& dump) const override { dump["codes"] = t_.last_codes().clone(); }
  void set_data_parallel(DataParallel* dp) override { t_.set_data_parallel(dp); }
  void to_device(TrainOps& ops) override {
    fail("stage-1 training on ", ops.name(), ": only the RQ-VAE trains on a GPU; train the VQGAN with --device cpu");
  }
  nlohmann::json loss_options() override {
    const VqganTrainOptions& o = t_.options();
    return {{"recon", o.l1 ? "l1" : "mse"}, {"beta", o.beta}, {"legacy", o.legacy}};
  }

 private:
  VqganTrainer t_;
};

inline std::unique_ptr<TokenizerTrainer> make_tokenizer_trainer(const Stage1Config& c, uint64_t seed) {
  if (c.is_rq()) return std::make_unique<RqvaeTokTrainer>(c, seed);
  return std::make_unique<VqganTokTrainer>(c, seed);
}

}  // namespace hwaga::train
