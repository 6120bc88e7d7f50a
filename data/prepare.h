// `anyk prepare`: turn text files or directories into byte-token shards train.bin and val.bin
// (llm.c format) in one output directory.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace anyk::data {

struct PrepareStats {
  int64_t files = 0, bytes = 0, train_tokens = 0, val_tokens = 0;
};

/// Reads every input (a file, or a directory walked recursively: sorted by path, skipping
/// `*.dat` fortune index files, hidden entries and symlinked directories), concatenates the
/// bytes, byte-encodes them and writes out_dir/train.bin and out_dir/val.bin, the last
/// val_fraction of the tokens going to val. Both splits must hold at least 1024 tokens.
/// progress, if given, receives one short human-readable line per stage. tokenizer: "bytes",
/// "sp" (train a SentencePiece model of vocab_size pieces on the training split) or a .model
/// file; a SentencePiece model is kept as out_dir/tokenizer.model (data/sp_tokenizer.h).
PrepareStats prepare(const std::vector<std::string>& inputs, const std::string& out_dir,
                     double val_fraction,
                     std::function<void(const std::string&)> progress = {},
                     const std::string& tokenizer = "bytes", int vocab_size = 0);

}  // namespace anyk::data
