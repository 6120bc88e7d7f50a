// Flat parameter storage; see params.h.
#include "runtime/params.h"

#include <cstring>

namespace anyk {

int ParamStore::add(const std::string& name, Shape shape, Region region, bool decay) {
  ANYK_CHECK(!finalized_, "parameter '" << name << "' declared after finalize()");
  ANYK_CHECK(find(name) < 0, "parameter '" << name << "' declared twice");
  // Keep every parameter 64-byte aligned inside its region (16 floats / 8 doubles).
  int64_t align = 64 / static_cast<int64_t>(dtype_size(dtype_));
  int64_t& n = numel_[int(region)];
  n = (n + align - 1) / align * align;
  params_.push_back({name, shape, region, n, decay});
  n += shape.numel();
  return size() - 1;
}

void ParamStore::finalize() {
  ANYK_CHECK(!finalized_, "finalize() called twice");
  for (int r = 0; r < kNumRegions; ++r) {
    values_[r].resize(device_, static_cast<size_t>(numel_[r]) * dtype_size(dtype_));
    grads_[r].resize(device_, static_cast<size_t>(numel_[r]) * dtype_size(dtype_));
  }
  finalized_ = true;
}

int ParamStore::find(const std::string& name) const {
  for (int i = 0; i < size(); ++i)
    if (params_[i].name == name) return i;
  return -1;
}

Tensor ParamStore::flat(const DeviceBuffer& buf, Region r) const {
  ANYK_CHECK(finalized_, "parameters used before finalize()");
  Tensor t;
  t.shape = Shape{numel_[int(r)]};
  t.dtype = dtype_;
  t.device = device_;
  t.data = buf.data();
  return t;
}
Tensor ParamStore::region_value(Region r) const { return flat(values_[int(r)], r); }
Tensor ParamStore::region_gradient(Region r) const { return flat(grads_[int(r)], r); }

Tensor ParamStore::at(const DeviceBuffer& buf, int id) const {
  ANYK_CHECK(finalized_, "parameters used before finalize()");
  const ParamInfo& p = params_.at(id);
  Tensor t;
  t.shape = p.shape;
  t.dtype = dtype_;
  t.device = device_;
  t.data = static_cast<char*>(buf.data()) + p.offset * dtype_size(dtype_);
  return t;
}

Tensor ParamStore::value(int id) const { return at(values_[int(params_.at(id).region)], id); }
Tensor ParamStore::grad(int id) const { return at(grads_[int(params_.at(id).region)], id); }

void ParamStore::zero_grad() {
  for (int r = 0; r < kNumRegions; ++r)
    grads_[r].zero();
}

}  // namespace anyk
