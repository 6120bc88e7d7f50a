// `anyk generate`: text from a trained model at any K, with a KV cache (model/generate.h), from
// a run directory, a checkpoint or a weights file.
#pragma once
#include <memory>
#include <string>

#include "data/sp_tokenizer.h"
#include "launch/options.h"
#include "model/lm.h"
#include "parallel/dispatcher.h"

namespace anyk::launch {

// A model loaded for inference in this process (every expert local), with the options it was
// trained with where the source records them (defaults otherwise).
struct InferenceModel {
  TrainOptions train;
  std::string source;  // the run dir, checkpoint dir or weights file read
  std::unique_ptr<LocalDispatcher> dispatcher;
  std::unique_ptr<LM> lm;
  // The model's SentencePiece tokenizer (launch/tokenizer.h), null for the byte vocabulary.
  std::shared_ptr<const data::SpTokenizer> tokenizer;
};

// The same sources as `anyk eval`: exactly one of a run directory (config.ini + model.h5), a
// checkpoint (DIR, a `latest` file, or `latest` with run_dir) or a weights/consolidated file.
// A run dir whose config.ini and model.h5 describe different models is refused, naming both.
// The model lives on `device` (prepared by use_device first).
InferenceModel load_inference_model(const std::string& run_dir, const std::string& checkpoint,
                                    const std::string& weights, Device device = Device::CPU);

// `anyk generate`: argv after the command name. Returns the exit code.
int generate_command(int argc, char** argv);

}  // namespace anyk::launch
