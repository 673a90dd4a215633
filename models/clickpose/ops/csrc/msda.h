// Multi-scale deformable attention kernels: declarations shared by the bindings and the implementations.
//
// Shapes (all tensors contiguous, same device and floating dtype except the two index tensors):
//   value              (B, S, M, D)        S = sum_l H_l * W_l tokens, M heads, D channels per head
//   spatial_shapes     (L, 2) int64        (H_l, W_l)
//   level_start_index  (L,) int64          first token of each level
//   sampling_locations (B, Q, M, L, P, 2)  (x, y) in [0, 1]
//   attention_weights  (B, Q, M, L, P)
//   output             (B, Q, M * D)
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace msda {

struct Dims {
  int64_t batch, tokens, heads, channels, queries, levels, points;
};

inline Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

// Checks shapes, dtypes and devices; throws a message naming the offending argument.
void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                     const at::Tensor& attention_weights, const at::Tensor& grad_output);

// Selects the CPU kernel variant (portable=true forces the portable one, for tests); returns the one in use.
std::string cpu_isa(bool portable);

#ifdef MSDA_WITH_CUDA
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights);

std::vector<at::Tensor> backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, const at::Tensor& grad_output);
#endif

}  // namespace msda
