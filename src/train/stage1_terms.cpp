// The optional stage-1 terms on the reconstruction (see stage1_terms.h).
#include "train/stage1_terms.h"

namespace hwaga::train {

void apply_stage1_terms(const Stage1Terms& t, const Tensor& x, const Tensor& xr, Tensor& drec, const TrainConv2d& last,
                        Stage1TermStats& st) {
  if (t.lpips) st.lpips = t.lpips->forward_backward(xr, x, &drec, t.lpips_weight);
  if (t.gan) t.gan->generator(xr, drec, last, st.gan);
}

}  // namespace hwaga::train
