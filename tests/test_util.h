// Helpers shared by the test suites: move data between std::vector<double> and Vars of either
// dtype, a relative-error measure, and reading a file whole; and, for the suites that run the
// `anyk` binary (tests/README.md), one process runner, a temporary directory, error-line checks
// and a JSON reader (nlohmann-json), implemented in test_util.cpp.
#pragma once
#include <sys/types.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/rng.h"
#include "runtime/tape.h"

namespace anyk::test {

inline void fill(const Tensor& t, const std::vector<double>& v) {
  dispatch(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < t.numel(); ++i) t.ptr<T>()[i] = T(v[i]);
  });
}

// A view of host I32 data as a CPU tensor (n).
inline Tensor host_i32(const int* p, int64_t n) {
  Tensor t;
  t.data = const_cast<int*>(p);
  t.shape = Shape{n};
  t.dtype = DType::I32;
  return t;
}

inline std::vector<double> read(const Tensor& t) {
  std::vector<double> v(t.numel());
  dispatch(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < t.numel(); ++i) v[i] = double(t.ptr<T>()[i]);
  });
  return v;
}

// A leaf Var (value from v, zeroed gradient) in the tape's arena.
inline Var leaf(Tape& tape, Shape s, DType dt, const std::vector<double>& v, bool grad = true) {
  Var x = tape.make(s, dt, grad);
  fill(x.val, v);
  return x;
}

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  CounterRng r(seed, 77);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * r.normal();
  return v;
}

// randn's values converted to T (float: each rounded once from the double).
template <class T> std::vector<T> randn_as(size_t n, uint64_t seed, double scale = 1.0) {
  const std::vector<double> d = randn(n, seed, scale);
  return std::vector<T>(d.begin(), d.end());
}

// max |a - b| / max(max |b|, floor)
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-12) {
  double num = 0, den = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

// The whole content of a file ("" when it cannot be read): for tests that run the binary.
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- processes ---------------------------------------------------------------------------------
// A command runs from an argv vector (no shell), in its own process group, stdin from stdin_text
// (empty: an empty stdin), stdout and stderr captured. np > 0 runs it under
// `$ANYK_MPIEXEC mpi_args... -np NP --oversubscribe` with OpenMPI's run-as-root variables set.
struct RunOptions {
  int np = 0;
  std::vector<std::string> mpi_args{};  // mpirun options before -np, e.g. {"--mca", "x", "1"}
  std::filesystem::path cwd{};          // empty: the test's working directory
  std::vector<std::string> env{};       // "NAME=value", added to (or replacing in) the environment
  double timeout_s = 300;               // run_command: the whole process group is killed after it
  std::string stdin_text{};
};

struct RunResult {
  std::string command;  // as printed in messages
  int rc = -1;          // exit status; -1 when a signal ended it
  int signal = 0;       // the signal that ended it, 0 when it exited
  std::string out, err;
};

// Runs argv to its end. When it outlives o.timeout_s (times ANYK_TEST_TIMEOUT_SCALE when set, for
// slow or loaded machines), its process group is killed and the test fails with a message naming
// the command and the timeout.
RunResult run_command(const std::vector<std::string>& argv, const RunOptions& o = {});

// $ANYK_BIN (set by ctest) followed by the words of args: split on spaces, '...' quotes a word
// (which may be empty or hold spaces); no other shell syntax.
std::vector<std::string> anyk_argv(const std::string& args);
inline RunResult run_anyk(const std::string& args, const RunOptions& o = {}) {
  return run_command(anyk_argv(args), o);
}

// A command started in the background (same options; timeout_s is not used): signal it, poll it,
// wait with a timeout. The destructor kills its process group if it is still running.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const RunOptions& o = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  pid_t pid() const { return pid_; }  // the command's own pid (mpirun under np > 0)
  void signal(int sig) const;         // to that process only, as a terminal or batch system would
  void kill_group(int sig) const;     // to every process of its group
  bool wait_for(double seconds);      // true once it has ended
  bool done() const { return done_; }
  RunResult result() const;           // after it ended: status and the whole output
  std::string out() const;            // output so far
  std::string err() const;
  const std::string& command() const { return command_; }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool done_ = false;
  std::string command_;
  std::filesystem::path out_path_, err_path_, in_path_;
};

// Polls pred every 50 ms until it holds (true) or seconds pass (false).
bool wait_until(double seconds, const std::function<bool()>& pred);
// Polls until file contains needle.
bool wait_for_text(const std::filesystem::path& file, const std::string& needle, double seconds);

// A fresh empty directory under the system temp dir, removed with everything in it on scope exit
// (kept when ANYK_KEEP_TEST_DIRS is set, for debugging).
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path operator/(const std::string& p) const { return path / p; }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// ---- error lines -------------------------------------------------------------------------------
// The first line of output that starts with "anyk: error:" (without its newline), "" if none.
std::string error_of(const std::string& output);
// Lines of s; a last line without '\n' counts.
int count_lines(const std::string& s);
// s is exactly one line, "anyk: error: ...\n", holding every needle.
void check_one_error_line(const std::string& s, std::initializer_list<std::string> needles);

// ---- JSON --------------------------------------------------------------------------------------
// Objects keep their keys in file order (a safetensors header is ordered).
using Json = nlohmann::ordered_json;
// Parses text; malformed JSON fails the test, naming `what` and the parser's message.
Json parse_json(const std::string& text, const std::string& what = "JSON text");
Json read_json(const std::filesystem::path& file);
// The records of a JSON-lines file (metrics.jsonl) whose "type" is `type` (all when empty), in
// order. complete_only: a last line without '\n' (still being written) is skipped, not an error.
std::vector<Json> read_jsonl(const std::filesystem::path& file, const std::string& type = "",
                             bool complete_only = false);
// obj[key] as a number; a missing key or a null (a non-finite value) fails the test.
double number(const Json& obj, const std::string& key);
// number(r, key) of every record, in order.
std::vector<double> numbers(const std::vector<Json>& records, const std::string& key);

}  // namespace anyk::test
