// Tokenizer bookkeeping across data, runs and weights; see launch/tokenizer.h.
#include "launch/tokenizer.h"

#include <boost/program_options.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/check.h"
#include "io/weights.h"

namespace anyk::launch {

namespace fs = std::filesystem;

std::string run_tokenizer_hash(const TrainOptions& o) {
  return o.tokenizer_hash.empty() ? data::kBytesTokenizer : o.tokenizer_hash;
}

void check_data_tokenizer(const std::string& data_dir, const TrainOptions& model, const std::string& what) {
  const std::string d = data::dir_tokenizer_hash(data_dir), m = run_tokenizer_hash(model);
  ANYK_CHECK(d == m, "tokenizer mismatch: data " << data_dir << " is tokenized with " << d << " but " << what
                                                 << " was trained with " << m
                                                 << " hint: use the data prepared with the model's tokenizer "
                                                    "(anyk prepare --tokenizer RUN_DIR/tokenizer.model)");
}

void merge_weights_tokenizer(TrainOptions& o, const std::string& weights_file) {
  const std::string h = io::weights_tokenizer_hash(weights_file);
  if (h.empty()) return;
  ANYK_CHECK(o.tokenizer_hash.empty() || o.tokenizer_hash == h,
             "tokenizer mismatch: " << weights_file << " was trained with tokenizer " << h << " but its config says "
                                    << o.tokenizer_hash << " hint: the run dir holds files of two different runs");
  o.tokenizer_hash = h;
}

void resolve_train_tokenizer(TrainOptions& o) {
  const std::string d = data::dir_tokenizer_hash(o.data);
  ANYK_CHECK(o.tokenizer_hash.empty() || o.tokenizer_hash == d,
             "tokenizer mismatch: --data " << o.data << " is tokenized with " << d << " but the options say "
                                           << "tokenizer-hash " << o.tokenizer_hash
                                           << " hint: prepare the data with that run's tokenizer.model");
  o.tokenizer_hash = d;
  if (d == data::kBytesTokenizer) {
    o.tokenizer.clear();
    return;
  }
  const fs::path p = fs::absolute(fs::path(o.data) / data::kTokenizerFile).lexically_normal();
  o.tokenizer = p.string();
  if (o.vocab == 0) o.vocab = data::SpTokenizer(o.tokenizer).vocab();
}

std::unique_ptr<data::SpTokenizer> load_model_tokenizer(const TrainOptions& o, const std::vector<std::string>& dirs,
                                                        const std::string& what) {
  const std::string want = run_tokenizer_hash(o);
  if (want == data::kBytesTokenizer) return nullptr;
  std::vector<std::string> tried;
  for (const std::string& d : dirs)
    if (!d.empty()) tried.push_back((fs::path(d) / data::kTokenizerFile).string());
  if (!o.tokenizer.empty()) tried.push_back(o.tokenizer);
  std::string seen;
  for (const std::string& p : tried) {
    if (!fs::is_regular_file(p)) continue;
    const std::string h = data::tokenizer_hash(p);
    if (h == want) return std::make_unique<data::SpTokenizer>(p);
    seen += " " + p + " is " + h + ";";
  }
  std::string list;
  for (const std::string& p : tried) list += (list.empty() ? "" : ", ") + p;
  ANYK_FAIL("tokenizer mismatch: " << what << " was trained with tokenizer " << want << " and no tokenizer.model "
                                   << "with that hash was found (looked at " << list << ";" << seen
                                   << ") hint: copy the run's tokenizer.model next to the weights");
}

int tokenize_command(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string tokenizer, input;
  po::options_description desc(
      "anyk tokenize --tokenizer FILE.model|bytes [--input FILE]\n"
      "The ids of each non-empty line of FILE (default: stdin), newline excluded, space-separated,\n"
      "one output line per input line (for comparing with another engine's tokenizer)");
  CommandOptions cmd("tokenize", desc);
  desc.add_options()("tokenizer", po::value(&tokenizer), "a SentencePiece .model file (e.g. RUN_DIR/tokenizer.model), "
                                                         "or bytes")(
      "input", po::value(&input), "text file (default: stdin)");
  if (!cmd.parse(argc, argv)) return 0;
  cmd.require(!tokenizer.empty(), "tokenizer");
  std::unique_ptr<data::SpTokenizer> sp;
  if (tokenizer != "bytes") sp = std::make_unique<data::SpTokenizer>(tokenizer);
  std::ifstream file;
  if (!input.empty()) {
    file.open(input, std::ios::binary);
    ANYK_CHECK(file, "--input " << input << " cannot be read");
  }
  std::istream& in = input.empty() ? std::cin : file;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    std::vector<int> ids;
    if (sp) ids = sp->encode(line);
    else
      for (unsigned char c : line) ids.push_back(c);
    std::string out;
    for (int id : ids) {
      if (!out.empty()) out += ' ';
      out += std::to_string(id);
    }
    std::printf("%s\n", out.c_str());
  }
  return 0;
}

}  // namespace anyk::launch
