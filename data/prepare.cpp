// Text → byte-token shards. File order is deterministic (inputs in the order given, each
// directory's files sorted by path) so the same corpus always yields byte-identical shards.
#include "data/prepare.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "data/shard.h"
#include "data/sp_tokenizer.h"
#include "data/tokenizer.h"
#include "core/check.h"

namespace anyk::data {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMinSplitTokens = 1024;

bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// Files under dir, recursively, sorted by path. Symlinked directories are not followed (the
// iterator's default), so a link back up the tree cannot loop; a symlinked file is kept unless
// its target is already in the list.
std::vector<fs::path> walk_dir(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  ANYK_CHECK(!ec, "prepare: cannot list directory " << dir.string() << ": " << ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    ANYK_CHECK(!ec, "prepare: walking " << dir.string() << " failed: " << ec.message());
    const fs::directory_entry& e = *it;
    if (is_hidden(e.path())) {
      if (e.is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (e.is_symlink(ec) && e.is_directory(ec)) continue;
    if (!e.is_regular_file(ec)) continue;
    if (e.path().extension() == ".dat") continue;  // fortune(6) index files are binary
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  // A symlinked file whose target is also in the tree would be read twice (fortunes' *.u8 files
  // link to the plain ones): keep the first path, in sorted order, of each real file.
  std::set<fs::path> seen;
  std::vector<fs::path> unique;
  for (const fs::path& f : files) {
    std::error_code cec;
    fs::path real = fs::canonical(f, cec);
    if (seen.insert(cec ? f : real).second) unique.push_back(f);
  }
  return unique;
}

void append_file(const fs::path& p, std::string& out) {
  std::ifstream in(p, std::ios::binary);
  ANYK_CHECK(in, "prepare: cannot open " << p.string() << " hint: check file permissions");
  std::ostringstream ss;
  ss << in.rdbuf();
  ANYK_CHECK(!in.bad(), "prepare: reading " << p.string() << " failed");
  out += ss.str();
}

}  // namespace

PrepareStats prepare(const std::vector<std::string>& inputs, const std::string& out_dir,
                     double val_fraction, std::function<void(const std::string&)> progress,
                     const std::string& tokenizer, int vocab_size) {
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  ANYK_CHECK(val_fraction > 0.0 && val_fraction < 1.0,
             "prepare: val_fraction " << val_fraction << " is outside (0, 1)"
                                      << " hint: use e.g. --val-fraction 0.1");
  ANYK_CHECK(!inputs.empty(), "prepare: no inputs given hint: pass text files or directories");

  // Explicitly named files are taken as given (even *.dat): the user asked for them.
  std::vector<fs::path> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    ANYK_CHECK(fs::exists(in, ec), "prepare: input " << in << " does not exist"
                                                     << " hint: check the path");
    if (fs::is_directory(in, ec)) {
      std::vector<fs::path> sub = walk_dir(in);
      files.insert(files.end(), sub.begin(), sub.end());
    } else {
      files.push_back(in);
    }
  }

  PrepareStats st;
  std::string text;
  for (const fs::path& p : files) {
    append_file(p, text);
    ++st.files;
  }
  st.bytes = static_cast<int64_t>(text.size());
  ANYK_CHECK(st.bytes > 0, "prepare: no input text found in " << files.size() << " file(s)"
                                                            << " hint: point at non-empty text files");
  say("read " + std::to_string(st.files) + " files, " + std::to_string(st.bytes) + " bytes");

  std::string tok_summary;
  std::vector<uint16_t> toks =
      encode_for_prepare(text, tokenizer, vocab_size, 1.0 - val_fraction, out_dir, &tok_summary);
  say(tok_summary);
  text.clear();
  text.shrink_to_fit();

  // The val split is simply the tail of the stream. An interleaved split (every k-th block)
  // would mix more authors/topics into val, but the tail is the llm.c convention, needs no
  // block size to tune, and keeps both splits contiguous so each is one clean token stream.
  const int64_t n = static_cast<int64_t>(toks.size());
  const int64_t n_val = std::llround(static_cast<double>(n) * val_fraction);
  const int64_t n_train = n - n_val;
  ANYK_CHECK(n_train >= kMinSplitTokens && n_val >= kMinSplitTokens,
             "prepare: " << n << " tokens at val_fraction " << val_fraction << " give train "
                         << n_train << " and val " << n_val << " tokens; each needs at least "
                         << kMinSplitTokens << " hint: add more text or change --val-fraction");
  st.train_tokens = n_train;
  st.val_tokens = n_val;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  ANYK_CHECK(!ec, "prepare: cannot create output directory " << out_dir << ": " << ec.message()
                                                             << " hint: check permissions");
  const std::string train_path = (fs::path(out_dir) / "train.bin").string();
  const std::string val_path = (fs::path(out_dir) / "val.bin").string();
  write_shard(train_path, toks.data(), static_cast<size_t>(n_train));
  say("wrote " + train_path + " (" + std::to_string(n_train) + " tokens)");
  write_shard(val_path, toks.data() + n_train, static_cast<size_t>(n_val));
  say("wrote " + val_path + " (" + std::to_string(n_val) + " tokens)");
  return st;
}

}  // namespace anyk::data
