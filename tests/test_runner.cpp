// The shared test helpers of test_util.h against what the system reports: exit status, output,
// environment, working directory and stdin of a command; signals and process-group kills seen in
// /proc; the timeout that fails a test, run in a child copy of this suite; argument splitting,
// error lines and the JSON reader.
#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk::test;

namespace {

// True while pid names a live (not zombie) process.
bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0) return false;
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const size_t p = stat.rfind(')');
  return p != std::string::npos && p + 2 < stat.size() && stat[p + 2] != 'Z';
}

// The pid the command printed on its first stdout line (polled).
pid_t printed_pid(const Process& p) {
  pid_t pid = -1;
  REQUIRE(wait_until(10, [&] {
    const std::string o = p.out();
    if (o.find('\n') == std::string::npos) return false;
    pid = std::stoi(o);
    return true;
  }));
  return pid;
}

}  // namespace

TEST_CASE("runner: exit status, stdout and stderr apart, env, cwd and stdin") {
  RunResult r = run_command({"sh", "-c", "echo out; echo err >&2; exit 3"});
  CHECK(r.rc == 3);
  CHECK(r.signal == 0);
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
  CHECK(run_command({"true"}).rc == 0);

  r = run_command({"sh", "-c", "printf '%s %s' \"$ANYK_T_NEW\" \"$OMP_NUM_THREADS\""},
                  {.env = {"ANYK_T_NEW=a b", "OMP_NUM_THREADS=7"}});
  CHECK(r.out == "a b 7");  // added, and replacing the inherited value

  TempDir t("test_runner");
  r = run_command({"pwd", "-P"}, {.cwd = t.path});
  CHECK(r.out == fs::canonical(t.path).string() + "\n");

  r = run_command({"cat"}, {.stdin_text = "line one\nline two"});
  CHECK(r.out == "line one\nline two");
  CHECK(run_command({"cat"}).out.empty());  // no stdin text: an empty stdin, not the terminal's
}

TEST_CASE("runner: np > 0 runs the command under mpiexec with OpenMPI's root permission") {
  RunResult r =
      run_command({"sh", "-c", "echo $OMPI_COMM_WORLD_SIZE $OMPI_ALLOW_RUN_AS_ROOT"}, {.np = 2, .timeout_s = 60});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.out == "2 1\n2 1\n");
}

TEST_CASE("runner: a background process is signalled, waited for, and its group killed") {
  SUBCASE("a signal to the process ends it, and the result names the signal") {
    Process p({"sleep", "30"});
    CHECK_FALSE(p.wait_for(0.05));
    p.signal(SIGTERM);
    REQUIRE(p.wait_for(10));
    CHECK(p.result().signal == SIGTERM);
    CHECK(p.result().rc == -1);
  }
  SUBCASE("kill_group reaches the command's children") {
    Process p({"sh", "-c", "sleep 30 & echo $!; wait"});
    const pid_t child = printed_pid(p);
    CHECK(alive(child));
    p.kill_group(SIGKILL);
    REQUIRE(p.wait_for(10));
    CHECK(p.result().signal == SIGKILL);
    CHECK(wait_until(5, [&] { return !alive(child); }));
  }
  SUBCASE("the destructor kills a process still running, children included") {
    pid_t child = -1, pid = -1;
    {
      Process p({"sh", "-c", "sleep 30 & echo $!; wait"});
      child = printed_pid(p);
      pid = p.pid();
    }
    CHECK(wait_until(5, [&] { return !alive(child) && !alive(pid); }));
  }
  SUBCASE("output is readable while it runs") {
    Process p({"sh", "-c", "echo started; echo warn >&2; sleep 30"});
    CHECK(wait_until(10, [&] { return p.out() == "started\n" && p.err() == "warn\n"; }));
    CHECK_FALSE(p.done());
  }
}

// Run only by the next test case, in a child copy of this suite: it must fail on its timeout.
TEST_CASE("runner: (child) a command past its timeout" * doctest::skip()) {
  run_command({"sh", "-c", "sleep 60 & echo $! > grandchild.pid; wait"}, {.timeout_s = 0.5});
}

TEST_CASE("runner: a command past its timeout is killed with its group and fails the test, naming both") {
  TempDir t("test_runner");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  RunResult r = run_command({self, "--test-case=runner: (child)*", "--no-skip"},
                            {.cwd = t.path, .env = {"ANYK_TEST_TIMEOUT_SCALE=1"}, .timeout_s = 60});
  INFO(r.out << r.err);
  CHECK(r.rc != 0);
  CHECK(r.out.find("did not end within its timeout of 0.5 s") != std::string::npos);
  CHECK(r.out.find("sh -c 'sleep 60 & echo $! > grandchild.pid; wait'") != std::string::npos);
  CHECK(r.out.find("1 failed") != std::string::npos);
  const pid_t grandchild = std::stoi(slurp(t / "grandchild.pid"));
  CHECK(wait_until(5, [&] { return !alive(grandchild); }));
}

TEST_CASE("runner: anyk_argv splits on spaces and honours '...' words") {
  const std::vector<std::string> v = anyk_argv("  eval  --prompt 'a b' --x '' c'd'e ");
  REQUIRE(v.size() == 7);
  CHECK(v[0] == std::getenv("ANYK_BIN"));
  CHECK(std::vector<std::string>(v.begin() + 1, v.end()) ==
        std::vector<std::string>{"eval", "--prompt", "a b", "--x", "", "cde"});
}

TEST_CASE("error lines: error_of takes the first anyk error line; count_lines") {
  CHECK(error_of("loading\nanyk: error: --k 5 is bad\nanyk: error: second\n") == "anyk: error: --k 5 is bad");
  CHECK(error_of("warning: x\n  anyk: error: indented\n").empty());
  CHECK(error_of("").empty());
  CHECK(count_lines("") == 0);
  CHECK(count_lines("a\n") == 1);
  CHECK(count_lines("a\nb") == 2);
  check_one_error_line("anyk: error: --k 5 (hint: lower it)\n", {"--k 5", "hint"});
}

TEST_CASE("JSON reader: files, JSON lines by type, numbers, key order") {
  TempDir t("test_runner");
  std::ofstream(t / "m.jsonl") << "{\"type\": \"train\", \"step\": 1, \"loss\": 5.5}\n"
                               << "{\"type\": \"eval\", \"step\": 1, \"val_loss\": null}\n"
                               << "{\"type\": \"train\", \"step\": 2, \"loss\": 0.1}\n"
                               << "{\"type\": \"train\", \"st";
  const auto train = read_jsonl(t / "m.jsonl", "train", true);  // the last line is still being written
  REQUIRE(train.size() == 2);
  CHECK(numbers(train, "loss") == std::vector<double>{5.5, 0.1});
  CHECK(numbers(train, "step") == std::vector<double>{1, 2});
  CHECK(read_jsonl(t / "m.jsonl", "", true).size() == 3);
  CHECK(read_jsonl(t / "m.jsonl", "eval", true)[0]["val_loss"].is_null());
  std::ofstream(t / "h.json") << "{\"z\": 1, \"a\": [1, 2.5, -3e2], \"m\": {\"s\": \"x\"}}";
  const Json h = read_json(t / "h.json");
  std::vector<std::string> keys;
  for (const auto& [k, v] : h.items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"z", "a", "m"});  // file order
  CHECK(h["a"].get<std::vector<double>>() == std::vector<double>{1, 2.5, -300});
  CHECK(number(h, "z") == 1);
  CHECK(h["m"]["s"] == "x");
}
