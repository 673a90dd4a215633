// Bilinear tap geometry shared by the CPU and CUDA kernels.
//
// A sampling location (x, y) in [0, 1] maps to pixel coordinates (x * W - 0.5, y * H - 0.5), exactly as
// grid_sample(align_corners=False, padding_mode='zeros'). The four neighbouring pixels ("taps") are
// (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1); a tap outside the map reads as zero.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msda {

template <typename acc_t>
struct BilinearTaps {
  int64_t offset[4];  // token index of each tap inside its level (row-major), valid only where in_map
  bool in_map[4];
  acc_t coeff[4];     // interpolation weight of each tap
  acc_t fx, fy;       // fractional parts: distance from (x0, y0)
  bool any;           // false when no tap can contribute a value or a gradient

  // Taps order: 0 = (x0, y0), 1 = (x0 + 1, y0), 2 = (x0, y0 + 1), 3 = (x0 + 1, y0 + 1).
  MSDA_HOST_DEVICE void compute(acc_t loc_x, acc_t loc_y, int64_t height, int64_t width) {
    const acc_t px = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
    const acc_t py = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
    // At px == -1 the value is 0 but grid_sample still has a gradient (through tap x0 + 1 = 0); keep it.
    // The negated form also rejects NaN.
    any = (px >= acc_t(-1)) && (py >= acc_t(-1)) && (px < static_cast<acc_t>(width)) &&
          (py < static_cast<acc_t>(height));
    if (!any) return;
    const acc_t x0f = std::floor(px), y0f = std::floor(py);
    const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
    fx = px - x0f;
    fy = py - y0f;
    const acc_t gx = acc_t(1) - fx, gy = acc_t(1) - fy;
    const bool x0_in = x0 >= 0, x1_in = x0 + 1 < width, y0_in = y0 >= 0, y1_in = y0 + 1 < height;
    in_map[0] = x0_in && y0_in;
    in_map[1] = x1_in && y0_in;
    in_map[2] = x0_in && y1_in;
    in_map[3] = x1_in && y1_in;
    offset[0] = y0 * width + x0;
    offset[1] = offset[0] + 1;
    offset[2] = offset[0] + width;
    offset[3] = offset[2] + 1;
    coeff[0] = gy * gx;
    coeff[1] = gy * fx;
    coeff[2] = fy * gx;
    coeff[3] = fy * fx;
  }

  // Gradient of the sampled value w.r.t. the pixel coordinates, given each tap's value (0 outside the map)
  // projected on the incoming gradient. Returns d/dpx in *dx and d/dpy in *dy.
  MSDA_HOST_DEVICE void pixel_gradient(const acc_t tap[4], acc_t* dx, acc_t* dy) const {
    *dx = (acc_t(1) - fy) * (tap[1] - tap[0]) + fy * (tap[3] - tap[2]);
    *dy = (acc_t(1) - fx) * (tap[2] - tap[0]) + fx * (tap[3] - tap[1]);
  }
};

}  // namespace msda
