// Which tokenizer a data dir, a run and a model's weights use, and the one-line refusal when they
// differ (config.ini keys tokenizer and tokenizer-hash, data/sp_tokenizer.h).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/sp_tokenizer.h"
#include "launch/options.h"

namespace anyk::launch {

/// The options' tokenizer hash; runs from before the key existed are "bytes".
std::string run_tokenizer_hash(const TrainOptions& o);

/// Refuses, in one line, data whose tokenizer is not the model's (what: where the model came from).
void check_data_tokenizer(const std::string& data_dir, const TrainOptions& model, const std::string& what);

/// A weights file's tokenizer_hash attribute (io::weights_tokenizer_hash) into o: taken when o has
/// none, else it must agree (one line). Files without the attribute change nothing.
void merge_weights_tokenizer(TrainOptions& o, const std::string& weights_file);

/// train: the tokenizer comes from --data (a hash given in --config must agree); vocab 0 becomes
/// the SentencePiece model's size.
void resolve_train_tokenizer(TrainOptions& o);

/// The model's SentencePiece tokenizer, or null for bytes: the first of DIR/tokenizer.model (for
/// each of dirs) and the options' tokenizer path whose hash is the options' tokenizer-hash.
std::unique_ptr<data::SpTokenizer> load_model_tokenizer(const TrainOptions& o, const std::vector<std::string>& dirs,
                                                        const std::string& what);

/// `anyk tokenize --tokenizer FILE.model|bytes [--input FILE]`: each non-empty line of FILE (or
/// stdin), without its newline, as its ids, space-separated, one line each.
int tokenize_command(int argc, char** argv);

}  // namespace anyk::launch
