// CPU kernels (fp32/fp64), parallelised with at::parallel_for.
//
// Forward: one task per (batch, query); for each head, level and point the four tap weights are computed
// once and the head's contiguous channel vector is accumulated.
// Backward: grad_value is a scatter-add, so tasks own disjoint slices of it: one task per (batch, head,
// query chunk), each chunk writing its own copy of grad_value, summed at the end when there is more than one.
#include <ATen/Parallel.h>

#include <algorithm>

#include "bilinear.h"
#include "msda.h"

namespace msda {
namespace {

template <typename scalar_t>
void forward_kernel(const Dims d, const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locations, const scalar_t* weights, scalar_t* out) {
  const int64_t token_stride = d.heads * d.channels;
  const int64_t samples = d.levels * d.points;
  at::parallel_for(0, d.batch * d.queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bq = begin; bq < end; ++bq) {
      const scalar_t* value_b = value + (bq / d.queries) * d.tokens * token_stride;
      for (int64_t m = 0; m < d.heads; ++m) {
        const int64_t row = bq * d.heads + m;
        scalar_t* acc = out + row * d.channels;
        std::fill(acc, acc + d.channels, scalar_t(0));
        const scalar_t* loc = locations + row * samples * 2;
        const scalar_t* w = weights + row * samples;
        for (int64_t l = 0; l < d.levels; ++l) {
          const scalar_t* level = value_b + starts[l] * token_stride + m * d.channels;
          for (int64_t p = 0; p < d.points; ++p, loc += 2, ++w) {
            BilinearTaps<scalar_t> taps;
            taps.compute(loc[0], loc[1], shapes[2 * l], shapes[2 * l + 1]);
            if (!taps.any) continue;
            for (int k = 0; k < 4; ++k) {
              if (!taps.in_map[k]) continue;
              const scalar_t tap_weight = *w * taps.coeff[k];
              const scalar_t* v = level + taps.offset[k] * token_stride;
              for (int64_t c = 0; c < d.channels; ++c) acc[c] += tap_weight * v[c];
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const Dims d, int64_t chunks, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                     const scalar_t* grad_out, scalar_t* grad_value_copies, scalar_t* grad_locations,
                     scalar_t* grad_weights) {
  const int64_t token_stride = d.heads * d.channels;
  const int64_t samples = d.levels * d.points;
  const int64_t value_numel = d.batch * d.tokens * token_stride;
  at::parallel_for(0, d.batch * d.heads * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks, b = task / chunks / d.heads, m = task / chunks % d.heads;
      const int64_t q_begin = d.queries * chunk / chunks, q_end = d.queries * (chunk + 1) / chunks;
      const int64_t head_offset = b * d.tokens * token_stride + m * d.channels;
      const scalar_t* value_bm = value + head_offset;
      scalar_t* grad_value_bm = grad_value_copies + chunk * value_numel + head_offset;
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t row = (b * d.queries + q) * d.heads + m;
        const scalar_t* g = grad_out + row * d.channels;
        const scalar_t* loc = locations + row * samples * 2;
        const scalar_t* w = weights + row * samples;
        scalar_t* grad_loc = grad_locations + row * samples * 2;
        scalar_t* grad_w = grad_weights + row * samples;
        for (int64_t l = 0; l < d.levels; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const scalar_t* level = value_bm + starts[l] * token_stride;
          scalar_t* grad_level = grad_value_bm + starts[l] * token_stride;
          for (int64_t p = 0; p < d.points; ++p, loc += 2, ++w, grad_loc += 2, ++grad_w) {
            BilinearTaps<scalar_t> taps;
            taps.compute(loc[0], loc[1], height, width);
            if (!taps.any) continue;  // outputs were zero-initialised
            scalar_t projected[4];    // <grad_out, tap value>
            for (int k = 0; k < 4; ++k) {
              projected[k] = scalar_t(0);
              if (!taps.in_map[k]) continue;
              const scalar_t tap_weight = *w * taps.coeff[k];
              const scalar_t* v = level + taps.offset[k] * token_stride;
              scalar_t* gv = grad_level + taps.offset[k] * token_stride;
              scalar_t dot = 0;
              for (int64_t c = 0; c < d.channels; ++c) {
                dot += g[c] * v[c];
                gv[c] += tap_weight * g[c];
              }
              projected[k] = dot;
            }
            *grad_w = taps.coeff[0] * projected[0] + taps.coeff[1] * projected[1] +
                      taps.coeff[2] * projected[2] + taps.coeff[3] * projected[3];
            scalar_t dx, dy;
            taps.pixel_gradient(projected, &dx, &dy);
            grad_loc[0] = *w * static_cast<scalar_t>(width) * dx;
            grad_loc[1] = *w * static_cast<scalar_t>(height) * dy;
          }
        }
      }
    }
  });
}

// Query chunks per (batch, head) so that every thread has work when batch * heads < threads.
int64_t chunks_for(const Dims& d) {
  const int64_t owners = std::max<int64_t>(1, d.batch * d.heads);
  const int64_t threads = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(d.queries, (threads + owners - 1) / owners));
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  const Dims d = dims_of(value, sampling_locations);
  auto out = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_forward_cpu", [&] {
    forward_kernel<scalar_t>(d, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                             level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                             attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
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
    backward_kernel<scalar_t>(d, chunks, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                              level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                              attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                              grad_value_copies.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>());
  });
  auto grad_value = chunks == 1 ? grad_value_copies.squeeze(0) : grad_value_copies.sum(0);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace msda
