// CUDA kernels: fp64, fp32, and fp16/bf16 with fp32 accumulation.
//
// One thread per output element (batch, query, head, channel); a warp covers consecutive channels of a head,
// so every tap read of `value` is coalesced.
// Backward: grad_value by atomic adds (accumulated in the accumulation type); the gradients of locations and
// weights are sums over the channels of a head, reduced with warp shuffles and written by one lane.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bilinear.h"
#include "msda.h"

namespace msda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename scalar_t>
__global__ void forward_kernel(const Dims d, int64_t total, const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                               scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t c = index % d.channels;
  const int64_t row = index / d.channels;  // (b * Q + q) * M + m
  const int64_t m = row % d.heads;
  const int64_t b = row / d.heads / d.queries;
  const int64_t token_stride = d.heads * d.channels;
  const scalar_t* value_bmc = value + b * d.tokens * token_stride + m * d.channels + c;
  const int64_t samples = d.levels * d.points;
  const scalar_t* loc = locations + row * samples * 2;
  const scalar_t* w = weights + row * samples;
  acc_t acc = 0;
  for (int64_t l = 0; l < d.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
    const scalar_t* level = value_bmc + starts[l] * token_stride;
    for (int64_t p = 0; p < d.points; ++p, loc += 2, ++w) {
      BilinearTaps<acc_t> taps;
      taps.compute(static_cast<acc_t>(loc[0]), static_cast<acc_t>(loc[1]), height, width);
      if (!taps.any) continue;
      acc_t sampled = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (taps.in_map[k]) sampled += taps.coeff[k] * static_cast<acc_t>(level[taps.offset[k] * token_stride]);
      }
      acc += static_cast<acc_t>(*w) * sampled;
    }
  }
  out[index] = static_cast<scalar_t>(acc);
}

// Sum over aligned groups of `width` lanes (a power of two <= 32); every lane of the warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

// Channels of one head are reduced in groups of `group` lanes (largest power of two dividing D, at most 32).
// When group == D the group's first lane stores the result; otherwise each group adds its partial sum atomically
// into zero-initialised outputs.
template <typename scalar_t>
__global__ void backward_kernel(const Dims d, int64_t total, int group, const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                                const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                                const scalar_t* __restrict__ grad_out,
                                at::opmath_type<scalar_t>* __restrict__ grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_locations,
                                at::opmath_type<scalar_t>* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t raw_index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Lanes past the end mirror the last element with a zero gradient so that they can join the shuffles.
  const bool active = raw_index < total;
  const int64_t index = active ? raw_index : total - 1;
  const int64_t c = index % d.channels;
  const int64_t row = index / d.channels;
  const int64_t m = row % d.heads;
  const int64_t b = row / d.heads / d.queries;
  const int64_t token_stride = d.heads * d.channels;
  const int64_t head_offset = b * d.tokens * token_stride + m * d.channels + c;
  const scalar_t* value_bmc = value + head_offset;
  acc_t* grad_value_bmc = grad_value + head_offset;
  const int64_t samples = d.levels * d.points;
  const acc_t g = active ? static_cast<acc_t>(grad_out[index]) : acc_t(0);
  const bool leader = (c % group) == 0;
  const bool exclusive = group == d.channels;
  for (int64_t l = 0; l < d.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
    const scalar_t* level = value_bmc + starts[l] * token_stride;
    acc_t* grad_level = grad_value_bmc + starts[l] * token_stride;
    for (int64_t p = 0; p < d.points; ++p) {
      const int64_t sample = row * samples + l * d.points + p;
      const acc_t w = static_cast<acc_t>(weights[sample]);
      BilinearTaps<acc_t> taps;
      taps.compute(static_cast<acc_t>(locations[2 * sample]), static_cast<acc_t>(locations[2 * sample + 1]), height,
                   width);
      acc_t grad_w = 0, grad_x = 0, grad_y = 0;
      if (taps.any) {
        acc_t projected[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          projected[k] = 0;
          if (!taps.in_map[k]) continue;
          const int64_t tap_offset = taps.offset[k] * token_stride;
          projected[k] = g * static_cast<acc_t>(level[tap_offset]);
          if (active) gpuAtomicAdd(grad_level + tap_offset, w * taps.coeff[k] * g);
        }
        grad_w = taps.coeff[0] * projected[0] + taps.coeff[1] * projected[1] + taps.coeff[2] * projected[2] +
                 taps.coeff[3] * projected[3];
        taps.pixel_gradient(projected, &grad_x, &grad_y);
        grad_x *= w * static_cast<acc_t>(width);
        grad_y *= w * static_cast<acc_t>(height);
      }
      grad_w = group_sum(grad_w, group);
      grad_x = group_sum(grad_x, group);
      grad_y = group_sum(grad_y, group);
      if (active && leader) {
        if (exclusive) {
          grad_weights[sample] = grad_w;
          grad_locations[2 * sample] = grad_x;
          grad_locations[2 * sample + 1] = grad_y;
        } else {
          gpuAtomicAdd(grad_weights + sample, grad_w);
          gpuAtomicAdd(grad_locations + 2 * sample, grad_x);
          gpuAtomicAdd(grad_locations + 2 * sample + 1, grad_y);
        }
      }
    }
  }
}

int reduction_group(int64_t channels) {
  int group = 1;
  while (group < 32 && channels % (2 * group) == 0) group *= 2;
  return group;
}

unsigned blocks_for(int64_t total) { return static_cast<unsigned>((total + kThreads - 1) / kThreads); }

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights) {
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims d = dims_of(value, sampling_locations);
  auto out = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
                                  "msda_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        d, total, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
        attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims d = dims_of(value, sampling_locations);
  // Gradients accumulate in the accumulation type (fp32 for fp16/bf16) and are cast back at the end.
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  auto grad_locations = at::zeros(sampling_locations.sizes(), value.options().dtype(acc_type));
  auto grad_weights = at::zeros(attention_weights.sizes(), value.options().dtype(acc_type));
  const int64_t total = grad_output.numel();
  if (total > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int group = reduction_group(d.channels);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
                                    "msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          d, total, group, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
          level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
          attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<acc_t>(),
          grad_locations.data_ptr<acc_t>(), grad_weights.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const auto dtype = value.scalar_type();
  return {grad_value.to(dtype), grad_locations.to(dtype), grad_weights.to(dtype)};
}

}  // namespace msda
