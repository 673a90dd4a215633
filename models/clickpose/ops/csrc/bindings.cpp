// Python bindings: one forward and one backward that dispatch on the tensors' device.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include "msda.h"

namespace msda {

namespace {

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == dim, "ms_deform_attn: ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "ms_deform_attn: ", name, " must be contiguous (call .contiguous())");
  TORCH_CHECK(t.device() == like.device(), "ms_deform_attn: ", name, " is on ", t.device(), " but value is on ",
              like.device(), "; move all inputs to one device");
}

}  // namespace

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_tensor(value, "value (B, S, M, D)", 4, value);
  check_tensor(spatial_shapes, "spatial_shapes (L, 2)", 2, value);
  check_tensor(level_start_index, "level_start_index (L,)", 1, value);
  check_tensor(sampling_locations, "sampling_locations (B, Q, M, L, P, 2)", 6, value);
  check_tensor(attention_weights, "attention_weights (B, Q, M, L, P)", 5, value);
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), "ms_deform_attn: value must be floating point, got ",
              value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share one dtype, got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ", attention_weights.scalar_type());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64 (call .long())");
  const auto batch = value.size(0), heads = value.size(2), levels = spatial_shapes.size(0);
  TORCH_CHECK(spatial_shapes.size(1) == 2 && level_start_index.size(0) == levels,
              "ms_deform_attn: spatial_shapes must be (L, 2) and level_start_index (L,), got ", spatial_shapes.sizes(),
              " and ", level_start_index.sizes());
  const auto& loc = sampling_locations;
  TORCH_CHECK(loc.size(0) == batch && loc.size(2) == heads && loc.size(3) == levels && loc.size(5) == 2,
              "ms_deform_attn: sampling_locations ", loc.sizes(), " does not match (B=", batch, ", Q, M=", heads,
              ", L=", levels, ", P, 2)");
  TORCH_CHECK(attention_weights.sizes() == loc.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights ", attention_weights.sizes(), " must be sampling_locations' shape "
              "without the last dimension, ", loc.sizes().slice(0, 5));
  if (spatial_shapes.is_cpu()) {  // on a GPU this check would cost a synchronisation
    const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
    const int64_t* starts = level_start_index.data_ptr<int64_t>();
    int64_t tokens = 0;
    for (int64_t l = 0; l < levels; ++l) {
      TORCH_CHECK(starts[l] == tokens, "ms_deform_attn: level_start_index[", l, "] is ", starts[l],
                  " but the levels before it hold ", tokens, " tokens");
      TORCH_CHECK(shapes[2 * l] >= 0 && shapes[2 * l + 1] >= 0, "ms_deform_attn: negative spatial shape");
      tokens += shapes[2 * l] * shapes[2 * l + 1];
    }
    TORCH_CHECK(tokens == value.size(1), "ms_deform_attn: value has ", value.size(1),
                " tokens but spatial_shapes sum to ", tokens);
  }
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef MSDA_WITH_CUDA
    return forward_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
#else
    TORCH_CHECK(false, "ms_deform_attn: this build has no CUDA kernel; rebuild with FORCE_CUDA=1 "
                "(python -m models.clickpose.ops.build --cuda)");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return forward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const auto& loc = sampling_locations;
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == loc.size(0) && grad_output.size(1) == loc.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "ms_deform_attn: grad_output must be (B, Q, M * D), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn: grad_output must be contiguous, with value's dtype and device");
  if (value.is_cuda()) {
#ifdef MSDA_WITH_CUDA
    return backward_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         grad_output);
#else
    TORCH_CHECK(false, "ms_deform_attn: this build has no CUDA kernel; rebuild with FORCE_CUDA=1");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return backward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output);
}

}  // namespace msda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multi-scale deformable attention kernels (Click-Pose reimplementation)";
  m.def("forward", &msda::forward, "ms_deform_attn forward -> (B, Q, M*D)");
  m.def("backward", &msda::backward, "ms_deform_attn backward -> [grad_value, grad_locations, grad_weights]");
#ifdef MSDA_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("cpu_isa", &msda::cpu_isa, "select the CPU kernel variant: portable=True forces the portable one",
        pybind11::arg("portable") = false);
  m.attr("abi_version") = 1;
}
