// Parallel scheduled sampling (hwaga train --self-feed P; Duckworth et al. 2019, "Parallel
// scheduled sampling"): a share P of the input codes of a batch are replaced by the model's own
// draws from its teacher-forced logits of the same batch, the targets staying the true codes.
//
// Why: sampling feeds the model its own draws. The RQ-VAE's attention spreads a picture's
// identity into every code, even the white corner's, so a model trained only on true codes reads
// the picture off those details; a plausible but different draw there is, to it, another picture,
// and it follows that picture rather than the text (measured on the emoji model: teacher-forced
// argmax accuracy 78%, yet greedy decoding leaves the true codes at the first position). Random
// codes (--code-noise) look like noise and are easy to ignore; the model's own draws are the
// errors it will really make.
//
// The draws: row i of the batch (global position first_row + i) reads Philox stream
// (seed ^ "selffed1", first_row + i), one 64-bit word per code in raster order (h, w, then
// depth): the code is replaced when the word's low 32 bits are below P·2^32, by the code whose
// softmax CDF (temperature 1, computed in double) first exceeds u = (word >> 40)·2^-24 of the
// total. The words do not depend on the logits, so a resumed run replays them.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace hwaga::train {

// inputs: host int32 [B,h,w,D] (the codes the logits were computed from); logits: host f32
// [B,h,w,D,K] (RqTransformerTrainer/MindalleGptTrainer::evaluate). -> host int32 [B,h,w,D].
// share in [0, 1). Errors name the mismatched shape.
Tensor self_feed_inputs(const Tensor& inputs, const Tensor& logits, double share, uint64_t seed, int64_t first_row);

}  // namespace hwaga::train
