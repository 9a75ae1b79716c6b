// The direct-convolution path of conv2d.cpp on oneDNN (internal to kernels/cpu).
//
// A plan splits the output of each image into slabs of R rows. Per slab, on one pool thread:
// reorder the input rows it needs (nchw -> oneDNN's blocked layout, into a thread buffer),
// run oneDNN's convolution for that slab (its top/bottom padding is the original padding
// only where the slab touches the image border), and reorder the output rows back into y.
// Slabs are small enough that the reordered input and output stay in L2 between steps.
#pragma once
#include <memory>
#include <string>

#include "kernels/cpu/conv2d.h"

namespace hwaga::cpu {

struct DnnlWeights;   // weights in oneDNN's preferred layout
struct DnnlConvPlan;  // everything needed to run one input size

#ifdef HWAGA_HAVE_DNNL
// nullptr when oneDNN has no implementation for this shape (the caller falls back to another
// path). winograd: algorithm::convolution_winograd (F(4x4,3x3) or F(2x2,3x3) on avx512) instead
// of the direct convolution. Reuses *packed when its layout fits, else (re)packs w into it.
// w and bias must outlive the plan.
std::shared_ptr<DnnlConvPlan> dnnl_conv_plan(const Conv2dShape& s, const float* w, const float* bias,
                                             std::shared_ptr<DnnlWeights>& packed, bool winograd);
void dnnl_conv_run(const DnnlConvPlan& plan, const float* x, float* y);
std::string dnnl_conv_name(const DnnlConvPlan& plan);
#else
inline std::shared_ptr<DnnlConvPlan> dnnl_conv_plan(const Conv2dShape&, const float*, const float*,
                                                    std::shared_ptr<DnnlWeights>&, bool) {
  return nullptr;
}
inline void dnnl_conv_run(const DnnlConvPlan&, const float*, float*) {}
inline std::string dnnl_conv_name(const DnnlConvPlan&) { return ""; }
#endif

}  // namespace hwaga::cpu
