// The process runner, temporary directories, error-line checks and JSON reader of test_util.h.
#include "test_util.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace fs = std::filesystem;

namespace anyk::test {

namespace {

using Clock = std::chrono::steady_clock;

std::string env_or_fail(const char* name) {
  const char* v = std::getenv(name);
  REQUIRE_MESSAGE(v != nullptr, name << " is not set (run the suite through ctest)");
  return v;
}

// argv as a shell would need it, for messages.
std::string describe(const std::vector<std::string>& argv, const RunOptions& o) {
  std::string s;
  for (const std::string& e : o.env) s += e + " ";
  for (size_t i = 0; i < argv.size(); ++i) {
    const bool plain = !argv[i].empty() && argv[i].find_first_of(" '\"\\$*?") == std::string::npos;
    s += (i ? " " : "") + (plain ? argv[i] : "'" + argv[i] + "'");
  }
  if (!o.cwd.empty()) s += " (in " + o.cwd.string() + ")";
  return s;
}

// The environment of the child: ours, with o.env (and OpenMPI's root permission under np > 0).
std::vector<std::string> child_env(const RunOptions& o) {
  std::vector<std::string> add = o.env;
  if (o.np > 0) add.insert(add.begin(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e, name = kv.substr(0, kv.find('=') + 1);
    bool replaced = false;
    for (const std::string& a : add) replaced = replaced || a.rfind(name, 0) == 0;
    if (!replaced) env.push_back(kv);
  }
  env.insert(env.end(), add.begin(), add.end());
  return env;
}

fs::path capture_file(const char* what) {
  std::string t = (fs::temp_directory_path() / (std::string("anyk_test_") + what + "_XXXXXX")).string();
  const int fd = ::mkstemp(t.data());
  REQUIRE_MESSAGE(fd >= 0, "mkstemp " << t << ": " << std::strerror(errno));
  ::close(fd);
  return t;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (std::string& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

}  // namespace

Process::Process(const std::vector<std::string>& argv_in, const RunOptions& o) {
  REQUIRE_MESSAGE(!argv_in.empty(), "Process: empty command");
  std::vector<std::string> argv;
  if (o.np > 0) {
    argv.push_back(env_or_fail("ANYK_MPIEXEC"));
    argv.insert(argv.end(), o.mpi_args.begin(), o.mpi_args.end());
    argv.insert(argv.end(), {"-np", std::to_string(o.np), "--oversubscribe"});
  }
  argv.insert(argv.end(), argv_in.begin(), argv_in.end());
  command_ = describe(argv, o);
  std::vector<std::string> env = child_env(o);
  out_path_ = capture_file("out");
  err_path_ = capture_file("err");
  in_path_ = capture_file("in");
  std::ofstream(in_path_, std::ios::binary) << o.stdin_text;
  // Everything the child needs is prepared here: between fork and exec it only calls
  // async-signal-safe functions.
  const int in = ::open(in_path_.c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open(out_path_.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  const int err = ::open(err_path_.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  REQUIRE_MESSAGE((in >= 0 && out >= 0 && err >= 0), "cannot open the capture files: " << std::strerror(errno));
  std::vector<char*> cargv = c_strings(argv), cenv = c_strings(env);
  const std::string cwd = o.cwd.string();
  pid_ = ::fork();
  if (pid_ == 0) {
    ::setpgid(0, 0);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(127);
    if (::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(127);
    ::execvpe(cargv[0], cargv.data(), cenv.data());
    const char msg[] = "anyk test runner: exec failed\n";
    [[maybe_unused]] ssize_t w = ::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(in);
  ::close(out);
  ::close(err);
  REQUIRE_MESSAGE(pid_ > 0, "fork for " << command_ << ": " << std::strerror(fork_errno));
  ::setpgid(pid_, pid_);  // also here, so that a signal sent right after start reaches the group
}

Process::~Process() {
  if (!done_ && pid_ > 0) {
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
  std::error_code ec;
  for (const fs::path& p : {out_path_, err_path_, in_path_}) fs::remove(p, ec);
}

void Process::signal(int sig) const {
  if (!done_) ::kill(pid_, sig);
}

void Process::kill_group(int sig) const {
  if (!done_) ::kill(-pid_, sig);
}

bool Process::wait_for(double seconds) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  auto nap = std::chrono::milliseconds(1);
  while (!done_) {
    const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      done_ = true;
      break;
    }
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::milliseconds(50));
  }
  return true;
}

RunResult Process::result() const {
  REQUIRE_MESSAGE(done_, command_ << " is still running");
  RunResult r;
  r.command = command_;
  if (WIFEXITED(status_)) r.rc = WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) r.signal = WTERMSIG(status_);
  r.out = out();
  r.err = err();
  return r;
}

std::string Process::out() const { return slurp(out_path_); }
std::string Process::err() const { return slurp(err_path_); }

RunResult run_command(const std::vector<std::string>& argv, const RunOptions& o) {
  const char* scale = std::getenv("ANYK_TEST_TIMEOUT_SCALE");
  const double timeout_s = o.timeout_s * (scale ? std::atof(scale) : 1.0);
  Process p(argv, o);
  if (!p.wait_for(timeout_s)) {
    p.kill_group(SIGKILL);
    p.wait_for(30);
    const std::string err = p.err();
    FAIL(p.command() << " did not end within its timeout of " << timeout_s
                     << " s; its process group was killed. stderr so far:\n"
                     << err.substr(err.size() > 4000 ? err.size() - 4000 : 0));
  }
  return p.result();
}

std::vector<std::string> anyk_argv(const std::string& args) {
  std::vector<std::string> v{env_or_fail("ANYK_BIN")};
  size_t i = 0;
  while (true) {
    while (i < args.size() && args[i] == ' ') ++i;
    if (i == args.size()) break;
    std::string word;
    while (i < args.size() && args[i] != ' ') {
      if (args[i] == '\'') {
        const size_t close = args.find('\'', i + 1);
        REQUIRE_MESSAGE(close != std::string::npos, "unbalanced ' in: " << args);
        word += args.substr(i + 1, close - i - 1);
        i = close + 1;
      } else {
        word += args[i++];
      }
    }
    v.push_back(word);
  }
  return v;
}

bool wait_until(double seconds, const std::function<bool()>& pred) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (true) {
    if (pred()) return true;
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

bool wait_for_text(const fs::path& file, const std::string& needle, double seconds) {
  return wait_until(seconds, [&] { return slurp(file).find(needle) != std::string::npos; });
}

TempDir::TempDir(const std::string& tag) {
  std::string t = (fs::temp_directory_path() / ("anyk_" + tag + "_XXXXXX")).string();
  REQUIRE_MESSAGE(::mkdtemp(t.data()) != nullptr, "mkdtemp " << t << ": " << std::strerror(errno));
  path = t;
}

TempDir::~TempDir() {
  if (std::getenv("ANYK_KEEP_TEST_DIRS")) return;
  std::error_code ec;
  fs::remove_all(path, ec);
}

std::string error_of(const std::string& output) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("anyk: error:", 0) == 0) return line;
  return "";
}

int count_lines(const std::string& s) {
  int n = int(std::count(s.begin(), s.end(), '\n'));
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

void check_one_error_line(const std::string& s, std::initializer_list<std::string> needles) {
  INFO("stderr: " << s);
  CHECK(count_lines(s) == 1);
  CHECK(s.rfind("anyk: error: ", 0) == 0);
  CHECK(s.ends_with('\n'));
  for (const auto& n : needles) CHECK_MESSAGE(s.find(n) != std::string::npos, "missing '" << n << "'");
}

Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    FAIL(what << " is not valid JSON (" << e.what() << "): " << text.substr(0, 2000));
  }
  return {};
}

Json read_json(const fs::path& file) {
  REQUIRE_MESSAGE(fs::is_regular_file(file), file.string() << " does not exist");
  return parse_json(slurp(file), file.string());
}

std::vector<Json> read_jsonl(const fs::path& file, const std::string& type, bool complete_only) {
  std::vector<Json> v;
  const std::string text = slurp(file);
  size_t p = 0;
  while (p < text.size()) {
    size_t q = text.find('\n', p);
    if (q == std::string::npos) {
      if (complete_only) break;
      q = text.size();
    }
    const std::string line = text.substr(p, q - p);
    p = q + 1;
    if (line.empty()) continue;
    Json j = parse_json(line, "a line of " + file.string());
    if (type.empty() || (j.contains("type") && j["type"] == type)) v.push_back(std::move(j));
  }
  return v;
}

double number(const Json& obj, const std::string& key) {
  REQUIRE_MESSAGE(obj.contains(key), key << " missing in " << obj.dump());
  REQUIRE_MESSAGE(obj[key].is_number(), key << " is not a number in " << obj.dump());
  return obj[key].get<double>();
}

std::vector<double> numbers(const std::vector<Json>& records, const std::string& key) {
  std::vector<double> v;
  for (const Json& r : records) v.push_back(number(r, key));
  return v;
}

}  // namespace anyk::test
