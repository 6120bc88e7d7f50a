// Flat parameter storage. Parameters are declared from a size table, then one buffer per region
// holds all values and a second of the same layout all gradients. Dense parameters (replicated
// on every rank) and expert parameters (sharded over expert-parallel ranks) live in separate
// regions so that each can be synchronised with one collective call. Values and gradients live
// in the memory of the store's device.
#pragma once
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/tape.h"
#include "runtime/tensor.h"

namespace anyk {

enum class Region : int { Dense = 0, Expert = 1 };
constexpr int kNumRegions = 2;

struct ParamInfo {
  std::string name;
  Shape shape;
  Region region;
  int64_t offset;  // elements from the start of its region
  bool decay;      // AdamW weight decay applies (not on norms and embeddings)
};

class ParamStore {
 public:
  explicit ParamStore(DType dtype = DType::F32, Device device = Device::CPU) : dtype_(dtype), device_(device) {}
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  // Declare a parameter; returns its id. Only before finalize().
  int add(const std::string& name, Shape shape, Region region, bool decay);
  // The whole value or gradient region as one flat tensor (region_numel elements).
  Tensor region_value(Region r) const;
  Tensor region_gradient(Region r) const;
  // Allocate the regions (values and gradients zeroed).
  void finalize();
  bool finalized() const { return finalized_; }

  int size() const { return static_cast<int>(params_.size()); }
  const ParamInfo& info(int id) const { return params_.at(id); }
  const std::vector<ParamInfo>& infos() const { return params_; }
  int find(const std::string& name) const;  // -1 when absent

  Tensor value(int id) const;
  Tensor grad(int id) const;
  Var var(int id) const { return Var{value(id), grad(id)}; }

  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int64_t region_numel(Region r) const { return numel_[int(r)]; }
  void* region_data(Region r) const { return values_[int(r)].data(); }
  void* region_grad(Region r) const { return grads_[int(r)].data(); }
  int64_t total_numel() const { return numel_[0] + numel_[1]; }
  void zero_grad();

 private:
  Tensor at(const DeviceBuffer& buf, int id) const;
  Tensor flat(const DeviceBuffer& buf, Region r) const;
  DType dtype_;
  Device device_;
  bool finalized_ = false;
  std::vector<ParamInfo> params_;
  int64_t numel_[kNumRegions] = {0, 0};
  DeviceBuffer values_[kNumRegions];
  DeviceBuffer grads_[kNumRegions];
};

}  // namespace anyk
