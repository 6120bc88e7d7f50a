// The Hugging Face Mixtral directory export (`anyk convert --to hf`): config.json with
// model_type "mixtral" and model.safetensors with Mixtral's tensor names and layouts. anyk's
// architecture is Mixtral's (RMSNorm, rotate-half RoPE as Hugging Face's Llama/Mixtral, softmax ->
// top-K -> renormalised gates, SwiGLU experts), so the tensors are renamed and w13 is split into
// w1 (gate) and w3 (up); no permutation. docs/elsewhere.md lists the mapping.
#pragma once
#include <functional>
#include <string>

#include "model/config.h"
#include "model/lm.h"

namespace anyk::io {

// Writes config.json and model.safetensors into the directory dir (which must exist and be
// empty); num_experts_per_tok = k. `param(name)` returns a parameter's values (row-major, full
// shape). Refuses, in one line, gates that are not renormalised (Mixtral renormalises them).
void write_hf_mixtral(const ModelConfig& c, const std::function<const float*(const std::string&)>& param, int k,
                      const std::string& dir);

// True when dir is a directory holding config.json (a Hugging Face model directory).
bool is_hf_dir(const std::string& dir);
// The model config.json describes (model_type must be "mixtral"); fields it does not hold keep
// ModelConfig's defaults. Throws in one line naming the file and the key that is missing or wrong.
ModelConfig hf_config(const std::string& dir);
// Reads every parameter of lm (all experts, f32, on the CPU) from dir's model.safetensors, under
// Mixtral's names; a missing tensor, another dtype or shape throws naming file and tensor, and a
// config.json whose RoPE base or RMSNorm epsilon differ from lm's is refused.
void load_hf_weights(const std::string& dir, LM& lm);

}  // namespace anyk::io
