// --comm mpi|nccl without a GPU: the names, the train-time device rule, which communicator each
// group's data path uses, and the NCCL factory's error in a build or process that cannot serve it.
// (The NCCL collectives themselves need GPUs: the gpu suites test them.)
#include <doctest/doctest.h>

#include <string>

#include "kernels/cuda_api.h"
#include "launch/options.h"
#include "parallel/groups.h"
#include "parallel/nccl_comm.h"

using namespace anyk;

namespace {

// The message of the anyk::Error f throws ("" when it does not throw).
template <class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("comm: the two names round-trip and anything else names both") {
  CHECK(parse_comm("mpi") == CommKind::Mpi);
  CHECK(parse_comm("nccl") == CommKind::Nccl);
  CHECK(std::string(comm_name(parse_comm("mpi"))) == "mpi");
  CHECK(std::string(comm_name(parse_comm("nccl"))) == "nccl");
  for (const char* bad : {"foo", "NCCL", ""}) {
    const std::string e = error_of([&] { parse_comm(bad); });
    CHECK(has(e, std::string("'") + bad + "'"));
    CHECK(has(e, "mpi"));
    CHECK(has(e, "nccl"));
  }
}

TEST_CASE("comm: nccl needs the model on the GPU, mpi takes any device") {
  launch::TrainOptions o;
  CHECK(o.comm == "mpi");  // the default
  for (Device d : {Device::CPU, Device::CUDA, Device::Checked}) CHECK(error_of([&] { launch::check_comm_device(o, d); }).empty());
  o.comm = "nccl";
  CHECK(error_of([&] { launch::check_comm_device(o, Device::CUDA); }).empty());
  for (Device d : {Device::CPU, Device::Checked}) {
    const std::string e = error_of([&] { launch::check_comm_device(o, d); });
    CHECK(has(e, "--comm nccl needs --device cuda"));
    CHECK(has(e, device_name(d)));
  }
}

TEST_CASE("comm: the data path is the MPI group unless NCCL was built over it") {
  for (CommKind kind : {CommKind::Mpi, CommKind::Nccl}) {
    // One rank: every group has one member, so even nccl builds no NCCL communicator (nothing
    // travels) and needs no GPU.
    ProcessGroups g = make_groups(Comm::self(), 0, 4, kind);
    CHECK_FALSE(g.world_nccl);
    CHECK_FALSE(g.ep_nccl);
    CHECK_FALSE(g.edp_nccl);
    CHECK(&g.world_data() == static_cast<const Communicator*>(&g.world));
    CHECK(&g.ep_data() == static_cast<const Communicator*>(&g.ep));
    CHECK(&g.edp_data() == static_cast<const Communicator*>(&g.edp));
  }
  // data_path prefers the NCCL communicator when one is present.
  Comm self = Comm::self();
  std::unique_ptr<Communicator> other = std::make_unique<LocalCommunicator>();
  CHECK(&data_path(other, self) == other.get());
  CHECK(&data_path(nullptr, self) == static_cast<const Communicator*>(&self));
}

TEST_CASE("comm: the NCCL factory says what is missing") {
  const std::string e = error_of([] { make_nccl_communicator(Comm::self()); });
  if (!cuda::built_with_cuda()) {
    CHECK(has(e, "anyk was built without CUDA/NCCL"));
    CHECK(has(e, "cmake -DANYK_CUDA=ON"));
  } else if (cuda::stream() == nullptr) {  // a CUDA build, backend not initialised in this process
    CHECK(has(e, "needs the CUDA backend"));
    CHECK(has(e, "--device cuda"));
  }
}

TEST_CASE("comm: NCCL is loaded on first use, or the error names the library and the fix") {
  int version = 0;
  const std::string e = error_of([&] { version = nccl_version(); });
  if (!cuda::built_with_cuda()) {
    CHECK(has(e, "anyk was built without CUDA/NCCL"));
  } else if (e.empty()) {  // libnccl.so.2 found: a NCCL 2 version code (no GPU needed to ask)
    CHECK(version >= 20700);
    CHECK(nccl_version() == version);  // loaded once
  } else {  // not installed here: one line naming it and the fix
    CHECK(has(e, "cannot load libnccl.so.2"));
    CHECK(has(e, "LD_LIBRARY_PATH"));
    CHECK(has(e, "--comm mpi"));
    CHECK(e.find('\n') == std::string::npos);
  }
}
