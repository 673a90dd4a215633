// CPU kernels (fp32/fp64), parallelised with at::parallel_for.
//
// Forward: tasks are (batch, query) rows; for each head, level and point the four tap weights are computed once
// and the head's contiguous channel vector is accumulated.
// Backward: grad_value is a scatter-add, so tasks own disjoint slices of it: one task per (batch, head, query
// chunk), each chunk writing its own copy of grad_value, summed at the end when there is more than one.
// The kernel bodies (msda_cpu_kernels.inc) are compiled twice on x86-64: portable, and for AVX2+FMA, chosen at
// run time, so one binary is fast on current CPUs and still runs on old ones.
#include <ATen/Parallel.h>

#include <algorithm>

#include "bilinear.h"
#include "msda.h"

namespace msda {
namespace {

bool portable_only = false;  // set by cpu_isa(), for tests of the portable variant

template <typename scalar_t>
struct CpuArgs {
  Dims dims;
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const scalar_t* locations;
  const scalar_t* weights;
  scalar_t* out;             // forward
  const scalar_t* grad_out;  // backward
  scalar_t* grad_value;      // (chunks, B, S, M, D)
  scalar_t* grad_locations;
  scalar_t* grad_weights;
};

#define MSDA_ISA portable
#define MSDA_ISA_ATTR
#include "msda_cpu_kernels.inc"
#undef MSDA_ISA
#undef MSDA_ISA_ATTR

#if defined(__x86_64__) && defined(__GNUC__)
#define MSDA_ISA avx2
#define MSDA_ISA_ATTR __attribute__((target("avx2,fma")))
#include "msda_cpu_kernels.inc"
#undef MSDA_ISA
#undef MSDA_ISA_ATTR

bool use_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && !portable_only;
}
#else
bool use_avx2() { return false; }
#endif

template <typename scalar_t>
void run_forward(const CpuArgs<scalar_t>& a) {
  at::parallel_for(0, a.dims.batch * a.dims.queries, 16, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (use_avx2()) return avx2::forward_rows(a, begin, end);
#endif
    portable::forward_rows(a, begin, end);
  });
}

template <typename scalar_t>
void run_backward(const CpuArgs<scalar_t>& a, int64_t chunks) {
  at::parallel_for(0, a.dims.batch * a.dims.heads * chunks, 1, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (use_avx2()) return avx2::backward_tasks(a, chunks, begin, end);
#endif
    portable::backward_tasks(a, chunks, begin, end);
  });
}

// Query chunks per (batch, head) so that every thread has work when batch * heads < threads.
int64_t chunks_for(const Dims& d) {
  const int64_t owners = std::max<int64_t>(1, d.batch * d.heads);
  const int64_t threads = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(d.queries, (threads + owners - 1) / owners));
}

template <typename scalar_t>
CpuArgs<scalar_t> inputs_of(const at::Tensor& value, const at::Tensor& spatial_shapes,
                            const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights) {
  CpuArgs<scalar_t> a{};
  a.dims = dims_of(value, sampling_locations);
  a.value = value.data_ptr<scalar_t>();
  a.shapes = spatial_shapes.data_ptr<int64_t>();
  a.starts = level_start_index.data_ptr<int64_t>();
  a.locations = sampling_locations.data_ptr<scalar_t>();
  a.weights = attention_weights.data_ptr<scalar_t>();
  return a;
}

}  // namespace

std::string cpu_isa(bool portable) {
  portable_only = portable;
  return use_avx2() ? "avx2" : "portable";
}

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  const Dims d = dims_of(value, sampling_locations);
  auto out = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_forward_cpu", [&] {
    auto a = inputs_of<scalar_t>(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    a.out = out.data_ptr<scalar_t>();
    run_forward(a);
  });
  return out;
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                     const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const Dims d = dims_of(value, sampling_locations);
  const int64_t chunks = chunks_for(d);
  auto grad_value_copies = at::zeros({chunks, d.batch, d.tokens, d.heads, d.channels}, value.options());
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_backward_cpu", [&] {
    auto a = inputs_of<scalar_t>(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    a.grad_out = grad_output.data_ptr<scalar_t>();
    a.grad_value = grad_value_copies.data_ptr<scalar_t>();
    a.grad_locations = grad_locations.data_ptr<scalar_t>();
    a.grad_weights = grad_weights.data_ptr<scalar_t>();
    run_backward(a, chunks);
  });
  auto grad_value = chunks == 1 ? grad_value_copies.squeeze(0) : grad_value_copies.sum(0);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace msda
