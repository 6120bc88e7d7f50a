// LocalCommunicator and the argument checks shared by every Communicator; see communicator.h.
#include "parallel/communicator.h"

#include <cstring>

#include "runtime/device.h"

namespace anyk {

BlockRange block_range(int64_t n, int parts, int i) {
  ANYK_CHECK(n >= 0 && parts >= 1 && i >= 0 && i < parts,
             "block_range: block " << i << " of " << parts << " over " << n << " values");
  // n * i fits int64 for any region that fits memory (n < 2^40) and any rank count (< 2^20).
  return BlockRange{n * i / parts, n * (i + 1) / parts};
}

void check_block_tensor(const Tensor& x, const char* who) {
  ANYK_CHECK(x.dtype == DType::F32, who << " supports f32, got " << dtype_name(x.dtype));
}

void check_counts_tensor(const Tensor& t, int64_t n, const char* what) {
  ANYK_CHECK(t.dtype == DType::I32 && t.device == Device::CPU,
             what << " must be an i32 tensor in host memory, got " << dtype_name(t.dtype) << " on "
                  << device_name(t.device));
  ANYK_CHECK(t.numel() == n, what << " holds " << t.numel() << " values, expected " << n);
}

void check_host_tensor(const Tensor& t, const char* who) {
  ANYK_CHECK(t.device == Device::CPU,
             who << " needs tensors in host memory (device cpu), got one on " << device_name(t.device)
                 << ". hint: copy it to the host first (runtime/device.h)");
}

int64_t row_bytes_of(const Tensor& t) {
  int64_t per = 1;
  for (int i = 1; i < t.shape.ndim; ++i) per *= t.shape[i];
  return per * int64_t(dtype_size(t.dtype));
}

int64_t check_all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                           const Tensor& recv_counts, int size) {
  check_counts_tensor(send_counts, size, "all_to_all_v send_counts");
  check_counts_tensor(recv_counts, size, "all_to_all_v recv_counts");
  const int64_t row = row_bytes_of(send);
  ANYK_CHECK(send.dtype == recv.dtype && row == row_bytes_of(recv),
             "all_to_all_v: send rows " << send.shape.str() << " " << dtype_name(send.dtype)
                                        << " do not match recv rows " << recv.shape.str() << " "
                                        << dtype_name(recv.dtype));
  int64_t S = 0, R = 0;
  for (int i = 0; i < size; ++i) {
    S += send_counts.ptr<int32_t>()[i];
    R += recv_counts.ptr<int32_t>()[i];
  }
  ANYK_CHECK(send.shape.ndim >= 1 && S == send.shape[0] && recv.shape.ndim >= 1 && R == recv.shape[0],
             "all_to_all_v: counts say " << S << " rows out and " << R << " in, but send is "
                                         << send.shape.str() << " and recv " << recv.shape.str());
  return row;
}

void LocalCommunicator::all_reduce_sum(const Tensor& x) const {
  ANYK_CHECK(x.dtype == DType::F32 || x.dtype == DType::F64,
             "all_reduce_sum supports f32 and f64, got " << dtype_name(x.dtype));
}

void LocalCommunicator::reduce_scatter_sum(const Tensor& x) const { check_block_tensor(x, "reduce_scatter_sum"); }

void LocalCommunicator::all_gather_blocks(const Tensor& x) const { check_block_tensor(x, "all_gather_blocks"); }

void LocalCommunicator::all_gather(const Tensor& send, const Tensor& recv) const {
  check_counts_tensor(send, send.numel(), "all_gather send");
  check_counts_tensor(recv, send.numel(), "all_gather recv");
  std::memcpy(recv.data, send.data, send.bytes());
}

void LocalCommunicator::all_to_all(const Tensor& send, const Tensor& recv) const {
  check_counts_tensor(send, send.numel(), "all_to_all send");
  check_counts_tensor(recv, send.numel(), "all_to_all recv");
  std::memcpy(recv.data, send.data, send.bytes());
}

void LocalCommunicator::all_to_all_v(const Tensor& send, const Tensor& send_counts, const Tensor& recv,
                                     const Tensor& recv_counts) const {
  check_all_to_all_v(send, send_counts, recv, recv_counts, 1);
  ANYK_CHECK(send_counts.ptr<int32_t>()[0] == recv_counts.ptr<int32_t>()[0],
             "all_to_all_v on one rank: " << send_counts.ptr<int32_t>()[0] << " rows sent but "
                                          << recv_counts.ptr<int32_t>()[0] << " expected back");
  copy(recv, send);  // any devices (a memcpy on the CPU)
}

}  // namespace anyk
