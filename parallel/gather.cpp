// gather_full_params; see gather.h.
#include "parallel/gather.h"

#include <cstring>
#include <vector>

namespace anyk {

void gather_full_params(const ParamStore& local, ParamStore* full, const Comm& ep) {
  ANYK_CHECK(local.dtype() == DType::F32, "gather_full_params supports f32 parameters");
  const bool root = ep.rank() == 0;
  std::vector<float> scratch;
  for (int id = 0; id < local.size(); ++id) {
    const ParamInfo& info = local.info(id);
    Tensor src = local.value(id);
    float* dst = nullptr;
    if (root) {
      ANYK_CHECK(full, "gather_full_params: the root needs a full parameter store");
      int fid = full->find(info.name);
      ANYK_CHECK(fid >= 0, "gather_full_params: '" << info.name << "' missing from the full model");
      Tensor t = full->value(fid);
      int64_t want = info.region == Region::Expert ? src.numel() * ep.size() : src.numel();
      ANYK_CHECK(t.numel() == want, "gather_full_params: '" << info.name << "' has " << t.numel()
                                                            << " values, expected " << want);
      dst = t.ptr<float>();
    }
    if (info.region == Region::Dense) {
      if (root) std::memcpy(dst, src.ptr<float>(), src.bytes());
    } else {
      ep.gather(src.ptr<float>(), src.numel(), dst, 0);  // (E_local,...) x ep -> (E,...)
    }
  }
}

}  // namespace anyk
