// The model's shape and routing options. Every field has a CLI/INI name in launch/; validate()
// names the bad value and the fix.
#pragma once
#include <cstdint>
#include <string>

#include "model/moe_ops.h"
#include "runtime/tensor.h"

namespace anyk {

struct ModelConfig {
  int vocab = 256;          // V
  int dim = 128;            // C
  int layers = 4;           // L
  int heads = 4;            // NH
  int experts = 8;          // E
  int expert_hidden = 128;  // H
  int seq_len = 128;        // T (max; RoPE needs no table, so shorter T works at any call)
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  RouterOptions router;     // renormalize, lb/z/kl coefficients, top_p
  DType dtype = DType::F32;

  void validate() const;
  int64_t num_params() const;         // total, all experts
  int64_t active_params(double k) const;  // per token with k experts active (for MFU)
  std::string summary() const;
};

}  // namespace anyk
